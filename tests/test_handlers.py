"""Conformance suite every model handler passes: the bundled Fashion-MNIST CNN exported to each
runtime (.keras, .h5, SavedModel, TFLite, ONNX) must give the Keras model's embeddings and
probabilities on real images, through RunInference, with its declared preprocessing."""
import glob
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest

from tests import harness
from transforms.decode.ptransforms import DecodeMedia
from transforms.score.handlers import load_model_spec, make_handler
from transforms.score.keras_models import load_embedding_classifier
from transforms.score.model_base import KERAS, ONNX, SAVED_MODEL, TFLITE, ModelOutput, default_model_path
from transforms.score.preprocessing import prepare_input
from transforms.score.ptransforms import ScoreFrames

PNGS = "t10k-000[0-1][0-9].png"  # 20 real Fashion-MNIST test images


def _onnx_cnn(base, path, nchw_scaled=False):
    """The Fashion-MNIST CNN as an ONNX graph built with ``onnx.helper`` from the Keras weights.

    Default input: NHWC float pixels in [0, 255] (as the Keras model). With ``nchw_scaled`` the
    graph takes NCHW pixels already scaled to [0, 1] (declared in its sidecar instead).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = {layer.name: layer.get_weights() for layer in base.layers}
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name
    x = "pixels"
    if not nchw_scaled:
        nodes += [helper.make_node("Mul", [x, const("scale", 1 / 255)], ["scaled"]),
                  helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2])]
        x = "nchw"
    convs = [layer.get_weights() for layer in base.layers if type(layer).__name__ == "Conv2D"]
    for i, (kernel, bias) in enumerate(convs):
        nodes += [helper.make_node("Conv", [x, const(f"k{i}", kernel.transpose(3, 2, 0, 1)), const(f"b{i}", bias)],
                                   [f"c{i}"]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
                  helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2])]
        x = f"p{i}"
    nodes += [helper.make_node("Transpose", [x], ["nhwc"], perm=[0, 2, 3, 1]),  # Keras flattens HWC
              helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", const("we", w["embedding"][0]), const("be", w["embedding"][1])], ["pre"]),
              helper.make_node("Relu", ["pre"], ["embedding"]),
              helper.make_node("Gemm", ["embedding", const("wp", w["probabilities"][0]),
                                        const("bp", w["probabilities"][1])], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    shape = ["N", 1, 28, 28] if nchw_scaled else ["N", 28, 28, 1]
    graph = helper.make_graph(
        nodes, "fashion_mnist_cnn", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 128]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def exported():
    """The default model in every runtime, in a temp dir: runtime name -> model path."""
    import tensorflow as tf
    out = harness.tmpdir("activebeam-models-")
    two_output, _, base = load_embedding_classifier(default_model_path())
    paths = {KERAS: default_model_path(), "h5": os.path.join(out, "cnn.h5"),
             SAVED_MODEL: os.path.join(out, "cnn_savedmodel"), TFLITE: os.path.join(out, "cnn.tflite"),
             ONNX: os.path.join(out, "cnn.onnx"), "onnx_nchw": os.path.join(out, "cnn_nchw.onnx")}
    base.save(paths["h5"])
    two_output.export(paths[SAVED_MODEL], verbose=False)
    with open(paths[SAVED_MODEL] + ".json", "w") as f:  # a SavedModel declares its input size
        json.dump({"input_size": [28, 28], "colour": "GREY"}, f)
    with open(paths[TFLITE], "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_keras_model(two_output).convert())
    _onnx_cnn(base, paths[ONNX])
    _onnx_cnn(base, paths["onnx_nchw"], nchw_scaled=True)
    with open(paths["onnx_nchw"] + ".json", "w") as f:
        json.dump({"layout": "NCHW", "scale": 1 / 255, "colour": "GREY"}, f)
    return paths


@pytest.fixture(scope="module")
def reference():
    """Keras's own embeddings and probabilities for the test PNGs, by file name."""
    import cv2
    model, _, _ = load_embedding_classifier(default_model_path())
    files = sorted(glob.glob(harness.media("fashion-mnist", PNGS)))
    x = np.stack([cv2.imread(f, cv2.IMREAD_GRAYSCALE)[..., None].astype(np.float32) for f in files])
    embeddings, probabilities = model.predict(x, verbose=0)
    return {os.path.basename(f): (e, p) for f, e, p in zip(files, embeddings, probabilities)}


FORMATS = [(KERAS, KERAS), ("h5", KERAS), (SAVED_MODEL, SAVED_MODEL), (TFLITE, TFLITE), (ONNX, ONNX),
           ("onnx_nchw", ONNX)]


@pytest.mark.parametrize("fmt,runtime", FORMATS)
def test_spec_of_every_runtime(exported, fmt, runtime):
    spec = load_model_spec(exported[fmt])
    assert spec.runtime == runtime
    assert spec.input_shape == (28, 28, 1) and spec.num_classes == 10
    assert spec.prep().layout == ("NCHW" if fmt == "onnx_nchw" else "NHWC")
    assert len(spec.version.version) == 16 and spec.version.embedding_layer
    assert spec.version == load_model_spec(exported[fmt]).version  # stable digest


@pytest.mark.parametrize("fmt,runtime", FORMATS)
def test_handler_contract(exported, fmt, runtime):
    """A handler maps any batch size to one ModelOutput per example, same results per example."""
    import cv2
    spec = load_model_spec(exported[fmt])
    handler = make_handler(spec, min_batch_size=1, max_batch_size=8)
    assert handler.batch_elements_kwargs()["max_batch_size"] == 8
    model = handler.load_model()
    rgb = cv2.cvtColor(cv2.imread(harness.media("flower.jpg")), cv2.COLOR_BGR2RGB)
    x = prepare_input(rgb, spec.prep())
    assert x.shape == spec.prep().input_shape and x.dtype == np.float32
    batch = [x * (i + 1) / 7 for i in range(7)]
    results = list(handler.run_inference(batch, model))
    single = list(handler.run_inference(batch[3:4], model))
    assert len(results) == 7 and len(single) == 1
    for result in results:
        assert isinstance(result.inference, ModelOutput)
        assert result.inference.embedding.shape == (128,) and result.inference.output.shape == (10,)
        assert result.inference.samples is None
    np.testing.assert_allclose(single[0].inference.output, results[3].inference.output, atol=1e-5)
    assert not np.allclose(results[0].inference.output, results[6].inference.output)


@pytest.mark.parametrize("fmt,runtime", FORMATS)
def test_every_runtime_scores_frames_like_keras(exported, reference, fmt, runtime):
    spec = load_model_spec(exported[fmt])

    def build(p):
        decoded = p | beam.Create([harness.media("fashion-mnist", PNGS)]) | DecodeMedia()
        scored = decoded.frames | ScoreFrames(spec, min_batch_size=4, max_batch_size=8)
        return {"records": scored.records, "dead": scored.dead_letters}
    out = harness.run_collect(build)
    assert out["dead"] == [] and len(out["records"]) == len(reference) == 20
    for record in out["records"]:
        embedding, probabilities = reference[os.path.basename(record.frame.source_uri)]
        np.testing.assert_allclose(record.probabilities, probabilities, atol=2e-4)
        np.testing.assert_allclose(record.embedding, embedding, atol=2e-3, rtol=1e-3)
        assert record.model == spec.version
        scores = dict(record.extra_scores)
        assert set(scores) == {"ratio", "entropy_normalised"}
        assert scores["entropy_normalised"] == pytest.approx(record.entropy / np.log(10))


def test_mc_dropout_scores(exported):
    spec = load_model_spec(mc_passes=10)

    def build(p):
        decoded = p | beam.Create([harness.media("fashion-mnist", "t10k-0000[0-9].png"),
                                   harness.media("vtest.avi")]) | DecodeMedia(video_fps=0.5)
        return {"records": (decoded.frames | ScoreFrames(spec)).records}
    records = harness.run_collect(build)["records"]
    assert len(records) == 10 + 40
    for record in records:
        scores = dict(record.extra_scores)
        assert {"bald", "variation_ratios", "mean_std"} <= set(scores)
        assert 0 <= scores["bald"] <= np.log(10) and 0 <= scores["variation_ratios"] <= 0.9
        assert 0 <= scores["mean_std"] <= 0.5
    # Dropout is active: the passes differ on at least the frames far from the training data.
    video = [dict(r.extra_scores)["bald"] for r in records if r.frame.media_type == "video"]
    assert np.median(video) > 1e-4
    with pytest.raises(ValueError, match="mc_passes"):
        load_model_spec(exported[TFLITE], mc_passes=10)


def test_sidecar_errors(exported, tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(open(exported[ONNX], "rb").read())
    (tmp_path / "bad.onnx.json").write_text(json.dumps({"colour": "CMYK"}))
    with pytest.raises(ValueError, match="colour must be one of"):
        load_model_spec(str(path))
    (tmp_path / "bad.onnx.json").write_text(json.dumps({"resize": [28, 28]}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_model_spec(str(path))
    (tmp_path / "bad.onnx.json").write_text(json.dumps({"class_output": "scores"}))
    with pytest.raises(ValueError, match="not an output"):
        load_model_spec(str(path))


def test_class_names_from_the_sidecar_or_the_bundled_model(exported, tmp_path):
    from transforms.score.model_base import DEFAULT_MODEL_CLASS_NAMES
    assert load_model_spec().class_names == DEFAULT_MODEL_CLASS_NAMES  # the bundled model
    path = tmp_path / "named.onnx"
    path.write_bytes(open(exported[ONNX], "rb").read())
    assert load_model_spec(str(path)).class_names == ()  # a model that declares none
    names = [f"kind {i}" for i in range(10)]
    (tmp_path / "named.onnx.json").write_text(json.dumps({"class_names": names}))
    spec = load_model_spec(str(path))
    assert spec.class_names == tuple(names) and spec.class_name(3) == "kind 3" and spec.class_name(10) is None
    assert spec.prep() == load_model_spec(exported[ONNX]).prep()  # names change no preprocessing
    (tmp_path / "named.onnx.json").write_text(json.dumps({"class_names": names[:9]}))
    with pytest.raises(ValueError, match="9 names, the model has 10 class outputs"):
        load_model_spec(str(path))
    (tmp_path / "named.onnx.json").write_text(json.dumps({"class_names": "kind 0"}))
    with pytest.raises(ValueError, match="class_names must be a list of strings"):
        load_model_spec(str(path))


def test_ensemble_disagreement_through_score_frames(exported, reference, tmp_path):
    """Members: the same CNN as TFLite (agrees: ~0) and a retouched copy (disagrees: equals the
    Jensen-Shannon divergence of the two models' own predictions)."""
    import cv2
    import keras
    from transforms.score import uncertainty
    _, _, base = load_embedding_classifier(default_model_path())
    rng = np.random.default_rng(0)
    layer = base.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel + rng.normal(0, 0.2, kernel.shape).astype(np.float32), bias])
    other_path = str(tmp_path / "retouched.keras")
    base.save(other_path)
    spec = load_model_spec()

    def run(members):
        def build(p):
            decoded = p | beam.Create([harness.media("fashion-mnist", PNGS)]) | DecodeMedia()
            return {"records": (decoded.frames | ScoreFrames(spec, ensemble=members)).records}
        return {os.path.basename(r.frame.source_uri): r for r in harness.run_collect(build)["records"]}
    agreeing = run([load_model_spec(exported[TFLITE])])
    assert all(dict(r.extra_scores)["ensemble_disagreement"] < 1e-6 for r in agreeing.values())
    disagreeing = run([load_model_spec(other_path)])
    other = keras.models.load_model(other_path, compile=False)
    for name, record in disagreeing.items():
        pixels = cv2.imread(harness.media("fashion-mnist", name), cv2.IMREAD_GRAYSCALE)
        theirs = other.predict(pixels[None, ..., None].astype(np.float32), verbose=0)[0]
        expected = uncertainty.ensemble_disagreement(np.stack([reference[name][1], theirs])[:, None, :])[0]
        assert dict(record.extra_scores)["ensemble_disagreement"] == pytest.approx(expected, abs=1e-4)
        np.testing.assert_allclose(record.probabilities, reference[name][1], atol=2e-4)  # still the model's own
    assert max(dict(r.extra_scores)["ensemble_disagreement"] for r in disagreeing.values()) > 1e-3


def test_keras_files_are_read_without_tensorflow_as_keras_loads_them(tmp_path):
    """The driver reads a plain .keras file's configuration (no TensorFlow import: the job starts
    in about a second); it must say what Keras itself says, and defer to Keras when unsure."""
    import keras
    from transforms.score import keras_models, model_base

    def loaded(path, layer=None):
        _, name, model = keras_models.load_embedding_classifier(path, layer)
        return tuple(model.inputs[0].shape[1:]), int(model.outputs[0].shape[-1]), name

    sequential = keras.Sequential([keras.Input((32, 24, 3)), keras.layers.Conv2D(4, 3),
                                   keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(7, name="feat"),
                                   keras.layers.Dense(5, activation="softmax")])
    sequential.save(str(tmp_path / "seq.keras"))
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    outer_in = keras.Input((8, 8, 1))
    nested = keras.Model(outer_in, keras.layers.Dense(2, activation="softmax")(inner(outer_in)))
    nested.save(str(tmp_path / "nested.keras"))
    default = model_base.default_model_path()
    for path, layer in ((default, None), (default, "dropout_2"), (str(tmp_path / "seq.keras"), None),
                        (str(tmp_path / "seq.keras"), "feat")):
        assert keras_models.keras_file_summary(path, layer) == loaded(path, layer), (path, layer)
    assert keras_models.keras_file_summary(str(tmp_path / "nested.keras")) is None  # Keras decides
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        keras_models.keras_file_summary(default, "nope")
    code = ("import sys; from transforms.score.handlers import load_model_spec; load_model_spec(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_worker_processes_share_the_cpus_between_their_interpreters(monkeypatch):
    """A local run with N worker processes gives each interpreter, TensorFlow pool and OpenMP
    pool CPUs // N threads for the run."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.mine.batch import WORKER_THREAD_ENVS, cpus_shared_between_workers
    from transforms.score.threads import INFERENCE_THREADS_ENV, inference_threads
    for name in (INFERENCE_THREADS_ENV,) + WORKER_THREAD_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert inference_threads() == 8
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=4"])
    with cpus_shared_between_workers(options):
        assert os.environ[INFERENCE_THREADS_ENV] == "2" and inference_threads() == 2
        assert [os.environ[name] for name in WORKER_THREAD_ENVS] == ["2", "2", "2"]
    assert INFERENCE_THREADS_ENV not in os.environ and inference_threads() == 8
    assert not set(WORKER_THREAD_ENVS) & set(os.environ)
    with cpus_shared_between_workers(PipelineOptions([])):  # one process: every CPU
        assert inference_threads() == 8 and "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv(INFERENCE_THREADS_ENV, "3")  # the user's values win
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with cpus_shared_between_workers(options):
        assert inference_threads() == 3 and os.environ["TF_NUM_INTRAOP_THREADS"] == "3"
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert "TF_NUM_INTRAOP_THREADS" not in os.environ


def test_a_process_pinned_to_one_cpu_gets_one_interpreter_thread():
    """``taskset``, a cpuset: the affinity mask counts, not the machine's CPU count."""
    import subprocess
    import sys
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from transforms.score.threads import inference_threads; print(inference_threads(), os.cpu_count())")
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEBEAM_INFERENCE_THREADS"}
    threads, cpus = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                   text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                                   ).stdout.split()
    assert threads == "1" and int(cpus) == os.cpu_count()


def test_dataflow_workers_with_one_sdk_process_per_vcpu_use_one_interpreter_thread(tmp_path, monkeypatch):
    """In a Dataflow SDK worker (options in PIPELINE_OPTIONS, as Beam's sdk_worker_main reads
    them) each of the VM's one-per-vCPU processes gets 1 thread; with one SDK process per VM, or
    outside Dataflow, every CPU; the environment variable wins over both."""
    import json
    from transforms.score.threads import INFERENCE_THREADS_ENV, inference_threads, worker_pipeline_options
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    dataflow = {"options": {"runner": "DataflowRunner", "experiments": ["use_runner_v2"], "project": "p"}}
    assert inference_threads({"PIPELINE_OPTIONS": json.dumps(dataflow)}) == 1
    one_process = {"options": dict(dataflow["options"], experiments=["no_use_multiple_sdk_containers"])}
    assert inference_threads({"PIPELINE_OPTIONS": json.dumps(one_process)}) == 8
    portable = {"beam:option:runner:v1": "DataflowRunner", "beam:option:experiments:v1": []}  # urn keys
    assert worker_pipeline_options({"PIPELINE_OPTIONS": json.dumps(portable)})["runner"] == "DataflowRunner"
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps(dataflow))
    assert inference_threads({"PIPELINE_OPTIONS_FILE": str(options_file)}) == 1
    local = {"options": {"runner": "FnApiRunner"}}
    assert inference_threads({"PIPELINE_OPTIONS": json.dumps(local)}) == 8
    assert inference_threads({}) == 8 and inference_threads({"PIPELINE_OPTIONS": "not json"}) == 8
    assert inference_threads({"PIPELINE_OPTIONS": json.dumps(dataflow), INFERENCE_THREADS_ENV: "3"}) == 3


if __name__ == "__main__":
    harness.main(__file__)

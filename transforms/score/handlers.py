"""Model handlers for Beam ``RunInference``: Keras/SavedModel, TFLite and ONNX Runtime.

Every handler has the same contract, so :class:`~transforms.score.ptransforms.ScoreFrames` and the tests treat
them alike: input ``float32`` arrays prepared by :func:`prepare_input` from the model's
:class:`Preprocessing`, output ``PredictionResult(example, ModelOutput(embedding, output,
samples))`` from ONE forward pass (plus ``T`` stochastic passes for MC dropout, Keras only)::

    spec = load_model_spec("gs://bucket/models/cnn.tflite")     # reads cnn.tflite.json
    handler = make_handler(spec)                                 # a Beam ModelHandler
    frames | beam.Map(lambda f: prepare_input(f.pixels, spec.preprocessing)) | RunInference(handler)

Preprocessing lives next to the model, in a JSON sidecar ``<model uri>.json`` (e.g.
``cnn.tflite.json``), so a frame is prepared the same way on every worker and in every tool::

    {"input_size": [224, 224], "colour": "RGB", "scale": 0.00392156862745098,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NHWC",
     "embedding_output": "embedding", "class_output": "probabilities", "model_output": "probabilities"}

Every key is optional. Without a sidecar (e.g. the bundled Keras model, which rescales inside
itself) the input size and channels come from the model's input shape and pixels go in as
float32 in [0, 255]. The pixel transform is ``(pixel * scale - mean) / std`` per channel.

Runtimes, chosen by the model URI: a directory holding ``saved_model.pb`` is a TensorFlow
SavedModel (loaded as ``keras.layers.TFSMLayer(path, call_endpoint="serve")``, as Beam's stock
handler cannot load Keras 3 exports), ``.tflite`` runs in LiteRT (``ai_edge_litert``), ``.onnx``
in ONNX Runtime (CPU), anything else (``.keras``, ``.h5``) in Keras.

Importing this module imports neither TensorFlow nor a runtime: each is imported where a model
is loaded, so the job's driver (option checks, ``--help``, Dataflow submission) starts in about
a second, and each worker process imports TensorFlow once, when it loads its model.
"""
import hashlib
import json
import os
import threading
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas.records import ModelVersion
from transforms.common.files import local_copy, open_binary
from transforms.score import pretrained

DEFAULT_MODEL_NAME = "fashion_mnist_cnn.keras"
METRICS_NAMESPACE = "activebeam.model"
PROBABILITIES = "probabilities"
LOGITS = "logits"
KERAS, SAVED_MODEL, TFLITE, ONNX = "keras", "saved_model", "tflite", "onnx"
RUNTIMES = (KERAS, SAVED_MODEL, TFLITE, ONNX)
COLOURS = ("RGB", "BGR", "GREY")
LAYOUTS = ("NHWC", "NCHW")
SIDECAR_SUFFIX = ".json"


def default_model_path() -> str:
    """Local path of the bundled default model (``transforms/score/models/fashion_mnist_cnn.keras``).

    Package data of :mod:`transforms.score`, found next to this module in each process, never
    through the working directory (a user's own ``models/`` folder cannot shadow it), so it also
    works on Dataflow workers that installed the project with ``--setup_file``.
    """
    return os.path.join(os.path.dirname(os.path.realpath(__file__)), "models", DEFAULT_MODEL_NAME)


#: Environment variable: TFLite interpreter threads per worker process (default: see
#: :func:`inference_threads`). The ``mine`` job sets it to ``CPUs // workers`` for a local
#: multi-process run, so that worker processes do not each start one thread per CPU.
INFERENCE_THREADS_ENV = "ACTIVEBEAM_INFERENCE_THREADS"

#: Dataflow's experiment that runs one SDK process per worker VM instead of one per vCPU.
ONE_SDK_PROCESS_EXPERIMENT = "no_use_multiple_sdk_containers"


def worker_pipeline_options(environ=None) -> dict:
    """The pipeline options a portable SDK worker was started with (``PIPELINE_OPTIONS`` or
    ``PIPELINE_OPTIONS_FILE``, as Beam's ``sdk_worker_main`` reads them), as a dict; ``{}`` in
    a process that is not such a worker or when they cannot be read."""
    # Beam's own parser of them (private in the pinned Beam; test_handlers covers both forms).
    from apache_beam.runners.worker.sdk_worker_main import _load_pipeline_options
    environ = os.environ if environ is None else environ
    raw = environ.get("PIPELINE_OPTIONS")
    try:
        if "PIPELINE_OPTIONS_FILE" in environ:
            with open(environ["PIPELINE_OPTIONS_FILE"]) as f:
                raw = f.read()
        options = _load_pipeline_options(raw or None)
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable, not JSON, not an object
        return {}
    return options if isinstance(options, dict) else {}


def inference_threads(environ=None) -> int:
    """Threads for a TFLite interpreter in this process.

    ``$ACTIVEBEAM_INFERENCE_THREADS`` if set to a positive integer; else 1 in a Dataflow worker
    that runs one SDK process per vCPU (Dataflow's default for Python: N processes with N
    threads each would put N^2 threads on N cores); else the CPU count (one process per
    machine: a local run, or Dataflow with ``--experiments=no_use_multiple_sdk_containers``).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(INFERENCE_THREADS_ENV, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    options = worker_pipeline_options(environ)
    experiments = options.get("experiments") or ()
    if "Dataflow" in str(options.get("runner") or "") and ONE_SDK_PROCESS_EXPERIMENT not in experiments:
        return 1
    return os.cpu_count() or 1

class Preprocessing(NamedTuple):
    """How a frame becomes a model input: the model's own declaration (its JSON sidecar).

    ``input_size`` is ``(height, width)`` in pixels; ``colour`` the channel order the model
    takes (``"RGB"``, ``"BGR"`` or ``"GREY"``, ITU-R BT.601 luma); the input is
    ``(pixel * scale - mean) / std`` as float32, per channel, with pixels in [0, 255];
    ``layout`` ``"NHWC"`` or ``"NCHW"``. ``embedding_output`` / ``class_output`` name the model
    outputs (layer or tensor names) holding the embedding and the class scores;
    ``model_output`` says whether the class scores are ``"probabilities"`` or ``"logits"``.
    """
    input_size: Tuple[int, int]
    colour: str = "RGB"
    scale: float = 1.0
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    layout: str = "NHWC"
    embedding_output: Optional[str] = None
    class_output: Optional[str] = None
    model_output: str = PROBABILITIES

    @property
    def channels(self) -> int:
        return 1 if self.colour == "GREY" else 3

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """Shape of one prepared input (without the batch axis), in the model's layout."""
        height, width = self.input_size
        if self.layout == "NCHW":
            return self.channels, height, width
        return height, width, self.channels

    def validate(self) -> "Preprocessing":
        """Returns ``self``; raises ``ValueError`` naming the key and the allowed values."""
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be [height, width] > 0, got {self.input_size}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {COLOURS}, got {self.colour!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.model_output not in (PROBABILITIES, LOGITS):
            raise ValueError(f"model_output must be 'probabilities' or 'logits', got {self.model_output!r}")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, self.channels):
                raise ValueError(f"{key} must have 1 or {self.channels} values, got {getattr(self, key)}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        return self


def read_preprocessing(uri: str) -> Optional[dict]:
    """The model's JSON sidecar ``<uri>.json`` as a dict, or ``None`` if there is none.

    Raises
    ------
    ValueError
        If the sidecar is not a JSON object or names unknown keys.
    """
    path = uri.rstrip("/") + SIDECAR_SUFFIX
    if not FileSystems.exists(path):
        return None
    with open_binary(path) as f:
        declared = json.loads(f.read().decode("utf-8"))
    if not isinstance(declared, dict):
        raise ValueError(f"{path}: the preprocessing sidecar must be a JSON object")
    unknown = set(declared) - set(Preprocessing._fields)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {list(Preprocessing._fields)}")
    return declared


def _preprocessing(declared: Optional[dict], input_shape: Sequence[Optional[int]], uri: str) -> Preprocessing:
    """Sidecar values over what the model's own input shape (without batch axis) says."""
    declared = dict(declared or {})
    layout = declared.get("layout", "NCHW" if len(input_shape) == 3 and input_shape[0] in (1, 3)
                          and input_shape[2] not in (1, 3) else "NHWC")
    if len(input_shape) != 3:
        raise ValueError(f"{uri}: the model input must be an image (3 axes besides the batch), got {input_shape}")
    channels, height, width = ((input_shape[0], input_shape[1], input_shape[2]) if layout == "NCHW"
                               else (input_shape[2], input_shape[0], input_shape[1]))
    if "input_size" not in declared and (height is None or width is None or height < 1 or width < 1):
        raise ValueError(f"{uri}: the model input has no fixed size {input_shape}: declare input_size "
                         f"in {uri}{SIDECAR_SUFFIX}")
    declared.setdefault("input_size", (height, width))
    declared.setdefault("colour", "GREY" if channels == 1 else "RGB")
    declared["layout"] = layout
    for key in ("input_size", "mean", "std"):
        if key in declared:
            declared[key] = tuple(declared[key])
    prep = Preprocessing(**declared).validate()
    if channels not in (None, -1) and channels > 0 and channels != prep.channels:
        raise ValueError(f"{uri}: colour {prep.colour} gives {prep.channels} channels, the model takes {channels}")
    return prep


def prepare_input(pixels: np.ndarray, preprocessing) -> np.ndarray:
    """Turns an RGB ``uint8 (H, W, 3)`` frame into the model input, as the model declares it.

    Parameters
    ----------
    pixels : ndarray of uint8, shape (H, W, 3), RGB
    preprocessing : Preprocessing, or an ``(h, w, c)`` tuple (float32 in [0, 255], NHWC)

    Returns
    -------
    ndarray of float32, shape ``preprocessing.input_shape``. Resizing uses area interpolation
    (``cv2.INTER_AREA``), grey is ITU-R BT.601 luma (``cv2.COLOR_RGB2GRAY``).

    Raises
    ------
    cv2.error or ValueError
        If ``pixels`` is not an RGB image.
    """
    import cv2
    if not isinstance(preprocessing, Preprocessing):
        height, width, channels = preprocessing
        preprocessing = Preprocessing((height, width), "GREY" if channels == 1 else "RGB")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {pixels.shape}")
    height, width = preprocessing.input_size
    image = pixels
    if preprocessing.colour == "GREY":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif preprocessing.colour == "BGR":
        image = image[..., ::-1]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    x = image.reshape(height, width, preprocessing.channels).astype(np.float32)
    if preprocessing.scale != 1.0:
        x *= np.float32(preprocessing.scale)
    if any(preprocessing.mean) or any(s != 1.0 for s in preprocessing.std):
        x = (x - np.asarray(preprocessing.mean, np.float32)) / np.asarray(preprocessing.std, np.float32)
    if preprocessing.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
    return x


class ModelSpec(NamedTuple):
    """What the pipeline needs to know about a model before running it (read once on the driver).

    ``uri`` is ``None`` for the bundled default model; ``version`` identifies the weights;
    ``input_shape`` is ``(height, width, channels)`` (kept for existing callers; the full
    declaration is ``preprocessing``); ``mc_passes`` is the number ``T`` of extra stochastic
    forward passes with dropout active (0: none; Keras models only).
    """
    uri: Optional[str]
    version: ModelVersion
    input_shape: Tuple[int, int, int]
    num_classes: int
    model_output: str
    runtime: str = KERAS
    preprocessing: Optional[Preprocessing] = None
    mc_passes: int = 0

    def prep(self) -> Preprocessing:
        """The preprocessing to apply (built from ``input_shape`` for hand-made specs)."""
        if self.preprocessing is not None and tuple(self.preprocessing.input_size) == tuple(self.input_shape[:2]):
            return self.preprocessing
        height, width, channels = self.input_shape
        base = self.preprocessing or Preprocessing((height, width))
        return base._replace(input_size=(height, width), colour="GREY" if channels == 1 else
                             ("RGB" if base.colour == "GREY" else base.colour))


class ModelOutput(NamedTuple):
    """One example's result of a handler: ``embedding`` float32 ``(D,)``, class scores
    ``output`` float32 ``(C,)`` (probabilities or logits, as the model declares) and, with MC
    dropout, ``samples`` float32 ``(T, C)`` class scores of the stochastic passes (else ``None``);
    with :class:`ObjectCropsHandler`, ``objects`` float32 ``(K, D)``: the embeddings of the
    frame's K object crops (else ``None``)."""
    embedding: np.ndarray
    output: np.ndarray
    samples: Optional[np.ndarray] = None
    objects: Optional[np.ndarray] = None


def runtime_of(uri: str) -> str:
    """The runtime that runs the model at ``uri``, from its name (see the module docstring)."""
    lower = uri.rstrip("/").lower()
    if lower.endswith(".tflite"):
        return TFLITE
    if lower.endswith(".onnx"):
        return ONNX
    if FileSystems.exists(FileSystems.join(uri.rstrip("/"), "saved_model.pb")):
        return SAVED_MODEL
    return KERAS


def model_version_id(uri: str) -> str:
    """The ``version`` of the model at ``uri``, 16 hex digits.

    A model that :mod:`transforms.score.pretrained.convert` wrote (listed, with its sha256, in the
    ``manifest.json`` beside it) is versioned by its conversion recipe, the same on every machine
    (:func:`transforms.score.pretrained.version_in_manifest`); any other model by the first 16 hex
    digits of the sha256 of its bytes (:func:`file_digest`), so a retrained model is a new version.
    """
    if not FileSystems.exists(FileSystems.join(uri.rstrip("/"), "saved_model.pb")):
        directory, name = FileSystems.split(uri)
        manifest_path = FileSystems.join(directory, pretrained.MANIFEST_FILE)
        try:
            with open_binary(manifest_path) as f:
                manifest = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):  # no manifest (a user's model), or not ours
            manifest = None
        if manifest is not None:
            digest = hashlib.sha256()
            with open_binary(uri) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            version = pretrained.version_in_manifest(manifest, name, digest.hexdigest())
            if version:
                return version
    return file_digest(uri)


def file_digest(uri: str) -> str:
    """First 16 hex digits of the sha256 of the model's bytes (of every file, for a directory)."""
    return _sha256(uri)[:16]


def _sha256(uri: str) -> str:
    digest = hashlib.sha256()
    if FileSystems.exists(FileSystems.join(uri.rstrip("/"), "saved_model.pb")):
        paths = sorted(m.path for m in FileSystems.match([FileSystems.join(uri.rstrip("/"), "**")])[0].metadata_list)
    else:
        paths = [uri]
    for path in paths:
        digest.update(os.path.relpath(path, uri).encode("utf-8") + b"\0")
        with open_binary(path) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --- Keras and SavedModel -------------------------------------------------------------------

def _resolve_embedding_layer(model, embedding_layer: Optional[str]):
    if embedding_layer:
        try:
            return model.get_layer(embedding_layer)
        except ValueError as e:
            names = ", ".join(layer.name for layer in model.layers)
            raise ValueError(f"model has no layer named {embedding_layer!r}; its layers: {names}") from e
    names = [layer.name for layer in model.layers]
    if "embedding" in names:
        return model.get_layer("embedding")
    if len(model.layers) < 2:
        raise ValueError("model has a single layer: pass embedding_layer explicitly")
    return model.layers[-2]


def load_embedding_classifier(uri: str, embedding_layer: Optional[str] = None):
    """Loads a Keras model and returns ``(two_output_model, embedding_layer_name, base_model)``.

    ``two_output_model(x)`` returns ``[embedding (N, D), output (N, C)]`` from one forward pass.

    Raises
    ------
    ValueError
        If the model does not have one image input ``(H, W, 1|3)`` and one 1-d output, or the
        embedding layer does not exist.
    """
    import keras
    with local_copy(uri) as local:
        model = keras.models.load_model(local, compile=False)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{uri}: the model must have one input and one output, "
                         f"has {len(model.inputs)} and {len(model.outputs)}")
    input_shape = tuple(model.inputs[0].shape[1:])
    if len(input_shape) != 3 or input_shape[2] not in (1, 3) or None in input_shape:
        raise ValueError(f"{uri}: the model input must be (H, W, 1) or (H, W, 3) with fixed H and W, "
                         f"got {input_shape}")
    if len(model.outputs[0].shape) != 2:
        raise ValueError(f"{uri}: the model output must be (batch, num_classes), got {model.outputs[0].shape}")
    layer = _resolve_embedding_layer(model, embedding_layer)
    two_output = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    return two_output, layer.name, model


class _SavedModel:
    """A SavedModel's ``serve`` endpoint (Keras 3 ``model.export``) as a two-output callable.

    The endpoint must return the embedding and the class scores: a list ``[embedding, output]``
    or a dict from which ``embedding_output`` / ``class_output`` pick (default: sorted keys).
    """

    def __init__(self, path: str, prep: Preprocessing):
        import keras
        self._layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
        self._prep = prep

    def __call__(self, inputs, training=False):
        outputs = self._layer(list(inputs))
        if isinstance(outputs, dict):
            keys = sorted(outputs)
            embedding_key = self._prep.embedding_output or keys[0]
            class_key = self._prep.class_output or [k for k in keys if k != embedding_key][0]
            return outputs[embedding_key], outputs[class_key]
        if isinstance(outputs, (list, tuple)) and len(outputs) == 2:
            return outputs[0], outputs[1]
        raise ValueError("the SavedModel's serve endpoint must return [embedding, class scores]")


def mc_dropout_samples(model, x: np.ndarray, passes: int) -> np.ndarray:
    """Class scores of ``passes`` stochastic forward passes with dropout active (MC dropout).

    The batch is repeated ``passes`` times and run as ONE call with ``training=True``: each row
    draws its own dropout mask, so the rows are independent samples, and one large call is
    cheaper than ``passes`` small ones on CPU.

    Parameters
    ----------
    model : two-output Keras model ``[embedding, class scores]``
    x : ndarray of float32, shape (B, ...) prepared inputs
    passes : int, T >= 1

    Returns
    -------
    ndarray of float32, shape (B, T, C).

    References
    ----------
    Gal & Ghahramani (2016), Dropout as a Bayesian Approximation, ICML.
    """
    repeated = np.concatenate([x] * passes, axis=0)
    scores = np.asarray(model([repeated], training=True)[1])
    return scores.reshape(passes, len(x), -1).transpose(1, 0, 2)


def _keras_inference(model, batch, inference_args, model_id=None):
    """One deterministic forward pass with two outputs per example, plus ``mc_passes`` passes
    with dropout active (``training=True``)."""
    args = dict(inference_args or {})
    mc_passes = int(args.pop("mc_passes", 0))
    x = np.stack(batch, axis=0)
    embeddings, outputs = model([x], training=False, **args)
    embeddings, outputs = np.asarray(embeddings), np.asarray(outputs)
    samples = [None] * len(batch)
    if mc_passes:
        samples = mc_dropout_samples(model, x, mc_passes)
    return [PredictionResult(example, ModelOutput(e, o, s), model_id)
            for example, e, o, s in zip(batch, embeddings, outputs, samples)]


class _ArrayHandler(ModelHandler):
    """What the Keras and runtime handlers share: batches of ``float32`` arrays bounded by
    ``min_batch_size``/``max_batch_size`` (and any other ``BatchElements`` argument), sized by their
    bytes, metrics under :data:`METRICS_NAMESPACE`."""

    def __init__(self, min_batch_size: int, max_batch_size: int, **batch_kwargs):
        super().__init__()
        self._batching = dict(min_batch_size=min_batch_size, max_batch_size=max_batch_size, **batch_kwargs)

    def batch_elements_kwargs(self):
        return self._batching

    def get_num_bytes(self, batch) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class KerasHandler(_ArrayHandler):
    """Beam ``ModelHandler`` loading a Keras model (``.keras``, ``.h5``) as an (embedding, class
    scores) model, or a SavedModel directory through ``keras.layers.TFSMLayer``.

    ``model_uri`` ``None`` loads the bundled default model, resolved on each worker. With
    ``mc_passes`` = T > 0 each batch also runs T passes with dropout active (Gal & Ghahramani
    2016, MC dropout); SavedModels have no training mode, so T must be 0 for them.
    """

    def __init__(self, model_uri: Optional[str], embedding_layer: Optional[str] = None,
                 min_batch_size: int = 16, max_batch_size: int = 64, mc_passes: int = 0,
                 preprocessing: Optional[Preprocessing] = None, **batch_kwargs):
        super().__init__(min_batch_size, max_batch_size, **batch_kwargs)
        self._uri = model_uri
        self._embedding_layer = embedding_layer
        self._mc_passes = mc_passes
        self._prep = preprocessing

    def load_model(self):
        uri = self._uri or default_model_path()
        if runtime_of(uri) == SAVED_MODEL:
            with local_copy(uri) as local:
                return _SavedModel(local, self._prep)
        model, _, _ = load_embedding_classifier(uri, self._embedding_layer)
        return model

    def run_inference(self, batch, model, inference_args=None):
        args = dict(inference_args or {})
        if self._mc_passes:
            args["mc_passes"] = self._mc_passes
        return _keras_inference(model, batch, args, self._uri)


# --- TFLite and ONNX Runtime ----------------------------------------------------------------

class _Runtime:
    """A loaded TFLite interpreter or ONNX Runtime session behind one ``run(x) -> (emb, out)``.

    A lock serialises calls: Beam shares one model per process between its threads, and a
    TFLite interpreter is not thread-safe.
    """

    def __init__(self, path: str, runtime: str, prep: Preprocessing):
        self._lock = threading.Lock()
        self._runtime = runtime
        if runtime == TFLITE:
            from transforms.score.litert import load_interpreter
            self._interpreter = load_interpreter(path, inference_threads())
            self._input = self._interpreter.get_input_details()[0]
            outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
            self._batch = None
        else:
            import onnxruntime
            options = onnxruntime.SessionOptions()
            self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
            outputs = {o.name: o for o in self._session.get_outputs()}
        self.embedding_name, self.class_name = _pick_outputs(list(outputs), prep, path)
        self._outputs = outputs

    def run(self, x: np.ndarray):
        with self._lock:
            if self._runtime == ONNX:
                embedding, output = self._session.run([self.embedding_name, self.class_name], {self._input: x})
                return embedding, output
            if self._batch != len(x):
                self._interpreter.resize_tensor_input(self._input["index"], list(x.shape))
                self._interpreter.allocate_tensors()
                self._batch = len(x)
            self._interpreter.set_tensor(self._input["index"], x)
            self._interpreter.invoke()
            return (self._interpreter.get_tensor(self._outputs[self.embedding_name]["index"]).copy(),
                    self._interpreter.get_tensor(self._outputs[self.class_name]["index"]).copy())


def _pick_outputs(names, prep: Preprocessing, path: str):
    """``(embedding output name, class output name)`` from the sidecar's names; with two outputs
    and no names, the one whose name contains "embedding" (else the first in sorted order, e.g.
    TFLite's ``StatefulPartitionedCall:0`` for a Keras model with outputs ``[embedding,
    probabilities]``) is the embedding."""
    for key in ("embedding_output", "class_output"):
        if getattr(prep, key) and getattr(prep, key) not in names:
            raise ValueError(f"{path}: {key} {getattr(prep, key)!r} is not an output; outputs: {names}")
    if prep.embedding_output and prep.class_output:
        return prep.embedding_output, prep.class_output
    if len(names) != 2 and not (prep.embedding_output and prep.class_output):
        raise ValueError(f"{path}: the model has outputs {names}; declare embedding_output and "
                         f"class_output in {path}{SIDECAR_SUFFIX}")
    embedding = prep.embedding_output or next((n for n in names if "embedding" in n.lower()), None)
    if embedding is None:
        embedding = sorted(n for n in names if n != prep.class_output)[0]
    return embedding, prep.class_output or next(n for n in names if n != embedding)


class RuntimeHandler(_ArrayHandler):
    """Beam ``ModelHandler`` for ``.tflite`` (LiteRT interpreter) and ``.onnx`` (ONNX Runtime,
    CPU) models with an embedding output and a class-score output (named in the sidecar).

    Inference input: ``float32`` arrays of ``preprocessing.input_shape``; output
    ``PredictionResult(example, ModelOutput(embedding, output))``.
    """

    def __init__(self, model_uri: str, runtime: str, preprocessing: Preprocessing,
                 min_batch_size: int = 16, max_batch_size: int = 64, **batch_kwargs):
        super().__init__(min_batch_size, max_batch_size, **batch_kwargs)
        if runtime not in (TFLITE, ONNX):
            raise ValueError(f"runtime must be 'tflite' or 'onnx', got {runtime!r}")
        self._uri = model_uri
        self._runtime = runtime
        self._prep = preprocessing

    def load_model(self) -> _Runtime:
        with local_copy(self._uri) as local:
            return _Runtime(local, self._runtime, self._prep)

    def run_inference(self, batch, model: _Runtime, inference_args=None):
        embeddings, outputs = model.run(np.stack(batch, axis=0).astype(np.float32, copy=False))
        return [PredictionResult(x, ModelOutput(np.asarray(e).reshape(-1), np.asarray(o).reshape(-1)), self._uri)
                for x, e, o in zip(batch, embeddings, outputs)]


# --- Specs and handlers ---------------------------------------------------------------------

def keras_file_summary(uri: str, embedding_layer: Optional[str] = None
                       ) -> Optional[Tuple[Tuple[Optional[int], ...], int, str]]:
    """``(input shape without batch, num_classes, embedding layer)`` of a Keras 3 ``.keras`` file
    read from its ``config.json``, without TensorFlow; ``None`` when the file is not a plain
    one-input, one-``Dense``-output ``Functional`` or ``Sequential`` model this reading is sure of
    (the caller then loads the model). The same answers as :func:`load_embedding_classifier`.

    Raises
    ------
    ValueError
        If ``embedding_layer`` names no layer of the model.
    """
    import zipfile
    if not uri.lower().endswith(".keras"):
        return None
    try:
        with open_binary(uri) as f, zipfile.ZipFile(f) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if config.get("class_name") not in ("Functional", "Sequential"):
        return None
    layers = config.get("config", {}).get("layers") or []
    names = [layer.get("config", {}).get("name") for layer in layers]
    if len(layers) < 2 or layers[0].get("class_name") != "InputLayer" or None in names:
        return None
    if config["class_name"] == "Functional":
        # One node: ``[name, 0, 0]``, or ``[[name, 0, 0]]`` in the list form.
        ends = [config["config"].get(key) for key in ("input_layers", "output_layers")]
        ends = [end[0] if end and isinstance(end[0], list) and len(end) == 1 else end for end in ends]
        if ends != [[names[0], 0, 0], [names[-1], 0, 0]]:
            return None
    batch_shape = layers[0]["config"].get("batch_shape")
    last = layers[-1]
    units = last.get("config", {}).get("units")
    if (not batch_shape or len(batch_shape) != 4 or last.get("class_name") != "Dense"
            or not isinstance(units, int) or any(layer.get("class_name") in ("Functional", "Sequential",
                                                                               "Model") for layer in layers)):
        return None
    if embedding_layer:
        if embedding_layer not in names:
            raise ValueError(f"model has no layer named {embedding_layer!r}; its layers: {', '.join(names)}")
        name = embedding_layer
    else:
        name = "embedding" if "embedding" in names else names[-2]
    return tuple(batch_shape[1:]), units, name


def _inspect(uri: str, runtime: str, declared: Optional[dict], embedding_layer: Optional[str]):
    """Reads the model once; returns ``(preprocessing, num_classes, embedding name)``. A plain
    ``.keras`` file is read from its configuration (no TensorFlow on the driver); other models
    are loaded."""
    summary = keras_file_summary(uri, embedding_layer) if runtime == KERAS else None
    if summary:
        input_shape, num_classes, layer_name = summary
        if None in input_shape or input_shape[2] not in (1, 3):
            raise ValueError(f"{uri}: the model input must be (H, W, 1) or (H, W, 3) with fixed H "
                             f"and W, got {input_shape}")
        return _preprocessing(declared, input_shape, uri), num_classes, layer_name
    if runtime == KERAS:
        _, layer_name, model = load_embedding_classifier(uri, embedding_layer)
        prep = _preprocessing(declared, tuple(model.inputs[0].shape[1:]), uri)
        return prep, int(model.outputs[0].shape[-1]), layer_name
    if runtime == SAVED_MODEL:
        # A SavedModel's signature is not inspected: its sidecar must declare input_size.
        prep = _preprocessing(declared, (None, None, None), uri)
        with local_copy(uri) as local:
            _, output = _SavedModel(local, prep)([np.zeros((1,) + prep.input_shape, np.float32)])
        return prep, int(np.asarray(output).shape[-1]), prep.embedding_output or "output_0"
    with local_copy(uri) as local:
        if runtime == TFLITE:
            from ai_edge_litert.interpreter import Interpreter
            shape = tuple(int(d) for d in Interpreter(model_path=local).get_input_details()[0]["shape"][1:])
        else:
            import onnxruntime
            session = onnxruntime.InferenceSession(local, providers=["CPUExecutionProvider"])
            shape = tuple(d if isinstance(d, int) else None for d in session.get_inputs()[0].shape[1:])
        prep = _preprocessing(declared, shape, uri)
        loaded = _Runtime(local, runtime, prep)
        _, output = loaded.run(np.zeros((1,) + prep.input_shape, np.float32))
    return prep, int(np.asarray(output).shape[-1]), loaded.embedding_name


def load_model_spec(uri: Optional[str] = None, embedding_layer: Optional[str] = None,
                    model_output: Optional[str] = None, mc_passes: int = 0) -> ModelSpec:
    """Reads a model once (on the driver) to validate it and fix its version and preprocessing.

    Parameters
    ----------
    uri : str, optional
        Path or any Beam filesystem URI of a model (``.keras``, ``.h5``, SavedModel directory,
        ``.tflite``, ``.onnx``); ``None`` for the bundled default.
    embedding_layer : str, optional
        Keras layer whose output is the embedding (default: ``embedding``, else the penultimate).
    model_output : {"probabilities", "logits"}, optional
        What the class output holds; overrides the sidecar (default: probabilities).
    mc_passes : int
        ``T`` stochastic passes with dropout for BALD and co. (Keras ``.keras``/``.h5`` only).

    Raises
    ------
    ValueError
        For an invalid ``model_output``, ``mc_passes`` < 0 or with a runtime without training
        mode, an invalid sidecar, or a model that does not meet the handler contract.
    FileNotFoundError
        If nothing exists at ``uri``.
    """
    if model_output not in (None, PROBABILITIES, LOGITS):
        raise ValueError(f"model_output must be 'probabilities' or 'logits', got {model_output!r}")
    path = uri or default_model_path()
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    runtime = runtime_of(path)
    if mc_passes < 0 or (mc_passes and runtime != KERAS):
        raise ValueError(f"mc_passes must be >= 0, and 0 for a {runtime} model (dropout needs Keras "
                         f"training mode), got {mc_passes}")
    declared = read_preprocessing(path)
    if model_output:
        declared = dict(declared or {}, model_output=model_output)
    prep, num_classes, embedding_name = _inspect(path, runtime, declared, embedding_layer)
    name = os.path.basename(path.rstrip("/"))
    name = name if runtime == SAVED_MODEL else os.path.splitext(name)[0]
    height, width = prep.input_size
    return ModelSpec(
        uri=uri,
        version=ModelVersion(name=name, version=model_version_id(path), embedding_layer=embedding_name),
        input_shape=(height, width, prep.channels),
        num_classes=num_classes,
        model_output=prep.model_output,
        runtime=runtime,
        preprocessing=prep,
        mc_passes=mc_passes)


def make_handler(spec: ModelSpec, min_batch_size: int = 16, max_batch_size: int = 64,
                 **batch_kwargs) -> ModelHandler:
    """The Beam ``ModelHandler`` for ``spec``'s runtime (unkeyed; wrap in ``KeyedModelHandler``).

    ``min_batch_size``/``max_batch_size`` bound Beam's ``BatchElements``, which picks the size
    in between by measuring batch latency (Beam's adaptive batching).
    """
    if spec.runtime in (TFLITE, ONNX):
        return RuntimeHandler(spec.uri, spec.runtime, spec.prep(), min_batch_size, max_batch_size,
                              **batch_kwargs)
    embedding_layer = spec.version.embedding_layer if spec.runtime == KERAS else None
    return KerasHandler(spec.uri, embedding_layer, min_batch_size, max_batch_size,
                        mc_passes=spec.mc_passes, preprocessing=spec.preprocessing, **batch_kwargs)



class ObjectCropsHandler(ModelHandler):
    """Embeds a frame and the crops of its detected objects with the same model, in one call.

    Wraps the handler of a model (:func:`make_handler`). Each example is a float32 array
    ``(1 + K, *input_shape)``: the frame's prepared input, then its K object crops prepared the
    same way; the rows of a whole batch go through the model at once. Output per example:
    the frame's :class:`ModelOutput` with ``objects`` = the crops' embeddings ``(K, D)``.
    """

    def __init__(self, inner: ModelHandler):
        super().__init__()
        self._inner = inner

    def load_model(self):
        return self._inner.load_model()

    def run_inference(self, batch, model, inference_args=None):
        rows = [row for example in batch for row in example]
        results = self._inner.run_inference(rows, model, inference_args)
        out, start = [], 0
        for example in batch:
            frame = results[start].inference
            crops = [np.asarray(r.inference.embedding, np.float32).reshape(-1)
                     for r in results[start + 1:start + len(example)]]
            objects = np.stack(crops) if crops else np.zeros((0, np.asarray(frame.embedding).size), np.float32)
            out.append(PredictionResult(example, frame._replace(objects=objects), results[start].model_id))
            start += len(example)
        return out

    def batch_elements_kwargs(self):
        return self._inner.batch_elements_kwargs()

    def get_num_bytes(self, batch) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return self._inner.get_metrics_namespace()

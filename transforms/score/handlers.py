"""Model specs and the handler factory for Beam ``RunInference``: Keras/SavedModel, TFLite and ONNX Runtime.

This module reads a model once on the driver (:func:`load_model_spec`: runtime, version,
preprocessing) and picks its handler (:func:`make_handler`). The parts, by concern:
:mod:`.preprocessing` (the sidecar and :func:`~transforms.score.preprocessing.prepare_input`),
:mod:`.keras_models` (Keras, SavedModel, MC dropout), :mod:`.runtimes` (TFLite, ONNX Runtime),
:mod:`.crops` (object crops), :mod:`.threads` (interpreter threads), :mod:`.model_base` (what
every handler shares).

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
is loaded, so the job's driver (option checks, ``--help``, Dataflow submission) starts without
TensorFlow (docs/timings.md), and each worker process imports TensorFlow once, when it loads its model.
"""
import hashlib
import json
import os
from typing import NamedTuple, Optional, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from schemas.records import ModelVersion
from transforms.common.files import local_copy, open_binary
from transforms.score import pretrained
from transforms.score.keras_models import KerasHandler, SavedModelEndpoint, keras_file_summary, load_embedding_classifier
from transforms.score.model_base import (
    DEFAULT_MODEL_CLASS_NAMES, KERAS, ONNX, SAVED_MODEL, TFLITE, default_model_path, runtime_of)
from transforms.score.preprocessing import (
    CLASS_NAMES_KEY, LOGITS, PROBABILITIES, SIDECAR_SUFFIX, Preprocessing, preprocessing_from_shape, read_preprocessing)
from transforms.score.runtimes import RuntimeHandler, RuntimeSession

__all__ = ["ModelSpec", "load_model_spec", "make_handler", "model_version_id", "file_digest", "class_names_of"]


class ModelSpec(NamedTuple):
    """What the pipeline needs to know about a model before running it (read once on the driver).

    ``uri`` is ``None`` for the bundled default model; ``version`` identifies the weights;
    ``input_shape`` is ``(height, width, channels)`` (kept for existing callers; the full
    declaration is ``preprocessing``); ``mc_passes`` is the number ``T`` of extra stochastic
    forward passes with dropout active (0: none; Keras models only). ``class_names``: the name
    of each class output, in order (:func:`class_names_of`; empty when the model declares none).
    """
    uri: Optional[str]
    version: ModelVersion
    input_shape: Tuple[int, int, int]
    num_classes: int
    model_output: str
    runtime: str = KERAS
    preprocessing: Optional[Preprocessing] = None
    mc_passes: int = 0
    class_names: Tuple[str, ...] = ()

    def class_name(self, index: int) -> Optional[str]:
        """Name of class ``index`` (``predicted_label``), ``None`` without names or out of range."""
        return self.class_names[index] if 0 <= index < len(self.class_names) else None

    def prep(self) -> Preprocessing:
        """The preprocessing to apply (built from ``input_shape`` for hand-made specs)."""
        if self.preprocessing is not None and tuple(self.preprocessing.input_size) == tuple(self.input_shape[:2]):
            return self.preprocessing
        height, width, channels = self.input_shape
        base = self.preprocessing or Preprocessing((height, width))
        return base._replace(input_size=(height, width), colour="GREY" if channels == 1 else
                             ("RGB" if base.colour == "GREY" else base.colour))


def model_version_id(uri: str) -> str:
    """The ``version`` of the model at ``uri``, 16 hex digits.

    A model that :mod:`transforms.score.pretrained.convert` wrote (listed, with its sha256, in the
    ``manifest.json`` beside it) is versioned by its conversion recipe, the same on every machine
    (:func:`transforms.score.pretrained.version_in_manifest`); any other model by the first 16 hex
    digits of the sha256 of its bytes (:func:`file_digest`), so a retrained model is a new version,
    combined with its JSON sidecar's bytes when it has one (``<uri>.json``: preprocessing, class
    names, a detector's output layout and thresholds change what the model's records say, so a
    changed sidecar is a new version too).
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
    version = file_digest(uri)
    sidecar = uri.rstrip("/") + SIDECAR_SUFFIX
    if FileSystems.exists(sidecar):
        with open_binary(sidecar) as f:
            version = hashlib.sha256(version.encode("ascii") + b"\0" + f.read()).hexdigest()[:16]
    return version


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
        return preprocessing_from_shape(declared, input_shape, uri), num_classes, layer_name
    if runtime == KERAS:
        _, layer_name, model = load_embedding_classifier(uri, embedding_layer)
        prep = preprocessing_from_shape(declared, tuple(model.inputs[0].shape[1:]), uri)
        return prep, int(model.outputs[0].shape[-1]), layer_name
    if runtime == SAVED_MODEL:
        # A SavedModel's signature is not inspected: its sidecar must declare input_size.
        prep = preprocessing_from_shape(declared, (None, None, None), uri)
        with local_copy(uri) as local:
            _, output = SavedModelEndpoint(local, prep)([np.zeros((1,) + prep.input_shape, np.float32)])
        return prep, int(np.asarray(output).shape[-1]), prep.embedding_output or "output_0"
    with local_copy(uri) as local:
        if runtime == TFLITE:
            from ai_edge_litert.interpreter import Interpreter
            shape = tuple(int(d) for d in Interpreter(model_path=local).get_input_details()[0]["shape"][1:])
        else:
            import onnxruntime
            session = onnxruntime.InferenceSession(local, providers=["CPUExecutionProvider"])
            shape = tuple(d if isinstance(d, int) else None for d in session.get_inputs()[0].shape[1:])
        prep = preprocessing_from_shape(declared, shape, uri)
        loaded = RuntimeSession(local, runtime, prep)
        _, output = loaded.run(np.zeros((1,) + prep.input_shape, np.float32))
    return prep, int(np.asarray(output).shape[-1]), loaded.embedding_name


def class_names_of(uri: Optional[str], name: str, declared: Optional[list], num_classes: int) -> Tuple[str, ...]:
    """The names of a model's ``num_classes`` class outputs, in order: the sidecar's
    ``class_names`` (``declared``), else the ImageNet names of the converted default backbone
    (:func:`transforms.score.pretrained.class_names`), else the Fashion-MNIST names of the
    bundled model (``uri`` ``None``), else ``()``.

    Raises
    ------
    ValueError
        If the sidecar declares a number of names other than ``num_classes``.
    """
    if declared is not None:
        if len(declared) != num_classes:
            raise ValueError(f"{uri}{SIDECAR_SUFFIX}: {CLASS_NAMES_KEY} has {len(declared)} names, "
                             f"the model has {num_classes} class outputs")
        return tuple(declared)
    names = pretrained.class_names(name) or (DEFAULT_MODEL_CLASS_NAMES if uri is None else ())
    return tuple(names) if len(names) == num_classes else ()


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
    names = (declared or {}).pop(CLASS_NAMES_KEY, None)
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
        mc_passes=mc_passes,
        class_names=class_names_of(uri, name, names, num_classes))


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

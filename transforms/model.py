"""Embeddings and class probabilities from one forward pass, through Beam ``RunInference``.

``ScoreFrames`` takes decoded frames, prepares each as the model expects (resize and colour
conversion, in the same fused step as decoding so pixels never cross a shuffle), runs a Keras
model through Beam's TensorFlow model handler, and emits :class:`~schemas.records.FrameRecord`
with the embedding, probabilities and uncertainty scores::

    model = load_model_spec("models/fashion_mnist_cnn.keras")
    scored = frames | ScoreFrames(model)
    scored.records        # PCollection[FrameRecord]
    scored.dead_letters   # PCollection[DeadLetter] (stages ``preprocess`` and ``inference``)

Model contract: a Keras 3 model (``.keras`` or ``.h5``, local or any Beam filesystem such as
``gs://``) with one image input of shape ``(H, W, C)``, ``C`` = 1 (grey) or 3 (RGB), taking
float32 pixel values in [0, 255] (the model does its own scaling, e.g. a ``Rescaling`` layer), and
one output of class probabilities ``(num_classes,)`` (or logits, with ``model_output="logits"``).
The embedding is the output of the layer named ``embedding_layer`` (default: the layer named
``embedding`` if there is one, else the penultimate layer).
"""
import hashlib
import os
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

from schemas import records
from schemas.records import DeadLetter, FrameMetadata, FrameRecord, ModelVersion
from transforms import uncertainty
from transforms.files import local_copy

DEFAULT_MODEL_NAME = "fashion_mnist_cnn.keras"
_NAMESPACE = "activebeam.model"
DEAD_LETTER = "dead_letter"
PROBABILITIES = "probabilities"
LOGITS = "logits"


def default_model_path() -> str:
    """Local path of the bundled default model (``models/fashion_mnist_cnn.keras``).

    Resolved in each process from the installed ``models`` package, so it also works on
    Dataflow workers that installed the project with ``--setup_file``.
    """
    import models
    return os.path.join(os.path.dirname(os.path.realpath(models.__file__)), DEFAULT_MODEL_NAME)


class ModelSpec(NamedTuple):
    """What the pipeline needs to know about a model before running it.

    ``uri`` is ``None`` for the bundled default model; ``input_shape`` is
    ``(height, width, channels)``; ``version`` identifies the weights.
    """
    uri: Optional[str]
    version: ModelVersion
    input_shape: Tuple[int, int, int]
    num_classes: int
    model_output: str


def _file_digest(uri: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


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


def load_model_spec(uri: Optional[str] = None, embedding_layer: Optional[str] = None,
                    model_output: str = PROBABILITIES) -> ModelSpec:
    """Reads a model once (on the driver) to validate it and fix its version and input shape.

    ``uri``: path or any Beam filesystem URI of a Keras model; ``None`` for the bundled default.

    Raises
    ------
    ValueError
        If ``model_output`` is not ``"probabilities"`` or ``"logits"``, or the model does not meet
        the contract in this module's docstring.
    FileNotFoundError
        If nothing exists at ``uri``.
    """
    if model_output not in (PROBABILITIES, LOGITS):
        raise ValueError(f"model_output must be 'probabilities' or 'logits', got {model_output!r}")
    path = uri or default_model_path()
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    _, layer_name, model = load_embedding_classifier(path, embedding_layer)
    name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return ModelSpec(
        uri=uri,
        version=ModelVersion(name=name, version=_file_digest(path), embedding_layer=layer_name),
        input_shape=tuple(int(d) for d in model.inputs[0].shape[1:]),
        num_classes=int(model.outputs[0].shape[-1]),
        model_output=model_output)


def prepare_input(pixels: np.ndarray, input_shape: Tuple[int, int, int]) -> np.ndarray:
    """Turns an RGB ``uint8 (H, W, 3)`` frame into the model input ``float32 (h, w, c)`` in [0, 255].

    Resizes with area interpolation (``cv2.INTER_AREA``) and converts to grey when ``c == 1``
    (ITU-R BT.601 luma, ``cv2.COLOR_RGB2GRAY``).
    """
    import cv2
    height, width, channels = input_shape
    image = pixels
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image.reshape(height, width, channels).astype(np.float32)


def _embed_and_classify(model, batch, inference_args, model_id=None):
    """TFModelHandlerNumpy inference function: one forward pass, two outputs per example."""
    embeddings, outputs = model([np.stack(batch, axis=0)], training=False, **(inference_args or {}))
    embeddings, outputs = np.asarray(embeddings), np.asarray(outputs)
    return [PredictionResult(x, (e, o), model_id) for x, e, o in zip(batch, embeddings, outputs)]


class EmbeddingClassifierHandler(TFModelHandlerNumpy):
    """Beam's TensorFlow numpy handler, loading a Keras model as an (embedding, output) model.

    ``model_uri`` ``None`` loads the bundled default model, resolved on each worker.

    Inference input: ``float32 (h, w, c)`` arrays from :func:`prepare_input`; inference output:
    ``PredictionResult(example, (embedding (D,), output (C,)))``.
    """

    def __init__(self, model_uri: Optional[str], embedding_layer: Optional[str] = None,
                 min_batch_size: int = 16, max_batch_size: int = 64):
        super().__init__(model_uri or DEFAULT_MODEL_NAME, inference_fn=_embed_and_classify,
                         min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._uri = model_uri
        self._embedding_layer = embedding_layer

    def load_model(self):
        model, _, _ = load_embedding_classifier(self._uri or default_model_path(), self._embedding_layer)
        return model

    def get_metrics_namespace(self) -> str:
        return _NAMESPACE


class _PrepareFn(beam.DoFn):
    def __init__(self, input_shape):
        self._input_shape = input_shape

    def process(self, frame):
        try:
            yield frame.metadata(), prepare_input(frame.pixels, self._input_shape)
        except Exception as e:  # pylint: disable=broad-except
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                frame.source_uri, records.STAGE_PREPROCESS,
                f"cannot prepare the frame ({frame.width}x{frame.height}) for the model: {e}",
                frame.frame_index, frame.frame_id))


class _ToRecordFn(beam.DoFn):
    def __init__(self, spec: ModelSpec):
        self._spec = spec
        self._entropy = Metrics.distribution(_NAMESPACE, "entropy_millinats")
        self._scored = Metrics.counter(_NAMESPACE, "frames_scored")

    def process(self, keyed_result):
        metadata, result = keyed_result
        embedding, output = result.inference
        output = np.asarray(output, dtype=np.float64)
        probabilities = (uncertainty.softmax(output) if self._spec.model_output == LOGITS
                         else output / max(output.sum(), 1e-12))
        record = FrameRecord(
            frame=metadata,
            embedding=np.asarray(embedding, dtype=np.float32).reshape(-1),
            probabilities=probabilities.astype(np.float32),
            predicted_class=int(np.argmax(probabilities)),
            entropy=uncertainty.entropy(probabilities),
            margin=uncertainty.margin(probabilities),
            least_confidence=uncertainty.least_confidence(probabilities),
            model=self._spec.version)
        self._scored.inc()
        self._entropy.update(int(record.entropy * 1000))
        yield record


def _inference_dead_letters(failed):
    """Turns an element of RunInference's ``failed_inferences`` output, ``(batch, error)``,
    into one DeadLetter per frame of the failed batch."""
    batch, error = failed
    reason = f"model inference failed for the batch holding this frame: {error}"[:500]
    for example in batch:
        metadata = example[0] if isinstance(example, tuple) else None
        if isinstance(metadata, FrameMetadata):
            yield DeadLetter(metadata.source_uri, records.STAGE_INFERENCE, reason,
                             metadata.frame_index, metadata.frame_id)
        else:
            yield DeadLetter("", records.STAGE_INFERENCE, reason)


class ScoredFrames(NamedTuple):
    records: beam.PCollection
    dead_letters: beam.PCollection


class ScoreFrames(beam.PTransform):
    """Embeds and classifies frames with one forward pass through Beam ``RunInference``.

    Input: ``PCollection[Frame]``. Output: :class:`ScoredFrames` with ``FrameRecord``\\ s (embedding
    ``float32 (D,)``, probabilities ``float32 (C,)``, entropy, margin, least confidence; see
    :mod:`transforms.uncertainty`) and dead letters for frames that could not be prepared or
    inferred. The model is loaded once per worker process (Beam's shared model handle).
    """

    def __init__(self, spec: ModelSpec, min_batch_size: int = 16, max_batch_size: int = 64):
        super().__init__()
        self._spec = spec
        self._handler = KeyedModelHandler(EmbeddingClassifierHandler(
            spec.uri, spec.version.embedding_layer, min_batch_size, max_batch_size))

    def expand(self, frames):
        prepared = frames | "PrepareModelInput" >> beam.ParDo(
            _PrepareFn(self._spec.input_shape)).with_outputs(DEAD_LETTER, main="inputs")
        inferred, failed = (prepared.inputs
                            | "RunInference" >> RunInference(self._handler).with_exception_handling())
        scored = inferred | "ToFrameRecords" >> beam.ParDo(_ToRecordFn(self._spec))
        inference_dead = failed.failed_inferences | "InferenceDeadLetters" >> beam.FlatMap(_inference_dead_letters)
        dead_letters = ((prepared[DEAD_LETTER], inference_dead)
                        | "FlattenDeadLetters" >> beam.Flatten())
        return ScoredFrames(scored, dead_letters)

"""What every model handler of :mod:`transforms.score` shares: runtime names, the bundled default
model, the output record and the base of the array handlers.
"""
import os
from typing import NamedTuple, Optional

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_MODEL_CLASS_NAMES", "METRICS_NAMESPACE", "KERAS", "SAVED_MODEL", "TFLITE", "ONNX", "RUNTIMES",
           "default_model_path", "runtime_of", "ModelOutput", "ArrayHandler"]

DEFAULT_MODEL_NAME = "fashion_mnist_cnn.keras"
#: The bundled model's classes, in the order of its output (Fashion-MNIST's labels 0-9,
#: Xiao et al. 2017, https://github.com/zalandoresearch/fashion-mnist).
DEFAULT_MODEL_CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
METRICS_NAMESPACE = "activebeam.model"
KERAS, SAVED_MODEL, TFLITE, ONNX = "keras", "saved_model", "tflite", "onnx"
RUNTIMES = (KERAS, SAVED_MODEL, TFLITE, ONNX)


def default_model_path() -> str:
    """Local path of the bundled default model (``transforms/score/models/fashion_mnist_cnn.keras``).

    Package data of :mod:`transforms.score`, found next to this module in each process, never
    through the working directory (a user's own ``models/`` folder cannot shadow it), so it also
    works on Dataflow workers that installed the project with ``--setup_file``.
    """
    return os.path.join(os.path.dirname(os.path.realpath(__file__)), "models", DEFAULT_MODEL_NAME)


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
    """The runtime that runs the model at ``uri``, from its name (see :mod:`transforms.score.handlers`)."""
    lower = uri.rstrip("/").lower()
    if lower.endswith(".tflite"):
        return TFLITE
    if lower.endswith(".onnx"):
        return ONNX
    if FileSystems.exists(FileSystems.join(uri.rstrip("/"), "saved_model.pb")):
        return SAVED_MODEL
    return KERAS


class ArrayHandler(ModelHandler):
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

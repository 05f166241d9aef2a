"""TFLite (LiteRT) and ONNX Runtime models behind one ``run(x) -> (embedding, class scores)``, and
their Beam handler :class:`RuntimeHandler`; :class:`NamedOutputsSession` runs any ONNX, TFLite or
SavedModel model to its named outputs (the detectors of :mod:`transforms.score.detectors`).
"""
import threading
from typing import Dict, Optional

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from transforms.common.files import local_copy
from transforms.score.litert import load_interpreter
from transforms.score.model_base import ONNX, SAVED_MODEL, TFLITE, ArrayHandler, ModelOutput
from transforms.score.preprocessing import SIDECAR_SUFFIX, Preprocessing
from transforms.score.threads import inference_threads

__all__ = ["RuntimeSession", "RuntimeHandler", "NamedOutputsSession"]


class RuntimeSession:
    """A loaded TFLite interpreter or ONNX Runtime session behind one ``run(x) -> (emb, out)``.

    A lock serialises calls: Beam shares one model per process between its threads, and a
    TFLite interpreter is not thread-safe.
    """

    def __init__(self, path: str, runtime: str, prep: Preprocessing):
        self._lock = threading.Lock()
        self._runtime = runtime
        if runtime == TFLITE:
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


class RuntimeHandler(ArrayHandler):
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

    def load_model(self) -> RuntimeSession:
        with local_copy(self._uri) as local:
            return RuntimeSession(local, self._runtime, self._prep)

    def run_inference(self, batch, model: RuntimeSession, inference_args=None):
        embeddings, outputs = model.run(np.stack(batch, axis=0).astype(np.float32, copy=False))
        return [PredictionResult(x, ModelOutput(np.asarray(e).reshape(-1), np.asarray(o).reshape(-1)), self._uri)
                for x, e, o in zip(batch, embeddings, outputs)]


class NamedOutputsSession:
    """An ONNX Runtime session, a LiteRT interpreter or a TensorFlow SavedModel's serving
    signature behind one ``run(x) -> {output name: array}`` (outputs in the model's order), for
    models whose outputs are not an (embedding, class scores) pair, such as detectors.

    ``input_shape`` is the model input's shape without the batch axis (``None`` for a free
    size). TFLite models with a signature are run through their signature runner, so outputs
    keep the names they were exported with; without one, by tensor name. A lock serialises calls.
    """

    def __init__(self, path: str, runtime: str, num_threads: Optional[int] = None):
        self._lock = threading.Lock()
        self._runtime = runtime
        if runtime == ONNX:
            import onnxruntime
            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            first = self._session.get_inputs()[0]
            self._input, shape = first.name, first.shape
            self.output_names = [o.name for o in self._session.get_outputs()]
        elif runtime == TFLITE:
            self._interpreter = load_interpreter(path, num_threads or inference_threads())
            signatures = self._interpreter.get_signature_list()
            if signatures:
                key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
                self._runner = self._interpreter.get_signature_runner(key)
                (self._input,) = signatures[key]["inputs"]
                shape = self._runner.get_input_details()[self._input]["shape_signature"]
                self.output_names = list(signatures[key]["outputs"])
            else:
                self._runner = None
                detail = self._interpreter.get_input_details()[0]
                self._input, shape = detail["index"], detail["shape_signature"]
                self._outputs = self._interpreter.get_output_details()
                self.output_names = [d["name"] for d in self._outputs]
        elif runtime == SAVED_MODEL:
            import tensorflow as tf
            self._model = tf.saved_model.load(path)
            self._function = self._model.signatures["serving_default"]
            _, inputs = self._function.structured_input_signature
            (self._input, spec), = inputs.items()
            shape = spec.shape.as_list()
            self.output_names = sorted(self._function.structured_outputs)
        else:
            raise ValueError(f"runtime must be 'onnx', 'tflite' or 'saved_model', got {runtime!r}")
        dims = [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in list(shape)[1:]]
        self.input_shape = tuple(int(d) if d is not None else None for d in dims)

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """The model's outputs for the batch ``x`` (the model input's dtype and shape)."""
        with self._lock:
            if self._runtime == ONNX:
                return dict(zip(self.output_names, self._session.run(None, {self._input: x})))
            if self._runtime == SAVED_MODEL:
                result = self._function(**{self._input: x})
                return {name: result[name].numpy() for name in self.output_names}
            if self._runner is not None:
                result = self._runner(**{self._input: x})
                return {name: np.asarray(result[name]) for name in self.output_names}
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            return {d["name"]: self._interpreter.get_tensor(d["index"]).copy() for d in self._outputs}

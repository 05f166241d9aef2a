"""TFLite (LiteRT) and ONNX Runtime models behind one ``run(x) -> (embedding, class scores)``, and
their Beam handler :class:`RuntimeHandler`.
"""
import threading

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from transforms.common.files import local_copy
from transforms.score.litert import load_interpreter
from transforms.score.model_base import ONNX, TFLITE, ArrayHandler, ModelOutput
from transforms.score.preprocessing import SIDECAR_SUFFIX, Preprocessing
from transforms.score.threads import inference_threads

__all__ = ["RuntimeSession", "RuntimeHandler"]


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

"""The object-crops handler: a frame and the crops of its detected objects embedded in one call.
"""
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

__all__ = ["ObjectCropsHandler"]


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

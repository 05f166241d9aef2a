"""Keras models (``.keras``, ``.h5``) and TensorFlow SavedModels as two-output (embedding, class
scores) models, MC dropout, and their Beam handler :class:`KerasHandler`.

TensorFlow and Keras are imported where a model is loaded, never by importing this module.
"""
import json
import zipfile
from typing import Optional, Tuple

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from transforms.common.files import local_copy, open_binary
from transforms.score.model_base import SAVED_MODEL, ArrayHandler, ModelOutput, default_model_path, runtime_of
from transforms.score.preprocessing import Preprocessing

__all__ = ["load_embedding_classifier", "SavedModelEndpoint", "mc_dropout_samples", "keras_inference",
           "KerasHandler", "keras_file_summary"]


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


class SavedModelEndpoint:
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


def keras_inference(model, batch, inference_args, model_id=None):
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


class KerasHandler(ArrayHandler):
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
                return SavedModelEndpoint(local, self._prep)
        model, _, _ = load_embedding_classifier(uri, self._embedding_layer)
        return model

    def run_inference(self, batch, model, inference_args=None):
        args = dict(inference_args or {})
        if self._mc_passes:
            args["mc_passes"] = self._mc_passes
        return keras_inference(model, batch, args, self._uri)


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

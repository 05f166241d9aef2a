"""How a frame becomes a model input: the model's declared :class:`Preprocessing` (its JSON sidecar
``<model uri>.json``, see :mod:`transforms.score.handlers`) and :func:`prepare_input`.
"""
import json
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms.common.files import open_binary

__all__ = ["PROBABILITIES", "LOGITS", "COLOURS", "LAYOUTS", "SIDECAR_SUFFIX", "CLASS_NAMES_KEY", "Preprocessing",
           "read_preprocessing", "preprocessing_from_shape", "prepare_input"]

PROBABILITIES = "probabilities"
LOGITS = "logits"
COLOURS = ("RGB", "BGR", "GREY")
LAYOUTS = ("NHWC", "NCHW")
SIDECAR_SUFFIX = ".json"
#: Sidecar key that is not preprocessing: the model's class names, in the order of its class output.
CLASS_NAMES_KEY = "class_names"


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
    """The model's JSON sidecar ``<uri>.json`` as a dict, or ``None`` if there is none: the
    :class:`Preprocessing` keys, and ``class_names`` (the names of the class output, in order).

    Raises
    ------
    ValueError
        If the sidecar is not a JSON object, names unknown keys, or its ``class_names`` is not a
        list of strings.
    """
    path = uri.rstrip("/") + SIDECAR_SUFFIX
    if not FileSystems.exists(path):
        return None
    with open_binary(path) as f:
        declared = json.loads(f.read().decode("utf-8"))
    if not isinstance(declared, dict):
        raise ValueError(f"{path}: the preprocessing sidecar must be a JSON object")
    allowed = list(Preprocessing._fields) + [CLASS_NAMES_KEY]
    unknown = set(declared) - set(allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {allowed}")
    names = declared.get(CLASS_NAMES_KEY)
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: {CLASS_NAMES_KEY} must be a list of strings (one per class output)")
    return declared


def preprocessing_from_shape(declared: Optional[dict], input_shape: Sequence[Optional[int]], uri: str) -> Preprocessing:
    """The :class:`Preprocessing` of a model: the sidecar's values (``declared``) over what the
    model's own input shape (without batch axis; ``None`` for an unknown size) says.

    Raises
    ------
    ValueError
        If the input is not an image, has no fixed size and the sidecar declares none, or the
        declared colour does not match the model's channels (the message names ``uri``).
    """
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

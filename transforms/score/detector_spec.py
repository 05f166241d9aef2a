"""A team's own detector, declared by a JSON sidecar: what its input is and how to read its outputs.

A detector exported to ONNX (``model.onnx``), TFLite (``model.tflite``) or a TensorFlow SavedModel
(a directory) runs in the ``mine`` job (``--detector model.onnx``) when a sidecar
``<model>.json`` beside it says how to feed it and how to read what it returns::

    {"class_names": ["person", "car"],
     "input_size": [320, 320], "colour": "RGB", "scale": 0.00392156862745098,
     "output_layout": "yolo", "box_format": "cxcywh", "box_units": "pixels",
     "score_threshold": 0.3, "iou_threshold": 0.6, "nms": "per_class"}

:func:`read_detector_spec` reads and checks it (:class:`DetectorSpec`); :func:`decode_outputs`
turns the model's raw outputs for one frame into boxes in pixels of the frame, confidences and
class indices, after score thresholding and non-maximum suppression (NMS). Three output layouts
cover the usual exports:

``"yolo"``
    One output ``(N, 4 + C)`` or ``(4 + C, N)`` (Ultralytics YOLOv8 exports the latter), or with
    ``objectness: true`` ``(N, 5 + C)`` (YOLOv5: the class score is objectness x class score):
    a box and C class scores per candidate.
``"boxes_scores"``
    Two outputs, boxes ``(N, 4)`` and class scores ``(N, C)`` (an SSD or RetinaNet head after box
    decoding, or a YOLO export split in two); ``outputs`` names them.
``"detections"``
    Already suppressed detections, as the TensorFlow Object Detection API's SavedModels return
    them: boxes ``(N, 4)``, scores ``(N,)``, classes ``(N,)`` and optionally a count
    (``outputs`` names them; ``class_offset: 1`` for its 1-based COCO ids). Only the score
    threshold applies, unless ``nms`` is set.

A leading batch axis of 1 is dropped. Boxes are ``box_format`` ``"xyxy"``, ``"yxyx"`` (TF OD
API) or ``"cxcywh"`` (YOLO), in ``box_units`` ``"pixels"`` of the model input or
``"normalised"`` to [0, 1]; they are scaled back to the frame (the frame is stretched to the
input size, without letterboxing), clipped to it, and sorted by confidence. Class scores go
through ``score_activation`` (``"none"``, ``"sigmoid"`` or ``"softmax"``), and a
``background_class`` (an SSD softmax's class 0) is dropped before the best class of each box is
taken.

The input is prepared by :func:`transforms.score.preprocessing.prepare_input` from the same
sidecar's ``input_size`` (``[height, width]``), ``colour``, ``scale``, ``mean``, ``std`` and
``layout`` (see :class:`~transforms.score.preprocessing.Preprocessing`); ``input_dtype``
``"uint8"`` feeds the resized pixels unnormalised (the TF OD API's ``input_tensor``).

No model runtime is imported here (the options check reads sidecars cheaply); the runtimes
are :class:`transforms.score.runtimes.NamedOutputsSession`'s.

References
----------
Redmon et al. (2016), You Only Look Once, CVPR, and Jocher et al., Ultralytics YOLOv5/YOLOv8
(the ``(cx, cy, w, h, [objectness,] scores)`` rows); Liu et al. (2016), SSD: Single Shot
MultiBox Detector, ECCV (background class, softmax scores); Huang et al. (2017), Speed/accuracy
trade-offs for modern convolutional object detectors, CVPR (the TF Object Detection API's
``detection_boxes``/``detection_scores``/``detection_classes``/``num_detections`` outputs);
Neubeck & Van Gool (2006), Efficient Non-Maximum Suppression (greedy NMS).
"""
import json
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms.common.files import open_binary
from transforms.score.detection import UNCERTAINTY_FLOOR, Decoded, best_rejected, per_class_nms
from transforms.score.preprocessing import SIDECAR_SUFFIX, Preprocessing

__all__ = ["OUTPUT_LAYOUTS", "BOX_FORMATS", "BOX_UNITS", "ACTIVATIONS", "NMS_MODES", "DetectorSpec",
           "parse_detector_spec", "read_detector_spec", "decode_outputs"]

YOLO, BOXES_SCORES, DETECTIONS = "yolo", "boxes_scores", "detections"
OUTPUT_LAYOUTS = (YOLO, BOXES_SCORES, DETECTIONS)
BOX_FORMATS = ("xyxy", "yxyx", "cxcywh")
BOX_UNITS = ("pixels", "normalised")
ACTIVATIONS = ("none", "sigmoid", "softmax")
NMS_MODES = ("per_class", "class_agnostic", "none")
INPUT_DTYPES = ("float32", "uint8")
OUTPUT_ROLES = ("boxes", "scores", "classes", "count")


class DetectorSpec(NamedTuple):
    """What a detector's sidecar declares (see the module docstring for each key).

    ``class_names`` are required; ``input_size`` is ``(height, width)`` (taken from the model's
    input when it is fixed and the sidecar leaves it out); ``outputs`` maps roles (``boxes``,
    ``scores``, ``classes``, ``count``) to the model's output names.
    """
    class_names: Tuple[str, ...]
    input_size: Optional[Tuple[int, int]] = None
    colour: str = "RGB"
    scale: float = 1.0
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    layout: str = "NHWC"
    input_dtype: str = "float32"
    output_layout: str = YOLO
    outputs: Tuple[Tuple[str, str], ...] = ()
    box_format: str = "xyxy"
    box_units: str = "pixels"
    objectness: bool = False
    score_activation: str = "none"
    background_class: Optional[int] = None
    class_offset: int = 0
    score_threshold: float = 0.3
    iou_threshold: float = 0.6
    nms: str = "per_class"
    max_detections: int = 100
    uncertainty_floor: float = UNCERTAINTY_FLOOR

    def preprocessing(self, input_size: Optional[Tuple[int, int]] = None) -> Preprocessing:
        """The :class:`~transforms.score.preprocessing.Preprocessing` of the model input
        (``input_size`` when the sidecar has none)."""
        size = self.input_size or input_size
        if not size:
            raise ValueError("the detector's input has no fixed size: declare input_size [height, width]")
        scale = self.scale if self.input_dtype == "float32" else 1.0
        return Preprocessing(tuple(size), self.colour, scale, self.mean, self.std, self.layout).validate()

    def output_name(self, role: str) -> Optional[str]:
        return dict(self.outputs).get(role)


def _choice(key, value, allowed):
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


def parse_detector_spec(declared: dict, where: str = "the detector sidecar") -> DetectorSpec:
    """A checked :class:`DetectorSpec` from a sidecar's JSON object.

    Raises
    ------
    ValueError
        Naming ``where``, the key and the allowed values, for an unknown key, a missing or empty
        ``class_names``, a value outside its choices, or thresholds outside [0, 1].
    """
    if not isinstance(declared, dict):
        raise ValueError(f"{where}: the sidecar must be a JSON object")
    unknown = set(declared) - set(DetectorSpec._fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {list(DetectorSpec._fields)}")
    values = dict(declared)
    try:
        names = values.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("class_names must be a non-empty list of class names (strings)")
        values["class_names"] = tuple(names)
        for key in ("input_size", "mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        outputs = values.get("outputs") or {}
        if not isinstance(outputs, dict) or set(outputs) - set(OUTPUT_ROLES):
            raise ValueError(f"outputs must map roles {list(OUTPUT_ROLES)} to output names, got {outputs!r}")
        values["outputs"] = tuple(sorted(outputs.items()))
        spec = DetectorSpec(**values)
        _choice("output_layout", spec.output_layout, OUTPUT_LAYOUTS)
        _choice("box_format", spec.box_format, BOX_FORMATS)
        _choice("box_units", spec.box_units, BOX_UNITS)
        _choice("score_activation", spec.score_activation, ACTIVATIONS)
        _choice("nms", spec.nms, NMS_MODES)
        _choice("input_dtype", spec.input_dtype, INPUT_DTYPES)
        for key in ("score_threshold", "iou_threshold", "uncertainty_floor"):
            if not 0.0 <= float(getattr(spec, key)) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(spec, key)}")
        if int(spec.max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {spec.max_detections}")
        if spec.input_size is not None:
            spec.preprocessing()  # validates size, colour, layout, mean and std
        else:
            Preprocessing((1, 1), spec.colour, spec.scale, spec.mean, spec.std, spec.layout).validate()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    return spec


def missing_sidecar(uri: str) -> str:
    """What to say when the detector at ``uri`` (not NanoDet-g) has no sidecar."""
    return (f"a detector other than NanoDet-g needs a sidecar {uri.rstrip('/')}{SIDECAR_SUFFIX} (class_names, "
            f"input and output layout; see docs/models.md)")


def read_detector_spec(uri: str) -> Optional[DetectorSpec]:
    """The checked sidecar ``<uri>.json`` of the detector at ``uri``, or ``None`` if there is none.

    Raises
    ------
    ValueError
        For a sidecar that is not valid JSON or not a valid spec (:func:`parse_detector_spec`).
    """
    path = uri.rstrip("/") + SIDECAR_SUFFIX
    if not FileSystems.exists(path):
        return None
    with open_binary(path) as f:
        try:
            declared = json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: not JSON: {e}") from None
    return parse_detector_spec(declared, path)


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    if activation == "softmax":
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return scores


def _named(outputs: Dict[str, np.ndarray], spec: DetectorSpec, role: str, fallback: int) -> np.ndarray:
    name = spec.output_name(role)
    if name is not None:
        if name not in outputs:
            raise ValueError(f"output {name!r} ({role}) is not an output of the model: {sorted(outputs)}")
        return np.asarray(outputs[name])
    names = list(outputs)
    if fallback >= len(names):
        raise ValueError(f"the model has outputs {names}: name the {role} output in the sidecar's outputs")
    return np.asarray(outputs[names[fallback]])


def _rows(outputs, spec: DetectorSpec):
    """``(boxes (N, 4), class scores (N, C) or None, classes (N,) or None, scores (N,) or None)``."""
    classes = len(spec.class_names)
    if spec.output_layout == YOLO:
        (single,) = [outputs[spec.output_name("boxes")]] if spec.output_name("boxes") else list(outputs.values())[:1]
        a = np.asarray(single).reshape(np.asarray(single).shape[-2:]) if np.ndim(single) >= 2 else None
        width = 4 + int(spec.objectness) + classes
        if a is None or width not in a.shape:
            raise ValueError(f"a yolo output must be (N, {width}) or ({width}, N) for {classes} classes"
                             f"{' with objectness' if spec.objectness else ''}, got {np.shape(single)}")
        if a.shape[-1] != width:
            a = a.T
        a = a.astype(np.float64)
        cls = _activate(a[:, 4 + int(spec.objectness):], spec.score_activation)
        if spec.objectness:
            cls = cls * _activate(a[:, 4:5], spec.score_activation)
        return a[:, :4], cls, None, None
    if spec.output_layout == BOXES_SCORES:
        boxes = _named(outputs, spec, "boxes", 0).astype(np.float64)
        scores = _named(outputs, spec, "scores", 1).astype(np.float64)
        boxes = boxes.reshape(-1, 4)
        scores = scores.reshape(len(boxes), -1) if len(boxes) else scores.reshape(0, classes)
        return boxes, _activate(scores, spec.score_activation), None, None
    boxes = _named(outputs, spec, "boxes", 0).astype(np.float64).reshape(-1, 4)
    scores = _named(outputs, spec, "scores", 1).astype(np.float64).reshape(-1)
    ids = _named(outputs, spec, "classes", 2).reshape(-1)
    count_name = spec.output_name("count")
    if count_name is not None:
        n = int(np.asarray(outputs[count_name]).reshape(-1)[0])
        boxes, scores, ids = boxes[:n], scores[:n], ids[:n]
    if not len(boxes) == len(scores) == len(ids):
        raise ValueError(f"detections outputs disagree: {len(boxes)} boxes, {len(scores)} scores, {len(ids)} classes")
    return boxes, None, np.rint(ids).astype(np.int64) - int(spec.class_offset), scores


def _to_xyxy(boxes: np.ndarray, spec: DetectorSpec, input_size, width: int, height: int) -> np.ndarray:
    if spec.box_format == "yxyx":
        boxes = boxes[:, [1, 0, 3, 2]]
    elif spec.box_format == "cxcywh":
        half = boxes[:, 2:4] / 2.0
        boxes = np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)
    if spec.box_units == "normalised":
        factor = np.array([width, height, width, height], np.float64)
    else:
        in_h, in_w = input_size
        factor = np.array([width / in_w, height / in_h, width / in_w, height / in_h], np.float64)
    return np.clip(boxes * factor, 0, [width, height, width, height])


def decode_outputs(outputs: Dict[str, np.ndarray], spec: DetectorSpec, input_size: Tuple[int, int],
                   width: int, height: int):
    """Boxes, confidences and class indices of one frame from the detector's raw outputs.

    Parameters
    ----------
    outputs : dict of name -> ndarray
        The model's outputs for one frame (a leading batch axis of 1 allowed), in the model's
        output order.
    spec : DetectorSpec
    input_size : (height, width)
        The model input's size in pixels (pixel boxes are in this frame of reference).
    width, height : int
        The original frame's size; boxes are scaled to it.

    Returns
    -------
    :class:`~transforms.score.detection.Decoded`: ``boxes`` float32 ``(K, 4)``, ``[x1, y1, x2,
    y2]`` in pixels of the frame; ``scores`` float32 ``(K,)`` in [0, 1], descending;
    ``class_ids`` int32 ``(K,)``, index into ``spec.class_names``; ``rejected``, the score of the
    best box in ``[uncertainty_floor, score_threshold)`` that NMS would keep
    (:func:`~transforms.score.detection.best_rejected`), 0.0 when none.

    Raises
    ------
    ValueError
        If the outputs do not have the declared layout's shapes, a class index is outside
        ``class_names``, or a score is outside [0, 1] (declare ``score_activation``).
    """
    boxes, class_scores, ids, scores = _rows(outputs, spec)
    if class_scores is not None:
        if class_scores.shape[1] != len(spec.class_names) + (spec.background_class is not None):
            raise ValueError(f"the model scores {class_scores.shape[1]} classes, the sidecar names "
                             f"{len(spec.class_names)}" + (" plus a background class" if spec.background_class is not None else ""))
        if spec.background_class is not None:
            class_scores = np.delete(class_scores, spec.background_class, axis=1)
        ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(ids)), ids]
    if len(scores) and (not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1):
        raise ValueError(f"detection scores outside [0, 1] ({scores.min():.3g}..{scores.max():.3g}): "
                         f"declare score_activation 'sigmoid' or 'softmax' in the sidecar")
    keep = scores >= spec.score_threshold
    if np.any(keep & ((ids < 0) | (ids >= len(spec.class_names)))):
        raise ValueError(f"class index outside the {len(spec.class_names)} class_names (class_offset "
                         f"{spec.class_offset})")
    rejected = (scores >= spec.uncertainty_floor) & ~keep & (ids >= 0) & (ids < len(spec.class_names))
    all_boxes, all_scores, all_ids = boxes, scores, ids
    boxes = _to_xyxy(boxes[keep], spec, input_size, width, height)
    scores, ids = scores[keep], ids[keep]
    if spec.nms != "none" and len(boxes):
        kept = per_class_nms(boxes, scores, np.zeros_like(ids) if spec.nms == "class_agnostic" else ids,
                             spec.iou_threshold)
        boxes, scores, ids = boxes[kept], scores[kept], ids[kept]
    order = np.argsort(-scores, kind="stable")[:int(spec.max_detections)]
    boxes, scores, ids = boxes[order], scores[order], ids[order]
    best_score = 0.0
    if np.any(rejected):
        r_boxes = _to_xyxy(all_boxes[rejected], spec, input_size, width, height)
        r_scores = all_scores[rejected]
        # A model that ran its own NMS ("nms": "none") still has its rejected boxes checked
        # against the kept ones, at the sidecar's iou_threshold.
        best = best_rejected(boxes, ids, r_boxes, r_scores, all_ids[rejected], spec.iou_threshold,
                             class_agnostic=spec.nms == "class_agnostic")
        best_score = float(np.float32(r_scores[best])) if best >= 0 else 0.0
    return Decoded(boxes.astype(np.float32), scores.astype(np.float32), ids.astype(np.int32), best_score)

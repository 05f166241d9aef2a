"""NanoDet (COCO, 80 classes): input preparation and box decoding of its raw outputs, in numpy.

The network (converted by :mod:`transforms.score.pretrained.convert` from the TensorFlow.js
graph of NanoDet-g) takes one BGR frame resized to ``416 x 416``, NCHW, normalised as the
original NanoDet does, and returns for each stride 8, 16, 32 (52², 26², 13² cells, row-major)
the class scores ``(N, 80)`` (sigmoid applied) and the box regression ``(N, 44)``: for each
side (left, top, right, bottom) a distribution over 11 bins (Generalized Focal Loss). The
distance of a side from the cell centre ``((col + 0.5) * stride, (row + 0.5) * stride)`` is
the expected bin index times the stride. :func:`decode` turns this into boxes in pixels of the
original frame, keeps boxes scoring at least ``score_threshold`` and runs per-class
non-maximum suppression::

    x = prepare(rgb)                                # float32 (1, 3, 416, 416)
    outputs = interpreter(x)                        # the six arrays, any order
    boxes, scores, class_ids = decode(outputs, width=rgb.shape[1], height=rgb.shape[0])

References
----------
RangiLyu, NanoDet (2020), https://github.com/RangiLyu/nanodet (Apache-2.0; ``nanodet/model/head/
gfl_head.py``: centre points, distribution integral, per-class NMS at IoU 0.6);
Li et al. (2020), Generalized Focal Loss, NeurIPS (the 11-bin distance distributions).
"""
from typing import Dict, Sequence, Tuple

import numpy as np

from transforms.score.detection import per_class_nms

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
REG_BINS = 11  # reg_max + 1
MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
SCORE_THRESHOLD = 0.3   # boxes below are dropped (the uncertain band of detection.py starts here)
IOU_THRESHOLD = 0.6     # per-class NMS, as NanoDet's test config
MAX_DETECTIONS = 100

#: COCO 2017's 80 detection classes, in NanoDet's (and every COCO detector's) order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")


def prepare(rgb: np.ndarray) -> np.ndarray:
    """One RGB ``uint8 (H, W, 3)`` frame as NanoDet's input: float32 ``(1, 3, 416, 416)``, BGR,
    ``(x - mean) / std`` per channel (the frame is stretched to 416 x 416)."""
    import cv2
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"NanoDet takes RGB frames (H, W, 3), got shape {rgb.shape}")
    resized = cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    bgr = resized[:, :, ::-1].astype(np.float32)
    return ((bgr - MEAN_BGR) / STD_BGR).transpose(2, 0, 1)[None]


def _levels(outputs: Sequence[np.ndarray]) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
    """stride -> (scores (N, 80), regression (N, 44)), matched by cell count and width."""
    by_shape = {(a.shape[-2], a.shape[-1]): a.reshape(a.shape[-2], a.shape[-1]) for a in outputs}
    levels = {}
    for stride in STRIDES:
        n = (INPUT_SIZE // stride) ** 2
        try:
            levels[stride] = by_shape[(n, len(COCO_CLASSES))], by_shape[(n, 4 * REG_BINS)]
        except KeyError:
            raise ValueError(f"NanoDet outputs lack stride {stride}: shapes "
                             f"{sorted(by_shape)}") from None
    return levels


def decode(outputs: Sequence[np.ndarray], width: int, height: int,
           score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
           max_detections: int = MAX_DETECTIONS):
    """Boxes, scores and classes of one frame from NanoDet's six raw outputs.

    Parameters
    ----------
    outputs : sequence of ndarray
        The class scores ``(1, N, 80)`` and regressions ``(1, N, 44)`` of the three strides,
        in any order (told apart by shape).
    width, height : int
        Size of the original frame in pixels; boxes are scaled back to it.
    score_threshold, iou_threshold, max_detections
        Minimum class score of a box, NMS overlap, and most boxes kept (best first).

    Returns
    -------
    boxes : ndarray of float32, shape (K, 4), ``[x1, y1, x2, y2]`` in pixels, clipped to the frame
    scores : ndarray of float32, shape (K,), in [0, 1], descending
    class_ids : ndarray of int32, shape (K,), index into :data:`COCO_CLASSES`

    Raises
    ------
    ValueError
        If the outputs do not have NanoDet's shapes.
    """
    all_boxes, all_scores, all_classes = [], [], []
    for stride, (cls, reg) in _levels(outputs).items():
        side = INPUT_SIZE // stride
        rows, cols = np.divmod(np.arange(side * side), side)
        cx, cy = (cols + 0.5) * stride, (rows + 0.5) * stride
        cell, cls_id = np.nonzero(cls >= score_threshold)
        if not len(cell):
            continue
        logits = reg[cell].reshape(-1, 4, REG_BINS).astype(np.float64)
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        dist = (p * np.arange(REG_BINS)).sum(axis=-1) * stride  # (k, 4): left, top, right, bottom
        all_boxes.append(np.stack([cx[cell] - dist[:, 0], cy[cell] - dist[:, 1],
                                   cx[cell] + dist[:, 2], cy[cell] + dist[:, 3]], axis=1))
        all_scores.append(cls[cell, cls_id])
        all_classes.append(cls_id)
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    boxes, scores, classes = (np.concatenate(all_boxes), np.concatenate(all_scores).astype(np.float64),
                              np.concatenate(all_classes))
    boxes = boxes * np.array([width, height, width, height], dtype=np.float64) / INPUT_SIZE
    boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = per_class_nms(boxes, scores, classes, iou_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), classes[keep].astype(np.int32)

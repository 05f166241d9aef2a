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
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from transforms.score.detection import Decoded, best_rejected, per_class_nms

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
    # Written plane by plane into one contiguous array: the same float32 operations as
    # ``(bgr.astype(float32) - MEAN_BGR) / STD_BGR`` then NCHW, without the temporaries and the
    # strided copy of a transposed view (a third of the time; the same bytes).
    out = np.empty((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for channel in range(3):  # BGR plane `channel` is RGB plane 2 - channel
        plane = out[0, channel]
        np.subtract(resized[:, :, 2 - channel], MEAN_BGR[channel], out=plane, dtype=np.float32)
        np.divide(plane, STD_BGR[channel], out=plane)
    return out


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


def _box(reg: np.ndarray, cell: np.ndarray, stride: int) -> np.ndarray:
    """Boxes ``(k, 4)`` ``[x1, y1, x2, y2]`` in input pixels of ``cell``s of one stride from
    their regression rows (the expectation of each side's distribution over ``REG_BINS``)."""
    side = INPUT_SIZE // stride
    rows, cols = np.divmod(cell, side)
    cx, cy = (cols + 0.5) * stride, (rows + 0.5) * stride
    logits = reg[cell].reshape(-1, 4, REG_BINS).astype(np.float64)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dist = (p * np.arange(REG_BINS)).sum(axis=-1) * stride  # (k, 4): left, top, right, bottom
    return np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)


#: Rejected candidates per stride looked at first for :func:`decode`'s ``rejected`` (all of them
#: when these are all suppressed by kept boxes).
REJECTED_SHORTLIST = 64


def decode(outputs: Sequence[np.ndarray], width: int, height: int,
           score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
           max_detections: int = MAX_DETECTIONS, uncertainty_floor: Optional[float] = None) -> Decoded:
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
    uncertainty_floor : float, optional
        With a floor below ``score_threshold``, ``rejected`` is the score of the best box in
        ``[floor, score_threshold)`` that per-class NMS would keep
        (:func:`transforms.score.detection.best_rejected`); else 0.

    Returns
    -------
    :class:`~transforms.score.detection.Decoded`: ``boxes`` float32 ``(K, 4)``, ``[x1, y1, x2,
    y2]`` in pixels, clipped to the frame; ``scores`` float32 ``(K,)`` in [0, 1], descending;
    ``class_ids`` int32 ``(K,)``, index into :data:`COCO_CLASSES`; ``rejected`` float.

    Raises
    ------
    ValueError
        If the outputs do not have NanoDet's shapes.
    """
    levels = _levels(outputs)
    size = np.array([width, height, width, height], dtype=np.float64)
    floor = uncertainty_floor if uncertainty_floor is not None and uncertainty_floor < score_threshold else None
    # One scan per stride finds every cell-class score at or above the lower of the two bounds;
    # the kept and the rejected candidates are split from it.
    candidates = {stride: _scores_at_least(cls, score_threshold if floor is None else floor)
                  for stride, (cls, _) in levels.items()}
    all_boxes, all_scores, all_classes = [], [], []
    for stride, (cell, cls_id, s) in candidates.items():
        kept = s >= score_threshold
        if not kept.any():
            continue
        all_boxes.append(_box(levels[stride][1], cell[kept], stride))
        all_scores.append(s[kept])
        all_classes.append(cls_id[kept])
    if all_boxes:
        boxes, scores, classes = (np.concatenate(all_boxes), np.concatenate(all_scores).astype(np.float64),
                                  np.concatenate(all_classes))
        boxes = np.clip(boxes * size / INPUT_SIZE, 0, size)
        keep = per_class_nms(boxes, scores, classes, iou_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    else:
        boxes, scores, classes = np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    rejected = 0.0
    if floor is not None:
        below = {stride: tuple(a[s < score_threshold] for a in (cell, cls_id, s))
                 for stride, (cell, cls_id, s) in candidates.items()}
        rejected = _best_rejected(levels, below, boxes, classes, iou_threshold, size)
    return Decoded(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int32), rejected)


def _scores_at_least(cls: np.ndarray, bound: float):
    """``(cell, class_id, score)`` of every entry of ``cls`` ``(N, 80)`` that is ``>= bound``,
    in row-major order (as ``np.nonzero(cls >= bound)``). Only the rows whose best score reaches
    the bound are scanned entry by entry: a few percent of a frame's cells (NaN never passes)."""
    rows = np.flatnonzero(np.fmax.reduce(cls, axis=1) >= bound)
    sub = cls[rows]
    row, cls_id = np.nonzero(sub >= bound)
    return rows[row], cls_id, sub[row, cls_id]


def _best_rejected(levels, below, kept_boxes, kept_classes, iou_threshold, size) -> float:
    """Score of :func:`~transforms.score.detection.best_rejected` over ``below``, per stride the
    ``(cell, class_id, score)`` of the cells scoring in ``[floor, threshold)``: first among each
    stride's best :data:`REJECTED_SHORTLIST`, which holds the answer when its best free candidate
    scores at least every candidate left out; else among all of them."""
    for shortlist in (REJECTED_SHORTLIST, None):
        boxes, scores, classes, left_out = [], [], [], -1.0
        for stride, (_, reg) in levels.items():
            cell, cls_id, s = below[stride]
            if shortlist is not None and len(s) > shortlist:
                order = np.argsort(-s, kind="stable")
                left_out = max(left_out, float(s[order[shortlist]]))
                top = order[:shortlist]
                cell, cls_id, s = cell[top], cls_id[top], s[top]
            if len(cell):
                boxes.append(_box(reg, cell, stride))
                scores.append(s)
                classes.append(cls_id)
        if not scores:
            return 0.0
        boxes = np.clip(np.concatenate(boxes) * size / INPUT_SIZE, 0, size)
        scores, classes = np.concatenate(scores).astype(np.float64), np.concatenate(classes)
        best = best_rejected(kept_boxes, kept_classes, boxes, scores, classes, iou_threshold)
        if best >= 0 and scores[best] >= left_out:
            return float(np.float32(scores[best]))
        if left_out < 0:
            return 0.0
    return 0.0

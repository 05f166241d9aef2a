"""Detection uncertainty: per-box confidences aggregated into per-frame scores.

A detector is a Beam ``ModelHandler`` whose inference maps an RGB frame ``uint8 (H, W, 3)`` to
:class:`Detections` (boxes, confidences in [0, 1], classes). :class:`~transforms.score.ptransforms.ScoreFrames`
runs it through ``RunInference`` next to the embedding model (``ScoreFrames(spec, detector=...)``),
stores the boxes in ``FrameRecord.detections`` and the aggregates of
:func:`aggregate_detection_scores` in ``FrameRecord.extra_scores``::

    detector = DetectorHandler(NanoDetDetector(pretrained.detector_path()))   # COCO, 80 classes
    scored = frames | ScoreFrames(backbone_spec, detector=detector)

The default detector is NanoDet-g (:class:`~transforms.score.detectors.NanoDetDetector`, COCO);
:class:`~transforms.score.detectors.BackgroundDifferenceDetector` (regions that differ from an
empty-scene background of a fixed camera) stays as a documented example of a detector without
weights. Any other detector plugs in as an object with ``load()`` and ``detect(pixels)``.

Per-frame scores (all in ``FrameRecord.extra_scores``, names in :data:`DETECTION_SCORES`):

* per-box class uncertainty ``u = 1 - |2c - 1|`` of the box's confidence ``c`` (1 at c = 0.5,
  0 at c in {0, 1}; the binary "1-vs-2" margin of Brust et al.), aggregated over the frame's boxes
  as ``detection_max``, ``detection_mean`` and ``detection_sum`` (Brust et al. compare sum,
  average and max; Haussmann et al. report max and sum as the strongest). The best box the
  detector **rejected** counts too: the highest-confidence box between
  :data:`UNCERTAINTY_FLOOR` and the score threshold that NMS would keep (:func:`best_rejected`;
  ``Detections.rejected``). It enters ``detection_max``, which is then exactly the max of the
  detector run at the floor (``u`` grows with ``c`` below 0.5), and it scores a frame without
  kept boxes in all three. Without it, a frame whose objects the detector sees at confidence
  0.1-0.3 (the objects it misses) would have uncertainty 0, the same as an empty scene, and
  uncertainty sampling would never ask for it;
* ``detection_count`` (boxes) and ``detection_uncertain_count`` (confidence in the band
  ``[low, high]``);
* ``detection_localisation``: localisation instability under a test-time augmentation, the mean
  over the frame's boxes of ``1 - IoU`` between each box and the best-overlapping box of the same
  class found in the horizontally flipped frame (flipped back); 1 for a box the flipped pass does
  not find (Kao et al.'s "localization stability", with a flip instead of noise);
* ``detection_rare_class``: how rare the frame's rarest detected class is among all boxes of the
  run, ``max over boxes of log(B / n_c) / log(B)`` (B boxes in the run, ``n_c`` of the box's
  class; 0 without boxes), computed by :func:`rare_class_scores` once all frames are scored
  (Brust et al.'s class weighting by rarity, over the unlabelled pool).

References
----------
Brust, Käding & Denzler (2019), Active Learning for Deep Object Detection, VISAPP (per-box
margin ``1 - |2c - 1|`` aggregated by sum, average and max over boxes);
Haussmann et al. (2020), Scalable Active Learning for Object Detection, IEEE IV (max/sum/mean
aggregation of box scores); Kao, Lee, Sen & Liu (2018), Localization-Aware Active Learning for Object Detection, ACCV
(localisation stability across perturbed inputs); Zivkovic (2004), Improved adaptive Gaussian
mixture model for background subtraction (the background-difference example).
"""
import math
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

UNCERTAIN_BAND = (0.3, 0.7)
#: Lowest confidence of a rejected box that scores a frame without kept boxes
#: (:func:`best_rejected`): the score threshold at which detectors are evaluated (mmdetection's
#: ``test_cfg.score_thr`` and Detectron2's ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` are 0.05); below it
#: a detector's scores are background clutter.
UNCERTAINTY_FLOOR = 0.05
DETECTION_SCORES = ("detection_max", "detection_mean", "detection_sum", "detection_uncertain_count",
                    "detection_count")
LOCALISATION_SCORE = "detection_localisation"
#: Scores two-stage scoring (:mod:`transforms.score.two_stage`) can serve: in [0, 1], so that one
#: margin fits every frame; and its default margin, in those units.
TWO_STAGE_SCORES = ("detection_max", "detection_mean")
TWO_STAGE_MARGIN = 0.1
RARE_CLASS_SCORE = "detection_rare_class"


class Detections(NamedTuple):
    """Boxes found in one frame: ``boxes`` float32 ``(K, 4)`` as ``[x1, y1, x2, y2]`` in pixels
    of the frame, ``confidences`` float32 ``(K,)`` in [0, 1], ``class_ids`` int32 ``(K,)`` and
    ``labels`` (K names) of the detector's classes (``None`` / ``()`` for a class-less detector),
    ``localisation`` float ``(K,)`` of :func:`localisation_instability` when the detector ran a
    test-time augmentation (else ``None``), ``rejected`` the confidence in ``[floor, threshold)``
    of the best box the detector scored but did not keep (:func:`best_rejected`; 0.0 when none,
    or for a detector that does not report it)."""
    boxes: np.ndarray
    confidences: np.ndarray
    class_ids: Optional[np.ndarray] = None
    labels: Tuple[str, ...] = ()
    localisation: Optional[np.ndarray] = None
    rejected: float = 0.0


class Decoded(NamedTuple):
    """A detector's decoded outputs for one frame: ``boxes`` float32 ``(K, 4)`` ``[x1, y1, x2,
    y2]`` in pixels of the frame, ``scores`` float32 ``(K,)`` descending, ``class_ids`` int32
    ``(K,)``, the boxes kept (score threshold, NMS, most detections), and ``rejected`` (float) of
    :func:`best_rejected`."""
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    rejected: float = 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` ``(K, 4)`` with every box of ``b``
    ``(M, 4)``, boxes ``[x1, y1, x2, y2]``; float64 ``(K, M)`` in [0, 1]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    ``boxes`` float ``(K, 4)`` as ``[x1, y1, x2, y2]``; ``scores`` ``(K,)``; a box is dropped
    when its IoU with a kept, better box exceeds ``iou_threshold`` (Neubeck & Van Gool, 2006,
    Efficient Non-Maximum Suppression; the greedy form every detector's post-processing uses).
    """
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
        h = np.maximum(0.0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def per_class_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices (int64) of the boxes :func:`nms` keeps within each class of ``class_ids`` ``(K,)``
    (boxes of different classes never suppress each other), grouped by class."""
    keep = [np.nonzero(class_ids == c)[0][nms(boxes[class_ids == c], scores[class_ids == c], iou_threshold)]
            for c in np.unique(class_ids)]
    return np.concatenate(keep).astype(np.int64) if keep else np.zeros(0, np.int64)


def best_rejected(kept_boxes, kept_classes, boxes, scores, classes, iou_threshold: float,
                  class_agnostic: bool = False) -> int:
    """Index of the best rejected box that non-maximum suppression would keep, or -1.

    ``boxes`` float ``(M, 4)`` ``[x1, y1, x2, y2]``, ``scores`` ``(M,)`` and ``classes`` int
    ``(M,)`` are candidates the score threshold rejected (any order); ``kept_boxes`` ``(K, 4)`` and
    ``kept_classes`` ``(K,)`` the boxes kept. Greedy NMS run over both at a lower threshold keeps
    every kept box (a box is only suppressed by a better one), and the best rejected box whose
    IoU with every kept box of its class (of any class with ``class_agnostic``) is at most
    ``iou_threshold``: the better rejected boxes are all suppressed, so they suppress nothing.
    So this is the best box a detector run at the lower threshold would add, without running
    NMS over the hundreds of boxes a low threshold lets through. A duplicate of a confident box
    (the same object, one anchor over) is suppressed and does not count.

    Returns
    -------
    int: index into ``boxes``, or -1 when every candidate is suppressed (or there is none).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(scores):
        return -1
    order = np.argsort(-scores, kind="stable")
    kept_boxes = np.asarray(kept_boxes, dtype=np.float64).reshape(-1, 4)
    if not len(kept_boxes):
        return int(order[0])
    iou = iou_matrix(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order], kept_boxes)
    if not class_agnostic:
        same = np.asarray(classes).reshape(-1, 1)[order] == np.asarray(kept_classes).reshape(1, -1)
        iou = np.where(same, iou, 0.0)
    free = np.nonzero(iou.max(axis=1) <= iou_threshold)[0]
    return int(order[free[0]]) if len(free) else -1


def localisation_instability(boxes, class_ids, augmented_boxes, augmented_class_ids) -> np.ndarray:
    """Per box, ``1 - IoU`` with the best-overlapping box of the same class found on an
    augmented copy of the frame (boxes mapped back to the frame); 1 when there is none.

    Parameters
    ----------
    boxes, augmented_boxes : array-like of float, shapes (K, 4) and (M, 4), ``[x1, y1, x2, y2]``
    class_ids, augmented_class_ids : array-like of int, shapes (K,) and (M,)

    Returns
    -------
    ndarray of float64, shape (K,), in [0, 1]; 0 = the box did not move.

    References
    ----------
    Kao et al. (2018), Localization-Aware Active Learning for Object Detection (localization
    stability).
    """
    iou = iou_matrix(boxes, augmented_boxes)
    same = np.asarray(class_ids).reshape(-1, 1) == np.asarray(augmented_class_ids).reshape(1, -1)
    best = np.where(same, iou, 0.0).max(axis=1, initial=0.0)
    return 1.0 - best


def rare_class_scores(frame_classes: Sequence[Sequence[str]], counts: Optional[Mapping[str, int]] = None
                      ) -> List[float]:
    """How rare each frame's rarest class is among all boxes: ``max_c log(B / n_c) / log(B)``.

    Parameters
    ----------
    frame_classes : sequence of sequences of str
        The class label of every box, per frame.
    counts : mapping label -> int, optional
        Boxes per class over the whole pool (default: counted from ``frame_classes``).

    Returns
    -------
    list of float in [0, 1], one per frame: 0 for a frame without boxes (or when the pool
    has a single class or fewer than 2 boxes), 1 for a frame holding a class seen once in a
    pool of B boxes.
    """
    if counts is None:
        counts = count_classes(frame_classes)
    total = sum(counts.values())
    if total < 2:
        return [0.0 for _ in frame_classes]
    norm = math.log(total)
    return [max((math.log(total / counts[label]) / norm for label in labels), default=0.0)
            for labels in frame_classes]


def count_classes(frame_classes: Iterable[Sequence[str]]) -> Dict[str, int]:
    """Boxes per class label over frames (the ``counts`` of :func:`rare_class_scores`)."""
    counts: Dict[str, int] = {}
    for labels in frame_classes:
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    return counts


#: Object crops embedded for object-level diversity: the best boxes of at least this score...
OBJECT_MIN_SCORE = 0.5
#: ... at most this many per frame, each side at least this many pixels.
MAX_OBJECTS = 8
MIN_OBJECT_SIDE = 8


def object_windows(boxes, confidences, width: int, height: int, min_score: float = OBJECT_MIN_SCORE,
                   max_objects: int = MAX_OBJECTS, min_side: int = MIN_OBJECT_SIDE) -> np.ndarray:
    """Integer crop windows ``[x1, y1, x2, y2]`` (int64 ``(K, 4)``, inside the frame) of the
    boxes worth embedding: confidence >= ``min_score``, both sides >= ``min_side`` pixels, at
    most ``max_objects``, best first (``confidences`` are taken as sorted, best first)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    c = np.asarray(confidences, dtype=np.float64).reshape(-1)
    w = np.stack([np.floor(b[:, 0]), np.floor(b[:, 1]), np.ceil(b[:, 2]), np.ceil(b[:, 3])], axis=1)
    w = np.clip(w, 0, [width, height, width, height]).astype(np.int64)
    keep = (c >= min_score) & (w[:, 2] - w[:, 0] >= min_side) & (w[:, 3] - w[:, 1] >= min_side)
    return w[keep][:max_objects]


def mean_unit_embedding(embeddings) -> Optional[np.ndarray]:
    """The mean of the unit-normalised rows of ``embeddings`` ``(K, D)`` as float32 ``(D,)``,
    ``None`` for K = 0: a frame's object-level embedding (each object weighs the same)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or len(e) == 0:
        return None
    unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return unit.mean(axis=0).astype(np.float32)


def describe_objects(detections: Iterable[Mapping], confident: float = 0.5) -> str:
    """What a frame shows, in words: ``"person 9 (3 below 0.5), car 2"``.

    Parameters
    ----------
    detections : iterable of mapping
        A frame document's ``detections`` (``label``, ``score`` in [0, 1]).
    confident : float
        Boxes scored below this are counted as uncertain, per label.

    Returns
    -------
    str
        Labels by decreasing count (then name), ``""`` without detections.
    """
    counts: Dict[str, List[int]] = {}
    for d in detections:
        count = counts.setdefault(str(d.get("label")), [0, 0])
        count[0] += 1
        count[1] += float(d.get("score") or 0.0) < confident
    parts = []
    for label, (n, low) in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0])):
        parts.append(f"{label} {n}" + (f" ({low} below {confident:g})" if low else ""))
    return ", ".join(parts)


def box_uncertainty(confidences) -> np.ndarray:
    """Per-box uncertainty ``1 - |2c - 1|`` of detection confidences ``c`` in [0, 1].

    Parameters
    ----------
    confidences : array-like of float, shape (K,)

    Returns
    -------
    ndarray of float64, shape (K,), in [0, 1]; 1 for a box at ``c = 0.5``.

    Raises
    ------
    ValueError
        If a confidence is outside [0, 1] or not finite.

    References
    ----------
    Brust et al. (2019), Active Learning for Deep Object Detection (the binary margin "1-vs-2").
    """
    c = np.asarray(confidences, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(c)) or np.any((c < 0) | (c > 1)):
        raise ValueError("detection confidences must be finite and in [0, 1]")
    return 1.0 - np.abs(2.0 * c - 1.0)


def aggregate_detection_scores(confidences, band: Tuple[float, float] = UNCERTAIN_BAND,
                               localisation=None, rejected: float = 0.0) -> Dict[str, float]:
    """Per-frame detection scores from the confidences of the frame's boxes.

    Parameters
    ----------
    confidences : array-like of float, shape (K,), in [0, 1]; K may be 0.
    band : (low, high)
        Confidences in ``[low, high]`` count as uncertain boxes.
    localisation : array-like of float, shape (K,), optional
        Per-box :func:`localisation_instability`; adds ``detection_localisation`` (their mean,
        0 without boxes).
    rejected : float in [0, 1]
        ``Detections.rejected``: the confidence of the best box the detector did not keep (0:
        none).

    Returns
    -------
    dict with ``detection_max``, ``detection_mean``, ``detection_sum`` (of
    :func:`box_uncertainty` over the boxes; ``detection_max`` includes ``rejected``, and a frame
    without boxes gets ``rejected``'s for all three, 0 without either),
    ``detection_uncertain_count`` and ``detection_count`` (of the boxes kept, as floats), and
    ``detection_localisation`` when given.

    Raises
    ------
    ValueError
        For confidences or ``rejected`` outside [0, 1], or a band that is not
        ``0 <= low <= high <= 1``.
    """
    low, high = band
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"band must satisfy 0 <= low <= high <= 1, got {band}")
    c = np.asarray(confidences, dtype=np.float64).reshape(-1)
    u = box_uncertainty(c)
    (u_rejected,) = box_uncertainty([rejected])
    if not len(c) and rejected:
        u = np.array([u_rejected])
    scores = {
        "detection_max": float(max(u.max(initial=0.0), u_rejected)),
        "detection_mean": float(u.mean()) if len(u) else 0.0,
        "detection_sum": float(u.sum()),
        "detection_uncertain_count": float(np.count_nonzero((c >= low) & (c <= high))),
        "detection_count": float(len(c)),
    }
    if localisation is not None:
        loc = np.asarray(localisation, dtype=np.float64).reshape(-1)
        if len(loc) != len(c):
            raise ValueError(f"localisation has {len(loc)} values for {len(c)} boxes")
        scores[LOCALISATION_SCORE] = float(loc.mean()) if len(loc) else 0.0
    return scores


def estimate_background(video_path: str, samples: int = 25) -> np.ndarray:
    """The empty scene of a fixed camera: the per-pixel median of ``samples`` evenly spaced frames.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3), RGB.

    Raises
    ------
    ValueError
        If the video yields no frame.
    """
    import av
    with av.open(video_path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{video_path}: no decodable frame")
    picks = np.linspace(0, len(frames) - 1, num=min(samples, len(frames))).round().astype(int)
    return np.median(np.stack([frames[i] for i in picks]), axis=0).astype(np.uint8)

"""Likely label errors in imported annotations, scored against the model's predictions with cleanlab.

Pure functions (numpy and cleanlab, no Beam, no store) over one project's annotations::

    issues = classification_issues(labels, pred_probs)          # labels (n,), pred_probs (n, K)
    issues = detection_issues(given_boxes, predicted_boxes, K)   # per image: [(class, [x1, y1, x2, y2])], ...
    issues[i].quality, issues[i].is_issue, issues[i].issue_type  # 0..1 (low = likely wrong), flagged, type
    order = ranked(issues)                                       # worst first, all types by quality
    queues = ranked_by_type(issues)                              # {type: indices}, each by its own score
    picks = review_queue(rows, budget, ("swap", "overlooked"))  # label_issues rows sent for review

Two methods, both called from cleanlab 2.9 rather than re-implemented:

* **Classification: confident learning** (Northcutt, Jiang and Chuang, "Confident Learning:
  Estimating Uncertainty in Dataset Labels", JAIR 70, 2021). The flag is
  :func:`cleanlab.filter.find_label_issues` (``filter_by="prune_by_noise_rate"``: per-class
  thresholds = the mean predicted probability of the class on the examples labelled with it, the
  confident joint of given and likely-true labels, then the off-diagonal counts' worst examples
  pruned); the score is :func:`cleanlab.rank.get_label_quality_scores` with
  ``method="self_confidence"`` (the predicted probability of the given label). Issue type
  :data:`SWAP` (the class is wrong); the suggested label is the model's argmax.
* **Detection: ObjectLab** (Tkachenko, Thyagarajan and Mueller, "ObjectLab: Automated Diagnosis
  of Mislabeled Images in Object Detection Data", ICML 2023 workshop on Data-centric ML, 2023;
  ``cleanlab.object_detection``). Per box, :func:`cleanlab.object_detection.rank.compute_swap_box_scores`
  (a given box whose class disagrees with a confident predicted box at its place: **swap**),
  :func:`~cleanlab.object_detection.rank.compute_overlooked_box_scores` (a confident predicted box
  that no given box of its class covers: **overlooked**, a missing box) and
  :func:`~cleanlab.object_detection.rank.compute_badloc_box_scores` (a given box that matches
  its class's predicted boxes only loosely: **badloc**, badly located); each pooled per image by
  :func:`~cleanlab.object_detection.rank.pool_box_scores_per_image` (soft-min). The image's score
  is :func:`cleanlab.object_detection.rank.get_label_quality_scores` (a weighted mean of the
  three), the flag :func:`cleanlab.object_detection.filter.find_label_issues`; the issue type
  is the subtype with the lowest pooled score and the suspect box its lowest-scored box.
  **Confident, calibrated to the detector**: ObjectLab sees a swap or an overlooked box only next
  to a *confident* predicted box, confidence >= ``high_probability_threshold`` (cleanlab's default
  0.95). Detectors differ in how sure they sound: NanoDet-g scores most right boxes 0.4-0.8, so
  with 0.95 it would see almost nothing. :func:`confident_threshold` sets it from the project's
  own data: the 5th percentile of the confidences of the predicted boxes that agree with a given
  box (same class, IoU >= 0.5), at most 0.95, so 95 % of the boxes on which the detector and the
  annotators agree count as confident. The swap and overlooked box scores and the image score
  (cleanlab's ``rank._get_subtype_label_quality_scores``, what ``get_label_quality_scores`` runs
  with its defaults) get that threshold; the flag keeps cleanlab's defaults.

**Review queues by issue type.** :func:`ranked` orders every annotation by the overall
``quality`` (for boxes ObjectLab's weighted mean of the three subtypes). A team that reviews
errors by kind (one reviewer checks class swaps, another missing boxes) works through one queue
per type instead: :func:`ranked_by_type` puts each annotation in the queue of its ``issue_type``
and orders the queue by that type's own pooled score (cleanlab's per-type score, above), so a
frame where the detector simply missed an object (a low badloc score) does not push the swaps
down the swap queue. Classification has one type, ``swap``, whose score is ``quality``: its queue
is :func:`ranked`. :func:`review_queue` picks the review tasks from ``label_issues`` rows either
way. ``benchmarks.label_issues`` measures both orders (docs/annotation.md).

Both methods want **out-of-sample** predictions (a model that never trained on these labels),
which is what activebeam's frames carry for newly labelled data. cleanlab's thresholds are
dataset-level: scores depend on the other annotations scored with them, so score a project's
annotations together (:class:`transforms.annotate.ptransforms.FindLabelIssues` gathers them).

Boxes are ``[x1, y1, x2, y2]`` in pixels of the decoded frame; class indices are positions in
the project's class list (the model's class order).
"""
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from schemas.labelling import LABEL_ISSUE_TYPES as ISSUE_TYPES
from transforms.annotate.qc import iou, match_boxes

#: Issue types (cleanlab's names; the registry is :data:`schemas.labelling.LABEL_ISSUE_TYPES`):
#: a wrong class, a missing box, a badly located box.
SWAP, OVERLOOKED, BADLOC = ISSUE_TYPES
#: What scored the labels (the ``method`` column of ``label_issues``).
CLASSIFICATION_METHOD = "cleanlab.filter.find_label_issues(prune_by_noise_rate) + rank.self_confidence"
DETECTION_METHOD = "cleanlab.object_detection (ObjectLab) find_label_issues + get_label_quality_scores"


class ScoredLabel(NamedTuple):
    """cleanlab's verdict on one annotation.

    ``quality``: label quality score in [0, 1], low = likely wrong (cleanlab's ranking score).
    ``is_issue``: flagged by cleanlab's ``find_label_issues``. ``issue_type``: :data:`SWAP`,
    :data:`OVERLOOKED` or :data:`BADLOC` (the likeliest kind of error, also when not flagged).
    ``subtype_scores``: ``{type: pooled score in [0, 1]}`` (detection; classification: ``swap`` =
    ``quality``). ``suggested_class``: the model's class (classification: argmax; detection: the
    predicted box's class for a swap or overlooked box), or ``None``. ``suspect_box``: detection,
    ``(class, [x1, y1, x2, y2])`` of the given box at fault (swap, badloc) or the model's box that
    no given box covers (overlooked). ``model_box``: ``(class, box, confidence)`` of the predicted
    box the suspect is compared with, or ``None``.
    """
    quality: float
    is_issue: bool
    issue_type: str
    subtype_scores: dict
    suggested_class: Optional[int] = None
    suspect_box: Optional[Tuple[int, List[float]]] = None
    model_box: Optional[Tuple[int, List[float], float]] = None


def classification_issues(labels: Sequence[int], pred_probs: np.ndarray) -> List[ScoredLabel]:
    """Confident learning over class labels (see the module docstring).

    Parameters
    ----------
    labels : sequence of int, shape (n,)
        The given class of each annotation, in ``0 .. K-1``.
    pred_probs : ndarray of float, shape (n, K)
        The model's class probabilities for the annotated frame (rows sum to 1, out-of-sample).

    Returns
    -------
    list of ScoredLabel
        One per annotation, in input order.

    Raises
    ------
    ValueError
        If the shapes disagree, ``K < 2``, a label is outside ``0 .. K-1`` or a row is not a
        probability vector.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] < 2:
        raise ValueError(f"pred_probs must be (n, K >= 2) with n = {labels.shape[0]} labels, got {probs.shape}")
    if labels.size == 0:
        return []
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be in 0 .. {probs.shape[1] - 1}, got {labels.min()} .. {labels.max()}")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("every row of pred_probs must be a probability vector (finite, >= 0, summing to 1)")
    probs = probs / probs.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():  # cleanlab warns about classes with few examples: not an error here
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
        flagged = (find_label_issues(labels, probs, filter_by="prune_by_noise_rate") if labels.size > 1
                   else np.zeros(1, dtype=bool))
    suggested = probs.argmax(axis=1)
    return [ScoredLabel(float(q), bool(f), SWAP, {SWAP: float(q)},
                        int(s) if int(s) != int(l) else None)
            for q, f, s, l in zip(quality, flagged, suggested, labels)]


def _cleanlab_label(boxes: Sequence[Tuple[int, Sequence[float]]]) -> dict:
    return {"bboxes": np.asarray([b for _, b in boxes], dtype=np.float64).reshape(-1, 4),
            "labels": np.asarray([c for c, _ in boxes], dtype=np.int64)}


def _cleanlab_prediction(boxes: Sequence[Tuple[int, Sequence[float], float]], n_classes: int):
    """cleanlab's per-image prediction: K arrays ``(M_k, 5)`` of ``[x1, y1, x2, y2, confidence]``;
    also the flat list in cleanlab's order (class by class), which its per-box scores follow."""
    per_class = [[] for _ in range(n_classes)]
    for c, box, score in boxes:
        per_class[c].append(list(map(float, box)) + [float(score)])
    prediction = np.empty(n_classes, dtype=object)
    flat = []
    for c in range(n_classes):
        prediction[c] = np.asarray(per_class[c], dtype=np.float64).reshape(-1, 5)
        flat.extend((c, row[:4], row[4]) for row in per_class[c])
    return prediction, flat


def _check_boxes(name: str, i: int, boxes, n_classes: int, scored: bool):
    for entry in boxes:
        c, box = int(entry[0]), entry[1]
        if not 0 <= c < n_classes:
            raise ValueError(f"{name}[{i}]: class {c} is outside 0 .. {n_classes - 1}")
        if len(box) != 4 or not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{name}[{i}]: box {list(box)} is not a finite [x1, y1, x2, y2]")
        if scored and not 0.0 <= float(entry[2]) <= 1.0:
            raise ValueError(f"{name}[{i}]: confidence {entry[2]} is outside [0, 1]")


#: :func:`confident_threshold`: the share of agreeing predicted boxes counted as confident, the
#: fewest agreeing boxes to calibrate on (else cleanlab's default), and the bounds of the result.
CONFIDENT_SHARE = 0.95
MIN_AGREEING_BOXES = 20
CONFIDENT_BOUNDS = (0.3, 0.95)


def confident_threshold(given: Sequence[Sequence[Tuple[int, Sequence[float]]]],
                        predicted: Sequence[Sequence[Tuple[int, Sequence[float], float]]]) -> float:
    """ObjectLab's ``high_probability_threshold`` calibrated to the detector (module docstring).

    Parameters
    ----------
    given, predicted : as :func:`detection_issues` takes them

    Returns
    -------
    float in :data:`CONFIDENT_BOUNDS`: the ``1 - CONFIDENT_SHARE`` quantile of the confidences of
    predicted boxes matched one-to-one to a given box of their class at IoU >= 0.5
    (:func:`transforms.annotate.qc.match_boxes`), capped at cleanlab's 0.95; cleanlab's 0.95 with
    fewer than :data:`MIN_AGREEING_BOXES` such boxes.
    """
    from cleanlab.object_detection.rank import HIGH_PROBABILITY_THRESHOLD
    agreeing = []
    for g, p in zip(given, predicted):
        a = [{"label": int(c), "box": list(box)} for c, box in g]
        b = [{"label": int(c), "box": list(box), "score": float(score)} for c, box, score in p]
        agreeing.extend(b[j]["score"] for _, j, _ in match_boxes(a, b, 0.5))
    if len(agreeing) < MIN_AGREEING_BOXES:
        return float(HIGH_PROBABILITY_THRESHOLD)
    low, high = CONFIDENT_BOUNDS
    return float(np.clip(np.quantile(agreeing, 1.0 - CONFIDENT_SHARE), low, min(high, HIGH_PROBABILITY_THRESHOLD)))


def _closest(box: Sequence[float], candidates: Sequence[tuple]) -> Optional[tuple]:
    """The candidate box of largest IoU with ``box`` (``None`` if none overlaps)."""
    best = max(candidates, key=lambda c: iou(box, c[1]), default=None)
    return best if best is not None and iou(box, best[1]) > 0 else None


def detection_issues(given: Sequence[Sequence[Tuple[int, Sequence[float]]]],
                     predicted: Sequence[Sequence[Tuple[int, Sequence[float], float]]],
                     n_classes: int, high_probability_threshold: Optional[float] = None) -> List[ScoredLabel]:
    """ObjectLab over box annotations (see the module docstring).

    Parameters
    ----------
    given : sequence of n sequences of (int, [x1, y1, x2, y2])
        Each annotation's boxes: class index and box in pixels (an empty list: "nothing to box").
    predicted : sequence of n sequences of (int, [x1, y1, x2, y2], float)
        The model's boxes for the same frame, with their confidence in [0, 1] (out-of-sample;
        keep the low-confidence ones, cleanlab weighs them).
    n_classes : int
        K, the number of classes (>= 1).
    high_probability_threshold : float, optional
        Confidence from which a predicted box is trusted for swaps and overlooked boxes; default
        :func:`confident_threshold` of these annotations.

    Returns
    -------
    list of ScoredLabel
        The verdict on each image's annotation (input order).

    Raises
    ------
    ValueError
        On ``len(given) != len(predicted)``, a class outside ``0 .. K-1``, a malformed box or a
        confidence outside [0, 1].
    """
    from cleanlab.object_detection import rank as od_rank
    from cleanlab.object_detection.filter import find_label_issues
    if len(given) != len(predicted):
        raise ValueError(f"given ({len(given)}) and predicted ({len(predicted)}) must have one entry per annotation")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if not given:
        return []
    for i, (g, p) in enumerate(zip(given, predicted)):
        _check_boxes("given", i, g, n_classes, scored=False)
        _check_boxes("predicted", i, p, n_classes, scored=True)
    confident = confident_threshold(given, predicted) if high_probability_threshold is None \
        else float(high_probability_threshold)
    labels = [_cleanlab_label(g) for g in given]
    predictions, flats = zip(*(_cleanlab_prediction(p, n_classes) for p in predicted))
    predictions = list(predictions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # get_label_quality_scores with the calibrated threshold instead of its default
        quality = od_rank._get_subtype_label_quality_scores(labels, predictions,
                                                            high_probability_threshold=confident)
        flagged = find_label_issues(labels, predictions)
        per_box = {SWAP: od_rank.compute_swap_box_scores(labels=labels, predictions=predictions,
                                                         high_probability_threshold=confident),
                   OVERLOOKED: od_rank.compute_overlooked_box_scores(labels=labels, predictions=predictions,
                                                                     high_probability_threshold=confident),
                   BADLOC: od_rank.compute_badloc_box_scores(labels=labels, predictions=predictions)}
        pooled = {t: od_rank.pool_box_scores_per_image([np.nan_to_num(s, nan=1.0) for s in scores])
                  for t, scores in per_box.items()}
    out = []
    for i, (g, flat) in enumerate(zip(given, flats)):
        subtype = {t: float(pooled[t][i]) for t in ISSUE_TYPES}
        issue_type = min(ISSUE_TYPES, key=lambda t: (subtype[t], ISSUE_TYPES.index(t)))
        scores = np.nan_to_num(np.asarray(per_box[issue_type][i], dtype=np.float64), nan=1.0)
        suspect = model = suggested = None
        if scores.size:
            j = int(np.argmin(scores))
            if issue_type == OVERLOOKED:  # a confident model box that no given box covers
                model = (int(flat[j][0]), [float(v) for v in flat[j][1]], float(flat[j][2]))
                suspect, suggested = (model[0], model[1]), model[0]
            else:
                c, box = g[j]
                suspect = (int(c), [float(v) for v in box])
                wanted = [f for f in flat if issue_type == SWAP or f[0] == c]
                near = _closest(box, wanted)
                if near is not None:
                    model = (int(near[0]), [float(v) for v in near[1]], float(near[2]))
                    suggested = model[0] if issue_type == SWAP and model[0] != c else None
        out.append(ScoredLabel(float(quality[i]), bool(flagged[i]), issue_type, subtype, suggested, suspect, model))
    return out


def ranked(issues: Sequence[ScoredLabel]) -> List[int]:
    """Indices of ``issues`` worst first: by ``quality`` ascending (cleanlab's ranking), ties by index."""
    return sorted(range(len(issues)), key=lambda i: (issues[i].quality, i))



def type_score(issue: ScoredLabel) -> float:
    """The pooled score in [0, 1] of the issue's own type (``subtype_scores[issue_type]``; low =
    likely wrong): what orders its type's queue. Classification: ``quality``."""
    return float(issue.subtype_scores[issue.issue_type])


def ranked_by_type(issues: Sequence[ScoredLabel]) -> Dict[str, List[int]]:
    """Each issue type's review queue (module docstring, "Review queues by issue type").

    Parameters
    ----------
    issues : sequence of ScoredLabel, length n
        One scoring run's verdicts (:func:`classification_issues` or :func:`detection_issues`).

    Returns
    -------
    dict of str to list of int
        For every type of :data:`ISSUE_TYPES` (empty lists included), the indices of the issues
        whose ``issue_type`` it is, worst first: by :func:`type_score` ascending, ties by index.
        Every index is in exactly one queue.

    References
    ----------
    The per-type scores are cleanlab's, nothing is re-scored here: for boxes ObjectLab's
    ``compute_swap_box_scores``, ``compute_overlooked_box_scores`` and
    ``compute_badloc_box_scores`` pooled per image by ``pool_box_scores_per_image`` (Tkachenko,
    Thyagarajan and Mueller, 2023); for classes ``get_label_quality_scores(method="self_confidence")``
    (Northcutt, Jiang and Chuang, JAIR 2021). The queues are a sort of them.
    """
    queues = {t: [] for t in ISSUE_TYPES}
    for i in sorted(range(len(issues)), key=lambda i: (type_score(issues[i]), i)):
        queues[issues[i].issue_type].append(i)
    return queues


def review_queue(rows: Sequence[dict], budget: int, issue_types: Optional[Sequence[str]] = None) -> List[dict]:
    """The ``label_issues`` rows (:mod:`schemas.labelling`) to send for review, in review order.

    Parameters
    ----------
    rows : sequence of dict
        One scoring run's rows, with ``is_issue``, ``issue_type``, ``rank`` and ``type_rank``.
    budget : int
        ``>= 0``. Without ``issue_types``: the most rows picked; with them: the most per type.
    issue_types : sequence of str, optional
        ``None`` (or empty): the flagged rows of every type by ``rank`` (overall quality). Else
        one queue per listed type, in the order given: that type's flagged rows by ``type_rank``.

    Returns
    -------
    list of dict
        At most ``budget`` rows (``budget * len(issue_types)`` with types), flagged ones only.

    Raises
    ------
    ValueError
        On a negative budget or a type outside :data:`ISSUE_TYPES`.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    flagged = [r for r in rows if r["is_issue"]]
    if not issue_types:
        return sorted(flagged, key=lambda r: r["rank"])[:budget]
    unknown = [t for t in issue_types if t not in ISSUE_TYPES]
    if unknown:
        raise ValueError(f"issue types must be among {', '.join(ISSUE_TYPES)}, got {', '.join(unknown)}")
    return [r for t in dict.fromkeys(issue_types)
            for r in sorted((r for r in flagged if r["issue_type"] == t), key=lambda r: r["type_rank"])[:budget]]

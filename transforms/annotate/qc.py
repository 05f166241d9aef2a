"""Annotation-vendor quality control: agreement, gold accuracy, throughput, and which labels stand.

Pure functions over normalised annotations (dicts with ``frame_id``, ``annotator``, ``label``,
``boxes`` ``[{label, box: [x1, y1, x2, y2]}]``, ``selection_id``, ``lead_time_s``)::

    report = qc_report(annotations, gold={"f1": {"label": "coat"}}, kind="classification")
    report["annotators"]["ann@x.org"]["gold_accuracy"]   # 0.0 .. 1.0, or None without gold answers
    report["tasks"]["f7"]["status"]                      # accepted / relabel / gold

The checks are the ones annotation teams run on vendors (e.g. Label Studio Enterprise's
"agreement" and "ground truth" scores, Labelbox's "consensus" and "benchmarks"):

* **Class agreement** of two annotations of the same frame: 1 if their labels are equal, else 0
  (for detection the label is the set of box classes, :func:`transforms.annotate.label_studio.parse_result`).
* **Box F1** (detection): boxes matched greedily by decreasing IoU, one-to-one, same class,
  ``IoU >= iou_threshold`` (the PASCAL VOC / COCO matching rule: Everingham et al., "The PASCAL
  Visual Object Classes (VOC) Challenge", IJCV 2010, section 4.2); ``F1 = 2 TP / (|A| + |B|)``,
  1 when both are empty.
* **Gold accuracy**: share of an annotator's answers to gold tasks that are right (the same
  label; for detection, box F1 against the gold boxes ``>= min_box_f1``).
* **Throughput**: annotations per hour of Label Studio lead time (time spent on the task).

A frame's labels **stand** (``accepted``) when the annotators who answered it are trusted (gold
accuracy ``>= min_gold_accuracy``, or no gold answered) and, with two or more of them, their
mean pairwise agreement (class agreement; box F1 for detection) is ``>= min_agreement``; the
accepted answer is the majority label (ties: the annotator with the best agreement, then by
name). Otherwise the frame goes back for relabelling (``relabel``, with the reason). Gold
frames are ``gold``: they measure annotators and are not labels to train on.
"""
import itertools
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

DEFAULT_IOU_THRESHOLD = 0.5
DEFAULT_MIN_AGREEMENT = 0.5
DEFAULT_MIN_GOLD_ACCURACY = 0.5
DEFAULT_MIN_BOX_F1 = 0.5
ACCEPTED, RELABEL, GOLD = "accepted", "relabel", "gold"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``[x1, y1, x2, y2]`` (pixels); 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(a: Sequence[dict], b: Sequence[dict], iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                same_class: bool = True) -> List[Tuple[int, int, float]]:
    """Greedy one-to-one matching of boxes by decreasing IoU (ties by index).

    Parameters
    ----------
    a, b : sequence of dict
        Boxes ``{"label": str, "box": [x1, y1, x2, y2]}``.
    iou_threshold : float
        Pairs below this IoU never match.
    same_class : bool
        Only boxes of the same label match.

    Returns
    -------
    list of (int, int, float)
        ``(index in a, index in b, IoU)`` of each matched pair.
    """
    pairs = sorted(((iou(x["box"], y["box"]), i, j) for i, x in enumerate(a) for j, y in enumerate(b)
                    if not same_class or x["label"] == y["label"]), key=lambda t: (-t[0], t[1], t[2]))
    used_a, used_b, matched = set(), set(), []
    for value, i, j in pairs:
        if value < iou_threshold or i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        matched.append((i, j, value))
    return matched


def box_f1(a: Sequence[dict], b: Sequence[dict], iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> float:
    """F1 of two box sets: ``2 TP / (|a| + |b|)`` with TP the class-aware IoU matches; 1 if both empty."""
    if not a and not b:
        return 1.0
    return 2.0 * len(match_boxes(a, b, iou_threshold)) / (len(a) + len(b))


def class_agreement(a: dict, b: dict) -> float:
    """1.0 when two annotations give the same label, else 0.0."""
    return 1.0 if a["label"] == b["label"] else 0.0


def pair_agreement(a: dict, b: dict, kind: str, iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> float:
    """The agreement acceptance uses: class agreement (classification) or box F1 (detection)."""
    if kind == "detection":
        return box_f1(a.get("boxes") or [], b.get("boxes") or [], iou_threshold)
    return class_agreement(a, b)


def gold_correct(answer: dict, gold: dict, kind: str, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                 min_box_f1: float = DEFAULT_MIN_BOX_F1) -> bool:
    """Whether an answer to a gold task is right (same label; detection: box F1 ``>= min_box_f1``)."""
    if kind == "detection" and gold.get("boxes") is not None:
        return box_f1(answer.get("boxes") or [], gold["boxes"], iou_threshold) >= min_box_f1
    return answer["label"] == gold["label"]


class _Tally:
    """Running sums of one annotator's (or one batch's) figures."""

    def __init__(self):
        self.annotations, self.lead_time_s = 0, 0.0
        self.class_pairs, self.box_pairs = [], []
        self.gold_answers, self.gold_right = 0, 0
        self.frames, self.accepted, self.relabel = set(), 0, 0

    def figures(self, kind: str) -> dict:
        mean = lambda xs: (sum(xs) / len(xs)) if xs else None  # noqa: E731
        hours = self.lead_time_s / 3600.0
        return {
            "annotations": self.annotations, "frames": len(self.frames),
            "overlap_pairs": len(self.class_pairs),
            "class_agreement": mean(self.class_pairs),
            "box_f1": mean(self.box_pairs) if kind == "detection" else None,
            "gold_answers": self.gold_answers,
            "gold_accuracy": (self.gold_right / self.gold_answers) if self.gold_answers else None,
            "lead_time_s": round(self.lead_time_s, 3),
            "per_hour": (self.annotations / hours) if hours > 0 else None,
            "accepted": self.accepted, "relabel": self.relabel,
        }


def qc_report(annotations: Iterable[dict], gold: Optional[Dict[str, dict]] = None, kind: str = "classification",
              iou_threshold: float = DEFAULT_IOU_THRESHOLD, min_agreement: float = DEFAULT_MIN_AGREEMENT,
              min_gold_accuracy: float = DEFAULT_MIN_GOLD_ACCURACY,
              min_box_f1: float = DEFAULT_MIN_BOX_F1) -> dict:
    """Per-annotator and per-batch QC figures, and the status of every annotated frame.

    Parameters
    ----------
    annotations : iterable of dict
        Normalised annotations (``frame_id``, ``annotator``, ``label``, ``boxes``,
        ``selection_id`` = the batch, ``lead_time_s``); one per (frame, annotator).
    gold : dict, optional
        ``frame_id -> {"label": str, "boxes": [...] or None}``: the known answers.
    kind : str
        ``classification`` or ``detection``.
    iou_threshold, min_agreement, min_gold_accuracy, min_box_f1 : float
        Thresholds in [0, 1] (see the module docstring).

    Returns
    -------
    dict
        ``{"annotators": {name: figures}, "batches": {selection_id: figures}, "tasks":
        {frame_id: {"status", "reason", "label", "boxes", "annotators", "agreement"}},
        "thresholds": {...}}``; figures are ``annotations``, ``frames``, ``overlap_pairs``,
        ``class_agreement``, ``box_f1``, ``gold_answers``, ``gold_accuracy``, ``lead_time_s``,
        ``per_hour``, ``accepted``, ``relabel`` (``None`` where nothing was measured).

    Raises
    ------
    ValueError
        If a threshold is outside [0, 1].
    """
    for name, value in (("iou_threshold", iou_threshold), ("min_agreement", min_agreement),
                        ("min_gold_accuracy", min_gold_accuracy), ("min_box_f1", min_box_f1)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    gold = gold or {}
    by_frame: Dict[str, List[dict]] = {}
    for a in annotations:
        by_frame.setdefault(a["frame_id"], []).append(a)
    annotators: Dict[str, _Tally] = {}
    batches: Dict[str, _Tally] = {}
    tally = lambda table, key: table.setdefault(key, _Tally())  # noqa: E731

    for frame_id, answers in sorted(by_frame.items()):
        answers = sorted(answers, key=lambda a: a["annotator"])
        for a in answers:
            for t in (tally(annotators, a["annotator"]), tally(batches, a.get("selection_id") or "")):
                t.annotations += 1
                t.lead_time_s += float(a.get("lead_time_s") or 0.0)
                t.frames.add(frame_id)
                if frame_id in gold:
                    t.gold_answers += 1
                    t.gold_right += gold_correct(a, gold[frame_id], kind, iou_threshold, min_box_f1)
        for a, b in itertools.combinations(answers, 2):
            agree = class_agreement(a, b)
            f1 = box_f1(a.get("boxes") or [], b.get("boxes") or [], iou_threshold) if kind == "detection" else None
            batch = tally(batches, a.get("selection_id") or "")
            for t in (tally(annotators, a["annotator"]), tally(annotators, b["annotator"]), batch):
                t.class_pairs.append(agree)
                if f1 is not None:
                    t.box_pairs.append(f1)

    trusted = {name for name, t in annotators.items()
               if not t.gold_answers or t.gold_right / t.gold_answers >= min_gold_accuracy}
    tasks = {}
    for frame_id, answers in sorted(by_frame.items()):
        task = _decide(frame_id, answers, gold, trusted, kind, iou_threshold, min_agreement)
        tasks[frame_id] = task
        if task["status"] == GOLD:
            continue
        batch = tally(batches, answers[0].get("selection_id") or "")
        for t in [batch] + [annotators[a["annotator"]] for a in answers]:
            if task["status"] == ACCEPTED:
                t.accepted += 1
            else:
                t.relabel += 1
    return {
        "kind": kind,
        "thresholds": {"iou_threshold": iou_threshold, "min_agreement": min_agreement,
                       "min_gold_accuracy": min_gold_accuracy, "min_box_f1": min_box_f1},
        "annotators": {name: t.figures(kind) for name, t in sorted(annotators.items())},
        "batches": {name: t.figures(kind) for name, t in sorted(batches.items())},
        "tasks": tasks,
    }


def _decide(frame_id: str, answers: List[dict], gold: Dict[str, dict], trusted: set, kind: str,
            iou_threshold: float, min_agreement: float) -> dict:
    names = sorted(a["annotator"] for a in answers)
    if frame_id in gold:
        return {"status": GOLD, "reason": "gold task", "label": gold[frame_id]["label"],
                "boxes": gold[frame_id].get("boxes") or [], "annotators": names, "agreement": None}
    kept = sorted((a for a in answers if a["annotator"] in trusted), key=lambda a: a["annotator"])
    if not kept:
        return {"status": RELABEL, "reason": "every annotator of the frame is below the gold accuracy threshold",
                "label": None, "boxes": [], "annotators": names, "agreement": None}
    if len(kept) == 1:
        return {"status": ACCEPTED, "reason": "one trusted annotator", "label": kept[0]["label"],
                "boxes": kept[0].get("boxes") or [], "annotators": names, "agreement": None}
    scores = {a["annotator"]: [] for a in kept}
    pairs = []
    for a, b in itertools.combinations(kept, 2):
        value = pair_agreement(a, b, kind, iou_threshold)
        pairs.append(value)
        scores[a["annotator"]].append(value)
        scores[b["annotator"]].append(value)
    agreement = sum(pairs) / len(pairs)
    if agreement < min_agreement:
        return {"status": RELABEL, "reason": f"agreement {agreement:.3g} below {min_agreement:g}",
                "label": None, "boxes": [], "annotators": names, "agreement": agreement}
    votes: Dict[str, int] = {}
    for a in kept:
        votes[a["label"]] = votes.get(a["label"], 0) + 1
    best = sorted(kept, key=lambda a: (-votes[a["label"]], -sum(scores[a["annotator"]]), a["annotator"]))[0]
    return {"status": ACCEPTED, "reason": f"agreement {agreement:.3g}", "label": best["label"],
            "boxes": best.get("boxes") or [], "annotators": names, "agreement": agreement}


def report_rows(report: dict, project: str, qc_id: str) -> List[dict]:
    """The report's per-annotator and per-batch figures as flat rows (``scope`` ``annotator`` or
    ``batch``, ``name``), the form stored in the ``qc_reports`` table."""
    rows = []
    for scope, table in (("annotator", report["annotators"]), ("batch", report["batches"])):
        for name, figures in table.items():
            rows.append(dict(figures, qc_id=qc_id, project=project, scope=scope, name=name, kind=report["kind"]))
    return rows

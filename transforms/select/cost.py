"""Annotation cost as the budget (pure; no Beam): a cost model of labelling seconds, its
calibration from the annotations that came back, and :class:`CostBudget`, which fills a budget of
frames, predicted boxes or seconds with any strategy's ranking.

The cost of labelling a frame with ``n`` predicted boxes is

    seconds(n) = seconds_per_frame + seconds_per_box x n

and a budget is counted in one of :data:`BUDGET_UNITS`:

* ``frames``: every frame costs 1 (the budget is a number of frames, as without a cost model);
* ``seconds``: ``seconds(n)``, the estimated labelling time;
* ``boxes``: ``seconds(n) / seconds_per_box``, the predicted boxes plus the time to open and
  check the frame expressed in boxes, so a frame the detector finds empty is not free (a boxes
  budget is a seconds budget divided by ``seconds_per_box``).

Published defaults (:data:`SECONDS_PER_BOX`, :data:`SECONDS_PER_FRAME`):

* a box: 7.0 s, extreme clicking (Papadopoulos, Uijlings, Keller & Ferrari, "Extreme clicking for
  efficient object annotation", ICCV 2017, measured on PASCAL VOC); drawing a box the
  conventional way took about 35 s on ILSVRC (Su, Deng & Fei-Fei, "Crowdsourcing annotations for
  visual object detection", AAAI-W 2012), which ``--seconds_per_box 35`` models;
* a frame: 5.0 s, the image-level pass in which the annotator checks which classes are present
  and finds what the detector missed: about 1 s per class (Bearman, Russakovsky, Ferrari &
  Fei-Fei, "What's the point: semantic segmentation with point supervision", ECCV 2016), for a
  camera team's handful of classes (person, bicycle, car, truck, dog).

Once at least :data:`MIN_CALIBRATION_ANNOTATIONS` annotations have a Label Studio ``lead_time``,
:func:`fit_cost_model` replaces both numbers by a non-negative least-squares fit of lead time
against the boxes the annotators drew.
"""
import json
import math
from typing import NamedTuple, Optional, Sequence

import numpy as np

from transforms.select.base import Pool, Selection, Strategy, empty_selection

FRAMES, BOXES, SECONDS = "frames", "boxes", "seconds"
BUDGET_UNITS = (FRAMES, BOXES, SECONDS)
#: Seconds per box: extreme clicking (Papadopoulos et al., ICCV 2017).
SECONDS_PER_BOX = 7.0
#: Seconds per frame: the image-level pass, about 1 s per class (Bearman et al., ECCV 2016) for
#: five classes.
SECONDS_PER_FRAME = 5.0
#: Annotations with a lead time needed before the cost model is fitted to them.
MIN_CALIBRATION_ANNOTATIONS = 30
#: Share of the slowest annotations left out of the fit (an annotator who left the task open).
SLOWEST_LEFT_OUT = 0.05
#: ``Pool.metadata`` column of predicted boxes per frame (:func:`transforms.select.ptransforms.to_pool`).
BOXES_KEY = "boxes"
PUBLISHED = "published"


class CostModel(NamedTuple):
    """Labelling seconds of a frame: ``seconds_per_frame + seconds_per_box x boxes``.

    ``source``: :data:`PUBLISHED` (the module's cited defaults), ``"calibrated"`` (fitted to
    ``annotations`` lead times by :func:`fit_cost_model`) or ``"given"`` (the user's numbers);
    ``annotations``: how many lead times the fit used (0 otherwise).
    """
    seconds_per_frame: float = SECONDS_PER_FRAME
    seconds_per_box: float = SECONDS_PER_BOX
    source: str = PUBLISHED
    annotations: int = 0

    def seconds(self, boxes) -> np.ndarray:
        """Estimated labelling seconds, float64 shaped like ``boxes`` (predicted boxes per frame)."""
        return self.seconds_per_frame + self.seconds_per_box * np.asarray(boxes, dtype=np.float64)

    def costs(self, boxes, unit: str) -> np.ndarray:
        """Cost of each frame in ``unit`` (one of :data:`BUDGET_UNITS`), float64 ``(N,)``.

        Raises
        ------
        ValueError
            For another unit, or ``boxes`` with a model whose ``seconds_per_box`` is 0.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1)
        if unit == FRAMES:
            return np.ones_like(boxes)
        if unit == SECONDS:
            return self.seconds(boxes)
        if unit == BOXES:
            if self.seconds_per_box <= 0:
                raise ValueError("a boxes budget needs seconds_per_box > 0")
            return self.seconds(boxes) / self.seconds_per_box
        raise ValueError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")

    def describe(self) -> dict:
        return {"seconds_per_frame": round(self.seconds_per_frame, 3),
                "seconds_per_box": round(self.seconds_per_box, 3), "source": self.source,
                "annotations": self.annotations}


def checked_cost_model(seconds_per_frame: Optional[float] = None,
                       seconds_per_box: Optional[float] = None,
                       calibrated: Optional[CostModel] = None) -> CostModel:
    """The cost model a run uses: the user's numbers where given, else the calibrated model's,
    else the published defaults.

    Raises
    ------
    ValueError
        For a negative or non-finite number, or both numbers 0.
    """
    base = calibrated or CostModel()
    per_frame = base.seconds_per_frame if seconds_per_frame is None else seconds_per_frame
    per_box = base.seconds_per_box if seconds_per_box is None else seconds_per_box
    for flag, value in (("seconds_per_frame", per_frame), ("seconds_per_box", per_box)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag} must be a number >= 0, got {value!r}")
    if per_frame == 0 and per_box == 0:
        raise ValueError("seconds_per_frame and seconds_per_box cannot both be 0")
    given = seconds_per_frame is not None or seconds_per_box is not None
    return CostModel(float(per_frame), float(per_box), "given" if given else base.source,
                     0 if given else base.annotations)


def fit_cost_model(lead_times_s: Sequence[float], boxes: Sequence[int],
                   min_annotations: int = MIN_CALIBRATION_ANNOTATIONS) -> Optional[CostModel]:
    """The cost model fitted to annotations: non-negative least squares of lead time (s) on the
    number of boxes drawn, ``scikit-learn`` ``LinearRegression(positive=True)``, after leaving out
    missing or non-positive lead times and the slowest :data:`SLOWEST_LEFT_OUT`.

    Parameters
    ----------
    lead_times_s : sequence of float
        Label Studio ``lead_time`` of each annotation, seconds (None or NaN: unknown).
    boxes : sequence of int
        Boxes in each annotation (0 for a classification answer).
    min_annotations : int
        Fewer usable annotations than this: no fit.

    Returns
    -------
    CostModel or None
        ``source="calibrated"``; None with too few annotations.
    """
    t = np.array([np.nan if v is None else v for v in lead_times_s], dtype=np.float64)
    n = np.asarray(boxes, dtype=np.float64)
    usable = np.isfinite(t) & (t > 0)
    t, n = t[usable], n[usable]
    if len(t) < min_annotations:
        return None
    keep = t <= np.quantile(t, 1.0 - SLOWEST_LEFT_OUT)
    t, n = t[keep], n[keep]
    if np.ptp(n) == 0:
        if n[0] != 0:
            return None  # as many boxes in every annotation: frame and box time cannot be told apart
        return CostModel(float(np.mean(t)), SECONDS_PER_BOX, "calibrated", len(t))  # classification only
    from sklearn.linear_model import LinearRegression  # imported only to fit (2 s of a job's start-up)
    fit = LinearRegression(positive=True).fit(n[:, None], t)
    per_frame, per_box = max(0.0, float(fit.intercept_)), float(fit.coef_[0])
    if per_frame == 0 and per_box == 0:
        return None
    return CostModel(per_frame, per_box, "calibrated", len(t))


#: Annotations (the most recent) the cost model is fitted to.
CALIBRATION_ANNOTATIONS = 10_000


def fit_to_annotations(db, limit: int = CALIBRATION_ANNOTATIONS) -> Optional[CostModel]:
    """:func:`fit_cost_model` of the ``annotations`` collection of ``db`` (a pymongo
    ``Database``; its most recent ``limit`` annotations with a lead time), or ``None`` with too few.

    Raises
    ------
    pymongo.errors.PyMongoError
        When the collection cannot be read.
    """
    docs = list(db["annotations"].find({"lead_time_s": {"$gt": 0}}, {"lead_time_s": 1, "boxes": 1})
                .sort("annotated_at", -1).limit(limit))
    return fit_cost_model([d["lead_time_s"] for d in docs], [annotation_boxes(d.get("boxes")) for d in docs])


def annotation_boxes(boxes_json: Optional[str]) -> int:
    """Boxes in an ``annotations`` record's ``boxes`` (JSON list; None: a classification answer)."""
    if not boxes_json:
        return 0
    try:
        return len(json.loads(boxes_json))
    except (TypeError, ValueError):
        return 0


class CostBudget(Strategy):
    """Fills a budget of ``unit`` (frames, boxes or seconds; see the module docstring) with
    ``inner``'s ranking: frames are taken in ``inner``'s rank order, each if its cost still fits
    (a frame too dear is passed over for cheaper ones below it, a greedy knapsack in rank order).

    ``inner`` is asked for ``k`` frames, ``k`` the frames the budget buys at the pool's median
    cost, and asked again for twice as many until the budget is spent or the pool exhausted; a
    ranking whose prefix is its selection for a smaller budget (top-k, farthest-first k-centre,
    :class:`~transforms.select.uncertainty_kcenter.UncertaintyKCenter`) is filled exactly so.

    Pool: ``metadata["boxes"]`` (predicted boxes per frame; 0 where absent). Components added to
    ``inner``'s: ``predicted_boxes`` and ``label_seconds`` (the cost model's estimate).

    Raises
    ------
    ValueError
        For an unknown unit or a strategy that is not one.
    """

    def __init__(self, inner: Strategy, unit: str = FRAMES, cost_model: Optional[CostModel] = None):
        if not isinstance(inner, Strategy):
            raise ValueError(f"inner must be a Strategy, got {inner!r}")
        if unit not in BUDGET_UNITS:
            raise ValueError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")
        self.inner = inner
        self.unit = unit
        self.cost_model = cost_model or CostModel()
        self.cost_model.costs([0], unit)  # a boxes budget without seconds_per_box fails here
        self.name = inner.name

    def params(self):
        return {"inner": self.inner.describe(), "budget_unit": self.unit, "cost_model": self.cost_model.describe()}

    def describe(self):
        # A frames budget selects what ``inner`` selects: the same selection (and selection id),
        # whatever the cost model that only estimates its labelling time.
        return self.inner.describe() if self.unit == FRAMES else super().describe()

    def _boxes(self, pool: Pool) -> np.ndarray:
        meta = pool.metadata or {}
        if BOXES_KEY not in meta:
            return np.zeros(len(pool))
        return np.asarray(meta[BOXES_KEY], dtype=np.float64)

    def _frames_for(self, costs: np.ndarray, budget: float) -> int:
        """Frames ``budget`` buys at the median cost (at least 1, at most the pool)."""
        return int(min(len(costs), max(1, math.ceil(budget / max(float(np.median(costs)), 1e-9)))))

    def _with_costs(self, selection: Selection, boxes: np.ndarray) -> Selection:
        picked = boxes[selection.indices]
        return selection._replace(components=dict(selection.components, predicted_boxes=picked,
                                                  label_seconds=self.cost_model.seconds(picked)))

    def preselect(self, pool, budget, labelled=None):
        if self.unit == FRAMES:
            return self.inner.preselect(pool, budget, labelled)
        costs = self.cost_model.costs(self._boxes(pool), self.unit)
        cheapest = max(float(costs.min()), 1e-9)
        return self.inner.preselect(pool, int(min(len(pool), math.ceil(budget / cheapest))), labelled)

    def _select(self, pool, budget, labelled):
        boxes = self._boxes(pool)
        if self.unit == FRAMES:
            return self._with_costs(self.inner.select(pool, budget, labelled), boxes)
        costs = self.cost_model.costs(boxes, self.unit)
        ask = self._frames_for(costs, budget)
        while True:
            ranked = self.inner.select(pool, ask, labelled)
            taken, left = [], float(budget)
            for r, i in enumerate(ranked.indices):
                if costs[i] <= left + 1e-9:
                    taken.append(r)
                    left -= costs[i]
            exhausted = len(ranked.indices) < ask or ask >= len(pool)
            if exhausted or left < costs.min() - 1e-9 or not len(ranked.indices):
                break
            ask = min(len(pool), 2 * ask)
        if not taken:
            return empty_selection()
        rows = np.asarray(taken, dtype=np.int64)
        chosen = Selection(ranked.indices[rows], ranked.scores[rows],
                           {k: np.asarray(v)[rows] for k, v in ranked.components.items()})
        return self._with_costs(chosen, boxes)


def selection_cost(boxes: Sequence[float], cost_model: CostModel) -> dict:
    """What a selection costs to label: ``frames``, ``predicted_boxes`` and
    ``estimated_label_seconds`` (the cost model's sum), for summaries, the report and exports."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1)
    return {"frames": int(len(boxes)), "predicted_boxes": int(boxes.sum()),
            "estimated_label_seconds": round(float(cost_model.seconds(boxes).sum()), 1)}

"""Selection of annotation candidates in Beam, batch or streaming, at any scale.

``SelectCandidates`` keeps one frame per group of identical frames (same decoded pixels), then
runs a selection strategy of :mod:`transforms.select.strategies` without gathering the frames on one
worker: a ``CombineFn`` keeps, per worker, at most ``shard_size`` frames (a few numbers and the
embedding each); when it holds more it *preselects* (``Strategy.preselect``: the frames that
can still win: per-shard top-k, margin preselection for Cluster-Margin, a per-shard k-center
core-set for coreset), and merged accumulators are preselected again; the final selection runs
on at most ``shard_size`` frames::

    candidates = frame_records | SelectCandidates(budget=500, strategy="cluster_margin",
                                                  params={"n_clusters": 50})
    # PCollection[Candidate], ranks 1..budget, with selection_id, parameters and components

Memory per worker: ``O(shard_size * D)`` floats (``D`` embedding width; ``+ C`` class
probabilities per frame only for a strategy that reads them, ``Strategy.needs_probabilities``),
whatever the number of frames: an accumulator peaks at ``2 * shard_size`` frames of about
1 KB each with 128-d embeddings (Python objects included), about 100 MB with the default
``shard_size=50_000``, for 10M frames as for 10K (a budget above 25,000 raises the default
shard size to ``2 * budget``, so memory grows with the budget, not with the data). Exact for top-k, random and Cluster-Margin's preselection; a
composable core-set for k-center (see :meth:`transforms.select.base.Strategy.preselect`).

Streaming: in an event-time window (``beam.WindowInto`` before this transform, or the
``window_s``/``period_s`` arguments) the selection runs per window and per trigger firing:
each window gets its own budget and its own ``selection_id``, candidates carry
``window_start``/``window_end``, and with the default trigger they are emitted when the
watermark passes the window's end, then again (accumulating) for each late frame within
``allowed_lateness_s``.

Scores (always "higher = more wanted"): ``entropy`` (nats), ``margin`` ranked as
``1 - (p1 - p2)``, ``least_confidence``; see :mod:`transforms.select.strategies` for the others.
"""
import copy
import json
import logging
import os
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window

from schemas.frames import SCORE_NAMES
from schemas.records import Candidate, FrameRecord, ModelVersion
from transforms.score import registry
from transforms.select.base import Pool, Strategy, score_values, selection_id
from transforms.select.factory import STRATEGY_NAMES, checked_strategy

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "activebeam.sample"
#: Strategies the ``mine`` job can run on ``FrameRecord``\\ s (:func:`transforms.score.registry.strategy_names`).
STRATEGIES = STRATEGY_NAMES
DEFAULT_SHARD_SIZE = 50_000


def strategy_score(record: FrameRecord, strategy: str) -> float:
    """The ranking score of ``record`` under an uncertainty ``strategy``; higher means more wanted."""
    return float(registry.wanted(strategy, [getattr(record, strategy)])[0])


#: ``detected_class`` of a frame without detections (or without a detector).
NO_DETECTION = "none"
#: What the selection's ``embeddings`` are: the frame's, or its objects' (``object_embedding``,
#: the frame's own where it has no object).
FRAME_EMBEDDING, OBJECT_EMBEDDING = "frame", "objects"


class Scored(NamedTuple):
    """What selection keeps of a frame: a few numbers and the embedding, no pixels."""
    frame_id: str
    source_uri: str
    frame_index: int
    timestamp_s: Optional[float]
    scores: tuple
    predicted_class: int
    model: ModelVersion
    embedding: np.ndarray
    probabilities: Optional[np.ndarray]  # None unless the strategy reads them (Strategy.needs_probabilities)
    duplicates: int = 1
    duplicate_group: Optional[str] = None
    detected_class: str = NO_DETECTION
    boxes: int = 0  # predicted boxes (the detector's detections): what an annotator will draw
    predicted_label: Optional[str] = None


def to_scored(record: FrameRecord, embedding: str = FRAME_EMBEDDING,
              probabilities: bool = True) -> Tuple[str, Scored]:
    """``(pixel_hash, Scored)`` of a frame record: what selection keeps of it, keyed by its pixels
    (identical frames collapse on that key); ``embedding`` picks the frame's embedding
    (:data:`FRAME_EMBEDDING`) or its objects' (:data:`OBJECT_EMBEDDING`); ``probabilities``:
    whether to keep the class probabilities (float32 ``(C,)``; else ``None``). The embedding is
    a float32 copy, never a view that would keep the record's buffers alive."""
    frame = record.frame
    vector = record.embedding
    if embedding == OBJECT_EMBEDDING and getattr(record, "object_embedding", None) is not None:
        vector = record.object_embedding
    detections = getattr(record, "detections", ())
    return frame.pixel_hash, Scored(
        frame_id=frame.frame_id, source_uri=frame.source_uri, frame_index=frame.frame_index,
        timestamp_s=frame.timestamp_s,
        scores=tuple((name, float(getattr(record, name))) for name in SCORE_NAMES)
        + tuple((name, float(value)) for name, value in record.extra_scores),
        predicted_class=record.predicted_class, model=record.model,
        embedding=np.array(vector, dtype=np.float32),
        probabilities=np.array(record.probabilities, dtype=np.float32) if probabilities else None,
        duplicate_group=getattr(record, "duplicate_group", None),
        detected_class=detections[0].label if detections else NO_DETECTION,
        boxes=len(detections or ()),
        predicted_label=getattr(record, "predicted_label", None))


def _eligible(scored: Scored, counter) -> bool:
    """False for a near-duplicate that its group's representative stands for."""
    if scored.duplicate_group in (None, scored.frame_id):
        return True
    counter.inc()
    return False


#: Selection's accumulators (frames with their embeddings, up to ``shard_size`` of them) are
#: encoded in one pickle call each: the default coder would dispatch on every frame of the list.
_ACCUMULATOR_CODER = beam.coders.PickleCoder()


class _FirstOfIdenticalFn(beam.CombineFn):
    """Among identical frames keeps the first by (source_uri, frame_index) and counts them."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, element):
        return self.merge_accumulators([accumulator, (element, 1)])

    def merge_accumulators(self, accumulators):
        best, count = None, 0
        for item, n in accumulators:
            count += n
            if item is not None and (best is None or
                                     (item.source_uri, item.frame_index) < (best.source_uri, best.frame_index)):
                best = item
        return best, count

    def extract_output(self, accumulator):
        return accumulator

    def get_accumulator_coder(self):
        return _ACCUMULATOR_CODER


def _with_duplicates(item, counter):
    _, (scored, count) = item
    counter.inc(count - 1)
    return scored._replace(duplicates=count)


def _shared_scores(items: Sequence[Scored]) -> dict:
    """name -> ``(N,)`` float64 for every score all ``items`` carry (stored extra scores such as
    ``bald`` or ``uniqueness`` only when every frame has them)."""
    per_item = [dict(s.scores) for s in items]
    names = set.intersection(*(set(d) for d in per_item)) if per_item else set()
    return {name: np.array([d[name] for d in per_item], dtype=np.float64) for name in sorted(names)}


#: The metadata columns of :func:`to_pool` (what ``balance_key`` may name).
METADATA_COLUMNS = ("source", "camera", "predicted_class", "detected_class")


def to_pool(items: Sequence[Scored]) -> Pool:
    """The strategy view of scored frames: ids, embeddings, probabilities (``None`` when a frame
    carries none, see :func:`to_scored`), stored scores and the
    metadata columns ``source`` (file URI), ``timestamp`` (seconds into a video, NaN for a still
    image), ``camera`` (the file's directory),
    ``predicted_class``, ``detected_class`` (label of the frame's most confident detection,
    :data:`NO_DETECTION` without one) and ``boxes`` (predicted boxes, int)."""
    return Pool(
        ids=np.array([s.frame_id for s in items], dtype=object),
        embeddings=np.stack([s.embedding for s in items]).astype(np.float32),
        probabilities=(None if any(s.probabilities is None for s in items)
                       else np.stack([s.probabilities for s in items])),
        scores=_shared_scores(items),
        metadata={"source": np.array([s.source_uri for s in items], dtype=object),
                  "timestamp": np.array([np.nan if s.timestamp_s is None else s.timestamp_s for s in items],
                                        dtype=np.float64),
                  "camera": np.array([os.path.dirname(s.source_uri) for s in items], dtype=object),
                  "predicted_class": np.array([s.predicted_class for s in items]),
                  "detected_class": np.array([s.detected_class for s in items], dtype=object),
                  "boxes": np.array([s.boxes for s in items], dtype=np.int64)})


class SelectFn(beam.CombineFn):
    """Runs a :class:`~transforms.select.base.Strategy` as a ``CombineFn`` in bounded memory.

    Accumulator: a list of at most ``shard_size`` ``Scored`` frames (plus what one
    ``add_input`` brings before it is compressed with ``Strategy.preselect``). Output: a list of
    ``(scored, score, components)`` in rank order.
    """

    def __init__(self, strategy: Strategy, budget: int, shard_size: int = DEFAULT_SHARD_SIZE,
                 labelled: Optional[Pool] = None):
        self._strategy = strategy
        self._budget = budget
        self._shard_size = shard_size
        self._labelled = labelled

    def create_accumulator(self):
        return []

    def _compress(self, items):
        if len(items) <= self._shard_size:
            return items
        keep = self._strategy.preselect(to_pool(items), self._budget, self._labelled)
        if len(keep) > self._shard_size:
            # e.g. many balancing groups x budget: the bound grows rather than the job failing
            _LOG.warning("strategy %r keeps %d frames per shard, more than shard_size=%d; "
                         "raising the bound", self._strategy, len(keep), self._shard_size)
            self._shard_size = len(keep)
        return [items[i] for i in keep]

    def add_input(self, accumulator, element):
        accumulator.append(element)
        if len(accumulator) > 2 * self._shard_size:
            accumulator[:] = self._compress(accumulator)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = []
        for acc in accumulators:
            merged.extend(acc)
            if len(merged) > 2 * self._shard_size:
                merged = self._compress(merged)
        return merged

    def get_accumulator_coder(self):
        return _ACCUMULATOR_CODER

    def compact(self, accumulator):
        return self._compress(accumulator)

    def extract_output(self, accumulator):
        if not accumulator or self._budget == 0:
            return []
        items = sorted(accumulator, key=lambda s: s.frame_id)  # order-independent result
        selection = self._strategy.select(to_pool(items), self._budget, self._labelled)
        names = sorted(selection.components)
        return [(items[i], float(selection.scores[r]),
                 tuple((n, float(selection.components[n][r])) for n in names))
                for r, i in enumerate(selection.indices)]


def ranked_candidates(ranked, strategy: Strategy, inputs: Sequence[str] = (),
                      start: Optional[float] = None, end: Optional[float] = None):
    """``Candidate``\\ s from :class:`SelectFn`'s ranked list of one selection: ranks from 1, the
    selection id of the strategy, the first candidate's model version, ``inputs`` and the window
    ``[start, end)`` (None in batch)."""
    if not ranked:
        return []
    description = strategy.describe()
    parameters = json.dumps(description, sort_keys=True)
    bounded = start is not None
    sid = selection_id(description, ranked[0][0].model.version,
                       tuple(inputs) + ((f"window:{start}:{end}",) if bounded else ()))
    return [Candidate(
        rank=rank, frame_id=scored.frame_id, source_uri=scored.source_uri,
        frame_index=scored.frame_index, timestamp_s=scored.timestamp_s, score=score,
        strategy=strategy.name, scores=scored.scores,
        predicted_class=scored.predicted_class, duplicates=scored.duplicates,
        model=scored.model, selection_id=sid, parameters=parameters,
        components=components, window_start=start, window_end=end,
        predicted_label=getattr(scored, "predicted_label", None))
        for rank, (scored, score, components) in enumerate(ranked, start=1)]


class _AssignRanks(beam.DoFn):
    """Turns one window's ranked list into ``Candidate``\\ s with the selection's id."""

    def __init__(self, strategy: Strategy, inputs: Sequence[str]):
        self._strategy = strategy
        self._inputs = tuple(inputs)
        self._selected = Metrics.counter(METRICS_NAMESPACE, "candidates_selected")

    def process(self, ranked, excluded: str, win=beam.DoFn.WindowParam):
        # ``excluded`` (the digest of the excluded ids, "" for none) is a plain argument without a
        # default: Beam binds the window parameter wrongly after a defaulted extra argument.
        bounded = isinstance(win, window.IntervalWindow) and not isinstance(win, window.GlobalWindow)
        start = float(win.start) if bounded else None
        end = float(win.end) if bounded else None
        inputs = self._inputs + ((excluded,) if excluded else ())
        for candidate in ranked_candidates(ranked, self._strategy, inputs, start, end):
            self._selected.inc()
            yield candidate


class ExcludedDigestFn(beam.CombineFn):
    """Order-independent digest of a set of frame ids: ``excluded:<count>:<xor of their sha256
    prefixes>``, or ``""`` for none."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, acc, frame_id):
        import hashlib
        return acc[0] + 1, acc[1] ^ int(hashlib.sha256(str(frame_id).encode()).hexdigest()[:16], 16)

    def merge_accumulators(self, accumulators):
        count, xor = 0, 0
        for c, x in accumulators:
            count, xor = count + c, xor ^ x
        return count, xor

    def extract_output(self, acc):
        return f"excluded:{acc[0]}:{acc[1]:016x}" if acc[0] else ""


class SelectCandidates(beam.PTransform):
    """Selects up to ``budget`` frames per window with a strategy, skipping exact duplicates
    and the near-duplicates a record's ``duplicate_group`` names (only the group's
    representative, whose own id is the group id, stays eligible).

    Input: ``PCollection[FrameRecord]``. Output: ``PCollection[Candidate]`` with ranks ``1..k``
    per window, ``k = min(budget, number of distinct frames)`` (fewer if a threshold or an
    exclusion removes frames); ties are broken by ``frame_id`` so a rerun selects the same
    frames. Memory: ``O(shard_size)`` frames per worker for the selection (see the module
    docstring) plus one small record per distinct pixel hash in the grouping of identical frames.

    Parameters
    ----------
    budget : int
        Number of candidates per window, ``>= 0``.
    strategy : str or Strategy
        A name of :data:`transforms.select.factory.STRATEGY_NAMES` (built with ``params`` by
        :func:`~transforms.select.factory.make_strategy`) or a strategy object.
    params : mapping, optional
        The strategy's parameters (with a name), e.g. ``{"n_clusters": 50}``.
    exclude_ids : PCollection[str], optional
        Frame ids never to select (already labelled, earlier selections); a side input. Their
        digest joins the ``selection_id`` (none excluded: the id without exclusions), so a
        selection that skips newly labelled frames is a new selection.
    labelled : Pool, optional
        Embeddings of labelled frames: initial k-center centres and near-duplicate exclusion.
    shard_size : int, optional
        Frames one accumulator holds before it preselects, ``> budget`` (and ``> k_m`` for
        Cluster-Margin, else raised to it). Default: ``max(DEFAULT_SHARD_SIZE, 2 * budget)``,
        so any budget works.
    inputs : sequence of str
        Names of the inputs (globs, table), hashed into the ``selection_id``.
    window_s, period_s : float, optional
        Event-time windows of ``window_s`` seconds (sliding every ``period_s`` if given); by
        default the input's windowing is kept (the global window in batch).
    allowed_lateness_s : float
        Late frames up to this many seconds after the watermark passed a window still update it
        (an extra, accumulating firing).
    embedding : ``"frame"`` or ``"objects"``
        The embeddings the strategy sees (coreset, Cluster-Margin, near-duplicate exclusion):
        the frames', or their objects' (``FrameRecord.object_embedding``, from
        ``ScoreFrames(objects=True)``; a frame without objects keeps its own): k-center then
        covers what is in the frames (LightlyOne's object-level diversity).

    Raises
    ------
    ValueError
        If ``budget`` is negative, the strategy or a parameter unknown, or ``shard_size <= budget``.
    """

    def __init__(self, budget: int, strategy="entropy", params: Optional[Mapping] = None, *,
                 exclude_ids=None, labelled: Optional[Pool] = None,
                 shard_size: Optional[int] = None, inputs: Sequence[str] = (),
                 window_s: Optional[float] = None, period_s: Optional[float] = None,
                 allowed_lateness_s: float = 0.0, embedding: str = FRAME_EMBEDDING):
        super().__init__()
        if embedding not in (FRAME_EMBEDDING, OBJECT_EMBEDDING):
            raise ValueError(f"embedding must be 'frame' or 'objects', got {embedding!r}")
        self._embedding = embedding
        strategy = checked_strategy(budget, strategy, params)
        if shard_size is None:
            shard_size = max(DEFAULT_SHARD_SIZE, 2 * budget)
        elif shard_size <= budget:
            raise ValueError(f"shard_size must be > budget ({budget}), got {shard_size}")
        if window_s is not None and window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self._budget = budget
        self._strategy = strategy
        self._exclude_ids = exclude_ids
        self._labelled = labelled
        self._shard_size = shard_size
        self._inputs = tuple(inputs)
        self._window_s, self._period_s = window_s, period_s
        self._allowed_lateness_s = allowed_lateness_s

    def excluding(self, exclude_ids) -> "SelectCandidates":
        """This selection, also skipping the frame ids of ``exclude_ids`` (``PCollection[str]``,
        see the parameter of that name): for ids that exist only once the pipeline is built."""
        selection = copy.copy(self)
        selection._exclude_ids = exclude_ids  # pylint: disable=protected-access
        return selection

    def _windowing(self):
        if self._period_s:
            windows = window.SlidingWindows(self._window_s, self._period_s)
        else:
            windows = window.FixedWindows(self._window_s)
        return beam.WindowInto(
            windows, trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=self._allowed_lateness_s)

    def pool_floor(self, score: str) -> beam.PTransform:
        """A ``PTransform`` from the same ``FrameRecord``\\ s to a ``PCollection`` of one float:
        the lowest ``score`` among the frames this selection's strategy keeps for its final
        choice (:meth:`~transforms.select.base.Strategy.preselect` of the whole pool: the thinned
        uncertainty pool of ``uncertainty_kcenter``, the top ``budget`` of a top-k), with the
        same exclusions, identical frames and near-duplicates skipped as :meth:`expand`. No
        element for an empty pool. A frame whose ``score`` is below it cannot be selected
        unless its score changes (two-stage scoring, :mod:`transforms.score.two_stage`)."""
        return _PoolFloor(self, score)

    def _eligible_frames(self, frame_records, counted: bool = True):
        """``Scored`` frames as the strategy sees them: windowed, exclusions skipped, one per
        identical pixels, near-duplicates left to their group's representative."""
        if self._window_s:
            frame_records = frame_records | "Window" >> self._windowing()
        if self._exclude_ids is not None:
            excluded = beam.pvalue.AsDict(self._exclude_ids | "KeyExcluded" >> beam.Map(lambda i: (i, True)))
            frame_records = frame_records | "SkipExcluded" >> beam.Filter(
                lambda r, ex: r.frame.frame_id not in ex, excluded)
        counter = (lambda name: Metrics.counter(METRICS_NAMESPACE, name)) if counted else (lambda name: _NO_COUNT)
        return (
            frame_records
            | "KeyByPixelHash" >> beam.Map(to_scored, self._embedding, self._strategy.needs_probabilities)
            | "OnePerIdenticalFrames" >> beam.CombinePerKey(_FirstOfIdenticalFn())
            | "CountDuplicates" >> beam.Map(_with_duplicates, counter("identical_frames_skipped"))
            | "SkipNearDuplicates" >> beam.Filter(_eligible, counter("near_duplicates_skipped")))

    def expand(self, frame_records):
        ranked = (
            self._eligible_frames(frame_records)
            | "Select" >> beam.CombineGlobally(
                SelectFn(self._strategy, self._budget, self._shard_size, self._labelled)).without_defaults())
        if self._exclude_ids is None:
            return ranked | "AssignRanks" >> beam.ParDo(_AssignRanks(self._strategy, self._inputs), "")
        # What was excluded is part of the selection's identity: a later selection that skips newly
        # labelled frames gets a new selection_id (none excluded: the id of a plain selection).
        excluded = beam.pvalue.AsSingleton(
            self._exclude_ids | "ExcludedDigest" >> beam.CombineGlobally(ExcludedDigestFn()))
        return ranked | "AssignRanks" >> beam.ParDo(_AssignRanks(self._strategy, self._inputs), excluded)


class _NoCount:
    """A counter that counts nothing (the pool floor's pass must not count skipped frames twice)."""

    def inc(self, n=1):
        pass


_NO_COUNT = _NoCount()


class PoolFloorFn(SelectFn):
    """:class:`SelectFn` whose output is the lowest ``score`` among the frames the strategy's
    ``preselect`` keeps from the whole (compressed) pool, a float, or ``None`` for an empty pool."""

    def __init__(self, strategy: Strategy, budget: int, score: str, shard_size: int = DEFAULT_SHARD_SIZE,
                 labelled: Optional[Pool] = None):
        super().__init__(strategy, budget, shard_size, labelled)
        self._score = score

    def extract_output(self, accumulator):
        if not accumulator or self._budget == 0:
            return None
        items = sorted(accumulator, key=lambda s: s.frame_id)
        pool = to_pool(items)
        keep = self._strategy.preselect(pool, self._budget, self._labelled)
        if not len(keep):
            return None
        return float(np.min(score_values(pool, self._score)[keep]))


class _PoolFloor(beam.PTransform):
    """See :meth:`SelectCandidates.pool_floor`."""

    def __init__(self, selection: SelectCandidates, score: str):
        super().__init__()
        self._selection = selection
        self._score = score

    def expand(self, frame_records):
        s = self._selection  # pylint: disable=protected-access
        return (s._eligible_frames(frame_records, counted=False)
                | "Floor" >> beam.CombineGlobally(PoolFloorFn(
                    s._strategy, s._budget, self._score, s._shard_size, s._labelled)).without_defaults()
                | "NotEmpty" >> beam.Filter(lambda floor: floor is not None))

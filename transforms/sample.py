"""Selection of annotation candidates: distributed top-k by an uncertainty score.

``SelectCandidates`` keeps one frame per group of identical frames (same decoded pixels), then
takes the ``budget`` frames with the highest uncertainty with Beam's ``Top.Of`` (a ``CombineFn``:
each worker keeps a heap of at most ``budget`` elements, and only those heaps are merged, so
memory is ``O(budget)`` per worker whatever the number of frames)::

    candidates = frame_records | SelectCandidates(budget=50, strategy="entropy")
    # PCollection[Candidate], ranks 1..budget

Strategies (the score is always "higher = more wanted"):

* ``entropy``: Shannon entropy in nats (Settles 2009, eq. 3.3);
* ``margin``: ``1 - (p_(1) - p_(2))``, LightlyOne's ``uncertainty_margin`` (Scheffer et al. 2001);
* ``least_confidence``: ``1 - p_(1)`` (Settles 2009, eq. 3.1).
"""
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.frames import SCORE_NAMES
from schemas.records import Candidate, FrameRecord, ModelVersion

_NAMESPACE = "activebeam.sample"
STRATEGIES = SCORE_NAMES


def strategy_score(record: FrameRecord, strategy: str) -> float:
    """The ranking score of ``record`` under ``strategy``; higher means more wanted."""
    if strategy == "margin":
        return 1.0 - float(record.margin)
    return float(getattr(record, strategy))


class _Scored(NamedTuple):
    """What selection keeps of a frame: a few numbers, no pixels and no embedding."""
    score: float
    frame_id: str
    source_uri: str
    frame_index: int
    timestamp_s: Optional[float]
    scores: tuple
    predicted_class: int
    model: ModelVersion


def _to_scored(record: FrameRecord, strategy: str):
    frame = record.frame
    return frame.pixel_hash, _Scored(
        score=strategy_score(record, strategy), frame_id=frame.frame_id,
        source_uri=frame.source_uri, frame_index=frame.frame_index, timestamp_s=frame.timestamp_s,
        scores=tuple((name, float(getattr(record, name))) for name in SCORE_NAMES),
        predicted_class=record.predicted_class, model=record.model)


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


def _rank_key(item):
    scored, _ = item
    return scored.score, scored.frame_id


def _assign_ranks(top, strategy):
    for rank, (scored, duplicates) in enumerate(top, start=1):
        yield Candidate(
            rank=rank, frame_id=scored.frame_id, source_uri=scored.source_uri,
            frame_index=scored.frame_index, timestamp_s=scored.timestamp_s, score=scored.score,
            strategy=strategy, scores=scored.scores, predicted_class=scored.predicted_class,
            duplicates=duplicates, model=scored.model)


class _CountDuplicates(beam.DoFn):
    def __init__(self):
        self._skipped = Metrics.counter(_NAMESPACE, "identical_frames_skipped")

    def process(self, item):
        _, (_, count) = item
        self._skipped.inc(count - 1)
        yield item[1]


class SelectCandidates(beam.PTransform):
    """Selects the ``budget`` most uncertain frames, skipping exact duplicates.

    Input: ``PCollection[FrameRecord]``. Output: ``PCollection[Candidate]`` with ranks ``1..k``,
    ``k = min(budget, number of distinct frames)``; ties are broken by ``frame_id`` so a rerun
    selects the same frames. Memory: ``O(budget)`` per worker for the top-k, plus one small
    record per distinct pixel hash in the grouping of identical frames.

    Parameters
    ----------
    budget : int
        Number of candidates, ``>= 0``.
    strategy : str
        One of ``entropy``, ``margin``, ``least_confidence``.

    Raises
    ------
    ValueError
        If ``budget`` is negative or ``strategy`` unknown.
    """

    def __init__(self, budget: int, strategy: str = "entropy"):
        super().__init__()
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self._budget = budget
        self._strategy = strategy

    def expand(self, frame_records):
        return (
            frame_records
            | "KeyByPixelHash" >> beam.Map(_to_scored, self._strategy)
            | "OnePerIdenticalFrames" >> beam.CombinePerKey(_FirstOfIdenticalFn())
            | "CountDuplicates" >> beam.ParDo(_CountDuplicates())
            | "TopK" >> beam.combiners.Top.Of(self._budget, key=_rank_key)
            | "AssignRanks" >> beam.FlatMap(_assign_ranks, self._strategy))

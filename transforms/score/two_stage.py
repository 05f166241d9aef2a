"""Two-stage detection scoring: a cheap detector on every frame, the exact one where it can matter.

The default selection (``uncertainty_kcenter`` on ``detection_max``) reads the detector's score
of a frame only to decide whether the frame enters the uncertainty pool and in which order. Most
frames of a run fall far below the pool: their exact score cannot change the selection. So::

    cheap = frames | ScoreFrames(model, detector=int8_detector)        # every frame
    floor = cheap.records | selection.pool_floor("detection_max")      # the pool's lowest score
    exact = cheap.records | RescoreUncertain(float_detector, "detection_max", floor, margin=0.1)

:class:`RescoreUncertain` runs the exact detector again on each frame whose cheap score is at
least ``floor - margin``, decoding it again from its source (the pixels are checked against the
frame's ``pixel_hash``), and gives the frame that detector's boxes and ``detection_*`` scores,
exactly as a one-stage run with that detector would have. The other frames keep the cheap
detector's. If no cheap score is off by more than ``margin`` near the floor, the pool, and so
the selection, is the one-stage selection's. How far the cheap scores are off, and the share of
frames it rescores, are measured, not assumed (docs/models.md, "Two-stage scoring").

A frame that cannot be rescored (its source changed or vanished, its pixels differ, the
detector failed on its batch) keeps its cheap scores and is counted in
``frames_not_rescored``: nothing is lost, and the run says how many.

Reference: cascades of a cheap and an exact model (Viola & Jones 2001) applied to what
selection reads; the same idea as PPAL's difficulty-calibrated pool (Yang et al. 2022,
arXiv:2211.11612), where only the pool is re-ranked by the expensive measure.
"""
import logging
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from schemas.records import FrameRecord
from transforms.common.files import local_copy
from transforms.decode.ptransforms import pixel_hash
from transforms.decode.redecode import frames_again
from transforms.score.detection import TWO_STAGE_MARGIN, TWO_STAGE_SCORES, aggregate_detection_scores
from transforms.score.detectors import DetectorHandler
from transforms.score.model_base import METRICS_NAMESPACE
from transforms.score.ptransforms import detection_records

_RESCORE = "rescore"
_LOG = logging.getLogger(__name__)


class Rescored(NamedTuple):
    records: beam.PCollection  # FrameRecord, every input record once
    rescored: beam.PCollection  # frame ids of the records the exact detector scored
    not_rescored: beam.PCollection  # frame ids of those it should have and could not (first-stage scores kept)


def score_of(record: FrameRecord, score: str) -> Optional[float]:
    """The record's ``score`` (one of its ``extra_scores``), or ``None`` when it has none."""
    return dict(record.extra_scores).get(score)


class _SplitFn(beam.DoFn):
    """Records at or above ``floor - margin`` (and those without the score: a cheap detector that
    did not apply) to ``rescore``; the others pass."""

    def __init__(self, score: str, margin: float):
        self._score, self._margin = score, margin
        self._kept = Metrics.counter(METRICS_NAMESPACE, "frames_kept_first_stage")

    def process(self, record: FrameRecord, floor):
        value = score_of(record, self._score)
        if floor is None or value is None or value >= floor - self._margin:
            yield beam.pvalue.TaggedOutput(_RESCORE, (record.frame.source_uri, record))
        else:
            self._kept.inc()
            yield record


class _DecodeAgainFn(beam.DoFn):
    """``(source_uri, records)`` -> ``(record, pixels)`` for each record whose frame decodes to the
    same pixels again (its ``pixel_hash``); the others on ``failed``, as they are. One pass per
    file (:func:`transforms.decode.redecode.frames_again`)."""

    def __init__(self, max_pixels: Optional[int], max_side: Optional[int]):
        self._max_pixels, self._max_side = max_pixels, max_side

    def process(self, element):
        source_uri, records = element
        records = list(records)  # a grouped iterable: read more than once
        wanted = {}
        for record in records:
            wanted.setdefault(int(record.frame.frame_index), []).append(record)
        still = all(r.frame.timestamp_s is None for r in records)
        done = set()
        try:
            with local_copy(source_uri) as path:
                for index, pixels in frames_again(path, wanted, still, self._max_pixels, self._max_side):
                    for record in wanted[index]:
                        done.add(record.frame.frame_id)
                        if pixel_hash(pixels) == record.frame.pixel_hash:
                            yield record, pixels
                        else:
                            yield beam.pvalue.TaggedOutput("failed", record)
        except Exception as e:  # noqa: BLE001 - a vanished or changed source spoils its own frames only
            _LOG.warning("%d frames of %s keep their first-stage scores: it does not decode again (%s: %s)",
                         len(records) - len(done), source_uri, type(e).__name__, str(e)[:200])
        for record in records:
            if record.frame.frame_id not in done:
                yield beam.pvalue.TaggedOutput("failed", record)


def _with_exact_detections(keyed_result, band, version):
    record, result = keyed_result
    found = result.inference
    if found is None:  # the detector does not apply to this frame: the record as it was
        return record
    scores = dict(record.extra_scores, **aggregate_detection_scores(
        found.confidences, band, found.localisation, getattr(found, "rejected", 0.0)))
    return record._replace(extra_scores=tuple(sorted(scores.items())), detections=detection_records(found),
                           detector=version)


def _records_of_failed_batch(failed):
    batch, _ = failed
    for record, _pixels in batch:
        yield record


def _counted(record, counter):
    counter.inc()
    return record


class RescoreUncertain(beam.PTransform):
    """The second stage of two-stage scoring (see the module docstring).

    Input: ``PCollection[FrameRecord]`` scored with the cheap detector. Output: :class:`Rescored`,
    every input record exactly once, those at or above ``floor - margin`` with ``detector``'s
    boxes, ``detection_*`` scores and version.

    Parameters
    ----------
    detector : DetectorHandler
        The exact detector (NanoDet-g float32 in the ``mine`` job), without flip-TTA.
    score : str
        The selection's score, one of :data:`TWO_STAGE_SCORES` (in [0, 1]).
    floor : PCollection
        At most one float: :meth:`transforms.select.ptransforms.SelectCandidates.pool_floor` of
        the cheap records (no element: every frame with the score is rescored).
    margin : float
        How far below the floor a cheap score may be and still be rescored, in the score's units,
        ``>= 0``.
    max_pixels, max_side : int or None
        The decoding's limits for still images (``DecodeMedia``'s), so that they decode again to
        the same pixels.

    Raises
    ------
    ValueError
        For a score outside :data:`TWO_STAGE_SCORES` or a negative margin.
    """

    def __init__(self, detector: DetectorHandler, score: str, floor: beam.PCollection,
                 margin: float = TWO_STAGE_MARGIN, max_pixels: Optional[int] = None, max_side: Optional[int] = None):
        super().__init__()
        if score not in TWO_STAGE_SCORES:
            raise ValueError(f"two-stage scoring serves {', '.join(TWO_STAGE_SCORES)}, not {score!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self._detector, self._score, self._floor, self._margin = detector, score, floor, float(margin)
        self._max_pixels, self._max_side = max_pixels, max_side

    def expand(self, records):
        floor = beam.pvalue.AsSingleton(self._floor, default_value=None)
        split = records | "SplitAtFloor" >> beam.ParDo(_SplitFn(self._score, self._margin), floor).with_outputs(
            _RESCORE, main="kept")
        decoded = (split[_RESCORE]
                   | "BySource" >> beam.GroupByKey()
                   | "DecodeAgain" >> beam.ParDo(_DecodeAgainFn(self._max_pixels, self._max_side)).with_outputs(
                       "failed", main="frames"))
        detected, failed = (decoded.frames
                            | "ExactDetector" >> RunInference(KeyedModelHandler(self._detector))
                            .with_exception_handling())
        not_rescored = Metrics.counter(METRICS_NAMESPACE, "frames_not_rescored")
        rescored = (detected | "ExactScores" >> beam.Map(
            _with_exact_detections, self._detector.band, self._detector.version)
            | "CountRescored" >> beam.Map(_counted, Metrics.counter(METRICS_NAMESPACE, "frames_rescored")))
        unchanged = ((decoded.failed, failed.failed_inferences | "FailedBatches" >> beam.FlatMap(
            _records_of_failed_batch)) | "NotRescored" >> beam.Flatten()
            | "CountNotRescored" >> beam.Map(_counted, not_rescored))
        out = (split.kept, rescored, unchanged) | "AllRecords" >> beam.Flatten()
        return Rescored(out, rescored | "RescoredIds" >> beam.Map(lambda r: r.frame.frame_id),
                        unchanged | "NotRescoredIds" >> beam.Map(lambda r: r.frame.frame_id))

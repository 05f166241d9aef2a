"""Selection per event-time window, with everything a window's outputs need, in one combine.

``SelectPerWindow`` takes the streaming job's frame records and dead letters, timestamped with
their event time (capture time), and emits one :class:`~schemas.records.WindowPane` per firing of
each window: the window's candidates (``budget`` per window with any strategy), its dead letters,
and how many files and frames it has seen::

    panes = (records, dead_letters) | beam.Flatten() | SelectPerWindow(
        WindowSpec(window_s=60, allowed_lateness_s=600), budget=20, strategy="coreset")

Windows are fixed (``window_s``) or sliding (every ``period_s``); each fires when the watermark
passes its end (pane ``on_time``) and again for each late frame or dead letter within
``allowed_lateness_s`` (pane ``late``, with the window's whole content: accumulating). Unlike
:class:`~transforms.select.ptransforms.SelectCandidates`, one ``CombineFn`` holds a window's
frames, its files and its dead letters, so that a pane's candidates and counts always describe
the same content. Memory: one small record (scores and embedding, no pixels) per distinct frame
of each open window, as long as the window accepts late data.

An element whose every window closed more than ``allowed_lateness_s`` ago (by the wall clock,
which the job's watermark never passes) would be dropped by Beam without a trace: it becomes a
dead letter of stage ``window`` in the current window instead (the frame itself is indexed).
With ``decided_per_frame`` (the windows only count, ``--strategy vessal`` decides every frame
as it comes) such a frame is not a failure: it is indexed and decided, and only counted in
``frames_too_late`` (not in a window).

With ``uniqueness_k`` the k-NN uniqueness score (FiftyOne's, :mod:`transforms.score.knn`) is
computed among the window's distinct frames and can be ranked by (strategy ``uniqueness``).

Metrics (namespace ``activebeam.sample``): ``candidates_selected``, ``window_panes``,
``frames_too_late``, ``restored_outside_lateness``.
"""
import datetime
import time
from typing import Any, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from schemas import records
from schemas.records import DeadLetter, Restored, WindowPane
from transforms.score.knn import FIFTYONE_WEIGHTS, build_index, shard_distances, uniqueness_from_distances
from transforms.select.base import Strategy
from transforms.select.factory import checked_strategy
from transforms.select.ptransforms import METRICS_NAMESPACE, SelectFn, ranked_candidates, to_scored

#: Beam keeps a window this long beyond ``allowed_lateness_s``: the wall-clock check of
#: :class:`SelectPerWindow` decides what is too late; Beam's own (by the watermark, which lags the
#: wall clock) must never drop what that check let through.
LATENESS_MARGIN_S = 60.0
ON_TIME, LATE, EARLY = "on_time", "late", "early"


class WindowSpec(NamedTuple):
    """Event-time windows: ``window_s`` long, starting every ``period_s`` (None: fixed windows),
    accepting late data for ``allowed_lateness_s`` after their end."""
    window_s: float = 60.0
    period_s: Optional[float] = None
    allowed_lateness_s: float = 0.0

    def validated(self) -> "WindowSpec":
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if self.period_s is not None and not 0 < self.period_s <= self.window_s:
            raise ValueError(f"period_s must be in (0, window_s={self.window_s}], got {self.period_s}")
        if not self.allowed_lateness_s >= 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {self.allowed_lateness_s}")
        return self

    def windowfn(self):
        if self.period_s:
            return window.SlidingWindows(self.window_s, self.period_s)
        return window.FixedWindows(self.window_s)

    def latest_end(self, event_time: float) -> float:
        """End (seconds) of the last window an element of this event time belongs to."""
        windows = self.windowfn().assign(window.WindowFn.AssignContext(Timestamp.of(event_time)))
        return max(float(w.end) for w in windows)


def utc_iso(seconds: float) -> str:
    """``2025-01-31T12:00:00Z`` (milliseconds only when not whole)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


class _TooLateFn(beam.DoFn):
    """Drops nothing silently: what Beam would drop as too late becomes a ``window`` dead letter
    in the current window."""

    def __init__(self, spec: WindowSpec, decided_per_frame: bool = False):
        self._spec = spec
        self._decided_per_frame = decided_per_frame
        self._too_late = Metrics.counter(METRICS_NAMESPACE, "frames_too_late")
        self._restored_closed = Metrics.counter(METRICS_NAMESPACE, "restored_outside_lateness")

    def process(self, item, timestamp=beam.DoFn.TimestampParam):
        restored = isinstance(item, Restored)
        if restored:
            item = item.item
        when = float(timestamp)
        now = time.time()
        closed_at = self._spec.latest_end(when)
        if closed_at + self._spec.allowed_lateness_s >= now:
            yield item
            return
        if restored:
            self._restored_closed.inc()
            return
        if isinstance(item, DeadLetter):
            yield TimestampedValue(item, now)
            return
        self._too_late.inc()
        if self._decided_per_frame:  # indexed and decided per frame: nothing is lost
            return
        frame = item.frame
        yield TimestampedValue(DeadLetter(
            frame.source_uri, records.STAGE_WINDOW,
            f"too late: event time {utc_iso(when)} ({frame.event_time_source}); its last window "
            f"ended at {utc_iso(closed_at)}, more than --allowed_lateness_seconds="
            f"{self._spec.allowed_lateness_s:g} before it was read: indexed, not selected",
            frame.frame_index, frame.frame_id), now)


class WindowContent(NamedTuple):
    """What :class:`WindowPaneFn` extracts: ranked ``(scored, score, components)``, counts, dead letters."""
    ranked: list
    files: int
    frames: int
    dead_letters: tuple


def _dead_letter_key(dead: DeadLetter):
    return (dead.source_uri, dead.stage, dead.frame_index or -1, dead.error)


def window_uniqueness(items, k: int, weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """FiftyOne's k-NN uniqueness of each item among ``items`` (``Scored``), normalised by the
    window's largest (1 for a frame without neighbours). Shape ``(N,)``."""
    weights = tuple(weights or (FIFTYONE_WEIGHTS if k == len(FIFTYONE_WEIGHTS) else (1.0,) * k))
    ids = [s.frame_id for s in items]
    embeddings = np.stack([s.embedding for s in items]).astype(np.float32)
    values = uniqueness_from_distances(shard_distances(ids, build_index(embeddings), ids, embeddings, k), weights)
    finite = values[np.isfinite(values)]
    largest = float(finite.max()) if finite.size else 0.0
    return np.where(np.isfinite(values), values / largest if largest > 0 else 1.0, 1.0).clip(0.0, 1.0)


class WindowPaneFn(beam.CombineFn):
    """One window's frames (by id), dead letters and selection.

    Accumulator: ``(frames, dead_letters)``: ``{frame_id: (pixel_hash, Scored)}`` and
    ``{key: DeadLetter}`` (a frame or dead letter seen twice, e.g. replayed after a restart,
    counts once). Output: :class:`WindowContent`; identical frames (same pixels) are one
    candidate whose ``duplicates`` counts them.
    """

    def __init__(self, strategy: Strategy, budget: int, uniqueness_k: int = 0):
        self._strategy = strategy
        self._budget = budget
        self._uniqueness_k = uniqueness_k

    def create_accumulator(self):
        return {}, {}

    def add_input(self, accumulator, element):
        frames, dead_letters = accumulator
        if isinstance(element, DeadLetter):
            dead_letters[_dead_letter_key(element)] = element
        else:
            pixel_hash, scored = to_scored(element, probabilities=self._strategy.needs_probabilities)
            frames[scored.frame_id] = (pixel_hash, scored)
        return accumulator

    def merge_accumulators(self, accumulators):
        frames, dead_letters = {}, {}
        for f, d in accumulators:
            frames.update(f)
            dead_letters.update(d)
        return frames, dead_letters

    def extract_output(self, accumulator):
        frames, dead_letters = accumulator
        groups = {}
        for pixel_hash, scored in frames.values():
            groups.setdefault(pixel_hash, []).append(scored)
        items = []
        for group in groups.values():
            first = min(group, key=lambda s: (s.source_uri, s.frame_index))
            items.append(first._replace(duplicates=len(group)))
        items.sort(key=lambda s: s.frame_id)
        if self._uniqueness_k and len(items) > 1:
            values = window_uniqueness(items, self._uniqueness_k)
            items = [s._replace(scores=tuple(p for p in s.scores if p[0] != "uniqueness")
                                + (("uniqueness", float(v)),)) for s, v in zip(items, values)]
        ranked = SelectFn(self._strategy, self._budget, shard_size=len(items) + self._budget + 1
                          ).extract_output(items) if items else []
        files = {s.source_uri for _, s in frames.values()} | {d.source_uri for d in dead_letters.values()}
        return WindowContent(ranked, len(files), len(frames),
                             tuple(sorted(dead_letters.values(), key=_dead_letter_key)))


def _pane_name(pane) -> str:
    if pane.timing == PaneInfoTiming.LATE:
        return LATE
    if pane.timing == PaneInfoTiming.EARLY:
        return EARLY
    return ON_TIME


class _ToPaneFn(beam.DoFn):
    def __init__(self, strategy: Strategy, inputs: Sequence[str]):
        self._strategy = strategy
        self._inputs = tuple(inputs)
        self._selected = Metrics.counter(METRICS_NAMESPACE, "candidates_selected")
        self._panes = Metrics.counter(METRICS_NAMESPACE, "window_panes")

    def process(self, content: WindowContent, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        start, end = float(win.start), float(win.end)
        candidates = ranked_candidates(content.ranked, self._strategy, self._inputs, start, end)
        self._selected.inc(len(candidates))
        self._panes.inc()
        yield WindowPane(start, end, _pane_name(pane), int(pane.index), content.files, content.frames,
                         tuple(candidates), content.dead_letters)


class SelectPerWindow(beam.PTransform):
    """Per event-time window: the selection of ``budget`` candidates and the window's counts.

    Input: ``PCollection`` of ``FrameRecord`` (with ``frame.event_time``), ``DeadLetter`` and
    :class:`~schemas.records.Restored`, timestamped with their event time. Output: ``PCollection[WindowPane]``,
    one per firing of each window (see the module docstring).

    Parameters
    ----------
    spec : WindowSpec
        The windows and their allowed lateness.
    budget : int
        Candidates per window, ``>= 0``.
    strategy : str or Strategy
        Any name of :data:`transforms.select.ptransforms.STRATEGIES` (with ``params``).
    params : mapping, optional
        The strategy's parameters.
    uniqueness_k : int
        Neighbours of the per-window uniqueness score; 0: not computed.
    inputs : sequence of str
        Names of the job's inputs, hashed into each window's ``selection_id``.
    decided_per_frame : bool
        The frames are decided elsewhere, as they come (``--strategy vessal``; ``budget`` 0): a
        frame too late for its windows is counted in ``frames_too_late``, not a dead letter.

    Raises
    ------
    ValueError
        For a negative budget, an unknown strategy or parameter, or windows out of range.
    """

    def __init__(self, spec: WindowSpec, budget: int, strategy="entropy", params=None, *,
                 uniqueness_k: int = 0, inputs: Sequence[str] = (), decided_per_frame: bool = False):
        super().__init__()
        self._spec = spec.validated()
        self._decided_per_frame = decided_per_frame
        strategy = checked_strategy(budget, strategy, params)
        if uniqueness_k < 0:
            raise ValueError(f"uniqueness_k must be >= 0, got {uniqueness_k}")
        self._strategy, self._budget, self._k = strategy, budget, uniqueness_k
        self._inputs = tuple(inputs)

    def expand(self, items):
        spec = self._spec
        return (items
                | "DeadLetterTooLate" >> beam.ParDo(_TooLateFn(spec, self._decided_per_frame)).with_output_types(Any)
                | "EventTimeWindows" >> beam.WindowInto(
                    spec.windowfn(), trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=spec.allowed_lateness_s + LATENESS_MARGIN_S)
                | "Select" >> beam.CombineGlobally(
                    WindowPaneFn(self._strategy, self._budget, self._k)).without_defaults()
                | "ToPanes" >> beam.ParDo(_ToPaneFn(self._strategy, self._inputs)).with_output_types(WindowPane))


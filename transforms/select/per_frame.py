"""Per-frame streaming selection at a target rate: VeSSAL as Beam state, keyed by camera, source or
one global key.

``SelectPerFrame`` decides each scored frame as soon as it arrives (no window to wait for) with
:class:`transforms.select.vessal.VeSSAL`, and emits a :class:`Pick` for each frame it selects::

    picks = records | SelectPerFrame(PerFrameSpec(label_rate=0.01, max_per_hour=120,
                                                  state_key="camera"),
                                     mongo_uri=uri, database="activebeam", inputs=("gs://cams/*",))
    # PCollection[Pick]: candidate (strategy "vessal", score = selection probability), event_time

State (Beam ``ReadModifyWriteState``, pickled): per key, ``A^-1`` and ``Sigma`` (``2 d^2``
float64), counts, the hour's picks, the last 256 picks' frame ids and pixel hashes, and the model
version (a new model starts a new ``A^-1`` and ``Sigma``: a new embedding space). Dataflow keeps
it across worker restarts and updates. The local runner keeps it in memory only, so the state is
also saved to MongoDB (collection ``selection_state``, ``_id`` ``<selection_id>:<key>``) at each
pick (before the pick is emitted) and at the end of each bundle; a key without Beam state (a
restarted local job) starts from that snapshot. A crash loses at most the updates of ``Sigma``
and the counts of the frames of the bundle in flight, never a pick: a pick saved in the snapshot
whose candidate was not written before the crash is refused as already picked when its frame
comes again, and then emitted again with its saved decision (the same candidate, counter
``vessal_picks_restored``) unless MongoDB ``candidates`` has it. The state also keeps which
frames of its last 1,024 source files it decided (:class:`~transforms.select.vessal.DecidedFrames`):
the frames of a file read again after a restart that the state has counted are not decided a
second time (counter ``vessal_decided_before``), so ``seen``, ``Sigma`` and the draws stay as in
a run without the restart.

A camera's first frame: with the ``camera`` or ``global`` state key, the first frame (with an
uncertainty above 0) of a camera (the folder of its file) that the state has neither picked from
nor seen labelled is picked with probability 1 (VeSSAL's ``new_camera_pick``, on by default;
``--strategy_params '{"new_camera_pick": false}'`` turns it off). Not with the ``source`` key,
where each file is a state.

Not picked again: a frame whose id or pixels were picked (the last 256 picks of its key), and
frames sent for labelling or labelled, with their near-duplicate groups (read from MongoDB when
a worker starts: :func:`transforms.index.mongodb_client.labelled_frame_ids`).

Batch (a bounded pool): ``SelectPerFrameInOrder`` makes ONE pass over the pool per state key in
event-time order (:func:`event_order`: capture time, then file, timestamp in the file and frame
id), with the decisions of the streaming transform (same ``u``, same draws
:func:`~transforms.select.vessal.frame_draw` of the frame id, same state keys) but for the rate:
a pass knows how many frames its key has, so the rate is steered to meet ``label_rate`` at the
key's last frame (the reference's ``(k - picks) / (N - i)``; ``remaining`` of
:meth:`~transforms.select.vessal.VeSSAL.decide`), not ``horizon`` frames ahead, and no state to
keep: the pass is a pure function of the pool, so a rerun picks the same frames under the same
``selection_id``. Memory: the frames of one key on one worker (``u``, ``d`` float64, and the
candidate's fields: about 1 KB a frame at ``d = 64``)::

    result = records | SelectPerFrameInOrder(PerFrameSpec(label_rate=0.01)).excluding(labelled_ids)
    # result.candidates: PCollection[Candidate]; result.dead_letters

Uncertainty: ``u`` is scaled by the frame's uncertainty chosen by the spec's ``uncertainty``
parameter (:func:`~transforms.select.vessal.frame_uncertainty`): ``badge`` (``||p - e_yhat||`` of
the record's class probabilities) or a per-frame detection score read from the record's
``extra_scores`` (``detection_max``, ``detection_mean``), which the candidate's ``components``
keep as ``uncertainty``. A record without that score (a frame the detector cannot take, e.g. the
background-difference detector on another camera's frame: no ``detection_*`` scores) gets
uncertainty 0: ``u = 0``, selection probability 0, never picked; it still counts in the stream
(``seen``, ``Sigma``) and in the counter ``vessal_no_uncertainty``. A score outside ``[0, 1]`` or
not finite makes a dead letter.

Metrics (namespace ``activebeam.sample``): ``vessal_frames``, ``vessal_picked``, ``vessal_capped``,
``vessal_refused`` (already picked or labelled), ``vessal_decided_before`` (frames the state had
decided already: read again after a restart), ``vessal_picks_restored`` (picks emitted again
after a crash, see State), ``vessal_failed`` (dead letters), ``vessal_no_uncertainty``
(frames without the chosen detection score: never picked), ``vessal_decision_us`` (distribution, µs per
decision), ``vessal_probability_ppm`` (distribution, selection probability in millionths).
"""
import collections
import json
import logging
import math
import os
import time
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.candidates import CANDIDATES_COLLECTION, candidate_document_id
from schemas.records import (DEAD_LETTER_TAG, MAX_ERROR_CHARS, STAGE_CANDIDATES, Candidate, DeadLetter,
                             FrameMetadata, FrameRecord)
from transforms.index.mongodb_client import labelled_frame_ids
from transforms.intake.event_time import EARLIEST, exif_seconds
from transforms.select.base import selection_id
from transforms.select.ptransforms import METRICS_NAMESPACE, ExcludedDigestFn, Scored, to_scored
from transforms.select.vessal import (ALREADY_PICKED, BADGE, CAPPED, DECIDED_BEFORE, LABELLED, PICKED, VESSAL,
                                      Decision, Embedder, VeSSAL, frame_draw, frame_uncertainty)

_LOG = logging.getLogger(__name__)
CAMERA, SOURCE, GLOBAL = "camera", "source", "global"
#: ``--vessal_state_key``: one VeSSAL state per camera (the folder of the file), per source file,
#: or one for the whole stream.
STATE_KEYS = (CAMERA, SOURCE, GLOBAL)
STATE_COLLECTION = "selection_state"
#: Counter of the frames without the chosen detection score (uncertainty 0: never picked).
NO_UNCERTAINTY = "vessal_no_uncertainty"


class PerFrameSpec(NamedTuple):
    """What :class:`SelectPerFrame` runs: :class:`~transforms.select.vessal.VeSSAL`'s ``label_rate``,
    ``max_per_hour`` and further ``params`` (``dim``, ``horizon``, ``memory``, ``cov_inv_scaling``,
    ``seed``, ``uncertainty``), one state per ``state_key`` (:data:`STATE_KEYS`)."""
    label_rate: float
    max_per_hour: int = 0
    state_key: str = CAMERA
    params: tuple = ()  # sorted (name, value) pairs

    def sampler(self) -> VeSSAL:
        """A new sampler with these parameters (raises ``ValueError`` for one out of range)."""
        return VeSSAL(self.label_rate, max_per_hour=self.max_per_hour, **dict(self.params))

    def validated(self) -> "PerFrameSpec":
        if self.state_key not in STATE_KEYS:
            raise ValueError(f"state_key must be one of {', '.join(STATE_KEYS)}, got {self.state_key!r}")
        self.sampler()
        return self


def camera_of(record: FrameRecord, how: str) -> Optional[str]:
    """The camera VeSSAL's ``new_camera_pick`` covers (the folder of the frame's file); None with
    the ``source`` state key, where each file is a state of its own: its first frame would be
    picked in every file."""
    return None if how == SOURCE else state_key_of(record, CAMERA)


def state_key_of(record: FrameRecord, how: str) -> str:
    """The key of a frame's state: its camera (the folder of its file), its file, or ``global``."""
    if how == GLOBAL:
        return GLOBAL
    return record.frame.source_uri if how == SOURCE else os.path.dirname(record.frame.source_uri)


#: The order of :class:`SelectPerFrameInOrder`'s pass (what :func:`event_order` sorts by).
EVENT_ORDER = "event time (capture time, then file, timestamp in the file, frame id)"


def event_order(frame: FrameMetadata) -> tuple:
    """Sort key of a bounded pool's frame in event-time order: its event time (``event_time``, else
    its EXIF capture time when set and after 1990, :data:`transforms.intake.event_time.EARLIEST`),
    frames without one after those with; ties (and frames without one) by ``source_uri`` (camera
    files are named by time), ``timestamp_s`` in the file, ``frame_index``, ``frame_id``."""
    when = frame_event_seconds(frame)
    return (when is None, 0.0 if when is None else when, frame.source_uri, frame.timestamp_s or 0.0,
            frame.frame_index, frame.frame_id)


def frame_event_seconds(frame: FrameMetadata) -> Optional[float]:
    """A frame's event time in seconds since the epoch (``event_time``, else a plausible EXIF capture
    time), or None."""
    if frame.event_time is not None:
        return float(frame.event_time)
    seconds = exif_seconds(frame.capture_time)
    return seconds if seconds is not None and seconds >= EARLIEST else None


class _FrameEmbedder:
    """A record's VeSSAL ``u`` and uncertainty (:class:`~transforms.select.vessal.Embedder`, one per
    embedding width: a new model may change it; :func:`~transforms.select.vessal.frame_uncertainty`
    chosen by ``uncertainty``)."""

    def __init__(self, sampler: VeSSAL):
        self._dim, self._seed, self._uncertainty, self._embedders = sampler.dim, sampler.seed, sampler.uncertainty, {}

    def __call__(self, record: FrameRecord) -> Tuple[np.ndarray, float, bool]:
        """``(u, uncertainty, missing)``: float64 ``(d,)``, the factor of ``u`` and whether the
        record lacks the chosen detection score (then ``uncertainty`` is 0). Raises ``ValueError``
        for non-finite probabilities or ``u``, or a detection score outside ``[0, 1]``."""
        width = int(np.asarray(record.embedding).size)
        if width not in self._embedders:
            self._embedders[width] = Embedder(self._dim, self._seed)
        probabilities = np.asarray(record.probabilities, dtype=np.float64)
        if self._uncertainty == BADGE and not math.isfinite(float(probabilities.sum())):
            raise ValueError("its class probabilities are not finite")  # a sum is finite iff every term is (here)
        scores = {} if self._uncertainty == BADGE else dict(record.extra_scores)
        uncertainty = frame_uncertainty(probabilities, scores, self._uncertainty)
        missing = uncertainty is None
        uncertainty = 0.0 if missing else uncertainty
        u = self._embedders[width](record.embedding, scale=uncertainty)
        if not math.isfinite(float(u @ u)):
            raise ValueError("u is not finite (a non-finite embedding or probabilities)")
        return u, uncertainty, missing


def _failed(frame: FrameMetadata, error: Exception) -> DeadLetter:
    return DeadLetter(frame.source_uri, STAGE_CANDIDATES, f"per-frame selection (vessal) failed: {error}"[:MAX_ERROR_CHARS],
                      frame.frame_index, frame.frame_id)


def pick_candidate(scored: Scored, decision: Decision, selection: str, parameters: str,
                   uncertainty: float) -> Candidate:
    """The candidate of a picked frame: ``rank`` its pick's number in its key, ``score`` its
    selection probability, ``components`` ``ideal_rate``, ``new_camera`` (1.0 when picked as its
    camera's first frame, else 0.0), ``probability``, ``q``, ``uncertainty`` (the factor of ``u``:
    ``||p - e_yhat||`` or the chosen detection score) and ``zeta``."""
    return Candidate(
        rank=decision.picks, frame_id=scored.frame_id, source_uri=scored.source_uri,
        frame_index=scored.frame_index, timestamp_s=scored.timestamp_s, score=decision.probability,
        strategy=VESSAL, scores=scored.scores, predicted_class=scored.predicted_class, duplicates=1,
        model=scored.model, selection_id=selection, parameters=parameters,
        components=(("ideal_rate", decision.ideal_rate), ("new_camera", float(decision.new_camera)),
                    ("probability", decision.probability),
                    ("q", decision.q), ("uncertainty", uncertainty), ("zeta", decision.zeta)),
        predicted_label=scored.predicted_label)


#: The counters of per-frame selection, by the :class:`~transforms.select.vessal.Decision` outcomes they count.
_COUNTED = {"vessal_frames": None, "vessal_picked": (PICKED,), "vessal_capped": (CAPPED,),
            "vessal_refused": (ALREADY_PICKED, LABELLED), "vessal_decided_before": (DECIDED_BEFORE,)}


class _Metrics:
    """The transform's counters and distributions (see the module docstring). The counters are
    added up per bundle (:meth:`flush`), the distributions updated per frame."""

    def __init__(self):
        self._counters = {name: Metrics.counter(METRICS_NAMESPACE, name) for name in _COUNTED}
        self.failed = Metrics.counter(METRICS_NAMESPACE, "vessal_failed")
        self.no_uncertainty = Metrics.counter(METRICS_NAMESPACE, NO_UNCERTAINTY)
        self.restored = Metrics.counter(METRICS_NAMESPACE, "vessal_picks_restored")
        self.cost = Metrics.distribution(METRICS_NAMESPACE, "vessal_decision_us")
        self.probability = Metrics.distribution(METRICS_NAMESPACE, "vessal_probability_ppm")
        self._outcomes = collections.Counter()

    def decided(self, decision: Decision, started: float):
        self._outcomes[decision.outcome] += 1
        if decision.outcome == DECIDED_BEFORE:  # no decision: neither a cost nor a probability
            return
        self.cost.update(int((time.perf_counter() - started) * 1e6))
        self.probability.update(int(round(decision.probability * 1e6)))

    def flush(self):
        for name, outcomes in _COUNTED.items():
            count = sum(self._outcomes.values()) if outcomes is None else sum(self._outcomes[o] for o in outcomes)
            if count:
                self._counters[name].inc(count)
        self._outcomes.clear()


class Pick(NamedTuple):
    """A frame :class:`SelectPerFrame` selected: its ``candidate`` and its ``event_time`` (seconds
    since the epoch)."""
    candidate: Candidate
    event_time: Optional[float]


class PerFrameResult(NamedTuple):
    """:class:`SelectPerFrame`'s outputs: ``picks`` (``PCollection[Pick]``) and ``dead_letters``
    (``PCollection[DeadLetter]``, stage ``candidates``: a frame whose embedding or probabilities
    are not finite; it is indexed, not decided)."""
    picks: object
    dead_letters: object


class _StateSnapshots:
    """The ``selection_state`` collection: the last saved state of each key."""

    def __init__(self, uri: str, database: str):
        from transforms.index.mongodb_client import mongo_client
        self._client = mongo_client(uri)
        self._collection = self._client[database][STATE_COLLECTION]

    def load(self, doc_id: str) -> Optional[dict]:
        import pickle
        doc = self._collection.find_one({"_id": doc_id})
        return pickle.loads(doc["state"]) if doc else None

    def candidate_written(self, candidate_id: str) -> bool:
        """Whether MongoDB ``candidates`` has the candidate ``candidate_id`` (``selection:frame``)."""
        return self._collection.database[CANDIDATES_COLLECTION].find_one({"_id": candidate_id}, {"_id": 1}) is not None

    def save(self, doc_id: str, key: str, state: dict):
        import pickle
        self._collection.replace_one(
            {"_id": doc_id}, {"_id": doc_id, "key": key, "seen": state["seen"], "picks": state["picks"],
                              "saved_at": time.time(), "state": pickle.dumps(state, protocol=4)}, upsert=True)

    def close(self):
        self._client.close()


class _VessalFn(beam.DoFn):
    """Decides each ``(key, FrameRecord)`` with the key's VeSSAL state; emits a :class:`Pick` per pick."""
    STATE = ReadModifyWriteStateSpec("vessal", PickleCoder())

    def __init__(self, spec: PerFrameSpec, selection: str, parameters: str, mongo_uri: Optional[str],
                 database: str):
        self._spec, self._selection, self._parameters = spec, selection, parameters
        self._mongo_uri, self._database = mongo_uri, database
        self._metrics = _Metrics()

    def setup(self):
        sampler = self._spec.sampler()
        self._embed = _FrameEmbedder(sampler)
        # key -> (the state dict last written, its sampler): a state read back unchanged (the same
        # object) is not rebuilt. A retried bundle reads the committed state, another object.
        self._samplers = {}
        self._snapshots, self._labelled = None, set()
        if self._mongo_uri:
            self._snapshots = _StateSnapshots(self._mongo_uri, self._database)
            ids, near = labelled_frame_ids(self._mongo_uri, self._database)
            self._labelled = ids | near

    def start_bundle(self):
        self._unsaved = {}
        for _, sampler in self._samplers.values():
            sampler.detach()  # the states written by the last bundle (committed) stay as they were

    def finish_bundle(self):
        self._metrics.flush()
        if self._snapshots is not None:
            for doc_id, (key, saved) in self._unsaved.items():
                self._snapshots.save(doc_id, key, saved)
        self._unsaved = {}

    def teardown(self):
        if self._snapshots is not None:
            self._snapshots.close()

    def _sampler(self, key: str, doc_id: str, saved: Optional[dict], model: str) -> VeSSAL:
        cached = self._samplers.get(key)
        if cached is not None and cached[0] is saved and saved.get("model_version") == model:
            return cached[1]  # the state this instance wrote last: no rebuild
        if saved is None and self._snapshots is not None:
            saved = self._snapshots.load(doc_id)
        sampler = self._spec.sampler()
        if saved is not None:
            sampler.load_state(saved)
            if saved.get("model_version") != model:
                sampler.reset_geometry()
        return sampler

    def process(self, element, state=beam.DoFn.StateParam(STATE)):
        key, record = element
        started = time.perf_counter()
        doc_id = f"{self._selection}:{key}"
        model = record.model.version
        sampler = self._sampler(key, doc_id, state.read(), model)
        frame = record.frame
        try:
            u, uncertainty, missing = self._embed(record)
        except ValueError as e:  # a non-finite embedding or probabilities: the state is unchanged
            self._metrics.failed.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, _failed(frame, e))
            return
        if missing:
            self._metrics.no_uncertainty.inc()
        decision = sampler.decide(u, frame_draw(frame.frame_id, sampler.seed), event_time=frame.event_time,
                                  keys=(frame.frame_id, frame.pixel_hash), labelled=frame.frame_id in self._labelled,
                                  camera=camera_of(record, self._spec.state_key),
                                  frame=(frame.source_uri, frame.frame_index))
        saved = dict(sampler.to_state(), model_version=model)
        state.write(saved)
        self._samplers[key] = (saved, sampler)
        # decided_before: its file read again after a restart, the state as it was (nothing to save)
        if self._snapshots is not None and decision.outcome != DECIDED_BEFORE:
            if decision.picked:
                self._snapshots.save(doc_id, key, saved)
                self._unsaved.pop(doc_id, None)
            else:
                self._unsaved[doc_id] = (key, saved)
        self._metrics.decided(decision, started)
        if decision.outcome in (ALREADY_PICKED, DECIDED_BEFORE) and self._snapshots is not None:
            decision = self._unwritten_pick(sampler, frame.frame_id)
        if decision is not None and decision.picked:
            _, scored = to_scored(record)
            yield Pick(pick_candidate(scored, decision, self._selection, self._parameters, uncertainty),
                       frame.event_time)

    def _unwritten_pick(self, sampler: VeSSAL, frame_id: str) -> Optional[Decision]:
        """The decision that picked ``frame_id``, again, when its candidate is not in MongoDB (the
        job stopped between saving the pick and writing it); else None."""
        original = sampler.picked_decision(frame_id)
        if original is None or self._snapshots.candidate_written(candidate_document_id(self._selection, frame_id)):
            return None
        self._metrics.restored.inc()
        return original


class SelectPerFrame(beam.PTransform):
    """VeSSAL per frame, with its state per camera, source or globally (see the module docstring).

    Input: ``PCollection[FrameRecord]`` (any windowing: the state lives in the global window).
    Output: :class:`PerFrameResult`: ``picks``, ``PCollection[Pick]``, and ``dead_letters``; each candidate's ``rank`` is its pick's number in its key,
    ``score`` its selection probability, ``components`` ``probability``, ``q`` (``u^T A^-1 u``),
    ``zeta``, ``ideal_rate`` and ``uncertainty`` (the factor of ``u``, see the module docstring);
    ``selection_id`` depends on the parameters and ``inputs`` only (not on the model: a new model keeps the selection).

    Parameters
    ----------
    spec : PerFrameSpec
        Rate, cap, state key and VeSSAL's parameters.
    mongo_uri, database : str, optional
        Where the state snapshots and the labelled frames are (None: neither).
    inputs : sequence of str
        Names of the job's inputs, hashed into the ``selection_id``.

    Raises
    ------
    ValueError
        For a parameter out of range (:meth:`PerFrameSpec.validated`).
    """

    def __init__(self, spec: PerFrameSpec, *, mongo_uri: Optional[str] = None, database: str = "activebeam",
                 inputs: Sequence[str] = ()):
        super().__init__()
        self._spec = spec.validated()
        description = dict(spec.sampler().describe(), state_key=spec.state_key)
        #: The selection's id (MongoDB ``_id`` prefix of its candidates and state snapshots).
        self.selection_id = selection_id(description, "", tuple(inputs))
        self._fn = _VessalFn(self._spec, self.selection_id, json.dumps(description, sort_keys=True),
                             mongo_uri, database)

    def expand(self, records):
        how = self._spec.state_key
        out = (records
               | "StateWindow" >> beam.WindowInto(window.GlobalWindows())
               | "KeyByState" >> beam.Map(lambda record: (state_key_of(record, how), record)).with_output_types(
                   beam.typehints.KV[str, Any])
               | "Decide" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="picks"))
        return PerFrameResult(out.picks, out[DEAD_LETTER_TAG])


class _Ordered(NamedTuple):
    """What the batch pass keeps of a frame: its place in :func:`event_order`, ``u`` (float64
    ``(d,)``), its uncertainty (the factor of ``u``) and the candidate's fields (``Scored`` without
    its embedding)."""
    order: tuple
    u: np.ndarray
    uncertainty: float
    pixel_hash: str
    camera: Optional[str]
    scored: Scored


class _EmbedFn(beam.DoFn):
    """``FrameRecord`` -> ``(state key, _Ordered)``; a dead letter for a non-finite embedding or probabilities."""

    def __init__(self, spec: PerFrameSpec):
        self._spec = spec
        self._failed = Metrics.counter(METRICS_NAMESPACE, "vessal_failed")
        self._no_uncertainty = Metrics.counter(METRICS_NAMESPACE, NO_UNCERTAINTY)

    def setup(self):
        self._embed = _FrameEmbedder(self._spec.sampler())

    def process(self, record):
        try:
            u, uncertainty, missing = self._embed(record)
        except ValueError as e:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, _failed(record.frame, e))
            return
        if missing:
            self._no_uncertainty.inc()
        _, scored = to_scored(record)
        empty = np.zeros(0, dtype=np.float32)
        yield state_key_of(record, self._spec.state_key), _Ordered(
            event_order(record.frame), u, uncertainty, record.frame.pixel_hash,
            camera_of(record, self._spec.state_key), scored._replace(embedding=empty, probabilities=empty))


class _PassFn(beam.DoFn):
    """One key's frames, sorted by :func:`event_order`, decided one after the other by a new
    :class:`~transforms.select.vessal.VeSSAL`; emits a ``Candidate`` per pick."""

    def __init__(self, spec: PerFrameSpec, description: dict, inputs: Sequence[str]):
        self._spec, self._description, self._inputs = spec, description, tuple(inputs)
        self._parameters = json.dumps(description, sort_keys=True)
        self._metrics = _Metrics()
        self._selected = Metrics.counter(METRICS_NAMESPACE, "candidates_selected")

    def process(self, element, excluded, digest):
        # ``excluded``, ``digest``: plain arguments without defaults (side inputs; see _AssignRanks).
        key, items = element
        selection = selection_id(self._description, "", self._inputs + ((digest,) if digest else ()))
        sampler = self._spec.sampler()
        ordered = sorted(items, key=lambda i: i.order)
        for position, item in enumerate(ordered):
            started = time.perf_counter()
            frame_id = item.scored.frame_id
            unknown, seconds = item.order[:2]
            decision = sampler.decide(item.u, frame_draw(frame_id, sampler.seed),
                                      event_time=None if unknown else seconds,
                                      keys=(frame_id, item.pixel_hash), labelled=frame_id in excluded,
                                      camera=item.camera, remaining=len(ordered) - position)
            self._metrics.decided(decision, started)
            if decision.picked:
                self._selected.inc()
                yield pick_candidate(item.scored, decision, selection, self._parameters, item.uncertainty)
        self._metrics.flush()


class PerFramePassResult(NamedTuple):
    """:class:`SelectPerFrameInOrder`'s outputs: ``candidates`` (``PCollection[Candidate]``) and
    ``dead_letters`` (``PCollection[DeadLetter]``, stage ``candidates``)."""
    candidates: object
    dead_letters: object


class SelectPerFrameInOrder(beam.PTransform):
    """VeSSAL over a bounded pool: one pass per state key in event-time order (see the module docstring).

    Input: ``PCollection[FrameRecord]``. Output: :class:`PerFramePassResult`. The candidates are
    those of :class:`SelectPerFrame` (``strategy`` ``vessal``, ``score`` = selection probability,
    ``rank`` = the pick's number in its key, same ``components``) and equal to what a
    :class:`~transforms.select.vessal.VeSSAL` started afresh picks when it decides the key's
    frames in :func:`event_order` with :func:`~transforms.select.vessal.frame_draw` draws and
    ``remaining`` (the key's frames left, this one included). No
    state is kept: a rerun on the same pool picks the same frames under the same ``selection_id``
    (parameters, state key, ``inputs`` and the digest of the excluded ids).

    ``spec`` and ``inputs`` are :class:`SelectPerFrame`'s (no MongoDB: the pass keeps no state;
    labelled frames come from :meth:`excluding`); a ``spec`` out of range raises ``ValueError``.
    """

    def __init__(self, spec: PerFrameSpec, *, inputs: Sequence[str] = ()):
        super().__init__()
        self._spec = spec.validated()
        self._description = dict(spec.sampler().describe(), state_key=spec.state_key, order="event_time",
                                 rate="known_length")
        self._inputs = tuple(inputs)
        self._exclude_ids = None

    def excluding(self, exclude_ids) -> "SelectPerFrameInOrder":
        """This selection, also refusing the frame ids of ``exclude_ids`` (``PCollection[str]``:
        frames sent for labelling or labelled and their near-duplicate groups,
        :class:`transforms.annotate.ptransforms.ReadLabelledFrameIds`); they still count in the
        stream the rate is a share of, as in streaming."""
        selection = SelectPerFrameInOrder(self._spec, inputs=self._inputs)
        selection._exclude_ids = exclude_ids  # pylint: disable=protected-access
        return selection

    def expand(self, records):
        embedded = records | "Embed" >> beam.ParDo(_EmbedFn(self._spec)).with_outputs(DEAD_LETTER_TAG, main="frames")
        excluded = self._exclude_ids
        if excluded is None:
            excluded = records.pipeline | "NoneExcluded" >> beam.Create([]).with_output_types(str)
        as_dict = beam.pvalue.AsDict(excluded | "KeyExcluded" >> beam.Map(lambda i: (i, True)))
        digest = beam.pvalue.AsSingleton(excluded | "ExcludedDigest" >> beam.CombineGlobally(ExcludedDigestFn()))
        candidates = (embedded.frames
                      | "ByStateKey" >> beam.GroupByKey()
                      | "DecideInEventTimeOrder" >> beam.ParDo(_PassFn(self._spec, self._description, self._inputs),
                                                               as_dict, digest))
        return PerFramePassResult(candidates, embedded[DEAD_LETTER_TAG])

"""Arrivals of a streaming job in Beam: read, claim, give frames their event time, acknowledge.

The transforms of the streaming ``mine`` job around :class:`~transforms.decode.ptransforms.DecodeMedia`
(see :mod:`beam_pipelines.mine.stream` for the whole pipeline)::

    read = p | ReadArrivals(subscription="projects/p/subscriptions/s", feed=feed_spec)
    parsed = read.arrivals | ParseNotifications(ledger, "projects/p/subscriptions/s", feed_id)
    claimed = parsed.arrivals | ClaimArrivals(ledger, feed_id)     # duplicates stop here
    decoded = claimed | beam.Map(arrival_path) | DecodeMedia(match_globs=False)
    scored = decoded.frames | ScoreFrames(model)
    timed = {"arrivals": claimed, "records": scored.records, ...} | AttachEventTime()
    timed.records        # FrameRecords timestamped with their capture time (event_time set)
    timed.dead_letters   # DeadLetters timestamped with their file's event time
    timed.results        # one ArrivalResult per arrival, for AcknowledgeArrivals
    ... | AcknowledgeArrivals(ledger, feed_id)   # once indexed: ledger "done", message acked

Everything between reading and :class:`AttachEventTime` runs in *intake windows* (fixed windows of
:data:`INTAKE_WINDOW_S` seconds of reading time), so that the per-file steps (the grouping of a
video's ranges, the join by file) fire as soon as the watermark passes the second a file was
read in; :class:`AcknowledgeArrivals` fires when the indexing of that second is done.

Metrics (namespace ``activebeam.stream``): ``notifications_read``, ``notifications_malformed``,
``notifications_skipped_<EVENT_TYPE>``, ``arrivals_claimed``, ``arrivals_taken_over``,
``arrivals_duplicate``, ``claims_failed``, ``arrivals_done``, ``acknowledge_failed``,
``frames_<event time source>``, ``frames_restored``, ``dead_letters_restored``.
"""
import logging
import time
import zlib
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import window
from apache_beam.transforms.window import TimestampedValue

from schemas import arrivals as arrivals_schema
from schemas import frames as frames_schema
from schemas import records
from schemas.records import Arrival, DeadLetter, FileOutcome, FrameRecord, Restored
from transforms.intake import event_time as event_times
from transforms.intake.ledger import ArrivalLedger
from transforms.intake.notifications import (NotificationError, PubsubNotice, Skipped, parse_notification,
                                             watched_arrival)
from transforms.intake.watch import ARRIVALS, FEED_CODER, MODELS, acknowledge
from transforms.index.mongodb_client import is_unavailable, mongo_client

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "activebeam.stream"
DEAD_LETTER = records.DEAD_LETTER_TAG
RESULTS = "results"
#: Seconds of reading time per intake window (see the module docstring).
INTAKE_WINDOW_S = 1.0
#: The per-file groupings are keyed by one of this many shards of the file's URI, not by the file:
#: parallel enough, and the local runner's per-key bookkeeping (never released) stays bounded.
SHARDS = 16


def _shard(key: str) -> int:
    return zlib.crc32(key.encode("utf-8")) % SHARDS


def _by_shard(kind: str, key_fn):
    """``element -> (shard, (kind, key, element))`` for a per-file grouping (see :data:`SHARDS`)."""
    def keyed(element):
        key = key_fn(element)
        return _shard(key), (kind, key, element)
    return keyed


def _by_file(items, kinds):
    """``{file key: {kind: [elements]}}`` of one shard's grouped ``(kind, key, element)``\\ s."""
    files = {}
    for kind, key, element in items:
        files.setdefault(key, {k: [] for k in kinds})[kind].append(element)
    return files


class LedgerConfig(NamedTuple):
    """Where the arrivals ledger is and whose it is (:class:`transforms.intake.ledger.ArrivalLedger`)."""
    mongo_uri: str
    database: str
    input_name: str  # the subscription or glob
    run_id: str

    def open(self):
        return ArrivalLedger(self.mongo_uri, self.database, self.input_name, self.run_id).open()


class ArrivalResult(NamedTuple):
    """What became of one arrival once decoded and scored: frames and their event times, and its
    dead letters with their event time."""
    arrival: Arrival
    frames: int
    event_times: Tuple[float, ...]
    dead_letters: Tuple[Tuple[DeadLetter, float], ...]


class FeedSpec(NamedTuple):
    """The local runners' source (:class:`transforms.intake.watch.ArrivalFeed`): its endpoint and tags."""
    endpoint: str
    feed_id: str
    with_models: bool


def arrival_path(arrival: Arrival) -> str:
    """What :class:`DecodeMedia` (``match_globs=False``) gets for an arrival: its URI."""
    return arrival.uri


# --- reading ----------------------------------------------------------------------------------

class StreamSources(NamedTuple):
    arrivals: beam.PCollection  # PubsubNotice (subscription) or Arrival (watched glob)
    models: Optional[beam.PCollection]  # ModelMetadata, or None without a model glob


def _notice(message) -> PubsubNotice:
    publish = getattr(message, "publish_time", None)
    return PubsubNotice(message_id=message.message_id or "", data=message.data or b"",
                        attributes=dict(message.attributes or {}),
                        publish_time=publish.timestamp() if publish is not None else None)


def _watched(metadata) -> Arrival:
    return watched_arrival(metadata.path, metadata.last_updated_in_seconds, metadata.size_in_bytes)


class ReadArrivals(beam.PTransform):
    """The job's unbounded input: notifications or watched file versions, and model files.

    With ``feed`` (local runners) everything comes from the driver's
    :class:`~transforms.intake.watch.ArrivalFeed` through ``TestStream(endpoint=...)``; else from
    Beam's sources: ``ReadFromPubSub(subscription, with_attributes=True)`` (it acknowledges
    messages itself once their bundle is committed), ``MatchContinuously(glob, interval_s,
    match_updated_files=True)`` and ``WatchFilePattern(model_glob, interval_s)``.

    Returns :class:`StreamSources`.
    """

    def __init__(self, *, subscription: Optional[str] = None, glob: Optional[str] = None,
                 interval_s: float = 10.0, model_glob: Optional[str] = None,
                 feed: Optional[FeedSpec] = None):
        super().__init__()
        if (subscription is None) == (glob is None):
            raise ValueError("exactly one of subscription and glob must be given")
        self._subscription, self._glob, self._interval_s = subscription, glob, interval_s
        self._model_glob, self._feed = model_glob, feed

    def expand(self, pbegin):
        if self._feed is not None:
            tags = [ARRIVALS] + ([MODELS] if self._feed.with_models else [])
            read = pbegin | "Feed" >> TestStream(
                coder=FEED_CODER, output_tags=tags, endpoint=self._feed.endpoint)
            if not isinstance(read, dict):  # Beam returns a bare PCollection for some tag sets
                return StreamSources(read, None)
            return StreamSources(read[ARRIVALS], read.get(MODELS))
        if self._subscription:
            arrivals = (pbegin
                        | "ReadFromPubSub" >> beam.io.ReadFromPubSub(subscription=self._subscription,
                                                                     with_attributes=True)
                        | "ToNotices" >> beam.Map(_notice))
        else:
            from apache_beam.io.fileio import MatchContinuously
            arrivals = (pbegin
                        | "MatchContinuously" >> MatchContinuously(
                            self._glob, interval=self._interval_s, match_updated_files=True)
                        | "ToArrivals" >> beam.Map(_watched))
        models = None
        if self._model_glob:
            from apache_beam.ml.inference.utils import WatchFilePattern
            models = pbegin | "WatchModels" >> WatchFilePattern(self._model_glob, interval=self._interval_s)
        return StreamSources(arrivals, models)


# --- parsing and claiming ---------------------------------------------------------------------

class _ParseNotificationsFn(beam.DoFn):
    """PubsubNotice -> Arrival (OBJECT_FINALIZE); other event types are counted and acknowledged;
    a malformed message becomes a dead letter, recorded in the ledger before it is acknowledged."""

    def __init__(self, ledger: LedgerConfig, feed_id: Optional[str]):
        self._ledger_config = ledger
        self._feed_id = feed_id
        self._ledger = None
        self._read = Metrics.counter(METRICS_NAMESPACE, "notifications_read")
        self._malformed = Metrics.counter(METRICS_NAMESPACE, "notifications_malformed")

    def setup(self):
        self._ledger = self._ledger_config.open()

    def teardown(self):
        if self._ledger is not None:
            self._ledger.close()

    def process(self, notice, timestamp=beam.DoFn.TimestampParam):
        if isinstance(notice, Arrival):  # a watched file: nothing to parse
            yield notice
            return
        self._read.inc()
        try:
            parsed = parse_notification(notice.attributes, notice.data)
        except NotificationError as e:
            yield from self._dead_letter(notice, e, float(timestamp))
            return
        except Exception as e:  # pylint: disable=broad-except  # never crash on one message
            yield from self._dead_letter(notice, NotificationError(f"unexpected {type(e).__name__}: {e}",
                                                                   "unexpected"), float(timestamp))
            return
        if isinstance(parsed, Skipped):
            Metrics.counter(METRICS_NAMESPACE, f"notifications_skipped_{parsed.event_type}").inc()
            acknowledge(self._feed_id, [notice.ack_id] if notice.ack_id else ())
            return
        yield parsed._replace(message_id=notice.message_id,
                              ack_ids=(notice.ack_id,) if notice.ack_id else ())

    def _dead_letter(self, notice: PubsubNotice, error: NotificationError, read_at: float):
        self._malformed.inc()
        when = notice.publish_time or read_at
        source = f"{self._ledger_config.input_name}#message={notice.message_id}"
        dead = DeadLetter(source, records.STAGE_NOTIFICATION,
                          f"{error.reason}: {error}"[:records.MAX_ERROR_CHARS])
        pseudo = Arrival(key=f"message:{source}", uri=source, fallback_time=when,
                         fallback_source=event_times.NOTIFICATION, message_id=notice.message_id)
        try:
            claimed = self._ledger.claim(pseudo)
            if claimed.claim.name != "DUPLICATE":  # a redelivery of it was recorded already
                self._ledger.done(pseudo.key, 0, (), [(dead, when)])
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, TimestampedValue(dead, when))
        except Exception as e:  # pylint: disable=broad-except  # not acknowledged: it comes back
            _LOG.warning("could not record malformed notification %s: %s", notice.message_id, e)
            return
        acknowledge(self._feed_id, [notice.ack_id] if notice.ack_id else ())


class ParsedNotifications(NamedTuple):
    arrivals: beam.PCollection
    dead_letters: beam.PCollection


class ParseNotifications(beam.PTransform):
    """Cloud Storage notifications into :class:`~schemas.records.Arrival`\\ s (see
    :func:`~transforms.intake.notifications.parse_notification`); watched arrivals pass through.

    Returns :class:`ParsedNotifications`; the dead letters (stage ``notification``) are
    timestamped with the message's publish time.
    """

    def __init__(self, ledger: LedgerConfig, feed_id: Optional[str] = None):
        super().__init__()
        self._fn = _ParseNotificationsFn(ledger, feed_id)

    def expand(self, notices):
        parsed = notices | "Parse" >> beam.ParDo(self._fn).with_output_types(Arrival).with_outputs(
            DEAD_LETTER, main="arrivals")
        return ParsedNotifications(parsed.arrivals, parsed[DEAD_LETTER])


class _ClaimFn(beam.DoFn):
    def __init__(self, ledger: LedgerConfig, feed_id: Optional[str]):
        self._ledger_config = ledger
        self._feed_id = feed_id
        self._ledger = None
        self._counters = {name: Metrics.counter(METRICS_NAMESPACE, name) for name in (
            "arrivals_claimed", "arrivals_taken_over", "arrivals_duplicate", "claims_failed")}

    def setup(self):
        self._ledger = self._ledger_config.open()

    def teardown(self):
        if self._ledger is not None:
            self._ledger.close()

    def process(self, arrival: Arrival):
        try:
            result = self._ledger.claim(arrival)
        except Exception as e:  # pylint: disable=broad-except  # not acknowledged: it comes back
            self._counters["claims_failed"].inc()
            _LOG.warning("could not claim %s (it will be delivered again): %s", arrival.key, e)
            return
        if result.claim.name == "DUPLICATE":
            self._counters["arrivals_duplicate"].inc()
            acknowledge(self._feed_id, arrival.ack_ids, [arrival.key])
            return
        if result.claim.name == "TAKEN_OVER":
            self._counters["arrivals_taken_over"].inc()
            _LOG.info("taking over %s from run %s", arrival.key, result.previous_run)
        self._counters["arrivals_claimed"].inc()
        yield arrival


class ClaimArrivals(beam.PTransform):
    """Claims each arrival in the ledger; a version already done, or already claimed by this run
    (a duplicated notification, a re-sent message), is acknowledged and goes no further.

    Input and output: ``PCollection[Arrival]``.
    """

    def __init__(self, ledger: LedgerConfig, feed_id: Optional[str] = None):
        super().__init__()
        self._fn = _ClaimFn(ledger, feed_id)

    def expand(self, arrivals):
        return arrivals | "Claim" >> beam.ParDo(self._fn).with_output_types(Arrival)


# --- event time -------------------------------------------------------------------------------

_EVENT_TIME_KINDS = ("arrivals", "records", "dead_letters", "outcomes")


class _AttachEventTimeFn(beam.DoFn):
    """Per file (grouped with its arrival, records, dead letters and outcome): event times."""

    def __init__(self, fallback_source: str):
        self._fallback_source = fallback_source
        self._sources = {name: Metrics.counter(METRICS_NAMESPACE, f"frames_{name}")
                         for name in event_times.PRECEDENCE}
        self._orphans = Metrics.counter(METRICS_NAMESPACE, "frames_without_arrival")

    def process(self, element, win=beam.DoFn.WindowParam):
        _, items = element
        for grouped in _by_file(items, _EVENT_TIME_KINDS).values():
            yield from self._file(grouped, win)

    def _file(self, grouped, win):
        arrivals = sorted(grouped["arrivals"], key=lambda a: (a.fallback_time, a.key))
        if arrivals:
            arrival = arrivals[-1]
            fallback, source = arrival.fallback_time, arrival.fallback_source
        else:  # cannot happen: every decoded file was an arrival of this intake window
            self._orphans.inc()
            arrival, fallback, source = None, float(win.start), self._fallback_source
        outcomes = [o for o in grouped["outcomes"] if isinstance(o, FileOutcome)]
        creation = next((o.video_info.get("creation_time") for o in outcomes if o.video_info), None)
        now = time.time()
        times = []
        for record in grouped["records"]:
            frame = record.frame
            when, used = event_times.event_time(frame.capture_time, creation, frame.timestamp_s,
                                                fallback, source, now)
            self._sources[used].inc()
            times.append(when)
            yield TimestampedValue(record._replace(frame=frame._replace(event_time=when, event_time_source=used)),
                                   when)
        file_time = min(times) if times else fallback
        dead_letters = []
        for dead in grouped["dead_letters"]:
            if arrival is not None:
                dead = dead._replace(source_uri=arrival.uri)
            dead_letters.append((dead, file_time))
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, TimestampedValue(dead, file_time))
        for each in arrivals:
            yield beam.pvalue.TaggedOutput(RESULTS, ArrivalResult(each, len(times), tuple(times),
                                                                  tuple(dead_letters)))


class TimedFrames(NamedTuple):
    records: beam.PCollection
    dead_letters: beam.PCollection
    results: beam.PCollection


class AttachEventTime(beam.PTransform):
    """Gives every frame its event time (:func:`transforms.intake.event_time.event_time`) and
    re-timestamps frames and dead letters with it, per file.

    Input: a dict of PCollections in the intake windows: ``arrivals`` (claimed ``Arrival``),
    ``records`` (``FrameRecord``), ``dead_letters`` (of decoding and scoring), ``outcomes``
    (``FileOutcome``; a video's carries its container's ``creation_time``). Output
    :class:`TimedFrames`: records with ``frame.event_time``/``event_time_source`` set, dead
    letters (under their file's URI) at the earliest event time of the file's frames (else its
    fallback time), one :class:`ArrivalResult` per arrival. Records and dead letters keep their
    intake window until the next ``WindowInto``.
    """

    def __init__(self, fallback_source: str = event_times.NOTIFICATION):
        super().__init__()
        self._fn = _AttachEventTimeFn(fallback_source)

    def expand(self, inputs):
        keys = {"arrivals": arrival_path, "records": lambda r: r.frame.source_uri,
                "dead_letters": lambda d: d.source_uri, "outcomes": lambda o: o.source_uri}
        keyed = [inputs[kind] | f"Key_{kind}" >> beam.Map(_by_shard(kind, keys[kind]))
                 for kind in _EVENT_TIME_KINDS]
        timed = (keyed
                 | "Together" >> beam.Flatten()
                 | "ByFile" >> beam.GroupByKey()
                 | "EventTimes" >> beam.ParDo(self._fn).with_output_types(FrameRecord).with_outputs(
                     DEAD_LETTER, RESULTS, main="records"))
        return TimedFrames(timed.records, timed[DEAD_LETTER], timed[RESULTS])


# --- acknowledging ----------------------------------------------------------------------------

def _with_timestamp(dead, timestamp=beam.DoFn.TimestampParam):
    key = dead.source_uri
    return _shard(key), ("index_dead_letters", key, (dead, float(timestamp)))


class _AcknowledgeFn(beam.DoFn):
    def __init__(self, ledger: LedgerConfig, feed_id: Optional[str]):
        self._ledger_config = ledger
        self._feed_id = feed_id
        self._ledger = None
        self._done = Metrics.counter(METRICS_NAMESPACE, "arrivals_done")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "acknowledge_failed")
        self._not_indexed = Metrics.counter(METRICS_NAMESPACE, "arrivals_not_indexed")

    def setup(self):
        self._ledger = self._ledger_config.open()

    def teardown(self):
        if self._ledger is not None:
            self._ledger.close()

    def start_bundle(self):
        self._ack_ids, self._keys = [], []

    def process(self, element):
        _, items = element
        for grouped in _by_file(items, ("results", "index_dead_letters")).values():
            self._file(grouped)

    def finish_bundle(self):  # one acknowledgement request per bundle, once the ledger says done
        acknowledge(self._feed_id, self._ack_ids, self._keys)

    def _file(self, grouped):
        late_dead = list(grouped["index_dead_letters"])
        unavailable = sum(1 for dead, _ in late_dead if is_unavailable(dead))
        for result in grouped["results"]:
            arrival = result.arrival
            try:
                # The index writers' dead letters carry their frames' event times, so they seldom
                # reach this intake window's group: the store says what was written.
                missing = max(unavailable, result.frames - self._ledger.frames_stored(arrival.uri))
            except Exception as e:  # pylint: disable=broad-except  # not acknowledged: it comes back
                self._failed.inc()
                _LOG.warning("could not count the frames of %s (its message will be delivered again): %s",
                             arrival.key, e)
                continue
            if missing > 0:  # not done, not acknowledged: the next run (or redelivery) indexes it again
                self._not_indexed.inc()
                _LOG.warning("%s: %d of its %d frames are not in MongoDB (unavailable while they were written); "
                             "not marked done, so the next run reads it again (frames already written are "
                             "upserted, not duplicated)", arrival.key, missing, result.frames)
                continue
            try:
                self._ledger.done(arrival.key, result.frames, result.event_times,
                                  list(result.dead_letters) + late_dead)
            except Exception as e:  # pylint: disable=broad-except  # not acknowledged: it comes back
                self._failed.inc()
                _LOG.warning("could not mark %s done (its message will be delivered again): %s",
                             arrival.key, e)
                continue
            self._ack_ids.extend(arrival.ack_ids)
            self._keys.append(arrival.key)
            self._done.inc()


class AcknowledgeArrivals(beam.PTransform):
    """Marks arrivals done in the ledger, then acknowledges their messages, once everything of
    their intake window has been indexed.

    Input: a dict: ``results`` (:class:`ArrivalResult`), ``index_dead_letters`` (dead letters of
    the index writers, timestamped with their event time), and any other PCollections whose
    watermark must pass an intake window before it is acknowledged (the writers' outputs: their
    elements are not used).

    An arrival whose scored frames are not all in MongoDB ``frames`` when it is acknowledged
    (MongoDB was unavailable while they were written; or an index dead letter of
    :func:`transforms.index.mongodb_client.is_unavailable` reached this group) is neither marked
    done nor acknowledged (counter ``arrivals_not_indexed``): the next run claims it again and
    indexes it, its frames already written being upserted, not duplicated. (A frame the store
    refused for itself, by its validator, would have its file read again by each run, and
    dead-lettered again: never lost.)
    """

    def __init__(self, ledger: LedgerConfig, feed_id: Optional[str] = None):
        super().__init__()
        self._fn = _AcknowledgeFn(ledger, feed_id)

    def expand(self, inputs):
        by_arrival = _by_shard("results", lambda r: arrival_path(r.arrival))
        keyed = [inputs["results"] | "KeyResults" >> beam.Map(by_arrival),
                 inputs["index_dead_letters"] | "KeyIndexDeadLetters" >> beam.Map(_with_timestamp)]
        for name, pcoll in sorted(inputs.items()):
            if name not in ("results", "index_dead_letters"):  # only their watermark matters
                keyed.append(pcoll | f"Wait_{name}" >> beam.FlatMap(lambda _: ()))
        return (keyed
                | "Together" >> beam.Flatten()
                | "WhenIndexed" >> beam.GroupByKey()
                | "Acknowledge" >> beam.ParDo(self._fn))


# --- replaying after a restart ----------------------------------------------------------------

class _ReplayFn(beam.DoFn):
    """Reads the done arrivals whose windows may still be open, and their frames."""

    def __init__(self, ledger: LedgerConfig, horizon_s: float):
        self._ledger_config = ledger
        self._horizon_s = horizon_s
        self._frames = Metrics.counter(METRICS_NAMESPACE, "frames_restored")
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters_restored")

    def process(self, unused_impulse):
        since = time.time() - self._horizon_s
        config = self._ledger_config
        ledger = config.open()
        client = mongo_client(config.mongo_uri)
        try:
            collection = client[config.database][frames_schema.FRAMES_COLLECTION]
            for doc in ledger.recent(since):
                for dead, when in arrivals_schema.dead_letters_of(doc):
                    if when >= since:
                        self._dead.inc()
                        yield TimestampedValue(Restored(dead), when)
                for frame in collection.find({"source_uri": doc["source_uri"], "event_time": {"$gte": since}}):
                    self._frames.inc()
                    yield TimestampedValue(Restored(frames_schema.from_mongo_document(frame)),
                                           frame["event_time"])
        finally:
            client.close()
            ledger.close()


class ReplayArrivals(beam.PTransform):
    """After a restart: the frames and dead letters of arrivals a previous run finished whose
    event time is within ``horizon_s`` of now (window length plus allowed lateness), as
    :class:`~schemas.records.Restored` items timestamped with their event time, so that the
    windows they belong to are rebuilt whole. Reads ``<database>.arrivals`` and ``frames``."""

    def __init__(self, ledger: LedgerConfig, horizon_s: float):
        super().__init__()
        self._fn = _ReplayFn(ledger, horizon_s)

    def expand(self, pbegin):
        return (pbegin | "Impulse" >> beam.Impulse()
                | "ReadDoneArrivals" >> beam.ParDo(self._fn).with_output_types(Restored))


def intake_windows(allowed_lateness_s: float = 0.0):
    """The ``WindowInto`` of the intake windows (see the module docstring). The local runner's
    feed never sends late data (``allowed_lateness_s`` 0: its per-window state goes at once);
    Beam's sources may, and a late arrival then fires its intake window again."""
    return beam.WindowInto(window.FixedWindows(INTAKE_WINDOW_S), allowed_lateness=allowed_lateness_s)

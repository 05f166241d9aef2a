"""The local runners' source of a streaming job: new files, model files and the watermark.

On Dataflow the streaming ``mine`` job reads with Beam's own sources (``ReadFromPubSub``,
``MatchContinuously``, ``WatchFilePattern``; see :class:`transforms.intake.streaming.ReadArrivals`).
Beam's local streaming runner cannot: the ``BundleBasedDirectRunner`` (the only local runner
that fires event-time windows in real time) acknowledges Pub/Sub messages as it pulls them, so a
crash loses what was pulled and not yet processed, and it cannot build splittable DoFns at all
(``PeriodicImpulse``, ``MatchContinuously`` and ``WatchFilePattern`` fail with "ProcessKeyedElements/
GroupByKey was not replaced"), while the ``FnApiRunner`` runs them but fires nothing before its
source ends. So there the job's driver reads the sources itself with an :class:`ArrivalFeed`,
and serves what it reads to a ``TestStream(endpoint=...)`` in the pipeline through Beam's
``TestStreamService`` (gRPC on 127.0.0.1)::

    feed = ArrivalFeed(subscription="projects/p/subscriptions/s", lease_s=60)
    endpoint = feed.start()
    # the pipeline reads  p | TestStream(coder=FEED_CODER, output_tags=feed.tags(), endpoint=endpoint)
    ...
    feed.request_stop()     # stop reading: the stream ends, the watermark goes to the end of time
    feed.close()            # after the pipeline has finished (leases are renewed until then)

What the feed sends (an event every ``tick_s``, what was read every ``batch_s``):

* on :data:`ARRIVALS` (timestamped with the time they were read, or the watermark if later),
  Pub/Sub messages as :class:`~transforms.intake.notifications.PubsubNotice`
  (with their ``ack_id``: the pipeline acknowledges them through :func:`acknowledge` once their
  frames are indexed; until then the feed renews their lease, so a crashed job's messages are
  delivered again after at most ``lease_s``), or watched file versions as
  :class:`~schemas.records.Arrival` (each version once; one not acknowledged within
  ``redeliver_after_s`` is sent again);
* on :data:`MODELS` (with ``model_glob``), one ``ModelMetadata`` per intake window of
  ``window_s`` seconds: the newest file matching the glob written after the feed started, or
  ``model_id=""`` (keep the job's ``--model``): the side input of ``RunInference``. Hidden files
  (a name starting with ``.``) are never switched to: an atomic write needs a temporary file in
  the same folder, and Keras only saves to names ending in ``.keras``, so the temporary file of a
  model being written matches ``*.keras`` too (:func:`is_hidden`);
* the watermark: the time of the read, on every tag.

A failure of the feed (e.g. the subscription does not exist) ends the stream; :attr:`error`
holds it for the driver to raise.
"""
import logging
import math
import threading
import time
import uuid
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set

from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.portability.api import beam_runner_api_pb2

from transforms.intake.notifications import PubsubNotice, watched_arrival

_LOG = logging.getLogger(__name__)
ARRIVALS = "arrivals"
MODELS = "models"
#: The coder of everything the feed sends (small records).
FEED_CODER = coders.PickleCoder()
#: Consecutive failed reads after which the feed gives up (about a minute of outage).
MAX_CONSECUTIVE_FAILURES = 60

_FEEDS: Dict[str, "ArrivalFeed"] = {}
_FEEDS_LOCK = threading.Lock()


def acknowledge(feed_id: Optional[str], ack_ids: Sequence[str] = (), keys: Sequence[str] = ()):
    """Tells the feed ``feed_id`` (in this process) that these messages and file versions are
    done: the messages are acknowledged, the versions never sent again. No-op without a feed
    (Dataflow's sources acknowledge on their own)."""
    if not feed_id:
        return
    with _FEEDS_LOCK:
        feed = _FEEDS.get(feed_id)
    if feed is not None:
        feed.acknowledge(ack_ids, keys)


def _millis(seconds: float) -> int:
    return int(math.floor(seconds * 1000))


def _model_name(path: str) -> str:
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0] if path else ""


def _timestamped_elements(values_and_ms: Iterable, tag: str):
    # Beam's RPC reader takes these timestamps in microseconds (TestStream's own protos write ms).
    return beam_runner_api_pb2.TestStreamPayload.Event(
        element_event=beam_runner_api_pb2.TestStreamPayload.Event.AddElements(
            elements=[beam_runner_api_pb2.TestStreamPayload.TimestampedElement(
                encoded_element=FEED_CODER.encode(v), timestamp=ms * 1000) for v, ms in values_and_ms],
            tag=tag))


def _elements(values: Iterable, timestamp_ms: int, tag: str):
    return _timestamped_elements(((v, timestamp_ms) for v in values), tag)


def _watermark(timestamp_ms: int, tag: str):
    return beam_runner_api_pb2.TestStreamPayload.Event(
        watermark_event=beam_runner_api_pb2.TestStreamPayload.Event.AdvanceWatermark(
            new_watermark=timestamp_ms * 1000, tag=tag))


def is_hidden(path: str) -> bool:
    """Whether a local path or URI names a hidden file (its last component starts with ``.``),
    e.g. ``/models/.tmp-model.keras`` or ``gs://b/models/.model.keras.part``."""
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(".")


class ArrivalFeed:
    """Reads one subscription or one glob (and optionally a model glob) for a local streaming job.

    Parameters
    ----------
    subscription : str, optional
        ``projects/P/subscriptions/S``: pulled without auto-acknowledgement.
    glob : str, optional
        Local or ``gs://`` glob listed every ``interval_s`` seconds.
    interval_s : float
        Seconds between listings of ``glob`` (and of ``model_glob``).
    model_glob : str, optional
        Model files to switch to (see the module docstring).
    window_s : float
        Intake window of the pipeline (one model side-input element per window).
    tick_s : float
        Longest time between two events of the stream (watermark updates): Beam's local runner
        waits for the stream's next event on its only worker thread, between its other work.
    batch_s, max_batch : float, int
        What was read is sent at most every ``batch_s`` seconds, or as soon as ``max_batch``
        items wait: the local runner's cost is per bundle and step, whatever the bundle's size.
    poll_s : float
        Seconds between two Pub/Sub pulls that found nothing (also their longest wait).
    lease_s : float
        Acknowledgement deadline the feed keeps renewing for the messages it has sent, from 10
        to 600 s (Pub/Sub's range).
    max_messages : int
        Messages per pull.
    redeliver_after_s : float
        A watched version the pipeline has not acknowledged after this long is sent again.
    done_keys : callable, optional
        ``keys -> set of keys`` already done (the ledger): watched versions done by an earlier
        run are not sent again.
    """

    def __init__(self, *, subscription: Optional[str] = None, glob: Optional[str] = None,
                 interval_s: float = 10.0, model_glob: Optional[str] = None, window_s: float = 1.0,
                 tick_s: float = 0.05, batch_s: float = 0.5, max_batch: int = 500, poll_s: float = 0.2,
                 lease_s: float = 60.0, max_messages: int = 200,
                 redeliver_after_s: float = 300.0,
                 done_keys: Optional[Callable[[Sequence[str]], Set[str]]] = None):
        if (subscription is None) == (glob is None):
            raise ValueError("exactly one of subscription and glob must be given")
        if not 10 <= lease_s <= 600:
            raise ValueError(f"lease_s must be in [10, 600] (Pub/Sub's acknowledgement deadlines), got {lease_s}")
        if interval_s <= 0 or tick_s <= 0 or window_s <= 0:
            raise ValueError("interval_s, tick_s and window_s must be > 0")
        self.id = uuid.uuid4().hex
        self._subscription, self._glob, self._interval_s = subscription, glob, interval_s
        self._model_glob, self._window_s, self._tick_s = model_glob, window_s, tick_s
        self._poll_s = poll_s
        self._batch_s, self._max_batch = batch_s, max_batch
        self._lease_s, self._max_messages = lease_s, max_messages
        self._redeliver_after_s, self._done_keys = redeliver_after_s, done_keys
        self._started_at = time.time()
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._outstanding: Dict[str, float] = {}  # ack_id -> when pulled
        self._sent: Dict[str, tuple] = {}  # watched key -> (arrival, when sent), not yet acknowledged
        self._seen: Set[str] = set()  # watched keys sent or found done
        self._subscriber = None
        self._server = None
        self._lease_thread = None
        self.error: Optional[BaseException] = None
        self.counts = {"messages_pulled": 0, "messages_acknowledged": 0, "files_listed": 0,
                       "versions_sent": 0, "versions_resent": 0, "versions_already_done": 0,
                       "model_switches": 0, "events": {}}
        self._model = ""
        self._ready: list = []
        self._wake = threading.Event()
        self._polling_done = threading.Event()
        self._poller = None

    def tags(self) -> List[str]:
        return [ARRIVALS] + ([MODELS] if self._model_glob else [])

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> str:
        """Starts the feed's server; returns its endpoint (``localhost:PORT``)."""
        from apache_beam.testing.test_stream_service import TestStreamServiceController
        if self._subscription:
            from google.cloud import pubsub_v1
            self._subscriber = pubsub_v1.SubscriberClient()
            self._subscriber.get_subscription(request={"subscription": self._subscription})  # fail fast
            self._lease_thread = threading.Thread(target=self._renew_leases, name="feed-leases", daemon=True)
            self._lease_thread.start()
        with _FEEDS_LOCK:
            _FEEDS[self.id] = self
        self._poller = threading.Thread(target=self._poll, name="feed-poller", daemon=True)
        self._poller.start()
        self._server = TestStreamServiceController(self)
        self._server.start()
        return self._server.endpoint

    def request_stop(self):
        """Stops reading: the stream ends at the next tick (the pipeline then drains)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self):
        """Stops the server and the lease renewals (after the pipeline finished)."""
        self._stop.set()
        self._closed.set()
        with _FEEDS_LOCK:
            _FEEDS.pop(self.id, None)
        if self._server is not None:
            self._server.stop()
        for thread in (self._poller, self._lease_thread):
            if thread is not None:
                thread.join(timeout=10)
        if self._subscriber is not None:
            self._subscriber.close()

    # --- what the pipeline calls ------------------------------------------------------------

    def acknowledge(self, ack_ids: Sequence[str] = (), keys: Sequence[str] = ()):
        ack_ids = [a for a in ack_ids if a]
        if ack_ids and self._subscriber is not None:
            for start in range(0, len(ack_ids), 1000):
                self._subscriber.acknowledge(request={"subscription": self._subscription,
                                                      "ack_ids": ack_ids[start:start + 1000]})
        with self._lock:
            for ack_id in ack_ids:
                self._outstanding.pop(ack_id, None)
            for key in keys:
                self._sent.pop(key, None)
            self.counts["messages_acknowledged"] += len(ack_ids)

    # --- reading (the poller thread) and serving (the TestStreamService reader) --------------

    def _poll(self):
        """Reads the sources until stopped; what it reads waits in ``self._ready``."""
        next_listing = next_model_check = 0.0
        failures = 0
        try:
            while not self._stop.is_set():
                started = time.time()
                try:
                    if self._model_glob and started >= next_model_check:
                        self._check_models()
                        next_model_check = started + self._interval_s
                    if self._subscription:
                        items = self._pull()
                    elif started >= next_listing:
                        items = self._list()
                        next_listing = started + self._interval_s
                    else:
                        items = []
                    failures = 0
                except Exception as e:  # pylint: disable=broad-except  # retried, then fatal
                    failures += 1
                    _LOG.warning("streaming source read failed (%d in a row): %s", failures, e)
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        raise
                    items = []
                if items:  # served at the next tick, with everything else read until then
                    read_at = time.time()
                    with self._lock:
                        self._ready.append((read_at, items))
                if not self._subscription or not items:
                    self._stop.wait(max(0.0, self._poll_s - (time.time() - started)))
        except Exception as e:  # pylint: disable=broad-except  # ends the stream; the driver raises it
            _LOG.error("streaming source failed, stopping the job: %s", e)
            self.error = e
            self._stop.set()
        finally:
            self._polling_done.set()
            self._wake.set()

    def read_multiple(self, unused_keys, tail=True):  # noqa: ARG002 - TestStreamService's reader API
        """Yields the events of the stream: what was read (batched), one model element per intake
        window, and the watermark, every ``tick_s`` at most."""
        watermark = 0
        next_model_window = math.floor(self._started_at / self._window_s)
        last_batch = 0.0
        while True:
            self._wake.wait(self._tick_s)
            self._wake.clear()
            finished = self._polling_done.is_set()
            now = time.time()
            with self._lock:
                waiting = sum(len(items) for _, items in self._ready)
                due = finished or waiting >= self._max_batch or now - last_batch >= self._batch_s
                batches, self._ready = (self._ready, []) if due else ([], self._ready)
                oldest = self._ready[0][0] if self._ready else now
            if batches:  # few, large bundles: the local runner's cost is per bundle, not per element
                last_batch = now
                yield _timestamped_elements(
                    [(item, max(watermark, _millis(read_at))) for read_at, items in batches for item in items],
                    ARRIVALS)
            # Held back for the next batch, an item keeps the watermark at the time it was read.
            watermark = max(watermark, _millis(min(now, oldest)))
            if self._model_glob:
                last_window = math.floor(now / self._window_s)
                while next_model_window <= last_window:
                    when = max(_millis(next_model_window * self._window_s), 0)
                    yield _elements([ModelMetadata(model_id=self._model, model_name=_model_name(self._model))],
                                    when, MODELS)
                    next_model_window += 1
            for tag in self.tags():
                yield _watermark(watermark, tag)
            if finished:
                return

    def _pull(self) -> List[PubsubNotice]:
        from google.api_core import exceptions
        try:
            response = self._subscriber.pull(
                request={"subscription": self._subscription, "max_messages": self._max_messages},
                timeout=max(self._poll_s, 1.0))
        except exceptions.DeadlineExceeded:
            return []
        received = list(response.received_messages)
        if not received:
            return []
        ack_ids = [r.ack_id for r in received]
        self._extend(ack_ids)
        now = time.time()
        with self._lock:
            for ack_id in ack_ids:
                self._outstanding[ack_id] = now
            self.counts["messages_pulled"] += len(received)
        notices = []
        for r in received:
            message = r.message
            event = message.attributes.get("eventType") or "(none)"
            with self._lock:
                self.counts["events"][event] = self.counts["events"].get(event, 0) + 1
            publish = message.publish_time
            notices.append(PubsubNotice(
                message_id=message.message_id, data=bytes(message.data),
                attributes=dict(message.attributes),
                publish_time=publish.timestamp() if publish else None, ack_id=r.ack_id))
        return notices

    def _extend(self, ack_ids: Sequence[str]):
        for start in range(0, len(ack_ids), 1000):
            self._subscriber.modify_ack_deadline(request={
                "subscription": self._subscription, "ack_ids": list(ack_ids[start:start + 1000]),
                "ack_deadline_seconds": int(self._lease_s)})

    def _renew_leases(self):
        while not self._closed.wait(self._lease_s / 3):
            with self._lock:
                ack_ids = list(self._outstanding)
            if ack_ids:
                try:
                    self._extend(ack_ids)
                except Exception as e:  # pylint: disable=broad-except  # the next renewal may work
                    _LOG.warning("could not renew the lease of %d messages: %s", len(ack_ids), e)

    def _list(self):
        results = FileSystems.match([self._glob])[0].metadata_list
        now = time.time()
        found = {}
        for metadata in results:
            path = metadata.path
            if path.endswith("/"):
                continue
            arrival = watched_arrival(path, metadata.last_updated_in_seconds, metadata.size_in_bytes)
            found[arrival.key] = arrival
        self.counts["files_listed"] = len(found)
        new = [key for key in found if key not in self._seen]
        if new and self._done_keys is not None:
            done = self._done_keys(new)
            self.counts["versions_already_done"] += len(done)
            self._seen.update(done)
            new = [key for key in new if key not in done]
        items = []
        with self._lock:
            for key in new:
                self._seen.add(key)
                self._sent[key] = (found[key], now)
                items.append(found[key])
            stale = [key for key, (_, sent) in self._sent.items()
                     if now - sent > self._redeliver_after_s and key not in new]
            for key in stale:
                self._sent[key] = (self._sent[key][0], now)
                items.append(self._sent[key][0])
        self.counts["versions_sent"] += len(new)
        self.counts["versions_resent"] += len(stale)
        return items

    def _check_models(self):
        try:
            results = FileSystems.match([self._model_glob])[0].metadata_list
        except Exception as e:  # pylint: disable=broad-except  # no model file yet
            _LOG.debug("no model file matches %s yet: %s", self._model_glob, e)
            return
        newer = [m for m in results if m.last_updated_in_seconds > self._started_at
                 and not m.path.endswith("/") and not is_hidden(m.path)]
        if not newer:
            return
        newest = max(newer, key=lambda m: (m.last_updated_in_seconds, m.path)).path
        if newest != self._model:
            _LOG.info("switching to model %s", newest)
            self._model = newest
            self.counts["model_switches"] += 1

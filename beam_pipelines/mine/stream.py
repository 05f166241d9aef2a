"""The ``mine`` job in streaming: new files in, per-window candidates out, until it is stopped.

    # Cloud Storage notifications (gcloud storage buckets notifications create gs://cams --topic=T)
    python -m beam_pipelines.mine --input_subscription projects/P/subscriptions/cams \\
        --window_seconds 60 --allowed_lateness_seconds 600 --budget 20 --strategy coreset \\
        --mongo_uri mongodb://host:27017 --output_dir gs://cams-out/mine --max_runtime_seconds 3600
    # a folder (local or gs://), listed every 10 s; a model retrained next to the job
    python -m beam_pipelines.mine --watch '/data/cam*/*.jpg' --model_watch '/models/*.keras'

``--input_subscription`` or ``--watch`` (or ``--streaming`` with one of them) makes ``mine`` a
streaming job (:class:`MineStream`); ``--input`` keeps it a batch job. Stages, as in
:meth:`MineStream.expand`: read arrivals (:mod:`transforms.intake.streaming`), parse
notifications, claim each file version in the ``arrivals`` ledger (a duplicate changes nothing),
decode, embed and score (the model may change: ``--model_watch``), give each frame its event
time (capture time: :mod:`transforms.intake.event_time`), index frames in MongoDB (and BigQuery),
acknowledge, select per event-time window (:mod:`transforms.select.windows`) and write each
window pane (:mod:`transforms.index.window_outputs`). With ``--strategy vessal --label_rate R``
each scored frame is decided at once instead (:mod:`transforms.select.per_frame`, Beam state per
``--vessal_state_key``) and each pick written at once (:mod:`transforms.index.pick_outputs`,
``candidates/picks/``); the windows then carry counts and dead letters, no candidates.

Outputs in ``--output_dir``: ``candidates/<start>_<end>.jsonl`` and ``dead_letters/<start>_<end>.jsonl``
per window (rewritten atomically by late panes), ``windows.jsonl`` (one line per pane) and, when
the job stops, ``summary.json``. The ``runs`` entry says ``running`` (counts updated every
``--status_interval_seconds``), then ``drained`` (stopped cleanly), ``cancelled`` or ``failed``.

Stopping (local runners): ``--max_runtime_seconds``, SIGINT, SIGTERM or SIGHUP stop the reading;
the open windows fire, their outputs are written, and the job exits 0 (a second signal cancels
at once: exit code 128 + its number, run ``cancelled``). On Dataflow the job is left running:
drain it with ``gcloud dataflow jobs drain``. Restarting on the same source resumes: Pub/Sub redelivers what was not acknowledged
(messages are acknowledged once their frames are indexed), the watcher skips the versions the
ledger has done, and the windows that can still change are rebuilt from the stores.

Local runners: the job runs on Beam's ``BundleBasedDirectRunner`` (the only local runner that
fires event-time windows in real time); its sources are read by the driver
(:mod:`transforms.intake.watch` says why).
"""
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Dict, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions, StandardOptions

from beam_pipelines.cli import metrics, preflight, shutdown
from beam_pipelines.mine.job import embedded_mongod, load_model, make_detector, priced, run_facts
from beam_pipelines.mine.options import (MineJob, MineOptions, StreamingOptions, check_options, decode_options,
                                         stage_models)
from beam_pipelines.cli.run_record import RunRecord, describe_run
from schemas import arrivals as arrivals_schema
from schemas.frames import DEFAULT_DATABASE
from transforms.common import gcp_emulators
from transforms.common.files import is_local
from transforms.common.outputs import SUMMARY_FILE
from transforms.decode.ptransforms import DecodeMedia
from transforms.index import WriteFramesToBigQuery, WriteFramesToMongoDB
from transforms.index.window_outputs import (CANDIDATES_DIR, DEAD_LETTERS_DIR, WINDOWS_FILE, WriteWindowPanes,
                                              read_windows_log, write_atomically)
from transforms.intake import event_time as event_times
from transforms.intake.ledger import ArrivalLedger
from transforms.intake.streaming import METRICS_NAMESPACE as STREAM_METRICS
from transforms.intake.streaming import (INTAKE_WINDOW_S, AcknowledgeArrivals, AttachEventTime, ClaimArrivals,
                                         FeedSpec, LedgerConfig, ParseNotifications, ReadArrivals, ReplayArrivals,
                                         arrival_path, intake_windows)
from transforms.score.detectors import DetectorHandler
from transforms.score.ptransforms import ModelSpec, ScoreFrames
from transforms.index.pick_outputs import PICKS_DIR, WritePicks
from transforms.select.per_frame import SelectPerFrame
from transforms.select.windows import WindowSpec, SelectPerWindow

_LOG = logging.getLogger(__name__)


class StreamJob(NamedTuple):
    """The streaming job's options once checked (nothing loaded or started)."""
    mine: MineJob
    runner: str
    local: bool
    input_name: str  # the subscription or the glob
    subscription: Optional[str]
    watch: Optional[str]
    windows: WindowSpec
    interval_s: float
    max_runtime_s: float
    model_watch: Optional[str]
    lease_s: float
    status_interval_s: float

    @property
    def fallback_source(self) -> str:
        return event_times.NOTIFICATION if self.subscription else event_times.MTIME

    @property
    def replay_horizon_s(self) -> float:
        """How far back (seconds before now) a frame's window may still change."""
        return self.windows.window_s + self.windows.allowed_lateness_s + INTAKE_WINDOW_S


def check_streaming(options: PipelineOptions) -> StreamJob:
    """Checks every option of the streaming job (:func:`~beam_pipelines.mine.options.check_options`,
    which checks the streaming ones too) and returns what the driver runs.

    Raises
    ------
    ValueError
        Naming the first option whose value cannot work.
    """
    job = check_options(options)
    stream = options.view_as(StreamingOptions)
    return StreamJob(
        mine=job, runner=job.runner, local=job.local_runner,
        input_name=stream.input_subscription or stream.watch,
        subscription=stream.input_subscription, watch=stream.watch,
        windows=WindowSpec(stream.window_seconds, stream.window_period_seconds,
                           stream.allowed_lateness_seconds).validated(),
        interval_s=stream.watch_interval_seconds, max_runtime_s=stream.max_runtime_seconds,
        model_watch=stream.model_watch, lease_s=stream.ack_deadline_seconds,
        status_interval_s=stream.status_interval_seconds)


class MineStream(beam.PTransform):
    """The streaming ``mine`` job as one composite: arrivals in, window panes written.

    Input: the pipeline (``PBegin``). Indexes frames in MongoDB (and BigQuery) as they come,
    writes each window pane (files, ``windows.jsonl``, candidate indexes) and acknowledges
    arrivals once indexed. Returns the ``PCollection`` of ``windows.jsonl`` lines written.

    Parameters
    ----------
    job : StreamJob
        The checked options (source, windows, output directory, tables...).
    model : ModelSpec
        The job's ``--model``.
    detector : DetectorHandler, optional
        The job's detector (:func:`beam_pipelines.mine.job.make_detector`), or None.
    mongo_uri : str
        MongoDB of the frames, candidates, runs and arrivals.
    run_id : str
        This run (the ledger's claims, ``windows.jsonl``).
    feed : FeedSpec, optional
        The local runners' source; None on Dataflow.
    """

    def __init__(self, job: StreamJob, model: ModelSpec, mongo_uri: str, run_id: str, *,
                 detector: Optional[DetectorHandler] = None, mongo_database: str = DEFAULT_DATABASE, budget: int = 50, strategy: str = "entropy",
                 strategy_params: Optional[dict] = None, video_fps: float = 1.0,
                 decode_options: Optional[dict] = None, uniqueness_k: int = 0,
                 bigquery_table: Optional[str] = None, project: Optional[str] = None,
                 feed: Optional[FeedSpec] = None, export_metrics: bool = False):
        super().__init__()
        self._job, self._model, self._feed = job, model, feed
        self._export_metrics = export_metrics  # Prometheus (--metrics_port, local runner)
        feed_id = feed.feed_id if feed else None
        self._ledger = LedgerConfig(mongo_uri, mongo_database, job.input_name, run_id)
        self._read = ReadArrivals(subscription=job.subscription, glob=job.watch, interval_s=job.interval_s,
                                  model_glob=job.model_watch, feed=feed)
        self._parse = ParseNotifications(self._ledger, feed_id)
        self._claim = ClaimArrivals(self._ledger, feed_id)
        # On the local runner, no fan-out: its per-key state would grow with every file.
        self._decode = DecodeMedia(video_fps, **dict(decode_options or {}, fan_out=not job.local,
                                                      match_globs=False))  # arrivals are known files
        self._detector = detector
        self._event_time = AttachEventTime(job.fallback_source)
        self._index_mongo = WriteFramesToMongoDB(mongo_uri, mongo_database)
        self._index_bigquery = (WriteFramesToBigQuery(bigquery_table, "STREAMING_INSERTS", project=project)
                                if bigquery_table else None)
        self._acknowledge = AcknowledgeArrivals(self._ledger, feed_id)
        self._replay = ReplayArrivals(self._ledger, job.replay_horizon_s)
        per_frame = job.mine.per_frame
        if per_frame is not None:  # picks per frame; the windows still count and hold the dead letters
            budget, strategy, strategy_params, uniqueness_k = 0, "random", None, 0
        self._select = SelectPerWindow(job.windows, budget, strategy, strategy_params,
                                       uniqueness_k=uniqueness_k, inputs=(job.input_name,),
                                       decided_per_frame=per_frame is not None)
        self._pick = self._write_picks = None
        if per_frame is not None:
            self._pick = SelectPerFrame(per_frame, mongo_uri=mongo_uri, database=mongo_database,
                                        inputs=(job.input_name,))
            self._write_picks = WritePicks(job.mine.output_dir, mongo_uri=mongo_uri, database=mongo_database,
                                           bigquery_table=job.mine.candidates_table, project=project)
        self._write = WriteWindowPanes(job.mine.output_dir, mongo_uri=mongo_uri, database=mongo_database,
                                       bigquery_table=job.mine.candidates_table, project=project, run_id=run_id)

    def expand(self, pbegin):
        read = pbegin | "ReadArrivals" >> self._read
        parsed = (read.arrivals
                  | "IntakeWindows" >> intake_windows(0.0 if self._feed else REMOTE_INTAKE_LATENESS_S)
                  | "ParseNotifications" >> self._parse)
        claimed = parsed.arrivals | "ClaimArrivals" >> self._claim
        decoded = claimed | "ToPaths" >> beam.Map(arrival_path) | "Decode" >> self._decode
        models = read.models
        if models is not None and self._feed is not None:  # one model element per intake window
            models = models | "ModelWindows" >> intake_windows()
        scored = decoded.frames | "EmbedAndScore" >> ScoreFrames(self._model, detector=self._detector,
                                                                model_updates=models)
        failed = (decoded.dead_letters, scored.dead_letters) | "DecodeAndScoreDeadLetters" >> beam.Flatten()
        timed = ({"arrivals": claimed, "records": scored.records, "outcomes": decoded.outcomes,
                  "dead_letters": failed}
                 | "EventTime" >> self._event_time)
        indexed = timed.records | "IndexInMongoDB" >> self._index_mongo
        undecided, waits = [], {}
        if self._pick is not None:
            decided = timed.records | "SelectPerFrame" >> self._pick
            _ = decided.picks | "WritePicks" >> self._write_picks
            # decided in the global window (Beam state per key): back to the intake windows of the
            # dead letters they join (each keeps its frame's event time as its timestamp)
            undecided = [decided.dead_letters | "UndecidedIntakeWindows" >> intake_windows()]
            # a file is done (a restart skips it) only once its frames are decided and the
            # decisions saved (at the end of each bundle, before its outputs move the watermark)
            waits["frames_decided"] = decided.picks | "DecidedIntakeWindows" >> intake_windows()
        index_dead_letters = [indexed.dead_letters]
        if self._index_bigquery:
            index_dead_letters.append(timed.records | "IndexInBigQuery" >> self._index_bigquery)
        index_dead_letters = index_dead_letters | "IndexDeadLetters" >> beam.Flatten()
        _ = {"results": timed.results, "index_dead_letters": index_dead_letters,
             "frames_indexed": indexed.frame_ids, **waits} | "Acknowledge" >> self._acknowledge
        dead_letters = ((parsed.dead_letters, timed.dead_letters, index_dead_letters, *undecided)
                        | "AllDeadLetters" >> beam.Flatten()
                        | "CountDeadLetters" >> beam.Map(_counted_dead_letter))
        restored = pbegin | "ReplayArrivals" >> self._replay | "RestoredIntakeWindows" >> intake_windows()
        panes = ((timed.records, dead_letters, restored)
                 | "ForWindows" >> beam.Flatten()
                 | "SelectPerWindow" >> self._select)
        written = panes | "WriteWindows" >> self._write
        if self._export_metrics:
            _ = {"frames_decoded": decoded.frames, "frames_scored": scored.records, "frames_indexed": indexed.frame_ids,
                 "dead_letters": dead_letters, "window_panes": written} | "Metrics" >> metrics.ExportMetrics()
        return written


#: On Dataflow, how late (behind the watermark) a notification may be read and still be mined.
REMOTE_INTAKE_LATENESS_S = 3600.0
_DEAD_LETTERS = beam.metrics.Metrics.counter(STREAM_METRICS, "dead_letters")


def _counted_dead_letter(dead):
    _DEAD_LETTERS.inc()
    return dead


class RunCounts:
    """The counts of a local streaming run, from what is durable: the run's entries in the
    ``arrivals`` ledger, its lines in ``windows.jsonl``, and what its feed read.

    Not from the pipeline's metrics: Beam 2.77's ``BundleBasedDirectRunner`` keeps only the
    first bundle's user counters of each step (its worker thread's ``StateSampler`` caches each
    step's ``ScopedState`` with the first bundle's ``MetricsContainer``; later bundles' increments
    go to that container after it was committed). The pipeline still counts in Beam metrics
    (namespace ``activebeam.stream`` and the stages'), which Dataflow reports correctly.
    """

    def __init__(self, ledger, feed, output_dir: str, run_id: str, picks: bool = False):
        self._ledger, self._feed, self._output_dir, self._run_id = ledger, feed, output_dir, run_id
        self._picks = picks

    def __call__(self) -> Dict[str, object]:
        counts = dict(self._ledger.run_counts())
        counts.update(_window_totals(self._output_dir, self._run_id))
        if self._picks:
            counts["picks"] = _pick_total(self._output_dir)
        feed = dict(self._feed.counts)
        events = feed.pop("events", {})
        counts["feed"] = feed
        if events:
            counts["notifications_by_event_type"] = events
            finalize = events.get("OBJECT_FINALIZE", 0)
            claimed = counts["files_done"] + counts["files_claimed"]
            # Re-sent or duplicated notifications of versions done or already in flight, and
            # messages delivered again after a lease ran out.
            counts["notifications_duplicate"] = max(0, finalize - claimed - counts["notifications_malformed"])
            counts["notifications_skipped"] = sum(n for e, n in events.items() if e != "OBJECT_FINALIZE")
        return counts


class _Supervisor:
    """Waits for a local streaming pipeline: stops its feed at ``--max_runtime_seconds`` or on the
    first SIGINT/SIGTERM (the pipeline then drains), cancels it on the second, records the counts
    every ``status_interval_s``."""

    def __init__(self, result, feed, record: RunRecord, counts: RunCounts, max_runtime_s: float,
                 status_interval_s: float):
        self._result, self._feed, self._record, self._counts = result, feed, record, counts
        self._max_runtime_s, self._status_interval_s = max_runtime_s, status_interval_s
        self._signals = 0
        self.stop_reason: Optional[str] = None

    def _on_signal(self, signum, unused_frame):
        self._signals += 1
        if self._signals > 1:
            raise shutdown.Cancelled(signum)
        self._stop(f"signal {signal.Signals(signum).name}")

    def _stop(self, reason: str):
        if self.stop_reason is None:
            self.stop_reason = reason
            sys.stderr.write(f"mine: stopping ({reason}): no more reading; writing the open windows "
                             f"(a second SIGINT or SIGTERM cancels)\n")
            sys.stderr.flush()
            self._feed.request_stop()

    def run(self):
        failure = []

        def wait():
            try:
                self._result.wait_until_finish()
            except BaseException as e:  # pylint: disable=broad-except  # re-raised in the main thread
                failure.append(e)
        waiter = threading.Thread(target=wait, name="wait-until-finish", daemon=True)
        waiter.start()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for signum in shutdown.STOP_SIGNALS:  # over the job's own cancel-on-signal handlers
                handlers[signum] = signal.signal(signum, self._on_signal)
        started = time.monotonic()
        next_update = started + self._status_interval_s
        try:
            while waiter.is_alive():
                waiter.join(0.2)
                now = time.monotonic()
                if self._max_runtime_s and now - started >= self._max_runtime_s:
                    self._stop(f"--max_runtime_seconds={self._max_runtime_s:g} reached")
                if self._feed.error is not None:
                    self._stop(f"the source failed: {self._feed.error}")
                if now >= next_update:
                    next_update = now + self._status_interval_s
                    try:
                        self._record.update(self._counts())
                    except Exception as e:  # pylint: disable=broad-except  # counts are best effort
                        _LOG.warning("could not update the run's counts: %s", e)
        except KeyboardInterrupt:
            _LOG.warning("cancelling the pipeline")
            self._result.cancel()
            raise
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        if failure:
            raise failure[0]
        if self._feed.error is not None:
            raise RuntimeError(f"the streaming source failed: {self._feed.error}") from self._feed.error


def _window_totals(output_dir: str, run_id: str) -> dict:
    """From ``windows.jsonl``: windows this run wrote, panes, late panes, and the candidates and
    dead letters of their latest panes (a dead letter of sliding windows counts in each)."""
    latest, panes, late = {}, 0, 0
    for line in read_windows_log(output_dir):
        if line.get("run_id") != run_id:
            continue
        panes += 1
        late += line.get("pane") == "late"
        latest[(line.get("window_start"), line.get("window_end"))] = line
    return {"windows": len(latest), "window_panes": panes, "late_panes": late,
            "candidates": sum(line.get("candidates", 0) for line in latest.values()),
            "dead_letters": sum(line.get("dead_letters", 0) for line in latest.values())}


def _pick_total(output_dir: str) -> int:
    """Per-frame picks in ``candidates/picks/`` (every run's: a pick is one file)."""
    pattern = FileSystems.join(output_dir, CANDIDATES_DIR, PICKS_DIR, "*.jsonl")
    return len(FileSystems.match([pattern])[0].metadata_list)


def run(argv) -> dict:
    """Runs the streaming ``mine`` job until it is stopped; returns its summary (also written to
    ``summary.json``) with ``wall_seconds``.

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        (A ``ValueError``.) For options that cannot work (:func:`check_streaming`), before
        anything starts.
    beam_pipelines.cli.preflight.StoreUnavailable
        With a local runner, for a MongoDB or BigQuery dataset that does not answer.
    RuntimeError
        When the source fails (the run is recorded ``failed``).
    beam_pipelines.cli.shutdown.Cancelled
        On a second stop signal while draining (the run is recorded ``cancelled``).
    """
    options, job = preflight.check_job(argv, MineOptions, check_streaming)
    mine = options.view_as(MineOptions)
    project = options.view_as(GoogleCloudOptions).project
    direct = options.view_as(DirectOptions)
    if job.local and (direct.direct_running_mode != "in_memory" or (direct.direct_num_workers or 0) > 1):
        sys.stderr.write("mine: streaming on the local runner runs in one process (Beam's "
                         "BundleBasedDirectRunner): --direct_running_mode and --direct_num_workers "
                         "apply to batch runs only; on Dataflow, set --max_num_workers\n")
    if job.local:
        preflight.check_stores(mine.mongo_uri, [t for t in (mine.bigquery_table, job.mine.candidates_table) if t],
                               project, mine.store_check_timeout_s)
        if job.subscription:
            _check_subscription(job.subscription, mine.store_check_timeout_s)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    standard.runner = job.runner
    output_dir = job.mine.output_dir
    if is_local(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    gcp_emulators.use_emulators_if_configured()
    job = job._replace(mine=stage_models(job.mine))
    model = load_model(mine, job.mine)
    detector = make_detector(mine, job.mine)
    with contextlib.ExitStack() as stack:
        mongo_uri = mine.mongo_uri or embedded_mongod(stack, output_dir)
        job = job._replace(mine=priced(mine, job.mine, mongo_uri))
        facts = dict(run_facts(mine, job.mine, [], mongo_uri, model, streaming=True), streaming=True,
                     input_subscription=job.subscription, watch=job.watch,
                     window_seconds=job.windows.window_s, window_period_seconds=job.windows.period_s,
                     allowed_lateness_seconds=job.windows.allowed_lateness_s, model_watch=job.model_watch,
                     runner=job.runner)
        lineage = describe_run(
            "mine", options.get_all_options(drop_default=True, retain_unknown_options=True), facts,
            inputs=[job.input_name], output_dir=output_dir, model=facts["model"],
            bigquery_table=mine.bigquery_table, project=project)
        started = time.monotonic()
        stop_reason = None
        with RunRecord(lineage, mongo_uri, mine.mongo_database, local_driver=job.local) as record:
            feed, endpoint = (_start_feed(stack, job, mongo_uri, mine.mongo_database, lineage.run_id)
                              if job.local else (None, None))
            stack.enter_context(metrics.serve(mine.metrics_port, mine.metrics_host))
            pipeline = beam.Pipeline(runner=job.runner, options=options)
            _ = pipeline | "Mine" >> MineStream(
                job, model, mongo_uri, lineage.run_id, detector=detector, mongo_database=mine.mongo_database,
                budget=mine.budget, strategy=mine.strategy, strategy_params=job.mine.strategy_params,
                video_fps=mine.video_fps, decode_options=decode_options(mine), uniqueness_k=mine.uniqueness_k,
                bigquery_table=mine.bigquery_table, project=project,
                feed=FeedSpec(endpoint, feed.id, bool(job.model_watch)) if feed else None,
                export_metrics=mine.metrics_port is not None)
            result = pipeline.run()
            if not job.local:  # Dataflow: the job runs on; drain it with gcloud
                record.finish_as("running")
                return dict(facts, run_id=lineage.run_id, job_id=getattr(result, "job_id", lambda: None)())
            run_counts = RunCounts(stack.enter_context(ArrivalLedger(mongo_uri, mine.mongo_database,
                                                                     job.input_name, lineage.run_id)),
                                   feed, output_dir, lineage.run_id, picks=job.mine.per_frame is not None)
            supervisor = _Supervisor(result, feed, record, run_counts, job.max_runtime_s, job.status_interval_s)
            supervisor.run()
            stop_reason = supervisor.stop_reason
            counts = run_counts()
            record.set_counts(counts)
            record.finish_as("drained")
        summary = dict(facts, **counts, run_id=lineage.run_id, code_version=lineage.code_version,
                       status="drained", stop_reason=stop_reason,
                       wall_seconds=round(time.monotonic() - started, 1))
    write_atomically(FileSystems.join(output_dir, SUMMARY_FILE),
                     json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return summary


def _check_subscription(subscription: str, timeout_s: float):
    """A :class:`~beam_pipelines.cli.preflight.StoreUnavailable` (exit code 3) unless the subscription
    answers within ``timeout_s`` (0: not checked)."""
    if not timeout_s:
        return
    from google.api_core import exceptions
    from google.cloud import pubsub_v1
    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscriber.get_subscription(request={"subscription": subscription}, timeout=timeout_s)
    except exceptions.NotFound:
        raise preflight.StoreUnavailable(f"--input_subscription {subscription} does not exist: create it "
                                         f"on the topic of the bucket's notifications") from None
    except exceptions.GoogleAPIError as e:
        raise preflight.StoreUnavailable(
            f"--input_subscription {subscription} cannot be read: {preflight.one_line(e, 300)}") from None
    finally:
        subscriber.close()


def _done_keys(ledger):
    """``keys -> {keys the ledger has done}`` (versions finished by an earlier run)."""
    def done(keys):
        statuses = {}
        for start in range(0, len(keys), 1000):
            statuses.update(ledger.statuses(keys[start:start + 1000]))
        return {k for k, status in statuses.items() if status == arrivals_schema.DONE}
    return done


def _start_feed(stack: contextlib.ExitStack, job: StreamJob, mongo_uri: str, database: str, run_id: str):
    """Starts the local runners' :class:`~transforms.intake.watch.ArrivalFeed` for the ``stack``'s life."""
    from transforms.intake.watch import ArrivalFeed
    done_keys = None
    if job.watch:
        done_keys = _done_keys(stack.enter_context(ArrivalLedger(mongo_uri, database, job.input_name, run_id)))
    feed = ArrivalFeed(subscription=job.subscription, glob=job.watch, interval_s=job.interval_s,
                       model_glob=job.model_watch, window_s=INTAKE_WINDOW_S, lease_s=job.lease_s,
                       done_keys=done_keys)
    endpoint = feed.start()
    stack.callback(feed.close)
    return feed, endpoint


def print_summary(summary: dict):
    """What ``python -m beam_pipelines.mine`` prints when a streaming run ends."""
    keys = ("notifications_by_event_type", "notifications_malformed", "notifications_duplicate",
            "files_done", "files_without_frames", "frames_written", "dead_letters", "windows",
            "late_panes", "candidates", "picks", "stop_reason", "wall_seconds")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    out = summary["output_dir"]
    if summary.get("label_rate") is not None:
        print(f"picks:        {FileSystems.join(out, CANDIDATES_DIR, PICKS_DIR)}/<event_time>_<frame>.jsonl")
    print(f"candidates:   {FileSystems.join(out, CANDIDATES_DIR)}/<window_start>_<window_end>.jsonl")
    print(f"dead letters: {FileSystems.join(out, DEAD_LETTERS_DIR)}/<window_start>_<window_end>.jsonl")
    print(f"windows:      {FileSystems.join(out, WINDOWS_FILE)}")


__all__ = ["MineStream", "StreamingOptions", "StreamJob", "check_streaming", "run"]

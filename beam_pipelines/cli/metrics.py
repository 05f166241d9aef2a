"""Prometheus metrics of a run on the local runners: ``--metrics_port``.

    python -m beam_pipelines.mine --watch '/data/cam*/*.jpg' --metrics_port 9464 [--metrics_host 0.0.0.0]
    curl -s http://127.0.0.1:9464/metrics | grep ^activebeam_

With ``--metrics_port`` the batch and streaming ``mine`` jobs serve, on the driver, the metrics of
:data:`METRICS` in Prometheus' text format (the standard client library, ``prometheus-client``),
from the start of the run to its end. Why not Beam's own metrics: the local runners hand them to
the driver only when the pipeline has finished, and Beam 2.77's ``BundleBasedDirectRunner`` (the
streaming runner) keeps only the first bundle's user counters (see
:class:`beam_pipelines.mine.stream.RunCounts`). So :class:`ExportMetrics` adds observing steps to
the PCollections that carry the figures (frames decoded, scored and indexed, dead letters,
candidates, window panes), which update the client library's counters and histograms as elements
pass. With ``--direct_running_mode=multi_processing`` the workers are other processes: the
client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a temporary directory the driver makes
and the workers inherit) adds up their values.

On Dataflow nothing is added: the same figures are the job's Beam metrics, in the console and in
Cloud Monitoring (``dataflow.googleapis.com/job/user_counter``, ``metric_name`` = the Beam
counter's name); each :class:`MetricSpec` names its Beam metric, and docs/operations.md maps them.

Names follow Prometheus' conventions: prefix ``activebeam_``, counters end in ``_total``, units
in the name (``_seconds``), labels for the dimensions (``stage``, ``store``, ``pane``). Frames per
second is a query: ``rate(activebeam_frames_indexed_total[1m])``.
"""
import contextlib
import os
import shutil
import tempfile
import time
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from beam_pipelines.cli.preflight import OptionError
from beam_pipelines.cli.progress import observe_each
from schemas import records

#: Histogram buckets: seconds from a frame's event time to its indexing (streaming).
LAG_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
#: Histogram buckets: candidates in one window pane (streaming).
CANDIDATE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
#: Dead-letter stages that are write errors of a store.
STORE_STAGES = (records.STAGE_MONGODB, records.STAGE_BIGQUERY)


class MetricSpec(NamedTuple):
    """One exported metric: Prometheus ``name``, ``kind`` (``counter`` or ``histogram``),
    ``help``, ``labels``, the ``role`` of the PCollection it observes (:class:`ExportMetrics`)
    and ``beam``, the Beam metric(s) of the same figure (``namespace/name``) that Dataflow reports."""
    name: str
    kind: str
    help: str
    labels: Tuple[str, ...]
    role: str
    beam: str
    buckets: Tuple[float, ...] = ()


METRICS = (
    MetricSpec("activebeam_frames_decoded_total", "counter", "Frames decoded from the input files.",
               (), "frames_decoded", "activebeam.decode/frames_decoded"),
    MetricSpec("activebeam_frames_scored_total", "counter", "Frames embedded and scored by the model.",
               (), "frames_scored", "activebeam.model/frames_scored"),
    MetricSpec("activebeam_frames_indexed_total", "counter", "Frames written to the MongoDB index.",
               (), "frames_indexed", "activebeam.store/mongodb_documents_written (step IndexInMongoDB)"),
    MetricSpec("activebeam_index_lag_seconds", "histogram",
               "Streaming: seconds from a frame's event time (capture time, else the file's arrival: "
               "the object's timeCreated or mtime) to its MongoDB write.",
               (), "frames_indexed", "none (Dataflow: job/data_watermark_age and job/system_lag)", LAG_BUCKETS_S),
    MetricSpec("activebeam_dead_letters_total", "counter", "Inputs that went to the dead letters, by stage.",
               ("stage",), "dead_letters",
               "activebeam.outputs/dead_letters_at_<stage> (batch), activebeam.stream/dead_letters (streaming)"),
    MetricSpec("activebeam_store_write_errors_total", "counter",
               "Frames a store did not take (dead letters of stage mongodb or bigquery), by store.",
               ("store",), "dead_letters",
               "activebeam.store/mongodb_documents_failed, bigquery_rows_failed + bigquery_rows_invalid"),
    MetricSpec("activebeam_candidates_total", "counter", "Batch: candidates selected for annotation.",
               (), "candidates", "activebeam.sample/candidates_selected"),
    MetricSpec("activebeam_window_panes_total", "counter", "Streaming: window panes written, by pane (on_time, late).",
               ("pane",), "window_panes", "activebeam.store/window_panes_written"),
    MetricSpec("activebeam_window_candidates", "histogram", "Streaming: candidates in each window pane written.",
               (), "window_panes", "activebeam.sample/candidates_selected", CANDIDATE_BUCKETS),
)
ROLES = tuple(dict.fromkeys(spec.role for spec in METRICS))

_LIVE = {}  # name -> the client library's metric, made once per process


def _metric(spec: MetricSpec):
    """The process's metric of ``spec`` (registered in the client's default registry once)."""
    if spec.name not in _LIVE:
        import prometheus_client
        # The client adds _total to a counter's name itself.
        if spec.kind == "counter":
            metric = prometheus_client.Counter(spec.name[:-len("_total")], spec.help, spec.labels)
        else:
            metric = prometheus_client.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets)
        _LIVE[spec.name] = metric
    return _LIVE[spec.name]


def _by_name(name: str):
    return _metric(next(spec for spec in METRICS if spec.name == name))


class _Observe(beam.DoFn):
    """Updates the metrics of one role from the elements it sees; emits nothing."""

    def __init__(self, role: str):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self._role = role

    def setup(self):
        for spec in METRICS:
            if spec.role == self._role:
                _metric(spec)

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        role = self._role
        if role in ("frames_decoded", "frames_scored", "candidates"):
            _by_name(f"activebeam_{role}_total").inc()
        elif role == "frames_indexed":
            _by_name("activebeam_frames_indexed_total").inc()
            if timestamp > MIN_TIMESTAMP:  # streaming: the element's timestamp is its event time
                _by_name("activebeam_index_lag_seconds").observe(max(0.0, time.time() - float(timestamp)))
        elif role == "dead_letters":
            stage = getattr(element, "stage", "unknown")
            _by_name("activebeam_dead_letters_total").labels(stage=stage).inc()
            if stage in STORE_STAGES:
                _by_name("activebeam_store_write_errors_total").labels(store=stage).inc()
        elif role == "window_panes":
            _by_name("activebeam_window_panes_total").labels(pane=element.get("pane", "unknown")).inc()
            _by_name("activebeam_window_candidates").observe(element.get("candidates", 0))
        return ()


class ExportMetrics(beam.PTransform):
    """Observes named PCollections for the Prometheus metrics of :data:`METRICS`.

    Input: ``{role: PCollection or sequence of PCollections}`` with roles from :data:`ROLES`:
    ``frames_decoded`` (:class:`~schemas.records.Frame`), ``frames_scored``
    (:class:`~schemas.records.FrameRecord`), ``frames_indexed`` (frame ids written to MongoDB,
    timestamped with their event time in streaming), ``dead_letters``
    (:class:`~schemas.records.DeadLetter`), ``candidates`` (:class:`~schemas.records.Candidate`),
    ``window_panes`` (the ``windows.jsonl`` lines, dicts). Output: ``PDone``; the observed
    PCollections are not changed.
    """

    def expand(self, pcolls):
        return observe_each(pcolls, "Observe", _Observe)


@contextlib.contextmanager
def serve(port: Optional[int], host: str = "127.0.0.1", multiprocess: bool = False):
    """Serves ``/metrics`` on ``host:port`` while the block runs (nothing when ``port`` is None).

    ``multiprocess``: the observing steps run in worker processes (``multi_processing``): the
    client's multiprocess mode is switched on for this process and its children (a temporary
    ``PROMETHEUS_MULTIPROC_DIR``, removed afterwards) and the server adds up their files.

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        If the port cannot be bound (in use, or not allowed).
    """
    if port is None:
        yield None
        return
    import prometheus_client
    from prometheus_client import multiprocess as prometheus_multiprocess
    directory = None
    registry = prometheus_client.REGISTRY
    if multiprocess:
        directory = tempfile.mkdtemp(prefix="activebeam-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        registry = prometheus_client.CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry, path=directory)
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise OptionError(f"--metrics_port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from e
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        if directory:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(directory, ignore_errors=True)

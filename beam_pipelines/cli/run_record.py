"""The lineage of a job run in ``<database>.runs`` (:mod:`schemas.runs`), as a context manager.

The run's identity is computed first and never changes; the record only writes it::

    lineage = describe_run("mine", explicit_options, facts, inputs=globs, output_dir=out,
                           model=model.version._asdict(), bigquery_table=table)
    summary_facts = dict(facts, run_id=lineage.run_id, code_version=lineage.code_version)
    with RunRecord(lineage, mongo_uri, database) as run:   # status "running"
        result = ...                                         # run the pipeline
        run.set_counts(counts)
    # on exit: "succeeded" (or the status given to finish_as, e.g. "drained") with the counts,
    # "cancelled" on KeyboardInterrupt, else "failed"; run.update(counts) while it runs

A run entry that cannot be written is logged, not fatal: the frames are already indexed.

A run whose driver dies without a word (SIGKILL, the out-of-memory killer, a power cut) cannot
record its end. A run on a local runner (``local_driver=True``: the driver process is the job)
therefore records which process drives it (:func:`driver_identity`), and every such run, when it
starts, marks ``failed`` the ``running`` entries of the same database that were driven from the
same machine and boot by a process that no longer exists (:func:`driver_is_alive`), with a
``failure`` that says so. Entries of other machines, and of jobs left running on Dataflow, are
never touched.
"""
import datetime
import json
import logging
import os
import socket
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

from beam_pipelines.local.processes import process_start
from schemas import runs as runs_schema
from schemas import tables
from transforms.common.redact import redact_text
from transforms.index import upsert_documents
from transforms.index.mongodb_client import mongo_client
from transforms.index.bigquery_client import append_rows, sibling_table

_LOG = logging.getLogger(__name__)


class RunLineage(NamedTuple):
    """What identifies a run and what its entry says about it (all fixed when it starts)."""
    job: str
    run_id: str
    started_at: datetime.datetime
    code_version: str
    options_json: str  # credentials redacted
    inputs: Tuple[str, ...]
    output_dir: Optional[str]
    model: Optional[dict]  # ModelVersion._asdict()
    bigquery_table: Optional[str]  # the finished run is appended to the `runs` table next to it
    project: Optional[str] = None  # the job's --project: BigQuery's when the table names none


def describe_run(job: str, options: Mapping, facts: Mapping, *, inputs: Sequence[str],
                 output_dir: Optional[str] = None, model: Optional[dict] = None,
                 bigquery_table: Optional[str] = None, project: Optional[str] = None,
                 started_at: Optional[datetime.datetime] = None) -> RunLineage:
    """The lineage of a run starting now: its options as redacted JSON (``options`` overridden by
    ``facts``), its id (:func:`schemas.runs.make_run_id`) and the code version. Reads its
    arguments only."""
    started_at = started_at or datetime.datetime.now(datetime.timezone.utc)
    options_json = redact_text(json.dumps(dict(options, **facts), sort_keys=True, default=str))
    run_id = runs_schema.make_run_id(job, started_at, json.loads(options_json))
    return RunLineage(job, run_id, started_at, runs_schema.code_version(), options_json,
                      tuple(inputs), output_dir, model, bigquery_table, project)


class RunRecord:
    """Upserts a run's entry in ``<database>.runs``: ``running`` on enter; on exit ``succeeded``
    (with the counts given to :meth:`set_counts`), ``cancelled`` (``KeyboardInterrupt``) or
    ``failed`` (any other exception, which goes on). A finished run with a ``bigquery_table`` is
    also appended as one row to the ``runs`` table of that dataset.

    Parameters
    ----------
    lineage : RunLineage
        From :func:`describe_run`.
    mongo_uri, database : str
        Where ``runs`` lives.
    local_driver : bool
        The run is this process's (a local runner): its entry says which process drives it
        (``driver``), and entering closes the entries of this machine's vanished drivers.
    """

    #: The driver may not reach a store only the workers can (e.g. Dataflow on a private
    #: network): lineage gives up after this long instead of holding the job for minutes.
    SERVER_SELECTION_TIMEOUT_MS = 5000

    def __init__(self, lineage: RunLineage, mongo_uri: str, database: str, local_driver: bool = False):
        self._lineage = lineage
        self._uri = mongo_uri
        self._database = database
        self._counts: Optional[dict] = None
        self._final_status = "succeeded"
        self._driver = driver_identity() if local_driver else None

    @property
    def run_id(self) -> str:
        return self._lineage.run_id

    def set_counts(self, counts: Optional[Mapping[str, int]]):
        """The counts recorded with ``succeeded`` (None: unknown, e.g. a job not waited for)."""
        self._counts = None if counts is None else dict(counts)

    def update(self, counts: Optional[Mapping[str, int]]):
        """Records ``running`` again with the counts so far (a streaming run, periodically)."""
        self._record("running", None if counts is None else dict(counts))

    def finish_as(self, status: str):
        """The status recorded on a normal exit instead of ``succeeded``: ``drained`` (a streaming
        run stopped cleanly) or ``running`` (a job left running, e.g. on Dataflow)."""
        if status not in runs_schema.RUN_STATUSES:
            raise ValueError(f"status must be one of {runs_schema.RUN_STATUSES}, got {status!r}")
        self._final_status = status

    def __enter__(self) -> "RunRecord":
        written = self._record("running")
        if self._driver is not None and written:  # (a store that did not answer is not asked again)
            self._close_lost_runs()
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            self._record(self._final_status, self._counts)
        elif issubclass(exc_type, KeyboardInterrupt):
            self._record("cancelled", self._counts)
        else:
            self._record("failed", self._counts)  # counts known when the run ended, then failed
        return False

    def _record(self, status: str, counts: Optional[dict] = None) -> bool:
        """Upserts the entry (and appends a finished run to BigQuery); whether MongoDB took it."""
        lineage = self._lineage
        finished = None if status == "running" else datetime.datetime.now(datetime.timezone.utc)
        document = runs_schema.run_document(
            lineage.run_id, lineage.job, lineage.started_at, status, lineage.code_version,
            lineage.options_json, lineage.inputs, lineage.output_dir, lineage.model,
            finished_at=finished, counts=counts)
        if self._driver is not None:
            document["driver"] = self._driver  # MongoDB only: not a field of the BigQuery row
        written = self._upsert(document, status)
        if lineage.bigquery_table and status != "running":
            self._append_to_bigquery(document, status)
        return written

    def _upsert(self, document: dict, status: str) -> bool:
        try:
            failed = upsert_documents(self._uri, self._database, tables.runs_table(), [document],
                                      max_attempts=2,
                                      server_selection_timeout_ms=self.SERVER_SELECTION_TIMEOUT_MS)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a finished job
            failed = [str(e)]
        if failed:
            _LOG.error("run %s: could not record status %r in %s.runs: %s", self.run_id, status,
                       self._database, redact_text(str(failed[0])))
        return not failed

    def _append_to_bigquery(self, document: dict, status: str):
        """One row per finished run in the ``runs`` table next to the frames table."""
        table_id = sibling_table(self._lineage.bigquery_table, runs_schema.RUNS_COLLECTION)
        fields = {field.name for field in runs_schema.RUN_FIELDS}
        row = {k: (v.isoformat() if isinstance(v, datetime.datetime) else v)
               for k, v in document.items() if k in fields}
        row["run_id"] = document["_id"]
        try:
            problems = append_rows(table_id, tables.runs_table(), [row], [f"{self.run_id}:{status}"],
                                   project=self._lineage.project)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a finished job
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            _LOG.error("run %s: could not append to %s: %s", self.run_id, table_id,
                       redact_text(problems[0])[:500])

    def _close_lost_runs(self):
        """Marks ``failed`` the ``running`` entries driven from this machine and boot by a process
        that is gone (their driver could not record an end). Logged, never fatal."""
        me = self._driver
        try:
            client = mongo_client(self._uri, server_selection_timeout_ms=self.SERVER_SELECTION_TIMEOUT_MS)
            with client:
                runs = client[self._database][runs_schema.RUNS_COLLECTION]
                for entry in runs.find({"status": "running", "_id": {"$ne": self.run_id},
                                        "driver.host": me["host"], "driver.boot_id": me["boot_id"]},
                                       {"driver": 1}):
                    if driver_is_alive(entry["driver"]):
                        continue
                    driver = entry["driver"]
                    failure = (f"lost: its driver (pid {driver.get('pid')} on {driver.get('host')}) ended "
                               f"without recording an end (killed, e.g. SIGKILL or out of memory); found "
                               f"when run {self.run_id} started")
                    closed = runs.update_one({"_id": entry["_id"], "status": "running"},
                                             {"$set": {"status": "failed", "failure": failure}})
                    if closed.modified_count:
                        _LOG.warning("run %s: %s", entry["_id"], failure)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a job
            _LOG.error("run %s: could not look for lost runs in %s.runs: %s", self.run_id, self._database,
                       redact_text(str(e))[:500])


#: Where Linux keeps the id of the current boot: a pid is only meaningful within one boot.
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def driver_identity() -> dict:
    """Which process drives this run: ``{"host", "boot_id", "pid", "process_start"}`` (host name;
    the kernel's boot id, None where there is none; this process's id and start time in clock
    ticks since boot, :func:`beam_pipelines.local.processes.process_start`), so that a later run
    on the same machine can tell whether it still exists."""
    try:
        with open(BOOT_ID_FILE) as f:
            boot_id = f.read().strip() or None
    except OSError:
        boot_id = None
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": boot_id, "pid": pid, "process_start": process_start(pid)}


def driver_is_alive(driver: Mapping) -> bool:
    """Whether the process of a :func:`driver_identity` (taken on this machine and boot) still
    runs: the pid is running (not a zombie) and started when the identity says, so a pid reused
    by a later process does not count. True when it cannot be told (a malformed identity, a
    platform without ``/proc``): a run is only closed when its driver is certainly gone."""
    try:
        started = driver["process_start"]
        pid = int(driver["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    return started is None or process_start(pid) == started

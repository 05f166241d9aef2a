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
"""
import datetime
import json
import logging
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

from schemas import runs as runs_schema
from schemas import tables
from transforms.common.redact import redact_text
from transforms.index import upsert_documents
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
    """

    #: The driver may not reach a store only the workers can (e.g. Dataflow on a private
    #: network): lineage gives up after this long instead of holding the job for minutes.
    SERVER_SELECTION_TIMEOUT_MS = 5000

    def __init__(self, lineage: RunLineage, mongo_uri: str, database: str):
        self._lineage = lineage
        self._uri = mongo_uri
        self._database = database
        self._counts: Optional[dict] = None
        self._final_status = "succeeded"

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
        self._record("running")
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            self._record(self._final_status, self._counts)
        elif issubclass(exc_type, KeyboardInterrupt):
            self._record("cancelled", self._counts)
        else:
            self._record("failed", self._counts)  # counts known when the run ended, then failed
        return False

    def _record(self, status: str, counts: Optional[dict] = None):
        lineage = self._lineage
        finished = None if status == "running" else datetime.datetime.now(datetime.timezone.utc)
        document = runs_schema.run_document(
            lineage.run_id, lineage.job, lineage.started_at, status, lineage.code_version,
            lineage.options_json, lineage.inputs, lineage.output_dir, lineage.model,
            finished_at=finished, counts=counts)
        self._upsert(document, status)
        if lineage.bigquery_table and status != "running":
            self._append_to_bigquery(document, status)

    def _upsert(self, document: dict, status: str):
        try:
            failed = upsert_documents(self._uri, self._database, tables.runs_table(), [document],
                                      max_attempts=2,
                                      server_selection_timeout_ms=self.SERVER_SELECTION_TIMEOUT_MS)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a finished job
            failed = [str(e)]
        if failed:
            _LOG.error("run %s: could not record status %r in %s.runs: %s", self.run_id, status,
                       self._database, redact_text(str(failed[0])))

    def _append_to_bigquery(self, document: dict, status: str):
        """One row per finished run in the ``runs`` table next to the frames table."""
        table_id = sibling_table(self._lineage.bigquery_table, runs_schema.RUNS_COLLECTION)
        row = {k: (v.isoformat() if isinstance(v, datetime.datetime) else v)
               for k, v in document.items() if k != "_id"}
        row["run_id"] = document["_id"]
        try:
            problems = append_rows(table_id, tables.runs_table(), [row], [f"{self.run_id}:{status}"],
                                   project=self._lineage.project)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a finished job
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            _LOG.error("run %s: could not append to %s: %s", self.run_id, table_id,
                       redact_text(problems[0])[:500])

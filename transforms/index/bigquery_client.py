"""BigQuery on the official client, without Beam: table ids, tables, insert ids and inserts.

* :func:`parse_table_id` is the one parser of table ids (``PROJECT:DATASET.TABLE``,
  ``PROJECT.DATASET.TABLE``, ``DATASET.TABLE``); :func:`make_client` makes a client for the
  table's project (or the job's ``--project``), never one that guesses from the environment
  when a project is known.
* :func:`ensure_table` creates a table from its :mod:`schemas.tables` spec, partitioned and
  clustered from the start (a table that ``WriteToBigQuery`` creates on its first load has
  neither, and neither can be added later without rewriting it).
* :class:`RowInserter` streams rows (``tabledata.insertAll``) with deterministic insert ids
  (:func:`row_insert_id`), retries transient row errors, and returns the rows BigQuery rejected;
  :func:`append_rows` is a one-shot append from the driver.

::

    ref = parse_table_id("proj:activebeam.frames")
    client = make_client(ref.project)
    ensure_table(client, ref.table_id, schemas.tables.frames_table())
    result = RowInserter(client, ref.table_id).insert(rows, [frame_insert_id(r) for r in rows])
"""
import datetime
import decimal
import json
import logging
import random
import re
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple

from schemas import tables

_LOG = logging.getLogger(__name__)

_PROJECT = r"(?:[\w-]+(?:\.[\w-]+)+:)?[\w-]+"  # domain-scoped: example.com:proj
_DATASET = r"\w+"
_TABLE = r"[\w$-]+"
_TABLE_FORMS = "PROJECT:DATASET.TABLE, PROJECT.DATASET.TABLE or DATASET.TABLE"


class TableRef(NamedTuple):
    """A BigQuery table: ``project`` (None when neither the id nor a default named one), dataset, table."""
    project: Optional[str]
    dataset: str
    table: str

    @property
    def table_id(self) -> str:
        """``PROJECT.DATASET.TABLE`` (standard SQL, the official client), or ``DATASET.TABLE``."""
        return ".".join(p for p in self if p)

    @property
    def legacy_id(self) -> str:
        """``PROJECT:DATASET.TABLE`` (what Beam's ``WriteToBigQuery`` parses), or ``DATASET.TABLE``."""
        return f"{self.project}:{self.dataset}.{self.table}" if self.project else f"{self.dataset}.{self.table}"


def parse_table_id(table: str, default_project: Optional[str] = None) -> TableRef:
    """``PROJECT:DATASET.TABLE``, ``PROJECT.DATASET.TABLE`` or ``DATASET.TABLE`` to a :class:`TableRef`.

    A project in ``table`` wins over ``default_project`` (e.g. the job's ``--project``), which
    fills in a table id without one. Domain-scoped projects (``example.com:proj``) work in both
    forms.

    Raises
    ------
    ValueError
        If ``table`` is not one of those forms.
    """
    text = table if isinstance(table, str) else ""
    legacy = re.fullmatch(rf"(?:(?P<project>{_PROJECT}):)?(?P<dataset>{_DATASET})\.(?P<table>{_TABLE})", text)
    standard = re.fullmatch(rf"(?P<project>{_PROJECT})\.(?P<dataset>{_DATASET})\.(?P<table>{_TABLE})", text)
    match = legacy or standard
    if not match:
        raise ValueError(f"bigquery table must be {_TABLE_FORMS}, got {table!r}")
    return TableRef(match["project"] or default_project or None, match["dataset"], match["table"])


def parse_dataset_id(dataset: str, default_project: Optional[str] = None) -> Tuple[Optional[str], str]:
    """``PROJECT:DATASET``, ``PROJECT.DATASET`` or ``DATASET`` to ``(project, dataset)``: the
    dataset part of :func:`parse_table_id`'s grammar, with the same ``default_project`` rule."""
    text = dataset if isinstance(dataset, str) else ""
    match = re.fullmatch(rf"(?:(?P<project>{_PROJECT})[:.])?(?P<dataset>{_DATASET})", text)
    if not match:
        raise ValueError(f"bigquery dataset must be PROJECT:DATASET, PROJECT.DATASET or DATASET, "
                         f"got {dataset!r}")
    return match["project"] or default_project or None, match["dataset"]


def make_client(project: Optional[str] = None, **kwargs):
    """A ``google.cloud.bigquery.Client`` for ``project`` (the table's, else the job's ``--project``).

    Only without a project does the client look for one in the environment
    (``GOOGLE_CLOUD_PROJECT``, application default credentials); when there is none either, the
    ``ValueError`` says how to name one.
    """
    from google.cloud import bigquery
    try:
        return bigquery.Client(project=project, **kwargs)
    except EnvironmentError as e:
        if project:
            raise
        raise ValueError(f"no Google Cloud project for BigQuery: name it in the table "
                         f"({_TABLE_FORMS.split(',')[0]}) or pass --project ({e})") from e


def request_options(timeout_s: float) -> dict:
    """``retry``/``timeout`` keyword arguments bounding a client call (retries included) to ``timeout_s``."""
    from google.cloud import bigquery
    return {"retry": bigquery.DEFAULT_RETRY.with_deadline(timeout_s), "timeout": timeout_s}


def table_resource(table_id: str, spec: tables.TableSpec):
    """The ``google.cloud.bigquery.Table`` to create: schema, daily time partitioning, clustering."""
    from google.cloud import bigquery
    schema = [bigquery.SchemaField.from_api_repr(column) for column in tables.bigquery_fields(spec)]
    table = bigquery.Table(table_id, schema=schema)
    if spec.partition_field:
        table.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=spec.partition_field)
    if spec.clustering:
        table.clustering_fields = list(spec.clustering)
    return table


def ensure_table(client, table_id: str, spec: tables.TableSpec, **request) -> bool:
    """Creates ``table_id`` (``project.dataset.table``), and its dataset, unless they exist; returns
    whether it created the table. Safe with any number of workers doing it at once: a dataset or
    table another worker created meanwhile (``409 Conflict``) counts as existing.

    ``request``: ``retry``/``timeout`` passed to every client call. An existing table is left as it is (a warning is logged when its partitioning or clustering
    differ from the spec: BigQuery cannot change them in place).

    Raises
    ------
    google.api_core.exceptions.GoogleAPICallError
        When BigQuery is unreachable or refuses (permissions, missing dataset).
    """
    from google.api_core import exceptions
    try:
        existing = client.get_table(table_id, **request)
    except exceptions.NotFound:
        dataset_id = table_id.rsplit(".", 1)[0]
        try:
            client.create_dataset(dataset_id, exists_ok=True, **request)
        except exceptions.Forbidden as e:  # may write tables but not create datasets: try the table
            _LOG.debug("not allowed to create dataset %s: %s", dataset_id, e)
        try:
            client.create_table(table_resource(table_id, spec), **request)
            _LOG.info("created BigQuery table %s partitioned by %s, clustered by %s",
                      table_id, spec.partition_field, ",".join(spec.clustering))
            return True
        except exceptions.Conflict:  # created meanwhile by another worker
            return False
    partition = existing.time_partitioning.field if existing.time_partitioning else None
    if partition != spec.partition_field or list(existing.clustering_fields or []) != list(spec.clustering):
        _LOG.warning("BigQuery table %s is partitioned by %s and clustered by %s; activebeam's schema "
                     "wants %s and %s (recreate it to change them)", table_id, partition,
                     existing.clustering_fields, spec.partition_field, list(spec.clustering))
    return False


def sibling_table(table: str, name: str) -> str:
    """Table ``name`` of the same dataset as ``table``, in the same form
    (``P:D.frames`` -> ``P:D.name``, ``P.D.frames`` -> ``P.D.name``, ``D.frames`` -> ``D.name``)."""
    ref = parse_table_id(table)
    if ref.project and f"{ref.project}:" in table:
        return ref._replace(table=name).legacy_id
    return ref._replace(table=name).table_id


#: A frame row is one frame scored by one model version.
FRAME_KEY_COLUMNS = ("frame_id", "model_version")


def row_insert_id(row: dict, key_columns: Sequence[str]) -> str:
    """Deterministic ``insertId`` of a row: its key columns joined by ``:``."""
    return ":".join(str(row[column]) for column in key_columns)


def frame_insert_id(row: dict) -> str:
    """Deterministic BigQuery ``insertId`` of a frame row: ``frame_id:model_version``.

    The same frame scored by the same model always gets the same id, so BigQuery's best-effort
    de-duplication (about a minute) also drops rows re-sent by a retried bundle or a rerun.
    """
    return row_insert_id(row, FRAME_KEY_COLUMNS)


#: ``insertAll`` row-error reasons that a retry cannot fix (as Beam's ``RETRY_ON_TRANSIENT_ERROR``).
PERMANENT_ROW_ERRORS = frozenset({"invalid", "invalidQuery", "notImplemented"})


def _json_default(value):
    """JSON of the values ``json`` cannot write, as Beam's ``WriteToBigQuery`` sends them."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time, decimal.Decimal)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"{type(value).__name__} is not JSON serializable for BigQuery")


def json_row(row: dict) -> dict:
    """``row`` with JSON values only (timestamps as ISO 8601 text), as ``insertAll`` takes it."""
    return json.loads(json.dumps(row, default=_json_default))


class InsertFailure(NamedTuple):
    """Row ``index`` (of the rows given to :meth:`RowInserter.insert`) and BigQuery's errors for it."""
    index: int
    errors: list


class InsertResult(NamedTuple):
    """Indices of the rows BigQuery accepted, the rows it rejected, and the retries made."""
    written: List[int]
    failures: List[InsertFailure]
    retries: int


def _is_permanent_request_error(error) -> bool:
    """A 4xx answer for the whole request that will not change (quota and rate limits will)."""
    from google.api_core import exceptions
    if not isinstance(error, exceptions.ClientError) or isinstance(error, exceptions.TooManyRequests):
        return False
    reasons = {e.get("reason") for e in getattr(error, "errors", None) or [] if isinstance(e, dict)}
    return not reasons & {"rateLimitExceeded", "quotaExceeded", "backendError"}


class RowInserter:
    """Streaming inserts (``insertAll``) into one table, on the official client.

    Each call of :meth:`insert` sends the rows with their ``row_ids`` (BigQuery's de-duplication
    keys) and ``skip_invalid_rows``. Every request is bounded by ``timeout_s``, the client's own
    retries of transport and 5xx errors included. Rows BigQuery rejects for good
    (:data:`PERMANENT_ROW_ERRORS`) are failures at once; rows with other errors (backend errors,
    timeouts) are sent again, alone, with backoff ``base_delay_s * 2**k * U(1, 2)``, and are
    failures after ``max_attempts``. A 4xx answer for the whole request (bad request, no access,
    no table) makes every row a failure.

    Raises (from :meth:`insert`)
    ----------------------------
    google.api_core.exceptions.GoogleAPIError, requests.exceptions.RequestException
        When BigQuery stays unreachable or keeps failing for ``timeout_s``.
    """

    def __init__(self, client, table_id: str, max_attempts: int = 5, base_delay_s: float = 0.5,
                 timeout_s: float = 120.0):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._client = client
        self._table_id = table_id
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._timeout_s = timeout_s

    def _send(self, rows, row_ids):
        """``{index: errors}`` of the rows not inserted (empty when all were)."""
        from google.api_core import exceptions
        try:
            entries = self._client.insert_rows_json(self._table_id, rows, row_ids=row_ids,
                                                    skip_invalid_rows=True,
                                                    **request_options(self._timeout_s))
        except exceptions.GoogleAPICallError as e:
            if not _is_permanent_request_error(e):
                raise
            error = {"reason": getattr(e.response, "reason", None) or type(e).__name__,
                     "message": e.message}
            return {i: [error] for i in range(len(rows))}
        return {entry["index"]: entry.get("errors") or [] for entry in entries}

    def insert(self, rows: Sequence[dict], row_ids: Sequence[str]) -> InsertResult:
        """Inserts ``rows`` (dicts; datetimes sent as ISO 8601) with their ``row_ids``.

        Returns
        -------
        InsertResult
            ``written``: indices of the rows inserted; ``failures``: ``InsertFailure(index,
            errors)`` of the others (BigQuery's error dicts); ``retries``: requests re-sent.
        """
        rows, row_ids = [json_row(row) for row in rows], list(row_ids)
        pending, failed, retries = list(range(len(rows))), {}, 0
        for attempt in range(1, self._max_attempts + 1):
            errors = self._send([rows[i] for i in pending], [row_ids[i] for i in pending])
            retry = []
            for j, row_errors in sorted(errors.items()):
                reasons = {e.get("reason") for e in row_errors}
                if reasons & PERMANENT_ROW_ERRORS or attempt == self._max_attempts:
                    failed[pending[j]] = row_errors
                else:
                    retry.append(pending[j])
            pending = retry
            if not pending:
                break
            retries += 1
            delay = self._base_delay_s * 2 ** (attempt - 1) * (1 + random.random())
            _LOG.warning("BigQuery transient errors on %d rows of %s (attempt %d/%d), retrying in "
                         "%.1fs: %s", len(pending), self._table_id, attempt, self._max_attempts,
                         delay, str(errors)[:500])
            time.sleep(delay)
        return InsertResult([i for i in range(len(rows)) if i not in failed],
                            [InsertFailure(i, failed[i]) for i in sorted(failed)], retries)


def append_rows(table_id: str, spec: tables.TableSpec, rows, insert_ids, client=None, timeout_s=60.0,
                project: Optional[str] = None):
    """Appends a few rows from the driver (e.g. a run record) into a pre-created table.

    ``table_id`` in any form of :func:`parse_table_id`; without a project in it, ``project``
    (the job's ``--project``). Rows are checked against the spec first; ``insert_ids`` are
    BigQuery's de-duplication keys. Returns the problems (empty when every row was accepted);
    raises on transport errors.
    """
    ref = parse_table_id(table_id, project)
    problems = [f"{i}: {e}" for i, row in enumerate(rows) for e in tables.bigquery_row_errors(spec, row)]
    if problems:
        return problems
    client = client or make_client(ref.project)
    table_id = ref._replace(project=ref.project or client.project).table_id
    ensure_table(client, table_id, spec, **request_options(timeout_s))
    errors = client.insert_rows_json(table_id, list(rows), row_ids=list(insert_ids),
                                     **request_options(timeout_s))
    return [str(e) for e in errors]

"""BigQuery writer of the frame index: our streaming inserts, Beam's ``WriteToBigQuery`` for loads.

Tables are created beforehand, partitioned and clustered (:mod:`transforms.index.bigquery_client`);
rows are checked against the schema before they are sent; streaming inserts go through a small
DoFn on the official client (:class:`~transforms.index.bigquery_client.RowInserter`) with
deterministic ``insertId``\\ s; file loads through Beam's public ``WriteToBigQuery``; rows that do
not fit or that BigQuery rejects go to the dead-letter output::

    dead_letters = records | WriteFramesToBigQuery("project:activebeam.frames")
"""
import datetime
import time
from typing import Callable, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import frames as frames_schema
from schemas import records
from schemas import tables
from schemas.records import DeadLetter
from schemas.records import DEAD_LETTER_TAG as DEAD_LETTER, MAX_ERROR_CHARS
from transforms.common.redact import redact_text
from transforms.index import METRICS_NAMESPACE
from transforms.index.bigquery_client import (
    FRAME_KEY_COLUMNS, RowInserter, ensure_table, make_client, parse_table_id, request_options,
    row_insert_id)


def _bigquery_dead_letter(row: dict, errors, stage: str = records.STAGE_BIGQUERY) -> DeadLetter:
    """A row BigQuery rejected, with its errors (``insertAll``'s ``[{reason, message, ...}]``)."""
    return DeadLetter(row.get("source_uri", ""), stage,
                      f"BigQuery rejected the row: {errors}"[:MAX_ERROR_CHARS],
                      row.get("frame_index"), row.get("frame_id"))


def _bigquery_request_failed(table: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"BigQuery table {table} unreachable or request failed "
                        f"({type(error).__name__}): {redact_text(str(error))[:MAX_ERROR_CHARS]}")


def _request_errors():
    """The exceptions of a BigQuery request that failed for good (after the client's retries)."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions
    import requests
    return (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError,
            requests.exceptions.RequestException)


class _BigQueryTableFn(beam.DoFn):
    """Base of the DoFns that need the destination table: creates it (partitioned, clustered)
    once per worker, with a client of the table's project (else ``project``, the job's) and
    requests bounded by ``timeout_s``; BigQuery errors become one clear ``RuntimeError`` naming
    the table."""

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float,
                 project: Optional[str] = None):
        self._table = table
        self._ref = parse_table_id(table, project)
        self._spec = spec
        self._timeout_s = timeout_s
        self._client = None

    def _ensure_table(self) -> str:
        """Creates the table unless it exists; returns its ``PROJECT.DATASET.TABLE``."""
        try:
            if self._client is None:
                self._client = make_client(self._ref.project)
            table_id = self._ref._replace(project=self._client.project).table_id
            ensure_table(self._client, table_id, self._spec, **request_options(self._timeout_s))
            return table_id
        except _request_errors() as e:
            raise _bigquery_request_failed(self._table, e) from e


class _CheckRowsFn(_BigQueryTableFn):
    """Stamps ``indexed_at``, sends rows that do not fit the table to dead letters, and makes
    sure the table exists (``setup``) before any row reaches ``WriteToBigQuery``."""

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float, stage: str,
                 project: Optional[str] = None):
        super().__init__(table, spec, timeout_s, project)
        self._stage = stage

    def setup(self):
        self._ensure_table()
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "bigquery_rows_invalid")

    def process(self, row):
        if self._spec.ingest_time_field:
            now = datetime.datetime.now(datetime.timezone.utc)
            row = dict(row, **{self._spec.ingest_time_field: now.strftime("%Y-%m-%d %H:%M:%S.%f UTC")})
        errors = tables.bigquery_row_errors(self._spec, row)
        if errors:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                str(row.get("source_uri") or ""), self._stage,
                f"row does not fit {self._table}: {'; '.join(errors)}"[:MAX_ERROR_CHARS],
                row.get("frame_index"), row.get("frame_id")))
        else:
            yield row


class _ExistingKeysFn(_BigQueryTableFn):
    r"""Yields the row keys (tuples of ``key_columns``) the table already holds for some values of
    ``filter_column``.

    Input: one list of distinct ``filter_column`` values. One query, filtered on that column (a
    clustering column), reading only the key columns. Creates the table if it does not exist yet.
    """

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float,
                 key_columns: Tuple[str, ...], filter_column: str, project: Optional[str] = None):
        super().__init__(table, spec, timeout_s, project)
        self._key_columns = key_columns
        self._filter_column = filter_column
        self._present = Metrics.counter(METRICS_NAMESPACE, "bigquery_rows_already_present")

    def process(self, values):
        from google.api_core import exceptions
        from google.cloud import bigquery
        table_id = self._ensure_table()
        query = (f"SELECT DISTINCT {', '.join(self._key_columns)} FROM `{table_id}` "
                 f"WHERE {self._filter_column} IN UNNEST(@values)")
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ArrayQueryParameter("values", "STRING", sorted(values))])
        try:
            rows = list(self._client.query(query, job_config=config,
                                           **request_options(self._timeout_s)).result())
        except exceptions.GoogleAPIError as e:
            raise _bigquery_request_failed(self._table, e) from e
        for row in rows:
            self._present.inc()
            yield tuple(row[column] for column in self._key_columns), True


def _is_new(row, present, key_columns):
    return tuple(row[column] for column in key_columns) not in present


BIGQUERY_METHODS = ("STREAMING_INSERTS", "FILE_LOADS")
#: Rows per ``insertAll`` request (BigQuery recommends at most 500).
INSERT_BATCH_SIZE = 500
#: Attempts per row on transient ``insertAll`` row errors, and the first backoff delay.
INSERT_MAX_ATTEMPTS = 5
INSERT_BASE_DELAY_S = 0.5


class _InsertRowsFn(_BigQueryTableFn):
    """Streaming inserts of batches of rows, on the official client (one per worker, ``setup``).

    Every row's ``insertId`` is :func:`~transforms.index.bigquery_client.row_insert_id` of its
    key columns; retries are :class:`~transforms.index.bigquery_client.RowInserter`'s. Yields the
    insert ids of the rows written; rows BigQuery rejected go to the dead-letter output.
    """

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float,
                 key_columns: Tuple[str, ...], stage: str, project: Optional[str] = None,
                 max_attempts: int = INSERT_MAX_ATTEMPTS, base_delay_s: float = INSERT_BASE_DELAY_S):
        super().__init__(table, spec, timeout_s, project)
        self._key_columns = key_columns
        self._stage = stage
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._written = Metrics.counter(METRICS_NAMESPACE, "bigquery_rows_written")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "bigquery_rows_failed")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "bigquery_insert_retries")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "bigquery_insert_ms")

    def setup(self):
        table_id = self._ensure_table()
        self._inserter = RowInserter(self._client, table_id, self._max_attempts, self._base_delay_s,
                                     self._timeout_s)

    def process(self, rows):
        insert_ids = [row_insert_id(row, self._key_columns) for row in rows]
        start = time.monotonic()
        try:
            result = self._inserter.insert(rows, insert_ids)
        except _request_errors() as e:
            raise _bigquery_request_failed(self._table, e) from e
        self._latency.update(int((time.monotonic() - start) * 1000))
        self._retries.inc(result.retries)
        self._written.inc(len(result.written))
        self._failed.inc(len(result.failures))
        for i in result.written:
            yield insert_ids[i]
        for failure in result.failures:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, _bigquery_dead_letter(rows[failure.index], failure.errors, self._stage))


class _StreamingInserts(beam.PTransform):
    """Rows -> batches of :data:`INSERT_BATCH_SIZE` -> :class:`_InsertRowsFn`; returns its dead letters."""

    def __init__(self, insert_fn: _InsertRowsFn, batch_size: int = INSERT_BATCH_SIZE):
        super().__init__()
        self._insert_fn = insert_fn
        self._batch_size = batch_size

    def expand(self, rows):
        batch = beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
        inserted = (rows
                    | "Batch" >> batch
                    | "InsertAll" >> beam.ParDo(self._insert_fn).with_outputs(DEAD_LETTER, main="written"))
        return inserted[DEAD_LETTER]


class WriteRowsToBigQuery(beam.PTransform):
    r"""Appends one row per element to a BigQuery table of :mod:`schemas.tables`.

    The table is created beforehand (:func:`transforms.index.bigquery_client.ensure_table`) with the
    spec's daily time partitioning (on its ingest-time column, stamped here) and clustering;
    the writers then only append. Every row is checked against
    the schema first (:func:`schemas.tables.bigquery_row_errors`): a row that does not fit
    becomes a dead letter at once instead of an HTTP error retried for minutes.

    Bounded input is rerun-safe: one query first finds which keys (``key_columns``) the table
    already holds for this input's values of ``filter_column``, and only the other rows are
    appended, so a rerun adds nothing (the present keys are a side input, about 100 bytes a
    row). Unbounded input skips that query.

    ``STREAMING_INSERTS`` go through our own DoFn on the official client (batches of
    :data:`INSERT_BATCH_SIZE`, one client per worker): every row's ``insertId`` is
    :func:`~transforms.index.bigquery_client.row_insert_id` (its key columns), so BigQuery
    de-duplicates rows re-sent within its window; rows with transient errors are retried with
    backoff (:data:`INSERT_MAX_ATTEMPTS`); rows BigQuery rejects are dead letters. ``FILE_LOADS``
    go through Beam's ``WriteToBigQuery`` (``CREATE_NEVER``, ``WRITE_APPEND``).

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE``, ``PROJECT.DATASET.TABLE`` or ``DATASET.TABLE``.
    spec : schemas.tables.TableSpec
        The table's columns, partitioning and clustering.
    to_row : callable
        Element -> row dict with the spec's columns.
    key_columns : tuple of str
        Columns that identify a row (rerun filter and ``insertId``).
    filter_column : str
        STRING column the rerun query filters on (best a clustering column).
    stage : str
        Stage of the dead letters.
    method : str, optional
        ``STREAMING_INSERTS`` (rows BigQuery rejects go to the dead letters) or ``FILE_LOADS``
        (needs a ``gs://`` ``--temp_location``; a rejected load fails the job). Default: FILE_LOADS
        for bounded input, STREAMING_INSERTS for unbounded input.
    timeout_s : float
        Deadline of each table/query request, retries included. BigQuery unreachable for that
        long fails the job with ``RuntimeError("BigQuery table T unreachable or request failed ...")``.
    project : str, optional
        Project of a ``table`` that names none, and of the clients (the job's ``--project``).
        A project in ``table`` wins.

    Returns
    -------
    PCollection[DeadLetter]
        Rows that did not fit the schema or that BigQuery rejected (stage ``stage``).
    """

    def __init__(self, table: str, spec: tables.TableSpec, to_row: Callable[[object], dict],
                 key_columns: Tuple[str, ...], filter_column: str,
                 stage: str = records.STAGE_BIGQUERY, method: Optional[str] = None,
                 timeout_s: float = 120.0, project: Optional[str] = None):
        super().__init__()
        self._ref = parse_table_id(table, project)  # ValueError naming the accepted forms
        if method is not None and method not in BIGQUERY_METHODS:
            raise ValueError(f"method must be one of {BIGQUERY_METHODS} or None, got {method!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._table = table
        self._spec = spec
        self._to_row = to_row
        self._key_columns = tuple(key_columns)
        self._filter_column = filter_column
        self._stage = stage
        self._method = method
        self._timeout_s = timeout_s
        self._project = project

    def expand(self, elements):
        bounded = elements.is_bounded
        method = self._method or ("FILE_LOADS" if bounded else "STREAMING_INSERTS")
        checked = (elements
                   | "ToRows" >> beam.Map(self._to_row)
                   | "CheckRows" >> beam.ParDo(
                       _CheckRowsFn(self._table, self._spec, self._timeout_s, self._stage, self._project))
                   .with_outputs(DEAD_LETTER, main="rows"))
        rows = checked.rows
        if bounded:
            filter_column = self._filter_column
            present = (rows
                       | "FilterValues" >> beam.Map(lambda row: row[filter_column])
                       | "DistinctValues" >> beam.Distinct()
                       | "AllValues" >> beam.combiners.ToList()
                       | "QueryPresentRows" >> beam.ParDo(_ExistingKeysFn(
                           self._table, self._spec, self._timeout_s, self._key_columns, filter_column,
                           self._project)))
            rows = rows | "SkipPresentRows" >> beam.Filter(
                _is_new, present=beam.pvalue.AsDict(present), key_columns=self._key_columns)
        dead_letters = [checked[DEAD_LETTER]]
        if method == "STREAMING_INSERTS":
            dead_letters.append(rows | "WriteToBigQuery" >> _StreamingInserts(_InsertRowsFn(
                self._table, self._spec, self._timeout_s, self._key_columns, self._stage, self._project)))
        else:
            from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
            _ = rows | "WriteToBigQuery" >> WriteToBigQuery(
                self._ref.legacy_id,
                schema={"fields": tables.bigquery_fields(self._spec)},
                create_disposition=BigQueryDisposition.CREATE_NEVER,
                write_disposition=BigQueryDisposition.WRITE_APPEND,
                method=method)
        return dead_letters | "AllBigQueryDeadLetters" >> beam.Flatten()


class WriteFramesToBigQuery(beam.PTransform):
    r"""Appends one row per ``FrameRecord`` to a BigQuery table (schema: :func:`schemas.tables.frames_table`).

    :class:`WriteRowsToBigQuery` with the frames table: daily partitions on ``indexed_at``
    (ingest time), clustering on ``(source_uri, model_version)``, rows keyed by
    ``(frame_id, model_version)`` (a rerun adds nothing, a new model version adds its own rows;
    ``insertId`` :func:`~transforms.index.bigquery_client.frame_insert_id`), the rerun query filtered on ``source_uri``.

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE``, ``PROJECT.DATASET.TABLE`` or ``DATASET.TABLE``.
    method : str, optional
        ``STREAMING_INSERTS``, ``FILE_LOADS`` or None (by boundedness), see :class:`WriteRowsToBigQuery`.
    timeout_s : float
        Deadline of each table/query request, retries included.
    project : str, optional
        The job's ``--project``: for a ``table`` without one, and for the clients.

    Returns
    -------
    PCollection[DeadLetter]
        Rows that did not fit the schema or that BigQuery rejected (stage ``bigquery``).
    """

    def __init__(self, table: str, method: Optional[str] = None, timeout_s: float = 120.0,
                 project: Optional[str] = None):
        super().__init__()
        self._write = WriteRowsToBigQuery(
            table, tables.frames_table(), frames_schema.to_bigquery_row, FRAME_KEY_COLUMNS,
            "source_uri", records.STAGE_BIGQUERY, method, timeout_s, project)

    def expand(self, frame_records):
        return frame_records | self._write

"""BigQuery writer of the frame index, on Beam's ``WriteToBigQuery``.

Tables are created beforehand, partitioned and clustered (:mod:`transforms.index.bigquery_client`);
rows are checked against the schema before they are sent; streaming inserts carry deterministic
``insertId``\\ s; rows that do not fit or that BigQuery rejects go to the dead-letter output::

    dead_letters = records | WriteFramesToBigQuery("project:activebeam.frames")
"""
import datetime
import logging
import re
from typing import Callable, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import frames as frames_schema
from schemas import records
from schemas import tables
from schemas.records import DeadLetter
from transforms.index.bigquery_client import ensure_table
from schemas.records import DEAD_LETTER_TAG as DEAD_LETTER, MAX_ERROR_CHARS
from transforms.common.redact import redact_text
from transforms.index import METRICS_NAMESPACE

_LOG = logging.getLogger(__name__)


def _bigquery_dead_letter(failed, stage: str = records.STAGE_BIGQUERY) -> DeadLetter:
    # Beam emits (destination, row, errors) for rows BigQuery rejected.
    row, errors = failed[1], failed[2] if len(failed) > 2 else "rejected by BigQuery"
    return DeadLetter(row.get("source_uri", ""), stage,
                      f"BigQuery rejected the row: {errors}"[:MAX_ERROR_CHARS],
                      row.get("frame_index"), row.get("frame_id"))


def _parse_table(table: str):
    """``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE`` to ``(project or None, dataset, table)``."""
    project, _, rest = table.rpartition(":")
    dataset, name = rest.split(".", 1)
    return project or None, dataset, name


def _bigquery_request_failed(table: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"BigQuery table {table} unreachable or request failed "
                        f"({type(error).__name__}): {redact_text(str(error))[:MAX_ERROR_CHARS]}")


class _BigQueryTableFn(beam.DoFn):
    """Base of the DoFns that need the destination table: creates it (partitioned, clustered)
    once per worker, with requests bounded by ``timeout_s``; BigQuery errors become one clear
    ``RuntimeError`` naming the table."""

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float):
        self._table = table
        self._spec = spec
        self._timeout_s = timeout_s
        self._client = None

    def _request_options(self):
        from google.cloud import bigquery
        return {"retry": bigquery.DEFAULT_RETRY.with_deadline(self._timeout_s), "timeout": self._timeout_s}

    def _ensure_table(self) -> str:
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions
        from google.cloud import bigquery
        import requests
        project, dataset, name = _parse_table(self._table)
        try:
            if self._client is None:
                self._client = bigquery.Client(project=project)
            table_id = f"{self._client.project}.{dataset}.{name}"
            ensure_table(self._client, table_id, self._spec, **self._request_options())
            return table_id
        except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError,
                requests.exceptions.RequestException) as e:
            raise _bigquery_request_failed(self._table, e) from e


class _CheckRowsFn(_BigQueryTableFn):
    """Stamps ``indexed_at``, sends rows that do not fit the table to dead letters, and makes
    sure the table exists (``setup``) before any row reaches ``WriteToBigQuery``."""

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float, stage: str):
        super().__init__(table, spec, timeout_s)
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
                 key_columns: Tuple[str, ...], filter_column: str):
        super().__init__(table, spec, timeout_s)
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
            rows = list(self._client.query(query, job_config=config, **self._request_options()).result())
        except exceptions.GoogleAPIError as e:
            raise _bigquery_request_failed(self._table, e) from e
        for row in rows:
            self._present.inc()
            yield tuple(row[column] for column in self._key_columns), True


def _is_new(row, present, key_columns):
    return tuple(row[column] for column in key_columns) not in present


BIGQUERY_METHODS = ("STREAMING_INSERTS", "FILE_LOADS")
#: A frame row is one frame scored by one model version.
FRAME_KEY_COLUMNS = ("frame_id", "model_version")


def frame_insert_id(row: dict) -> str:
    """Deterministic BigQuery ``insertId`` of a frame row: ``frame_id:model_version``.

    The same frame scored by the same model always gets the same id, so BigQuery's best-effort
    de-duplication (about a minute) also drops rows re-sent by a retried bundle or a rerun.
    """
    return row_insert_id(row, FRAME_KEY_COLUMNS)


def row_insert_id(row: dict, key_columns: Tuple[str, ...]) -> str:
    """Deterministic ``insertId`` of a row: its key columns joined by ``:``."""
    return ":".join(str(row[column]) for column in key_columns)


class _DeterministicInsertIdFn(beam.DoFn):
    """Replaces Beam's ``AddInsertIds`` (random uuid prefix per bundle + counter)."""

    def __init__(self, key_columns: Tuple[str, ...]):
        self._key_columns = key_columns

    def process(self, element):
        destination, row = element
        yield destination, (row, row_insert_id(row, self._key_columns))


def _use_deterministic_insert_ids(write_applied, key_columns: Tuple[str, ...]) -> bool:
    """Swaps the ``AddInsertIds`` DoFn inside an applied ``WriteToBigQuery`` for
    :class:`_DeterministicInsertIdFn`; returns whether it found it (Beam 2.77 layout)."""
    from apache_beam.runners.common import DoFnSignature
    stack = [write_applied]
    while stack:
        applied = stack.pop()
        if applied.full_label.endswith("/AddInsertIds") and isinstance(applied.transform, beam.ParDo):
            fn = _DeterministicInsertIdFn(key_columns)
            transform = applied.transform
            transform.fn = transform.dofn = transform._cached_fn = fn
            transform._signature = DoFnSignature(fn)
            return True
        stack.extend(applied.parts)
    return False


class WriteRowsToBigQuery(beam.PTransform):
    r"""Appends one row per element to a BigQuery table of :mod:`schemas.tables`.

    The table is created beforehand (:func:`transforms.index.bigquery_client.ensure_table`) with the
    spec's daily time partitioning (on its ingest-time column, stamped here) and clustering;
    Beam's ``WriteToBigQuery`` then only appends (``CREATE_NEVER``). Every row is checked against
    the schema first (:func:`schemas.tables.bigquery_row_errors`): a row that does not fit
    becomes a dead letter at once instead of an HTTP error retried for minutes.

    Bounded input is rerun-safe: one query first finds which keys (``key_columns``) the table
    already holds for this input's values of ``filter_column``, and only the other rows are
    appended, so a rerun adds nothing (the present keys are a side input, about 100 bytes a
    row). Unbounded input skips that query. With ``STREAMING_INSERTS`` every row's ``insertId``
    is :func:`row_insert_id` (its key columns) instead of Beam's random one, so BigQuery
    de-duplicates rows re-sent within its window.

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE``.
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

    Returns
    -------
    PCollection[DeadLetter]
        Rows that did not fit the schema or that BigQuery rejected (stage ``stage``).
    """

    def __init__(self, table: str, spec: tables.TableSpec, to_row: Callable[[object], dict],
                 key_columns: Tuple[str, ...], filter_column: str,
                 stage: str = records.STAGE_BIGQUERY, method: Optional[str] = None,
                 timeout_s: float = 120.0):
        super().__init__()
        if not re.fullmatch(r"([\w.-]+[:.])?\w+\.[\w$-]+", table or ""):
            raise ValueError(f"bigquery table must be PROJECT:DATASET.TABLE, got {table!r}")
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

    def expand(self, elements):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
        from apache_beam.io.gcp.bigquery_tools import RetryStrategy
        bounded = elements.is_bounded
        method = self._method or ("FILE_LOADS" if bounded else "STREAMING_INSERTS")
        checked = (elements
                   | "ToRows" >> beam.Map(self._to_row)
                   | "CheckRows" >> beam.ParDo(
                       _CheckRowsFn(self._table, self._spec, self._timeout_s, self._stage))
                   .with_outputs(DEAD_LETTER, main="rows"))
        rows = checked.rows
        if bounded:
            filter_column = self._filter_column
            present = (rows
                       | "FilterValues" >> beam.Map(lambda row: row[filter_column])
                       | "DistinctValues" >> beam.Distinct()
                       | "AllValues" >> beam.combiners.ToList()
                       | "QueryPresentRows" >> beam.ParDo(_ExistingKeysFn(
                           self._table, self._spec, self._timeout_s, self._key_columns, filter_column)))
            rows = rows | "SkipPresentRows" >> beam.Filter(
                _is_new, present=beam.pvalue.AsDict(present), key_columns=self._key_columns)
        result = rows | "WriteToBigQuery" >> WriteToBigQuery(
            self._table,
            schema={"fields": tables.bigquery_fields(self._spec)},
            create_disposition=BigQueryDisposition.CREATE_NEVER,
            write_disposition=BigQueryDisposition.WRITE_APPEND,
            method=method,
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR)
        dead_letters = [checked[DEAD_LETTER]]
        if method == "STREAMING_INSERTS":
            [write_applied] = [part for part in rows.pipeline._current_transform().parts
                               if part.full_label.endswith("/WriteToBigQuery")]
            if not _use_deterministic_insert_ids(write_applied, self._key_columns):
                _LOG.warning("Beam's WriteToBigQuery has no AddInsertIds step: insertIds stay random")
            dead_letters.append(result.failed_rows_with_errors
                                | "BigQueryDeadLetters" >> beam.Map(_bigquery_dead_letter, self._stage))
        return dead_letters | "AllBigQueryDeadLetters" >> beam.Flatten()


class WriteFramesToBigQuery(beam.PTransform):
    r"""Appends one row per ``FrameRecord`` to a BigQuery table (schema: :func:`schemas.tables.frames_table`).

    :class:`WriteRowsToBigQuery` with the frames table: daily partitions on ``indexed_at``
    (ingest time), clustering on ``(source_uri, model_version)``, rows keyed by
    ``(frame_id, model_version)`` (a rerun adds nothing, a new model version adds its own rows;
    ``insertId`` :func:`frame_insert_id`), the rerun query filtered on ``source_uri``.

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE``.
    method : str, optional
        ``STREAMING_INSERTS``, ``FILE_LOADS`` or None (by boundedness), see :class:`WriteRowsToBigQuery`.
    timeout_s : float
        Deadline of each table/query request, retries included.

    Returns
    -------
    PCollection[DeadLetter]
        Rows that did not fit the schema or that BigQuery rejected (stage ``bigquery``).
    """

    def __init__(self, table: str, method: Optional[str] = None, timeout_s: float = 120.0):
        super().__init__()
        self._write = WriteRowsToBigQuery(
            table, tables.frames_table(), frames_schema.to_bigquery_row, FRAME_KEY_COLUMNS,
            "source_uri", records.STAGE_BIGQUERY, method, timeout_s)

    def expand(self, frame_records):
        return frame_records | self._write

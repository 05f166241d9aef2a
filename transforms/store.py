"""Writers of the frame index: MongoDB (idempotent upserts) and BigQuery.

``WriteFramesToMongoDB`` upserts one document per frame, keyed by the deterministic
``frame_id`` (``_id``), with ``$set`` so that a rerun or a later stage never duplicates a document
nor erases fields it does not write::

    written = records | WriteFramesToMongoDB("mongodb://127.0.0.1:27017", "activebeam")
    written.frame_ids     # PCollection[str]: frames acknowledged by MongoDB
    written.dead_letters  # PCollection[DeadLetter]: documents that failed after retries

``WriteFramesToBigQuery`` appends one row per frame with Beam's ``WriteToBigQuery``; rows that
BigQuery rejects go to the dead-letter output.
"""
import datetime
import logging
import random
import re
import time
from typing import List, NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import frames as frames_schema
from schemas import records
from schemas import tables
from transforms.bigquery_tables import ensure_table
from schemas.records import DeadLetter

_LOG = logging.getLogger(__name__)
_NAMESPACE = "activebeam.store"
DEAD_LETTER = "dead_letter"
_MAX_ERROR_CHARS = 500


_CREDENTIALS = re.compile(r"(?<=://)([^:/?#@\s]*):([^@/?#\s]*)@")


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """Replaces the password of a ``scheme://user:password@host`` URI with ``***``."""
    if not uri:
        return uri
    return _CREDENTIALS.sub(r"\1:***@", uri)


def redact_text(text: str) -> str:
    """:func:`redact_uri` applied to every URI inside a message (errors, logs)."""
    return _CREDENTIALS.sub(r"\1:***@", text)


# Server error codes that mean "try again": the write did not happen or is safe to repeat
# (HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress, PrimarySteppedDown,
# ExceededTimeLimit, SocketException, NotWritablePrimary, InterruptedAtShutdown,
# InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary), as in
# the MongoDB drivers' retryable-writes specification.
TRANSIENT_ERROR_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def _upsert_operation(doc: dict, ingest_time_field: Optional[str], now):
    """``$set`` every field but ``_id``; ``$setOnInsert`` the ingest time (kept on reruns)."""
    from pymongo import UpdateOne
    fields = {k: v for k, v in doc.items() if k != "_id" and k != ingest_time_field}
    update = {"$set": fields}
    if ingest_time_field:
        update["$setOnInsert"] = {ingest_time_field: now}
    return UpdateOne({"_id": doc["_id"]}, update, upsert=True)


class _MongoUpsertFn(beam.DoFn):
    """Bulk ``$set`` upserts by ``_id``: one client per worker, retries on transient errors.

    Retrying is safe: an upsert by ``_id`` applied twice leaves one document. Only the operations
    that failed transiently are retried; those failing for good (validation, unique index) go to
    the dead-letter output at once, the others after ``max_attempts``.
    """

    def __init__(self, uri, database, collection, indexes, validator=None, ingest_time_field=None,
                 id_field=None, max_attempts=5, base_delay_s=0.5):
        self._uri = uri
        self._database = database
        self._collection_name = collection
        self._indexes = indexes
        self._validator = validator
        self._ingest_time_field = ingest_time_field
        self._id_field = id_field
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._upserted = Metrics.counter(_NAMESPACE, "mongodb_documents_written")
        self._failed = Metrics.counter(_NAMESPACE, "mongodb_documents_failed")
        self._retries = Metrics.counter(_NAMESPACE, "mongodb_retries")
        self._latency = Metrics.distribution(_NAMESPACE, "mongodb_bulk_write_ms")
        self._client = None
        self._collection = None

    def setup(self):
        import pymongo
        defaults = {"appname": "activebeam", "serverSelectionTimeoutMS": 30000}
        # Options in the URI win over these defaults (pymongo would let keywords win).
        options = {k: v for k, v in defaults.items() if k.lower() not in self._uri.lower()}
        self._client = pymongo.MongoClient(self._uri, **options)
        self._collection = self._client[self._database][self._collection_name]
        self._collection_ready = False

    def _ensure_collection(self):
        """Validator and indexes, once per worker before its first write (idempotent)."""
        if self._collection_ready:
            return
        from pymongo import errors
        database = self._client[self._database]
        if self._validator:
            try:
                database.create_collection(self._collection_name, validator=self._validator)
            except errors.CollectionInvalid:  # it exists: bring its validator up to date
                try:
                    database.command("collMod", self._collection_name, validator=self._validator)
                except errors.OperationFailure as e:
                    if e.code != 13:  # Unauthorized: keep the validator the owner set
                        raise
                    _LOG.warning("not allowed to update the validator of %s.%s: %s",
                                 self._database, self._collection_name, e)
        for spec in self._indexes:
            self._collection.create_index(list(spec.keys), name=spec.name, unique=spec.unique)
        self._collection_ready = True

    def _bulk_write(self, ops):
        """Writes ``ops``; returns ``(retry, failed)``: indices to retry, ``{index: reason}`` lost."""
        from pymongo import errors
        try:
            self._ensure_collection()
            self._collection.bulk_write(ops, ordered=False)
            return [], {}
        except errors.BulkWriteError as e:
            retry, failed = [], {}
            for write_error in e.details.get("writeErrors", []):
                if write_error.get("code") in TRANSIENT_ERROR_CODES:
                    retry.append(write_error["index"])
                else:
                    failed[write_error["index"]] = write_error.get("errmsg", "write error")
            if e.details.get("writeConcernErrors"):  # applied but unconfirmed: upsert again
                retry = [i for i in range(len(ops)) if i not in failed]
            return retry, failed
        except errors.AutoReconnect:  # also NotPrimaryError, ServerSelectionTimeoutError, NetworkTimeout
            raise
        except errors.OperationFailure as e:
            if e.code in TRANSIENT_ERROR_CODES:
                raise errors.AutoReconnect(str(e)) from e
            return [], {i: str(e) for i in range(len(ops))}

    def process(self, batch):
        from pymongo import errors
        now = datetime.datetime.now(datetime.timezone.utc)
        ops = [_upsert_operation(doc, self._ingest_time_field, now) for doc in batch]
        pending, failed, last_error = list(range(len(batch))), {}, None
        start = time.monotonic()
        for attempt in range(1, self._max_attempts + 1):
            try:
                retry, lost = self._bulk_write([ops[i] for i in pending])
                failed.update({pending[i]: reason for i, reason in lost.items()})
                pending = [pending[i] for i in retry]
                last_error = "transient write errors" if pending else None
            except errors.PyMongoError as e:  # transient: nothing of this attempt is known to be lost
                last_error = e
            if not pending:
                break
            if attempt < self._max_attempts:
                self._retries.inc()
                delay = self._base_delay_s * 2 ** (attempt - 1) * (1 + random.random())
                _LOG.warning("MongoDB transient error on %d documents (attempt %d/%d), retrying in "
                             "%.1fs: %s", len(pending), attempt, self._max_attempts, delay,
                             redact_text(str(last_error)))
                time.sleep(delay)
        for i in pending:
            failed[i] = f"MongoDB write failed after {self._max_attempts} attempts: {last_error}"
        self._latency.update(int((time.monotonic() - start) * 1000))
        self._failed.inc(len(failed))
        self._upserted.inc(len(batch) - len(failed))
        for i, doc in enumerate(batch):
            if i in failed:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(doc, failed[i]))
            else:
                yield doc["_id"]

    def _dead_letter(self, doc, reason) -> DeadLetter:
        frame_id = doc["_id"] if self._id_field == "frame_id" else doc.get("frame_id")
        error = f"{self._collection_name} _id={doc['_id']}: {reason}"
        return DeadLetter(doc.get("source_uri", ""), records.STAGE_MONGODB,
                          redact_text(error)[:_MAX_ERROR_CHARS], doc.get("frame_index"), frame_id)

    def teardown(self):
        if self._client is not None:
            self._client.close()


class WrittenDocuments(NamedTuple):
    ids: beam.PCollection
    dead_letters: beam.PCollection


class WrittenFrames(NamedTuple):
    frame_ids: beam.PCollection
    dead_letters: beam.PCollection


class WriteDocumentsToMongoDB(beam.PTransform):
    r"""Upserts documents (dicts with an ``_id``) into the collection of a :class:`~schemas.tables.TableSpec`.

    The collection's ``$jsonSchema`` validator (:func:`schemas.tables.mongo_validator`) and its
    indexes are ensured when each worker first writes. Writes are ``ordered=False`` bulk
    ``UpdateOne(upsert=True)`` of ``$set`` (every field but ``_id``), so a rerun or a later stage
    never duplicates a document nor erases fields it does not write; the spec's
    ``ingest_time_field`` is ``$setOnInsert`` (the first write's time survives reruns). One
    ``MongoClient`` per worker (``DoFn.setup``). Transient failures (connection reset, no server
    selectable, not primary, shutdown in progress) are retried with exponential backoff and
    jitter; retrying only the operations not acknowledged can never duplicate a document because
    each is an upsert by ``_id``. A document rejected for good (validator, unique index) or still
    failing after ``max_attempts`` goes to ``dead_letters`` with its ``_id`` and the reason.

    Parameters
    ----------
    uri : str
        MongoDB connection string. A standalone ``mongod`` needs ``retryWrites=false``.
    database : str
        Database name.
    table : schemas.tables.TableSpec
        The collection (``table.name``), its indexes and validator.
    batch_size : int
        Maximum documents per bulk write (>= 1).
    max_attempts : int
        Attempts per document on transient errors (>= 1), backoff ``base_delay_s * 2**k * U(1, 2)``.
    validate : bool
        Ensure the ``$jsonSchema`` validator (default True).

    Returns
    -------
    WrittenDocuments
        ``ids``: ``PCollection[str]`` of acknowledged ``_id``\ s; ``dead_letters``:
        ``PCollection[DeadLetter]`` (stage ``mongodb``; ``error`` starts with ``COLLECTION _id=ID:``).
    """

    def __init__(self, uri: str, database: str, table: tables.TableSpec, batch_size: int = 500,
                 max_attempts: int = 5, base_delay_s: float = 0.5, validate: bool = True):
        super().__init__()
        if not uri:
            raise ValueError("uri must be a MongoDB connection string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._uri = uri
        self._database = database
        self._table = table
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._validator = tables.mongo_validator(table) if validate else None

    def expand(self, documents):
        written = (
            documents
            | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            | "BulkUpsert" >> beam.ParDo(_MongoUpsertFn(
                self._uri, self._database, self._table.name, self._table.mongo_indexes,
                validator=self._validator, ingest_time_field=self._table.ingest_time_field,
                id_field=self._table.id_field, max_attempts=self._max_attempts,
                base_delay_s=self._base_delay_s))
            .with_outputs(DEAD_LETTER, main="ids"))
        return WrittenDocuments(written.ids, written[DEAD_LETTER])


class WriteFramesToMongoDB(beam.PTransform):
    r"""Upserts ``FrameRecord``\ s into ``<database>.frames`` (see :mod:`schemas.frames`).

    :func:`schemas.frames.to_mongo_document` then :class:`WriteDocumentsToMongoDB` with
    :func:`schemas.tables.frames_table` (unique ``(source_uri, frame_index)``, one index per
    score, ``indexed_at`` set on first insert, validator).

    Parameters
    ----------
    uri, database, batch_size, max_attempts
        As for :class:`WriteDocumentsToMongoDB`.
    collection : str
        Collection name (default ``frames``).
    """

    def __init__(self, uri: str, database: str = frames_schema.DEFAULT_DATABASE,
                 collection: str = frames_schema.FRAMES_COLLECTION, batch_size: int = 500,
                 max_attempts: int = 5, base_delay_s: float = 0.5):
        super().__init__()
        self._write = WriteDocumentsToMongoDB(
            uri, database, tables.frames_table()._replace(name=collection), batch_size=batch_size,
            max_attempts=max_attempts, base_delay_s=base_delay_s)

    def expand(self, frame_records):
        written = (frame_records
                   | "ToDocuments" >> beam.Map(frames_schema.to_mongo_document)
                   | "Upsert" >> self._write)
        return WrittenFrames(written.ids, written.dead_letters)


def _bigquery_dead_letter(failed) -> DeadLetter:
    # Beam emits (destination, row, errors) for rows BigQuery rejected.
    row, errors = failed[1], failed[2] if len(failed) > 2 else "rejected by BigQuery"
    return DeadLetter(row.get("source_uri", ""), records.STAGE_BIGQUERY,
                      f"BigQuery rejected the row: {errors}"[:_MAX_ERROR_CHARS],
                      row.get("frame_index"), row.get("frame_id"))


def _parse_table(table: str):
    """``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE`` to ``(project or None, dataset, table)``."""
    project, _, rest = table.rpartition(":")
    dataset, name = rest.split(".", 1)
    return project or None, dataset, name


def _bigquery_request_failed(table: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"BigQuery table {table} unreachable or request failed "
                        f"({type(error).__name__}): {redact_text(str(error))[:_MAX_ERROR_CHARS]}")


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

    def setup(self):
        self._ensure_table()
        self._rejected = Metrics.counter(_NAMESPACE, "bigquery_rows_invalid")

    def process(self, row):
        if self._spec.ingest_time_field:
            now = datetime.datetime.now(datetime.timezone.utc)
            row = dict(row, **{self._spec.ingest_time_field: now.strftime("%Y-%m-%d %H:%M:%S.%f UTC")})
        errors = tables.bigquery_row_errors(self._spec, row)
        if errors:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                str(row.get("source_uri") or ""), records.STAGE_BIGQUERY,
                f"row does not fit {self._table}: {'; '.join(errors)}"[:_MAX_ERROR_CHARS],
                row.get("frame_index"), row.get("frame_id")))
        else:
            yield row


class _ExistingFrameKeysFn(_BigQueryTableFn):
    r"""Yields the ``(frame_id, model_version)`` pairs the table already holds for some sources.

    Input: one list of distinct ``source_uri``\ s. One query, filtered on ``source_uri`` (a
    clustering column), reading only ``frame_id`` and ``model_version``. Creates the table if
    it does not exist yet.
    """

    def __init__(self, table: str, spec: tables.TableSpec, timeout_s: float):
        super().__init__(table, spec, timeout_s)
        self._present = Metrics.counter(_NAMESPACE, "bigquery_rows_already_present")

    def process(self, source_uris):
        from google.api_core import exceptions
        from google.cloud import bigquery
        table_id = self._ensure_table()
        query = (f"SELECT DISTINCT frame_id, model_version FROM `{table_id}` "
                 f"WHERE source_uri IN UNNEST(@source_uris)")
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ArrayQueryParameter("source_uris", "STRING", sorted(source_uris))])
        try:
            rows = list(self._client.query(query, job_config=config, **self._request_options()).result())
        except exceptions.GoogleAPIError as e:
            raise _bigquery_request_failed(self._table, e) from e
        for row in rows:
            self._present.inc()
            yield (row["frame_id"], row["model_version"]), True


def _is_new(row, present):
    return (row["frame_id"], row["model_version"]) not in present


BIGQUERY_METHODS = ("STREAMING_INSERTS", "FILE_LOADS")


def frame_insert_id(row: dict) -> str:
    """Deterministic BigQuery ``insertId`` of a frame row: ``frame_id:model_version``.

    The same frame scored by the same model always gets the same id, so BigQuery's best-effort
    de-duplication (about a minute) also drops rows re-sent by a retried bundle or a rerun.
    """
    return f"{row['frame_id']}:{row['model_version']}"


class _DeterministicInsertIdFn(beam.DoFn):
    """Replaces Beam's ``AddInsertIds`` (random uuid prefix per bundle + counter)."""

    def process(self, element):
        destination, row = element
        yield destination, (row, frame_insert_id(row))


def _use_deterministic_insert_ids(write_applied) -> bool:
    """Swaps the ``AddInsertIds`` DoFn inside an applied ``WriteToBigQuery`` for
    :class:`_DeterministicInsertIdFn`; returns whether it found it (Beam 2.77 layout)."""
    from apache_beam.runners.common import DoFnSignature
    stack = [write_applied]
    while stack:
        applied = stack.pop()
        if applied.full_label.endswith("/AddInsertIds") and isinstance(applied.transform, beam.ParDo):
            fn = _DeterministicInsertIdFn()
            transform = applied.transform
            transform.fn = transform.dofn = transform._cached_fn = fn
            transform._signature = DoFnSignature(fn)
            return True
        stack.extend(applied.parts)
    return False


class WriteFramesToBigQuery(beam.PTransform):
    r"""Appends one row per ``FrameRecord`` to a BigQuery table (schema: :func:`schemas.tables.frames_table`).

    The table is created beforehand (:func:`transforms.bigquery_tables.ensure_table`) with daily
    time partitioning on ``indexed_at`` (ingest time, stamped here) and clustering on
    ``(source_uri, model_version)``; Beam's ``WriteToBigQuery`` then only appends
    (``CREATE_NEVER``). Every row is checked against the schema first
    (:func:`schemas.tables.bigquery_row_errors`): a row that does not fit becomes a dead letter
    at once instead of an HTTP error retried for minutes.

    Bounded input is rerun-safe: one query first finds which ``(frame_id, model_version)``
    pairs of this input's sources the table already holds, and only the other rows are
    appended, so a rerun adds nothing and a new model version adds its own rows (the present
    keys are a side input, about 100 bytes a frame). Unbounded input skips that query. With
    ``STREAMING_INSERTS`` every row's ``insertId`` is :func:`frame_insert_id` (``frame_id:model_version``)
    instead of Beam's random one, so BigQuery de-duplicates rows re-sent within its window.

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE``.
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
        Rows that did not fit the schema or that BigQuery rejected (stage ``bigquery``).
    """

    def __init__(self, table: str, method: Optional[str] = None, timeout_s: float = 120.0):
        super().__init__()
        if not re.fullmatch(r"([\w.-]+[:.])?\w+\.[\w$-]+", table or ""):
            raise ValueError(f"bigquery table must be PROJECT:DATASET.TABLE, got {table!r}")
        if method is not None and method not in BIGQUERY_METHODS:
            raise ValueError(f"method must be one of {BIGQUERY_METHODS} or None, got {method!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._table = table
        self._method = method
        self._timeout_s = timeout_s
        self._spec = tables.frames_table()

    def expand(self, frame_records):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
        from apache_beam.io.gcp.bigquery_tools import RetryStrategy
        bounded = frame_records.is_bounded
        method = self._method or ("FILE_LOADS" if bounded else "STREAMING_INSERTS")
        checked = (frame_records
                   | "ToRows" >> beam.Map(frames_schema.to_bigquery_row)
                   | "CheckRows" >> beam.ParDo(_CheckRowsFn(self._table, self._spec, self._timeout_s))
                   .with_outputs(DEAD_LETTER, main="rows"))
        rows = checked.rows
        if bounded:
            present = (rows
                       | "SourceUris" >> beam.Map(lambda row: row["source_uri"])
                       | "DistinctSources" >> beam.Distinct()
                       | "AllSources" >> beam.combiners.ToList()
                       | "QueryPresentRows" >> beam.ParDo(
                           _ExistingFrameKeysFn(self._table, self._spec, self._timeout_s)))
            rows = rows | "SkipPresentRows" >> beam.Filter(_is_new, present=beam.pvalue.AsDict(present))
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
            if not _use_deterministic_insert_ids(write_applied):
                _LOG.warning("Beam's WriteToBigQuery has no AddInsertIds step: insertIds stay random")
            dead_letters.append(result.failed_rows_with_errors
                                | "BigQueryDeadLetters" >> beam.Map(_bigquery_dead_letter))
        return dead_letters | "AllBigQueryDeadLetters" >> beam.Flatten()


def upsert_documents(uri: str, database: str, table: tables.TableSpec, documents: List[dict],
                     max_attempts: int = 5) -> List[DeadLetter]:
    """Upserts a few documents from the driver (e.g. the run record) with the mechanics of
    :class:`WriteDocumentsToMongoDB` (validator, indexes, ``$set``, retries); returns the dead
    letters (empty when every document was written)."""
    fn = _MongoUpsertFn(uri, database, table.name, table.mongo_indexes,
                        validator=tables.mongo_validator(table),
                        ingest_time_field=table.ingest_time_field, id_field=table.id_field,
                        max_attempts=max_attempts)
    fn.setup()
    try:
        outputs = list(fn.process(documents))
    finally:
        fn.teardown()
    return [o.value for o in outputs if isinstance(o, beam.pvalue.TaggedOutput)]

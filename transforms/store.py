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
import logging
import random
import re
import time
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import frames as frames_schema
from schemas import records
from schemas.records import DeadLetter

_LOG = logging.getLogger(__name__)
_NAMESPACE = "activebeam.store"
DEAD_LETTER = "dead_letter"
_MAX_ERROR_CHARS = 500


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """Replaces the password of a ``scheme://user:password@host`` URI with ``***``."""
    if not uri:
        return uri
    return re.sub(r"(?<=://)([^:/?#@]*):([^@/?#]*)@", r"\1:***@", uri)


class _MongoUpsertFn(beam.DoFn):
    """Bulk ``$set`` upserts by ``_id``: one client per worker, retries on transient errors.

    Retrying is safe: an upsert by ``_id`` applied twice leaves one document.
    """

    def __init__(self, uri, database, collection, indexes, max_attempts=5, base_delay_s=0.5):
        self._uri = uri
        self._database = database
        self._collection_name = collection
        self._indexes = indexes
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
        self._indexes_ready = False

    def _ensure_indexes(self):
        """Creates the indexes once per worker (idempotent; before the first write)."""
        if not self._indexes_ready:
            for spec in self._indexes:
                self._collection.create_index(list(spec.keys), name=spec.name, unique=spec.unique)
            self._indexes_ready = True

    def _with_retries(self, fn):
        from pymongo import errors
        for attempt in range(1, self._max_attempts + 1):
            try:
                return fn()
            except (errors.AutoReconnect, errors.ServerSelectionTimeoutError,
                    errors.NetworkTimeout) as e:
                if attempt == self._max_attempts:
                    raise
                self._retries.inc()
                delay = self._base_delay_s * 2 ** (attempt - 1) * (1 + random.random())
                _LOG.warning("MongoDB transient error (attempt %d/%d), retrying in %.1fs: %s",
                             attempt, self._max_attempts, delay, e)
                time.sleep(delay)

    def process(self, batch):
        from pymongo import UpdateOne, errors
        ops = [UpdateOne({"_id": doc["_id"]}, {"$set": {k: v for k, v in doc.items() if k != "_id"}},
                         upsert=True) for doc in batch]
        failed = {}
        start = time.monotonic()
        try:
            self._with_retries(self._ensure_indexes)
            self._with_retries(lambda: self._collection.bulk_write(ops, ordered=False))
        except errors.BulkWriteError as e:
            for write_error in e.details.get("writeErrors", []):
                failed[write_error["index"]] = write_error.get("errmsg", "write error")
        except errors.PyMongoError as e:
            reason = f"MongoDB write failed after {self._max_attempts} attempts: {e}"
            failed = {i: reason for i in range(len(batch))}
        self._latency.update(int((time.monotonic() - start) * 1000))
        for i, doc in enumerate(batch):
            if i in failed:
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                    doc.get("source_uri", ""), records.STAGE_MONGODB,
                    str(failed[i])[:_MAX_ERROR_CHARS], doc.get("frame_index"), doc["_id"]))
            else:
                self._upserted.inc()
                yield doc["_id"]

    def teardown(self):
        if self._client is not None:
            self._client.close()


class WrittenFrames(NamedTuple):
    frame_ids: beam.PCollection
    dead_letters: beam.PCollection


class WriteFramesToMongoDB(beam.PTransform):
    """Upserts ``FrameRecord``\\ s into ``<database>.frames`` (see :mod:`schemas.frames`).

    Indexes of :data:`schemas.frames.MONGO_INDEXES` (a unique one on ``(source_uri,
    frame_index)`` and one per score) are ensured when each worker starts. Writes are
    ``ordered=False`` bulk upserts of up to ``batch_size`` documents.

    Parameters
    ----------
    uri : str
        MongoDB connection string. A standalone ``mongod`` needs ``retryWrites=false``.
    database : str
        Database name (default ``activebeam``).
    batch_size : int
        Maximum documents per bulk write.
    max_attempts : int
        Attempts per bulk write on transient errors (connection lost, no server selectable),
        with exponential backoff from 0.5 s; documents still failing go to ``dead_letters``.
    """

    def __init__(self, uri: str, database: str = frames_schema.DEFAULT_DATABASE,
                 collection: str = frames_schema.FRAMES_COLLECTION, batch_size: int = 500,
                 max_attempts: int = 5):
        super().__init__()
        if not uri:
            raise ValueError("uri must be a MongoDB connection string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._uri = uri
        self._database = database
        self._collection = collection
        self._batch_size = batch_size
        self._max_attempts = max_attempts

    def expand(self, frame_records):
        written = (
            frame_records
            | "ToDocuments" >> beam.Map(frames_schema.to_mongo_document)
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
            | "BulkUpsert" >> beam.ParDo(_MongoUpsertFn(
                self._uri, self._database, self._collection, frames_schema.MONGO_INDEXES,
                max_attempts=self._max_attempts))
            .with_outputs(DEAD_LETTER, main="frame_ids"))
        return WrittenFrames(written.frame_ids, written[DEAD_LETTER])


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


class _ExistingFrameKeysFn(beam.DoFn):
    """Yields the ``(frame_id, model_version)`` pairs the table already holds for some sources.

    Input: one list of distinct ``source_uri``\ s. One query, filtered on ``source_uri`` (the
    table's clustering column in production), reading only ``frame_id`` and ``model_version``.
    """

    def __init__(self, table: str):
        self._table = table
        self._present = Metrics.counter(_NAMESPACE, "bigquery_rows_already_present")

    def process(self, source_uris):
        from google.api_core import exceptions
        from google.cloud import bigquery
        project, dataset, name = _parse_table(self._table)
        client = bigquery.Client(project=project)
        try:
            client.get_table(f"{client.project}.{dataset}.{name}")
        except exceptions.NotFound:
            return  # a new table holds nothing yet
        query = (f"SELECT DISTINCT frame_id, model_version FROM `{client.project}.{dataset}.{name}` "
                 f"WHERE source_uri IN UNNEST(@source_uris)")
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ArrayQueryParameter("source_uris", "STRING", sorted(source_uris))])
        for row in client.query(query, job_config=config).result():
            self._present.inc()
            yield (row["frame_id"], row["model_version"]), True


def _is_new(row, present):
    return (row["frame_id"], row["model_version"]) not in present


class WriteFramesToBigQuery(beam.PTransform):
    """Appends one row per ``FrameRecord`` to a BigQuery table (schema: :mod:`schemas.frames`).

    Rerun-safe: before writing, one query finds which ``(frame_id, model_version)`` pairs of this
    input's sources the table already holds, and only the other rows are appended, so a rerun
    adds nothing and a new model version adds its own rows. Writing starts after that query
    (batch pipelines; the set of present keys is a side input held in each worker's memory,
    about 100 bytes a frame). The table is created if needed. With
    ``method="STREAMING_INSERTS"`` (the default) rows that BigQuery rejects go to
    ``dead_letters``; with ``FILE_LOADS`` a rejected load fails the job.

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE``.
    method : str
        ``STREAMING_INSERTS`` or ``FILE_LOADS`` (the latter needs ``--temp_location`` on GCS).
    """

    def __init__(self, table: str, method: str = "STREAMING_INSERTS"):
        super().__init__()
        if not re.fullmatch(r"([\w.-]+[:.])?\w+\.[\w$-]+", table or ""):
            raise ValueError(f"bigquery table must be PROJECT:DATASET.TABLE, got {table!r}")
        if method not in ("STREAMING_INSERTS", "FILE_LOADS"):
            raise ValueError(f"method must be STREAMING_INSERTS or FILE_LOADS, got {method!r}")
        self._table = table
        self._method = method

    def expand(self, frame_records):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
        from apache_beam.io.gcp.bigquery_tools import RetryStrategy
        rows = frame_records | "ToRows" >> beam.Map(frames_schema.to_bigquery_row)
        present = (rows
                   | "SourceUris" >> beam.Map(lambda row: row["source_uri"])
                   | "DistinctSources" >> beam.Distinct()
                   | "AllSources" >> beam.combiners.ToList()
                   | "QueryPresentRows" >> beam.ParDo(_ExistingFrameKeysFn(self._table)))
        new_rows = rows | "SkipPresentRows" >> beam.Filter(_is_new, present=beam.pvalue.AsDict(present))
        result = new_rows | "WriteToBigQuery" >> WriteToBigQuery(
            self._table,
            schema=frames_schema.bigquery_schema(),
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_APPEND,
            method=self._method,
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR)
        if self._method == "STREAMING_INSERTS":
            return result.failed_rows_with_errors | "BigQueryDeadLetters" >> beam.Map(_bigquery_dead_letter)
        return frame_records.pipeline | "NoBigQueryDeadLetters" >> beam.Create([])

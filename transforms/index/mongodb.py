"""MongoDB writer of the index: ``$set`` bulk upserts by deterministic ``_id`` that lose nothing.

:class:`WriteDocumentsToMongoDB` writes the documents of any table of :mod:`schemas.tables`
(frames, candidates, annotations, runs); :class:`WriteFramesToMongoDB` turns ``FrameRecord``\\ s
into frame documents first; :func:`upsert_documents` is the same mechanics from the driver::

    written = records | WriteFramesToMongoDB("mongodb://127.0.0.1:27017", "activebeam")
    written.frame_ids     # PCollection[str]: frames acknowledged by MongoDB
    written.dead_letters  # PCollection[DeadLetter]: documents rejected or failing after retries
"""
import datetime
import logging
import random
import time
from typing import List, NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import frames as frames_schema
from schemas import records
from schemas import tables
from schemas.records import DeadLetter
from schemas.records import DEAD_LETTER_TAG as DEAD_LETTER, MAX_ERROR_CHARS
from transforms.common.redact import redact_text
from transforms.index import METRICS_NAMESPACE

_LOG = logging.getLogger(__name__)

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


#: How long a write waits for a reachable server before it counts as a transient failure
#: (a ``serverSelectionTimeoutMS`` in the URI wins).
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 30000


class _MongoUpsertFn(beam.DoFn):
    """Bulk ``$set`` upserts by ``_id``: one client per worker, retries on transient errors.

    Retrying is safe: an upsert by ``_id`` applied twice leaves one document. Only the operations
    that failed transiently are retried; those failing for good (validation, unique index) go to
    the dead-letter output at once, the others after ``max_attempts``.
    """

    def __init__(self, uri, database, collection, indexes, validator=None, ingest_time_field=None,
                 id_field=None, max_attempts=5, base_delay_s=0.5,
                 server_selection_timeout_ms=DEFAULT_SERVER_SELECTION_TIMEOUT_MS):
        self._uri = uri
        self._server_selection_timeout_ms = server_selection_timeout_ms
        self._database = database
        self._collection_name = collection
        self._indexes = indexes
        self._validator = validator
        self._ingest_time_field = ingest_time_field
        self._id_field = id_field
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._upserted = Metrics.counter(METRICS_NAMESPACE, "mongodb_documents_written")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "mongodb_documents_failed")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "mongodb_retries")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "mongodb_bulk_write_ms")
        self._client = None
        self._collection = None

    def setup(self):
        import pymongo
        defaults = {"appname": "activebeam",
                    "serverSelectionTimeoutMS": self._server_selection_timeout_ms}
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
                          redact_text(error)[:MAX_ERROR_CHARS], doc.get("frame_index"), frame_id)

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
    server_selection_timeout_ms : int
        How long a write waits for a reachable server (milliseconds); a
        ``serverSelectionTimeoutMS`` in the URI wins.

    Returns
    -------
    WrittenDocuments
        ``ids``: ``PCollection[str]`` of acknowledged ``_id``\ s; ``dead_letters``:
        ``PCollection[DeadLetter]`` (stage ``mongodb``; ``error`` starts with ``COLLECTION _id=ID:``).
    """

    def __init__(self, uri: str, database: str, table: tables.TableSpec, batch_size: int = 500,
                 max_attempts: int = 5, base_delay_s: float = 0.5, validate: bool = True,
                 server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS):
        super().__init__()
        if not uri:
            raise ValueError("uri must be a MongoDB connection string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._batch_size = batch_size
        self._upsert = _MongoUpsertFn(
            uri, database, table.name, table.mongo_indexes,
            validator=tables.mongo_validator(table) if validate else None,
            ingest_time_field=table.ingest_time_field, id_field=table.id_field,
            max_attempts=max_attempts, base_delay_s=base_delay_s,
            server_selection_timeout_ms=server_selection_timeout_ms)

    def expand(self, documents):
        written = (
            documents
            | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            | "BulkUpsert" >> beam.ParDo(self._upsert)
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


def upsert_documents(uri: str, database: str, table: tables.TableSpec, documents: List[dict],
                     max_attempts: int = 5,
                     server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
                     ) -> List[DeadLetter]:
    """Upserts a few documents from the driver (e.g. the run record) with the mechanics of
    :class:`WriteDocumentsToMongoDB` (validator, indexes, ``$set``, retries); returns the dead
    letters (empty when every document was written)."""
    fn = WriteDocumentsToMongoDB(uri, database, table, max_attempts=max_attempts,
                                 server_selection_timeout_ms=server_selection_timeout_ms)._upsert
    fn.setup()
    try:
        outputs = list(fn.process(documents))
    finally:
        fn.teardown()
    return [o.value for o in outputs if isinstance(o, beam.pvalue.TaggedOutput)]

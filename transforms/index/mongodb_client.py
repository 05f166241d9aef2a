"""MongoDB upserts without Beam: the mechanics the Beam writer and the job driver share.

:class:`MongoUpserter` holds one ``MongoClient``, ensures the collection's ``$jsonSchema``
validator and indexes before its first write, and upserts documents by ``_id`` with ``$set``,
retrying transient failures with exponential backoff and jitter::

    with MongoUpserter("mongodb://127.0.0.1:27017/?retryWrites=false", "activebeam",
                       tables.runs_table()) as upserter:
        result = upserter.upsert(documents)
    result.written_ids   # [_id, ...] acknowledged by MongoDB
    result.failures      # [UpsertFailure(document, reason), ...] rejected or failing after retries

:class:`transforms.index.mongodb.WriteDocumentsToMongoDB` runs one upserter per worker;
:func:`upsert_documents` is one call from the driver (the ``mine`` job's run record).
"""
import datetime
import logging
import random
import time
from typing import List, NamedTuple, Optional

from schemas import records
from schemas import tables
from schemas.records import DeadLetter, MAX_ERROR_CHARS
from transforms.common.redact import redact_text

_LOG = logging.getLogger(__name__)

# Server error codes that mean "try again": the write did not happen or is safe to repeat
# (HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress, PrimarySteppedDown,
# ExceededTimeLimit, SocketException, NotWritablePrimary, InterruptedAtShutdown,
# InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary), as in
# the MongoDB drivers' retryable-writes specification.
TRANSIENT_ERROR_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})

#: How a failure that retrying later may fix begins (the server was unreachable or kept failing
#: transiently): :func:`is_unavailable`. Other failures (a document the validator rejects) are
#: the document's.
UNREACHABLE, FAILED_AFTER_RETRIES = "MongoDB unreachable since", "MongoDB write failed after"


def is_unavailable(dead_letter) -> bool:
    """True for a dead letter of stage ``mongodb`` whose document was not written because the
    server was unavailable (unreachable, or transient errors through every attempt): the document
    itself is fine, and writing it again later may succeed."""
    if getattr(dead_letter, "stage", None) != records.STAGE_MONGODB:
        return False
    _, _, reason = (dead_letter.error or "").partition(": ")
    return reason.startswith((UNREACHABLE, FAILED_AFTER_RETRIES))


#: How long a write waits for a reachable server before it counts as a transient failure
#: (a ``serverSelectionTimeoutMS`` in the URI wins).
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 30000


def uri_options(uri: str) -> frozenset:
    """The lower-cased names of the options in a MongoDB connection string's query part."""
    import urllib.parse
    query = uri.partition("?")[2]
    return frozenset(name.lower() for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True))


def mongo_client(uri: str, *, appname: str = "activebeam",
                 server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS, **defaults):
    """A ``pymongo.MongoClient`` for ``uri`` with these defaults, where an option written in the
    URI wins (pymongo lets keywords win over the URI, so ``?serverSelectionTimeoutMS=2000`` would
    otherwise be ignored). Connects lazily; raises ``pymongo.errors.ConfigurationError`` or
    ``InvalidURI`` for a malformed URI."""
    import pymongo
    defaults.update(appname=appname, serverSelectionTimeoutMS=server_selection_timeout_ms)
    given = uri_options(uri)
    return pymongo.MongoClient(uri, **{k: v for k, v in defaults.items() if k.lower() not in given})


#: After a batch failed every attempt because no server answered, later batches of the same
#: upserter fail at once (dead letters) for this many seconds, then one attempt probes the server
#: again: a server that died mid-run costs one batch's retries, not every batch's.
DEFAULT_UNREACHABLE_COOLDOWN_S = 60.0

#: ``NamespaceExists``: a ``create`` raced by another client that created the collection first.
NAMESPACE_EXISTS = 48
#: ``IndexBuildAlreadyInProgress``: another client is building the same index; waited out.
CONCURRENT_INDEX_BUILD_CODES = frozenset({276})


class UpsertFailure(NamedTuple):
    """A document MongoDB rejected for good, or that still failed after the last attempt."""
    document: dict
    reason: str


class UpsertResult(NamedTuple):
    """What :meth:`MongoUpserter.upsert` did: ids acknowledged (input order), failures, retries made."""
    written_ids: List[str]
    failures: List[UpsertFailure]
    retries: int


def _upsert_operation(doc: dict, ingest_time_field: Optional[str], now):
    """``$set`` every field but ``_id``; ``$setOnInsert`` the ingest time (kept on reruns)."""
    from pymongo import UpdateOne
    fields = {k: v for k, v in doc.items() if k != "_id" and k != ingest_time_field}
    update = {"$set": fields}
    if ingest_time_field:
        update["$setOnInsert"] = {ingest_time_field: now}
    return UpdateOne({"_id": doc["_id"]}, update, upsert=True)


def _no_server_answered(error) -> bool:
    """Whether ``error`` means no server could be reached (not one that answered with an error
    code, which :meth:`MongoUpserter._bulk_write` raises as ``AutoReconnect`` to retry it)."""
    from pymongo import errors
    return (isinstance(error, errors.ConnectionFailure)
            and not isinstance(error.__cause__, errors.OperationFailure))


class MongoUpserter:
    r"""Bulk ``$set`` upserts by ``_id`` into the collection of a :class:`~schemas.tables.TableSpec`.

    Retrying is safe: an upsert by ``_id`` applied twice leaves one document. Only the operations
    that failed transiently (connection lost, no server selectable, not primary, the server's
    :data:`TRANSIENT_ERROR_CODES`, write-concern errors) are retried, with backoff
    ``base_delay_s * 2**k * U(1, 2)``; those failing for good (validator, unique index) are
    failures at once, the others after ``max_attempts``.

    Parameters
    ----------
    uri : str
        MongoDB connection string (a standalone ``mongod`` needs ``retryWrites=false``).
    database : str
        Database name.
    table : schemas.tables.TableSpec
        The collection (``table.name``), its indexes, validator and ingest-time field.
    validate : bool
        Ensure the ``$jsonSchema`` validator (:func:`schemas.tables.mongo_validator`).
    max_attempts : int
        Attempts per document on transient errors (>= 1).
    base_delay_s : float
        First backoff delay in seconds.
    server_selection_timeout_ms : int
        How long a write waits for a reachable server; a ``serverSelectionTimeoutMS`` in the URI wins.
    unreachable_cooldown_s : float
        Circuit breaker (Nygard, *Release It!*, 2007, "Circuit Breaker"): once a batch has failed
        all ``max_attempts`` because no server could be reached, batches in the next
        ``unreachable_cooldown_s`` seconds are failures at once, without trying; the first batch
        after that makes one attempt, and a success closes the breaker again.

    Use it as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, uri: str, database: str, table: tables.TableSpec, validate: bool = True,
                 max_attempts: int = 5, base_delay_s: float = 0.5,
                 server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS,
                 unreachable_cooldown_s: float = DEFAULT_UNREACHABLE_COOLDOWN_S):
        if not uri:
            raise ValueError("uri must be a MongoDB connection string")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if base_delay_s < 0:
            raise ValueError(f"base_delay_s must be >= 0, got {base_delay_s}")
        self._uri = uri
        self._database_name = database
        self._collection_name = table.name
        self._indexes = tuple(table.mongo_indexes)
        self._validator = tables.mongo_validator(table) if validate else None
        self._ingest_time_field = table.ingest_time_field
        self._id_field = table.id_field
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._server_selection_timeout_ms = server_selection_timeout_ms
        if unreachable_cooldown_s < 0:
            raise ValueError(f"unreachable_cooldown_s must be >= 0, got {unreachable_cooldown_s}")
        self._unreachable_cooldown_s = unreachable_cooldown_s
        self._unreachable = None  # (first failure wall time, last attempt monotonic, error) while open
        self._client = None
        self._collection = None
        self._collection_ready = False

    @property
    def collection_name(self) -> str:
        return self._collection_name

    def open(self) -> "MongoUpserter":
        """Creates the ``MongoClient`` (connects lazily, on the first write)."""
        if self._client is None:
            self._client = mongo_client(self._uri, server_selection_timeout_ms=self._server_selection_timeout_ms)
            self._collection = self._client[self._database_name][self._collection_name]
            self._collection_ready = False
        return self

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = self._collection = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def collection(self):
        """The open ``pymongo`` collection, its validator and indexes ensured first (once per
        upserter): for the reads, deletes and conditional updates of the code that owns this
        upserter (the arrivals ledger, the window-pane writer). Call :meth:`open` first."""
        self._ensure_collection()
        return self._collection

    def _ensure_collection(self):
        """Validator and indexes, once per upserter before its first write (idempotent, and safe
        with any number of workers doing it at once on a new database: a collection another
        worker created meanwhile is taken as existing, ``NamespaceExists`` included)."""
        if self._collection_ready:
            return
        from pymongo import errors
        database = self._client[self._database_name]
        if self._validator:
            try:
                database.create_collection(self._collection_name, validator=self._validator)
                created = True
            except errors.CollectionInvalid:  # it exists (pymongo looked first)
                created = False
            except errors.OperationFailure as e:
                if e.code != NAMESPACE_EXISTS:  # not created by another worker between look and create
                    raise
                created = False
            if not created:  # bring its validator up to date
                try:
                    database.command("collMod", self._collection_name, validator=self._validator)
                except errors.OperationFailure as e:
                    if e.code != 13:  # Unauthorized: keep the validator the owner set
                        raise
                    _LOG.warning("not allowed to update the validator of %s.%s: %s",
                                 self._database_name, self._collection_name, e)
        for spec in self._indexes:
            self._create_index(spec)
        self._collection_ready = True

    def _create_index(self, spec):
        """``createIndexes`` of one spec; concurrent identical builds by other workers are waited
        for by the server or reported as already in progress, which this waits out."""
        from pymongo import errors
        for attempt in range(1, 11):
            try:
                self._collection.create_index(list(spec.keys), name=spec.name, unique=spec.unique)
                return
            except errors.OperationFailure as e:
                if e.code not in CONCURRENT_INDEX_BUILD_CODES or attempt == 10:
                    raise
                time.sleep(0.05 * attempt)

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

    def upsert(self, documents: List[dict]) -> UpsertResult:
        """Upserts ``documents`` (dicts with an ``_id``) in one bulk write, retried as needed.

        Returns
        -------
        UpsertResult
            ``written_ids`` in input order, ``failures`` (document and reason), ``retries`` made.
        """
        from pymongo import errors
        if self._client is None:
            raise RuntimeError("MongoUpserter is not open: call open() or use it in a with block")
        documents = list(documents)
        now = datetime.datetime.now(datetime.timezone.utc)
        if self._unreachable is not None:
            since, last_try, error = self._unreachable
            if time.monotonic() - last_try < self._unreachable_cooldown_s:
                reason = (f"{UNREACHABLE} {since:%Y-%m-%dT%H:%M:%SZ} (an earlier batch "
                          f"failed all {self._max_attempts} attempts: {error}); not tried again until "
                          f"{self._unreachable_cooldown_s:g} s after the last attempt")
                return UpsertResult([], [UpsertFailure(doc, reason) for doc in documents], 0)
        ops = [_upsert_operation(doc, self._ingest_time_field, now) for doc in documents]
        pending, failed, last_error, retries = list(range(len(documents))), {}, None, 0
        attempts = 1 if self._unreachable is not None else self._max_attempts  # half-open: one probe
        for attempt in range(1, attempts + 1):
            try:
                retry, lost = self._bulk_write([ops[i] for i in pending])
                failed.update({pending[i]: reason for i, reason in lost.items()})
                pending = [pending[i] for i in retry]
                last_error = "transient write errors" if pending else None
            except errors.PyMongoError as e:  # transient: nothing of this attempt is known to be lost
                last_error = e
            if not pending:
                break
            if attempt < attempts:
                retries += 1
                delay = self._base_delay_s * 2 ** (attempt - 1) * (1 + random.random())
                _LOG.warning("MongoDB transient error on %d documents (attempt %d/%d), retrying in "
                             "%.1fs: %s", len(pending), attempt, attempts, delay,
                             redact_text(str(last_error)))
                time.sleep(delay)
        if _no_server_answered(last_error):  # open the breaker (again)
            since = self._unreachable[0] if self._unreachable else now
            self._unreachable = (since, time.monotonic(), redact_text(str(last_error))[:200])
            _LOG.error("MongoDB unreachable: failing writes at once for %g s: %s",
                       self._unreachable_cooldown_s, self._unreachable[2])
        else:  # a server answered
            self._unreachable = None
        for i in pending:
            failed[i] = f"{FAILED_AFTER_RETRIES} {attempts} attempts: {last_error}"
        return UpsertResult([doc["_id"] for i, doc in enumerate(documents) if i not in failed],
                            [UpsertFailure(documents[i], failed[i]) for i in sorted(failed)], retries)

    def dead_letter(self, failure: UpsertFailure) -> DeadLetter:
        """The :class:`~schemas.records.DeadLetter` of a failure: stage ``mongodb``, error
        ``COLLECTION _id=ID: reason`` (credentials redacted)."""
        doc = failure.document
        frame_id = doc["_id"] if self._id_field == "frame_id" else doc.get("frame_id")
        error = f"{self._collection_name} _id={doc['_id']}: {failure.reason}"
        return DeadLetter(doc.get("source_uri", ""), records.STAGE_MONGODB,
                          redact_text(error)[:MAX_ERROR_CHARS], doc.get("frame_index"), frame_id)


def upsert_documents(uri: str, database: str, table: tables.TableSpec, documents: List[dict],
                     max_attempts: int = 5,
                     server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
                     ) -> List[DeadLetter]:
    """Upserts a few documents from the driver (e.g. the run record) with a :class:`MongoUpserter`
    (validator, indexes, ``$set``, retries); returns the dead letters (empty when every document
    was written)."""
    with MongoUpserter(uri, database, table, max_attempts=max_attempts,
                       server_selection_timeout_ms=server_selection_timeout_ms) as upserter:
        return [upserter.dead_letter(failure) for failure in upserter.upsert(documents).failures]


def labelled_frame_ids(uri: str, database: str):
    """``(ids, near)``: the frame ids in ``label_tasks`` (sent for labelling) or ``annotations``
    (labelled), and the other frames of their ``duplicate_group`` (near-duplicates, when the
    frames carry one; the group id is its representative's ``frame_id``). Missing collections
    count as empty; raises pymongo's errors when the server does not answer."""
    with mongo_client(uri) as client:
        db = client[database]
        ids = set()
        for collection in ("label_tasks", "annotations"):
            ids.update(doc["frame_id"] for doc in db[collection].find({}, {"frame_id": 1, "_id": 0})
                       if doc.get("frame_id"))
        groups = set(ids)
        for doc in db["frames"].find({"_id": {"$in": sorted(ids)}, "duplicate_group": {"$type": "string"}},
                                     {"duplicate_group": 1}):
            groups.add(doc["duplicate_group"])
        near = {doc["_id"] for doc in db["frames"].find({"duplicate_group": {"$in": sorted(groups)}}, {"_id": 1})
                if doc["_id"] not in ids}
    return ids, near

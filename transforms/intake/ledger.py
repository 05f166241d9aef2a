"""The streaming job's ledger of arrivals in MongoDB (``<database>.arrivals``, :mod:`schemas.arrivals`).

Pure (pymongo, no Beam): what the Beam steps of :mod:`transforms.intake.streaming` and the driver
share. A run *claims* an arrival before decoding it and marks it *done* once its frames are
indexed::

    with ArrivalLedger(uri, "activebeam", "projects/p/subscriptions/s", run_id) as ledger:
        claim = ledger.claim(arrival)      # Claim.NEW, TAKEN_OVER (a crashed run's) or DUPLICATE
        ...
        ledger.done(arrival.key, frames=12, event_times=[...], dead_letters=[(dead, t)])
        ledger.recent(since_s)             # done entries whose frames may still change a window

Claiming is one atomic conditional upsert, so two deliveries of the same notification, even on
two workers at once, start the work once.
"""
import enum
import logging
import random
import time
from typing import Iterator, NamedTuple, Optional, Sequence

from schemas import arrivals as arrivals_schema
from schemas import tables
from schemas.frames import FRAMES_COLLECTION
from schemas.records import Arrival
from transforms.index.mongodb_client import DEFAULT_SERVER_SELECTION_TIMEOUT_MS, MongoUpserter

_LOG = logging.getLogger(__name__)


class Claim(enum.Enum):
    NEW = "new"                # first time this version is seen
    TAKEN_OVER = "taken_over"  # claimed by a run that did not finish it (crashed or killed)
    DUPLICATE = "duplicate"    # done, or already claimed by this run: nothing to do


class ClaimResult(NamedTuple):
    claim: Claim
    previous_run: Optional[str] = None  # the run that claimed or finished it before
    previous_status: Optional[str] = None


class ArrivalLedger:
    """Claims and completions of arrivals for one job input and run.

    Parameters
    ----------
    uri, database : str
        Where ``arrivals`` lives.
    input_name : str
        The job's source (subscription or glob); restores read only its arrivals.
    run_id : str
        This run (:class:`~beam_pipelines.cli.run_record.RunRecord`'s id).
    max_attempts : int
        Attempts of a claim or completion on transient errors (connection lost, no primary).

    Use it as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, uri: str, database: str, input_name: str, run_id: str, max_attempts: int = 5,
                 server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS):
        if not input_name or not run_id:
            raise ValueError("input_name and run_id must be non-empty")
        self._upserter = MongoUpserter(uri, database, tables.arrivals_table(), max_attempts=max_attempts,
                                       server_selection_timeout_ms=server_selection_timeout_ms)
        self._input = input_name
        self._run_id = run_id
        self._max_attempts = max_attempts

    def open(self) -> "ArrivalLedger":
        self._upserter.open()
        return self

    def close(self):
        self._upserter.close()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    @property
    def _collection(self):
        return self._upserter.collection()

    def _retrying(self, operation):
        from pymongo import errors
        for attempt in range(1, self._max_attempts + 1):
            try:
                return operation()
            except (errors.AutoReconnect, errors.ServerSelectionTimeoutError):
                if attempt == self._max_attempts:
                    raise
                time.sleep(0.5 * 2 ** (attempt - 1) * (1 + random.random()))

    def frames_stored(self, source_uri: str) -> int:
        """Frames of ``source_uri`` in the ``frames`` collection of the ledger's database.

        Raises
        ------
        pymongo.errors.PyMongoError
            When MongoDB stays unreachable after ``max_attempts``.
        """
        frames = self._collection.database[FRAMES_COLLECTION]
        return self._retrying(lambda: frames.count_documents({"source_uri": source_uri}))

    def claim(self, arrival: Arrival) -> ClaimResult:
        """Claims ``arrival`` for this run unless it is done or this run already has it.

        Raises
        ------
        pymongo.errors.PyMongoError
            When MongoDB stays unreachable after ``max_attempts``.
        """
        from pymongo import errors
        document = arrivals_schema.claim_document(arrival, self._input, self._run_id)
        key = document.pop("_id")
        query = {"_id": key, "status": {"$ne": arrivals_schema.DONE}, "run_id": {"$ne": self._run_id}}

        def attempt():
            try:
                before = self._collection.find_one_and_update(query, {"$set": document}, upsert=True)
            except errors.DuplicateKeyError:  # done, or claimed by this run already
                found = self._collection.find_one({"_id": key}, {"status": 1, "run_id": 1}) or {}
                return ClaimResult(Claim.DUPLICATE, found.get("run_id"), found.get("status"))
            if before is None:
                return ClaimResult(Claim.NEW)
            return ClaimResult(Claim.TAKEN_OVER, before.get("run_id"), before.get("status"))
        return self._retrying(attempt)

    def done(self, key: str, frames: int, event_times: Sequence[float], dead_letters: Sequence[tuple]):
        """Marks ``key`` done by this run with its frame count, its frames' event times and its
        ``(DeadLetter, event_time)`` pairs (see :func:`schemas.arrivals.done_fields`)."""
        fields = arrivals_schema.done_fields(frames, event_times, dead_letters)
        fields["run_id"] = self._run_id
        self._retrying(lambda: self._collection.update_one({"_id": key}, {"$set": fields}))

    def recent(self, since_s: float) -> Iterator[dict]:
        """Done entries of this input whose latest event time is at or after ``since_s``."""
        return iter(self._retrying(lambda: list(self._collection.find(
            {"input": self._input, "status": arrivals_schema.DONE, "event_time_max": {"$gte": since_s}}))))

    def run_counts(self, run_id: Optional[str] = None) -> dict:
        """What a run (default: this one) holds in the ledger: ``files_done``, ``files_claimed``
        (claimed, not done: in flight, or lost to a crash), ``files_without_frames`` (done,
        nothing decoded), ``frames_written`` (frames of its done files) and
        ``notifications_malformed`` (recorded as dead letters)."""
        pipeline = [
            {"$match": {"run_id": run_id or self._run_id, "input": self._input}},
            {"$group": {"_id": {"status": "$status",
                                "message": {"$eq": [{"$substrCP": ["$_id", 0, 8]}, "message:"]},
                                "empty": {"$eq": [{"$ifNull": ["$frames", 0]}, 0]}},
                        "n": {"$sum": 1}, "frames": {"$sum": {"$ifNull": ["$frames", 0]}}}}]
        counts = dict.fromkeys(("files_done", "files_claimed", "files_without_frames", "frames_written",
                                "notifications_malformed"), 0)
        for group in self._retrying(lambda: list(self._collection.aggregate(pipeline))):
            key = group["_id"]
            if key.get("message"):
                counts["notifications_malformed"] += group["n"]
            elif key.get("status") == arrivals_schema.DONE:
                counts["files_done"] += group["n"]
                counts["frames_written"] += group["frames"]
                counts["files_without_frames"] += group["n"] if key.get("empty") else 0
            else:
                counts["files_claimed"] += group["n"]
        return counts

    def statuses(self, keys: Sequence[str]) -> dict:
        """``{key: status}`` of the given keys that have an entry."""
        found = self._retrying(lambda: list(self._collection.find({"_id": {"$in": list(keys)}}, {"status": 1})))
        return {doc["_id"]: doc.get("status") for doc in found}


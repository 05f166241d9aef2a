"""MongoDB writer of the index: ``$set`` bulk upserts by deterministic ``_id`` that lose nothing.

:class:`WriteDocumentsToMongoDB` writes the documents of any table of :mod:`schemas.tables`
(frames, candidates, annotations, runs); :class:`WriteFramesToMongoDB` turns ``FrameRecord``\\ s
into frame documents first. The mechanics (validator, indexes, ``$set`` upserts, retries) are the
pure :class:`transforms.index.mongodb_client.MongoUpserter`, one per worker here, and also what
the driver uses (:func:`~transforms.index.mongodb_client.upsert_documents`)::

    written = records | WriteFramesToMongoDB("mongodb://127.0.0.1:27017", "activebeam")
    written.frame_ids     # PCollection[str]: frames acknowledged by MongoDB
    written.dead_letters  # PCollection[DeadLetter]: documents rejected or failing after retries
"""
import collections
import concurrent.futures
import time
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas import frames as frames_schema
from schemas import tables
from schemas.records import DEAD_LETTER_TAG as DEAD_LETTER
from transforms.index import METRICS_NAMESPACE
from transforms.index.mongodb_client import DEFAULT_SERVER_SELECTION_TIMEOUT_MS, MongoUpserter


class _MongoUpsertFn(beam.DoFn):
    """One :class:`~transforms.index.mongodb_client.MongoUpserter` per worker (``setup``); each
    batch is one :meth:`~transforms.index.mongodb_client.MongoUpserter.upsert`: acknowledged
    ``_id``\\ s out, failures to the dead-letter output, counts to Beam metrics.

    Writes are pipelined: a batch's bulk write runs on one writer thread while ``process``
    returns and the bundle goes on (decoding, inference) with the next; at most
    ``max_in_flight`` batches are written or waiting, and ``finish_bundle`` waits for every
    write of its bundle, so a bundle still commits only what MongoDB acknowledged. The waiting
    (a round trip plus the server's validation and index updates) used to stall the worker
    (measured with ``benchmarks.mine``: docs/timings.md). Each batch's outputs keep
    its own window, timestamp and pane."""

    def __init__(self, uri: str, database: str, table: tables.TableSpec, validate: bool = True,
                 max_attempts: int = 5, base_delay_s: float = 0.5,
                 server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS,
                 max_in_flight: int = 2):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        # Built (and its arguments validated) now; its client is opened on the worker.
        self._upserter = MongoUpserter(uri, database, table, validate=validate,
                                       max_attempts=max_attempts, base_delay_s=base_delay_s,
                                       server_selection_timeout_ms=server_selection_timeout_ms)
        self._max_in_flight = max_in_flight
        self._upserted = Metrics.counter(METRICS_NAMESPACE, "mongodb_documents_written")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "mongodb_documents_failed")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "mongodb_retries")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "mongodb_bulk_write_ms")

    def setup(self):
        self._upserter.open()
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mongodb-upsert")

    def start_bundle(self):
        self._pending = collections.deque()  # (a failed bundle's writes are not its outputs)

    def _upsert(self, batch):
        start = time.monotonic()
        result = self._upserter.upsert(batch)
        return result, int((time.monotonic() - start) * 1000)

    def process(self, batch, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                pane_info=beam.DoFn.PaneInfoParam):
        self._pending.append((self._writer.submit(self._upsert, batch), timestamp, window, pane_info))
        yield from self._completed(keep=self._max_in_flight)

    def finish_bundle(self):
        yield from self._completed(keep=0)

    def _completed(self, keep: int):
        """Outputs of the finished writes, oldest first; waits until at most ``keep`` are pending.
        A write's exception is raised here, failing the bundle as a synchronous write would."""
        while self._pending and (len(self._pending) > keep or self._pending[0][0].done()):
            future, timestamp, window, pane_info = self._pending.popleft()
            result, milliseconds = future.result()
            self._latency.update(milliseconds)
            self._retries.inc(result.retries)
            self._failed.inc(len(result.failures))
            self._upserted.inc(len(result.written_ids))
            for frame_id in result.written_ids:
                yield WindowedValue(frame_id, timestamp, (window,), pane_info)
            for failure in result.failures:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(
                    self._upserter.dead_letter(failure), timestamp, (window,), pane_info))

    def teardown(self):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.shutdown(wait=True)
        self._upserter.close()


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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._batch_size = batch_size
        # The DoFn's MongoUpserter checks uri, max_attempts and base_delay_s.
        self._upsert = _MongoUpsertFn(uri, database, table, validate=validate,
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

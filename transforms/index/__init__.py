"""Stage **Index**: one MongoDB document (and BigQuery row) per frame and per candidate.

Public transforms (Beam): :class:`WriteDocumentsToMongoDB` and :class:`WriteFramesToMongoDB`
(:mod:`.mongodb`: ``$set`` bulk upserts by deterministic ``_id``, validators and indexes ensured,
transient errors retried, the rest to dead letters); :class:`WriteRowsToBigQuery` and
:class:`WriteFramesToBigQuery` (:mod:`.bigquery`: pre-created partitioned and clustered table,
rows checked before sending, deterministic insert ids, rerun-safe); the candidate writers of
:mod:`.candidates`. Pure modules (no Beam; enforced by ``//transforms/index:pure_test``):
:mod:`.mongodb_client` (``MongoUpserter``, which the DoFn and the driver both use) and :mod:`.bigquery_client`
(tables, insert ids, appends on the official client).

::

    written = records | WriteFramesToMongoDB("mongodb://127.0.0.1:27017", "activebeam")
    written.frame_ids     # PCollection[str]: frames acknowledged by MongoDB
    written.dead_letters  # PCollection[DeadLetter]: documents that failed after retries
    bq_dead_letters = records | WriteFramesToBigQuery("project:activebeam.frames")
"""
from transforms._exports import lazy_exports

#: Namespace of the writers' Beam metrics (``mongodb_documents_written``, ...).
METRICS_NAMESPACE = "activebeam.store"

__getattr__, __dir__ = lazy_exports(__name__, {
    "mongodb": ("WriteDocumentsToMongoDB", "WriteFramesToMongoDB", "WrittenDocuments",
                "WrittenFrames"),
    "mongodb_client": ("MongoUpserter", "UpsertResult", "UpsertFailure", "TRANSIENT_ERROR_CODES",
                       "upsert_documents"),
    "bigquery": ("WriteRowsToBigQuery", "WriteFramesToBigQuery", "BIGQUERY_METHODS"),
    "bigquery_client": ("TableRef", "parse_table_id", "frame_insert_id", "row_insert_id"),
    "candidates": ("WriteCandidatesToMongoDB", "WriteCandidatesToBigQuery"),
})

"""Writers of the index, MongoDB and BigQuery (the public entry point of both).

* :mod:`transforms.mongo_store`: :class:`WriteDocumentsToMongoDB` (any table of
  :mod:`schemas.tables`), :class:`WriteFramesToMongoDB`, :func:`upsert_documents`: ``$set``
  bulk upserts by deterministic ``_id``, validators and indexes ensured, transient errors retried,
  the rest to dead letters.
* :mod:`transforms.bigquery_store`: :class:`WriteFramesToBigQuery` on Beam's ``WriteToBigQuery``:
  pre-created partitioned and clustered table, rows checked before sending, deterministic
  ``insertId``\\ s, rerun-safe for bounded input.
* :mod:`transforms.store_common`: the dead-letter tag and credential redaction.

::

    written = records | WriteFramesToMongoDB("mongodb://127.0.0.1:27017", "activebeam")
    written.frame_ids     # PCollection[str]: frames acknowledged by MongoDB
    written.dead_letters  # PCollection[DeadLetter]: documents that failed after retries
    bq_dead_letters = records | WriteFramesToBigQuery("project:activebeam.frames")
"""
from transforms.bigquery_store import (BIGQUERY_METHODS, WriteFramesToBigQuery,  # noqa: F401
                                       frame_insert_id)
from transforms.mongo_store import (TRANSIENT_ERROR_CODES, WriteDocumentsToMongoDB,  # noqa: F401
                                    WriteFramesToMongoDB, WrittenDocuments, WrittenFrames,
                                    upsert_documents)
from transforms.store_common import DEAD_LETTER, redact_text, redact_uri  # noqa: F401

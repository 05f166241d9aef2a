"""Writers of the candidates index: MongoDB ``candidates`` collection and a BigQuery table.

Both are idempotent: a candidate is identified by ``(selection_id, frame_id)`` (see
:mod:`schemas.candidates`), so a rerun of the same selection rewrites the same entries::

    written = candidates | WriteCandidatesToMongoDB("mongodb://127.0.0.1:27017")
    written.frame_ids, written.dead_letters      # acknowledged ids / DeadLetter(stage="candidates")
    dead = candidates | WriteCandidatesToBigQuery("proj:activebeam.candidates")

Each entry holds the selection id, the strategy and its parameters, the model version and the
score components that explain the rank.
"""
from typing import Optional

import apache_beam as beam

from schemas import candidates as candidates_schema
from schemas import tables
from schemas.frames import DEFAULT_DATABASE
from schemas import records
from schemas.records import DeadLetter
from transforms.index.bigquery import WriteRowsToBigQuery
from transforms.index.mongodb import WriteDocumentsToMongoDB, WrittenFrames

STAGE_CANDIDATES = records.STAGE_CANDIDATES


def _as_candidate_dead_letter(dead: DeadLetter) -> DeadLetter:
    return dead._replace(stage=STAGE_CANDIDATES)


class WriteCandidatesToMongoDB(beam.PTransform):
    """Upserts ``Candidate``\\ s into ``<database>.candidates`` (``_id`` = selection:frame).

    The store's generic writer (:class:`transforms.index.mongodb.WriteDocumentsToMongoDB`): bulk
    ``$set`` upserts with retries; indexes of :func:`schemas.tables.candidates_table` (unique
    ``(selection_id, frame_id)``, ``(selection_id, rank)``) plus ``frame_id``. Documents keep the
    nested layout of ``candidates.jsonl`` (``scores``, ``components``, ``parameters`` and ``model``
    as sub-documents), so the flat BigQuery-row validator is not applied. Returns
    ``WrittenFrames(frame_ids, dead_letters)``; failures become dead letters with stage
    ``candidates``.
    """

    def __init__(self, uri: str, database: str = DEFAULT_DATABASE,
                 collection: str = candidates_schema.CANDIDATES_COLLECTION, batch_size: int = 500):
        super().__init__()
        spec = tables.candidates_table()
        spec = spec._replace(name=collection, mongo_indexes=tuple(spec.mongo_indexes) + tuple(
            index for index in candidates_schema.MONGO_INDEXES
            if index.keys not in {i.keys for i in spec.mongo_indexes}))
        self._write = WriteDocumentsToMongoDB(uri, database, spec, batch_size=batch_size,
                                              validate=False)

    def expand(self, candidates):
        written = (candidates
                   | "ToDocuments" >> beam.Map(candidates_schema.to_mongo_document)
                   | "Upsert" >> self._write)
        return WrittenFrames(written.ids,
                             written.dead_letters | "Stage" >> beam.Map(_as_candidate_dead_letter))


class WriteCandidatesToBigQuery(beam.PTransform):
    """Appends one row per ``Candidate`` to a BigQuery table (schema: :func:`schemas.tables.candidates_table`).

    The store's :class:`transforms.index.bigquery.WriteRowsToBigQuery`: the table is created
    beforehand, partitioned by ``indexed_at`` and clustered on ``(selection_id, source_uri,
    model_version)``; rows are checked against the schema; a rerun of the same selections
    appends nothing (one query finds the ``(selection_id, frame_id)`` pairs present) and
    streaming ``insertId``\\ s are ``selection_id:frame_id``. Returns the
    ``PCollection[DeadLetter]`` of rows that did not fit or that BigQuery rejected (stage
    ``candidates``).

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE``, ``PROJECT.DATASET.TABLE`` or ``DATASET.TABLE``.
    method : str, optional
        ``STREAMING_INSERTS`` (default), ``FILE_LOADS`` (needs a ``gs://`` temp location) or
        None (by boundedness).
    project : str, optional
        The job's ``--project``: for a ``table`` without one, and for the clients.
    """

    def __init__(self, table: str, method: Optional[str] = "STREAMING_INSERTS",
                 project: Optional[str] = None):
        super().__init__()
        self._write = WriteRowsToBigQuery(
            table, tables.candidates_table(), candidates_schema.to_bigquery_row,
            ("selection_id", "frame_id"), "selection_id", STAGE_CANDIDATES, method, project=project)

    def expand(self, candidates):
        return candidates | self._write

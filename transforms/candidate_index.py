"""Writers of the candidates index: MongoDB ``candidates`` collection and a BigQuery table.

Both are idempotent: a candidate is identified by ``(selection_id, frame_id)`` (see
:mod:`schemas.candidates`), so a rerun of the same selection rewrites the same entries::

    written = candidates | WriteCandidatesToMongoDB("mongodb://127.0.0.1:27017")
    written.frame_ids, written.dead_letters      # acknowledged ids / DeadLetter(stage="candidates")
    dead = candidates | WriteCandidatesToBigQuery("proj:activebeam.candidates")

Each entry holds the selection id, the strategy and its parameters, the model version and the
score components that explain the rank.
"""
import re

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import candidates as candidates_schema
from schemas.frames import DEFAULT_DATABASE
from schemas import tables
from schemas.records import DeadLetter
from transforms.bigquery_store import _parse_table
from transforms.mongo_store import WriteDocumentsToMongoDB, WrittenFrames

STAGE_CANDIDATES = "candidates"
_NAMESPACE = "activebeam.sample"


def _as_candidate_dead_letter(dead: DeadLetter) -> DeadLetter:
    return dead._replace(stage=STAGE_CANDIDATES)


class WriteCandidatesToMongoDB(beam.PTransform):
    """Upserts ``Candidate``\\ s into ``<database>.candidates`` (``_id`` = selection:frame).

    The store's generic writer (:class:`transforms.mongo_store.WriteDocumentsToMongoDB`): bulk
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


class _PresentSelectionsFn(beam.DoFn):
    """Yields ``(selection_id, frame_id)`` keys the table already holds for some selections."""

    def __init__(self, table):
        self._table = table
        self._present = Metrics.counter(_NAMESPACE, "bigquery_candidates_already_present")

    def process(self, selection_ids):
        from google.api_core import exceptions
        from google.cloud import bigquery
        project, dataset, name = _parse_table(self._table)
        client = bigquery.Client(project=project)
        table = f"{client.project}.{dataset}.{name}"
        try:
            client.get_table(table)
        except exceptions.NotFound:
            return
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ArrayQueryParameter("ids", "STRING", sorted(selection_ids))])
        query = f"SELECT selection_id, frame_id FROM `{table}` WHERE selection_id IN UNNEST(@ids)"
        for row in client.query(query, job_config=config).result():
            self._present.inc()
            yield (row["selection_id"], row["frame_id"]), True


def _bigquery_dead_letter(failed) -> DeadLetter:
    row, errors = failed[1], failed[2] if len(failed) > 2 else "rejected by BigQuery"
    return DeadLetter(row.get("source_uri", ""), STAGE_CANDIDATES,
                      f"BigQuery rejected the candidate row: {errors}"[:500],
                      row.get("frame_index"), row.get("frame_id"))


class WriteCandidatesToBigQuery(beam.PTransform):
    """Appends one row per ``Candidate`` to a BigQuery table (schema: :mod:`schemas.candidates`).

    Rerun-safe like the frames writer: one query finds the ``(selection_id, frame_id)`` pairs
    of these selections already present, and only the others are appended (batch pipelines).
    Returns the ``PCollection[DeadLetter]`` of rejected rows (``STREAMING_INSERTS``).

    Parameters
    ----------
    table : str
        ``PROJECT:DATASET.TABLE`` or ``DATASET.TABLE``; created if needed.
    """

    def __init__(self, table: str, method: str = "STREAMING_INSERTS"):
        super().__init__()
        if not re.fullmatch(r"([\w.-]+[:.])?\w+\.[\w$-]+", table or ""):
            raise ValueError(f"bigquery table must be PROJECT:DATASET.TABLE, got {table!r}")
        self._table, self._method = table, method

    def expand(self, candidates):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
        from apache_beam.io.gcp.bigquery_tools import RetryStrategy
        rows = candidates | "ToRows" >> beam.Map(candidates_schema.to_bigquery_row)
        present = (rows
                   | "SelectionIds" >> beam.Map(lambda row: row["selection_id"])
                   | "DistinctSelections" >> beam.Distinct()
                   | "AllSelections" >> beam.combiners.ToList()
                   | "QueryPresent" >> beam.ParDo(_PresentSelectionsFn(self._table)))
        new_rows = rows | "SkipPresent" >> beam.Filter(
            lambda row, p: (row["selection_id"], row["frame_id"]) not in p, beam.pvalue.AsDict(present))
        result = new_rows | "WriteToBigQuery" >> WriteToBigQuery(
            self._table, schema=candidates_schema.bigquery_schema(),
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_APPEND, method=self._method,
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR)
        if self._method == "STREAMING_INSERTS":
            return result.failed_rows_with_errors | "DeadLetters" >> beam.Map(_bigquery_dead_letter)
        return candidates.pipeline | "NoDeadLetters" >> beam.Create([])

"""The candidate indexes a streaming job writes as it goes: MongoDB ``candidates`` (upserted by
``selection_id:frame_id``) and the BigQuery candidates table (appended, with insert ids).

:class:`CandidateStores` is what the window writer (:mod:`transforms.index.window_outputs`) and the
per-frame pick writer (:mod:`transforms.index.pick_outputs`) share: one upserter per worker,
opened in ``DoFn.setup``, and one call that indexes a few candidates and counts what failed
(logged, never raised: the candidate files are the record of what was selected).
"""
import logging
from typing import Optional, Sequence

from schemas import candidates as candidates_schema
from schemas import tables
from schemas.records import Candidate
from transforms.common.redact import redact_text
from transforms.index.bigquery_client import append_rows
from transforms.index.mongodb_client import MongoUpserter

_LOG = logging.getLogger(__name__)


class CandidateStores:
    """MongoDB ``candidates`` (when ``mongo_uri``) and a BigQuery candidates table (when
    ``bigquery_table``; ``project``: the job's ``--project``)."""

    def __init__(self, mongo_uri: Optional[str], database: str, bigquery_table: Optional[str] = None,
                 project: Optional[str] = None):
        self._mongo_uri, self._database = mongo_uri, database
        self._bigquery_table, self._project = bigquery_table, project
        self.upserter: Optional[MongoUpserter] = None

    def open(self) -> "CandidateStores":
        if self._mongo_uri and self.upserter is None:
            spec = tables.candidates_table()
            spec = spec._replace(mongo_indexes=tuple(spec.mongo_indexes) + tuple(
                i for i in candidates_schema.MONGO_INDEXES if i.keys not in {j.keys for j in spec.mongo_indexes}))
            self.upserter = MongoUpserter(self._mongo_uri, self._database, spec, validate=False).open()
        return self

    def close(self):
        if self.upserter is not None:
            self.upserter.close()
            self.upserter = None

    def write(self, candidates: Sequence[Candidate], insert_ids: Sequence[str], what: str) -> int:
        """Upserts ``candidates`` into MongoDB and appends them to BigQuery (``insert_ids``: its
        de-duplication keys); returns how many writes failed. ``what`` names them in the log."""
        failed = 0
        if self.upserter is not None and candidates:
            result = self.upserter.upsert([candidates_schema.to_mongo_document(c) for c in candidates])
            failed += len(result.failures)
            for failure in result.failures[:3]:
                _LOG.error("candidate of %s not indexed in MongoDB: %s", what, redact_text(failure.reason)[:300])
        if self._bigquery_table and candidates:
            rows = [candidates_schema.to_bigquery_row(c) for c in candidates]
            try:
                problems = append_rows(self._bigquery_table, tables.candidates_table(), rows, list(insert_ids),
                                       project=self._project)
            except Exception as e:  # pylint: disable=broad-except  # the files are written: logged
                problems = [f"{type(e).__name__}: {e}"]
            if problems:
                failed += len(rows)
                _LOG.error("candidates of %s not appended to %s: %s", what, self._bigquery_table,
                           redact_text(str(problems[0]))[:300])
        return failed

"""Output of per-frame selection (:class:`transforms.select.per_frame.SelectPerFrame`): each pick is
written as soon as it is made.

``WritePicks`` takes :class:`~transforms.select.per_frame.Pick`\\ s and, for each:

1. writes ``candidates/picks/<event time>_<frame>.jsonl`` (one line, the candidate; atomically:
   see :func:`transforms.index.window_outputs.write_atomically`), the event time in UTC ISO 8601
   basic format and ``<frame>`` the first 16 hex digits of the sha256 of the frame id;
2. upserts it into MongoDB ``candidates`` (``_id`` ``selection_id:frame_id``) and appends it to
   the BigQuery candidates table (insert id ``selection_id:frame_id``).

A pick written twice (a bundle retried) rewrites the same file and the same document.

Metrics (namespace ``activebeam.outputs``): ``picks_written``, ``candidates_not_indexed``.
"""
import hashlib
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import candidates as candidates_schema
from transforms.common.outputs import METRICS_NAMESPACE
from transforms.index.candidate_stores import CandidateStores
from transforms.index.window_outputs import CANDIDATES_DIR, basic_iso, write_atomically

PICKS_DIR = "picks"


def pick_file_name(event_time, frame_id: str) -> str:
    """``<event time>_<sha256(frame_id)[:16]>.jsonl`` (``unknown`` without an event time)."""
    when = basic_iso(event_time) if event_time is not None else "unknown"
    return f"{when}_{hashlib.sha256(frame_id.encode('utf-8')).hexdigest()[:16]}.jsonl"


class _WritePickFn(beam.DoFn):
    def __init__(self, output_dir: str, stores: CandidateStores):
        self._output_dir, self._stores = output_dir, stores
        self._written = Metrics.counter(METRICS_NAMESPACE, "picks_written")
        self._not_indexed = Metrics.counter(METRICS_NAMESPACE, "candidates_not_indexed")

    def setup(self):
        self._stores.open()

    def teardown(self):
        self._stores.close()

    def process(self, pick):
        candidate = pick.candidate
        name = pick_file_name(pick.event_time, candidate.frame_id)
        write_atomically(FileSystems.join(self._output_dir, CANDIDATES_DIR, PICKS_DIR, name),
                         json.dumps(candidate.to_json_dict(), ensure_ascii=False, allow_nan=False) + "\n")
        self._not_indexed.inc(self._stores.write([candidate], [candidates_schema.candidate_key(candidate)],
                                                 f"pick {name}"))
        self._written.inc()
        yield candidate


class WritePicks(beam.PTransform):
    """Writes each pick (see the module docstring); returns the ``PCollection[Candidate]`` written.
    Parameters as :class:`~transforms.index.window_outputs.WriteWindowPanes`'s (``output_dir``,
    ``mongo_uri``/``database`` of the ``candidates`` collection, the BigQuery candidates table
    and the job's ``project``), without ``run_id``."""

    def __init__(self, output_dir: str, *, mongo_uri=None, database: str = "activebeam", bigquery_table=None,
                 project=None):
        super().__init__()
        self._fn = _WritePickFn(output_dir, CandidateStores(mongo_uri, database, bigquery_table, project))

    def expand(self, picks):
        return picks | "Write" >> beam.ParDo(self._fn)

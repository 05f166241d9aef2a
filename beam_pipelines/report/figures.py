"""A run's selection measured against its pool: the redundancy figures of
:func:`transforms.select.redundancy.redundancy_figures`, the detector's boxes on the selected
frames (``predicted_boxes``: what an annotator will draw) and the labelling time the run's cost
model estimates for them (``estimated_label_seconds``, :mod:`transforms.select.cost`), added to
``summary.json`` (key ``selection_figures``) before the report is written, which shows them.

The pool is the run's frames in MongoDB (the model version and inputs of ``summary.json``, as the
report reads them). Above :data:`MAX_POOL_FRAMES` frames a deterministic sample of that many
(by frame id) stands for the pool, with every candidate, and ``pool_frames_measured`` says so:
the driver never holds more than that many embeddings.
"""
import json
import logging
from typing import Optional

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.report.html import pool_frames
from schemas import scores as score_registry
from transforms.common.outputs import CANDIDATES_FILE, SUMMARY_FILE
from transforms.index.mongodb_client import mongo_client
from transforms.index.window_outputs import write_atomically
from transforms.select.base import Pool
from transforms.select.cost import CostModel, selection_cost
from transforms.select.redundancy import redundancy_figures

_LOG = logging.getLogger(__name__)
MAX_POOL_FRAMES = 50_000
SUMMARY_KEY = "selection_figures"
#: The figures of what a selection costs to label (also in the run's ``runs`` entry's counts).
COST_KEYS = ("predicted_boxes", "estimated_label_seconds")


def _read_json_lines(path: str):
    with FileSystems.open(path) as f:
        return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]


def pool_from_documents(docs) -> Pool:
    """The selection :class:`~transforms.select.base.Pool` of frame documents (MongoDB ``frames``,
    with ``embedding``): ids, embeddings, stored scores (NaN where a frame lacks one) and the
    ``source`` and ``timestamp`` metadata, in the order of ``docs``."""
    names = sorted({k for d in docs for k in (d.get("scores") or {})})
    return Pool(ids=np.array([d["_id"] for d in docs], dtype=object),
                embeddings=np.array([d["embedding"] for d in docs], dtype=np.float32),
                scores={k: np.array([(d.get("scores") or {}).get(k, np.nan) for d in docs]) for k in names},
                metadata={"source": np.array([d.get("source_uri") for d in docs], dtype=object),
                          "timestamp": np.array([np.nan if d.get("timestamp_s") is None else d["timestamp_s"]
                                                 for d in docs], dtype=np.float64)})


def selection_figures(summary: dict, candidates, db) -> Optional[dict]:
    """The figures of ``candidates`` (dicts of ``candidates.jsonl``) against the run's pool in
    ``db`` (a pymongo database); ``None`` without candidates or embeddings."""
    version = (summary.get("model") or {}).get("version")
    if not candidates or not version:
        return None
    wanted = {c["frame_id"] for c in candidates}
    total = db["frames"].count_documents({"model.version": version})
    keep = min(1.0, MAX_POOL_FRAMES / total) if total else 1.0
    docs = [d for d in pool_frames(db, version, summary.get("inputs") or ())
            if d["_id"] in wanted or int(d["_id"][:8], 16) < keep * 2 ** 32]
    docs = [d for d in docs if d.get("embedding")]
    if not docs:
        return None
    position = {d["_id"]: i for i, d in enumerate(docs)}
    pool = pool_from_documents(docs)
    names = set(pool.scores)
    picks = np.array([position[c["frame_id"]] for c in candidates if c["frame_id"] in position], dtype=np.int64)
    strategy, params = summary.get("strategy"), summary.get("strategy_params") or {}
    score = params.get("score") or (strategy if strategy in score_registry.names() else None)
    if score is not None and score not in names and score not in score_registry.names():
        score = None
    try:
        figures = redundancy_figures(pool, picks, score=score)
    except ValueError as e:  # a score the stored frames cannot give
        _LOG.warning("selection figures without the score: %s", e)
        figures = redundancy_figures(pool, picks)
    figures["pool_frames_measured"] = len(docs)
    # What the annotator will draw: the detector's boxes on the selected frames (None without one).
    boxes = [docs[i].get("detections") for i in picks]
    figures["predicted_boxes"] = (sum(len(b) for b in boxes if b) if any(b is not None for b in boxes)
                                  else None)
    if summary.get("cost_model"):
        cost = selection_cost([len(b or ()) for b in boxes], CostModel(**summary["cost_model"]))
        figures["estimated_label_seconds"] = cost["estimated_label_seconds"]
    return figures


def add_to_summary(output_dir: str, mongo_uri: Optional[str], database: str) -> Optional[dict]:
    """Computes the run's :func:`selection_figures` and writes them into its ``summary.json``;
    returns them (``None`` when there is nothing to measure). A failure is logged, never raised:
    the run's outputs stand."""
    try:
        summary_path = FileSystems.join(output_dir, SUMMARY_FILE)
        with FileSystems.open(summary_path) as f:
            summary = json.loads(f.read().decode("utf-8"))
        candidates = _read_json_lines(FileSystems.join(output_dir, CANDIDATES_FILE))
        with mongo_client(mongo_uri, appname="activebeam-report", server_selection_timeout_ms=10_000) as client:
            figures = selection_figures(summary, candidates, client[database])
        if figures is not None:
            summary[SUMMARY_KEY] = figures
            write_atomically(summary_path, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        return figures
    except Exception as e:  # noqa: BLE001 - figures are a report's part; the run stands
        _LOG.warning("could not measure the selection against its pool: %s", e)
        return None

"""The ``candidates`` index: one entry per frame a selection proposes for annotation.

``CANDIDATE_FIELDS`` is the single description of a candidate entry (``candidates.jsonl``, the
MongoDB ``candidates`` collection and the BigQuery ``candidates`` table). A candidate is
identified by ``(selection_id, frame_id)``: rerunning a selection with the same inputs and
parameters rewrites the same entries. :func:`to_mongo_document` and :func:`to_bigquery_row` are
the only places that turn a :class:`~schemas.records.Candidate` into stored form.
"""
import json
from typing import List

from schemas.frames import PREDICTED_LABEL, Field, IndexSpec
from schemas.records import Candidate

CANDIDATES_COLLECTION = "candidates"
CANDIDATES_TABLE = "candidates"

CANDIDATE_FIELDS = (
    Field("selection_id", "STRING", "REQUIRED", "Deterministic id of the selection: hash of strategy, parameters, model version and inputs."),
    Field("rank", "INT64", "REQUIRED", "1 is the most wanted frame of the selection."),
    Field("frame_id", "STRING", "REQUIRED", "The frame's id in the frames index."),
    Field("source_uri", "STRING", "REQUIRED", "URI of the image or video file the frame comes from."),
    Field("frame_index", "INT64", "REQUIRED", "0 for a still image; 0-based index in the decoded video stream."),
    Field("timestamp_s", "FLOAT64", "NULLABLE", "Presentation time in seconds; null for still images."),
    Field("score", "FLOAT64", "REQUIRED", "The value the strategy ranked by (higher is more wanted)."),
    Field("strategy", "STRING", "REQUIRED", "Name of the selection strategy."),
    Field("predicted_class", "INT64", "NULLABLE", "The model's predicted class for the frame."),
    Field("duplicates", "INT64", "REQUIRED", "Frames with identical pixels this candidate stands for, itself included."),
    Field("model_name", "STRING", "REQUIRED", "Name of the model that scored the frame."),
    Field("model_version", "STRING", "REQUIRED", "Model version, 16 hex digits: the conversion recipe's for the default pretrained "
          "models (the same on every machine), else the first 16 of the sha256 of the model file."),
    Field("parameters", "STRING", "REQUIRED", "JSON object: the strategy's name and parameters (composed strategies nest their inner one)."),
    Field("components", "STRING", "REQUIRED", "JSON object: the per-frame values that explain the rank (e.g. margin, cluster_size, kcenter_distance)."),
    Field("scores", "STRING", "REQUIRED", "JSON object: the frame's uncertainty scores (entropy, margin, least_confidence)."),
    Field("window_start", "FLOAT64", "NULLABLE", "Streaming: start of the event-time window, seconds since the epoch; null in batch."),
    Field("window_end", "FLOAT64", "NULLABLE", "Streaming: end of the event-time window (exclusive); null in batch."),
    PREDICTED_LABEL,
)

MONGO_INDEXES = (
    IndexSpec((("selection_id", 1), ("rank", 1)), "selection_id_rank"),
    IndexSpec((("frame_id", 1),), "frame_id"),
)


def candidate_document_id(selection_id: str, frame_id: str) -> str:
    """MongoDB ``_id`` of a candidate: ``selection_id:frame_id`` (rerunning a selection rewrites it)."""
    return f"{selection_id}:{frame_id}"


def candidate_key(candidate: Candidate) -> str:
    """The MongoDB ``_id`` of a ``Candidate`` record (:func:`candidate_document_id`)."""
    return candidate_document_id(candidate.selection_id, candidate.frame_id)


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=False)


def to_bigquery_row(candidate: Candidate) -> dict:
    """The BigQuery row of a candidate, with exactly the columns of :data:`CANDIDATE_FIELDS`."""
    row = {f.name: getattr(candidate, f.name) for f in CANDIDATE_FIELDS if hasattr(candidate, f.name)}
    row["model_name"] = candidate.model.name
    row["model_version"] = candidate.model.version
    row["parameters"] = _json(json.loads(candidate.parameters))
    row["components"] = _json(dict(candidate.components))
    row["scores"] = _json(dict(candidate.scores))
    return row


def to_mongo_document(candidate: Candidate) -> dict:
    """The MongoDB document of a candidate: ``_id`` from :func:`candidate_key`, JSON columns as
    sub-documents, and ``model`` as in the frames collection."""
    doc = candidate.to_json_dict()
    doc["_id"] = candidate_key(candidate)
    return doc


def field_names() -> List[str]:
    return [f.name for f in CANDIDATE_FIELDS]

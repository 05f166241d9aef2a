"""The ``candidates`` index: one entry per frame a selection proposes for annotation.

``CANDIDATE_FIELDS`` is the single description of a candidate entry (``candidates.jsonl``, the
MongoDB ``candidates`` collection and the BigQuery ``candidates`` table). A candidate is
identified by ``(selection_id, frame_id)``: rerunning a selection with the same inputs and
parameters rewrites the same entries.
"""
from schemas.frames import Field

CANDIDATES_COLLECTION = "candidates"

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
    Field("model_version", "STRING", "REQUIRED", "Digest of the model's weights."),
)

"""The ``frames`` index: one entry per decoded frame, in MongoDB and BigQuery.

``FRAME_FIELDS`` is the single description of a frame entry; the BigQuery table schema and the
MongoDB indexes are derived from it, and :func:`to_mongo_document` / :func:`to_bigquery_row` are
the only places that turn a :class:`~schemas.records.FrameRecord` into stored form.
"""
from typing import List, NamedTuple, Tuple

import numpy as np

from schemas.records import BOX_CORNERS, Detection, FrameMetadata, FrameRecord, ModelVersion, box_corners
from schemas import scores as score_registry

DEFAULT_DATABASE = "activebeam"
FRAMES_COLLECTION = "frames"
#: Required score columns, then optional scores (FrameRecord.extra_scores): name -> description,
#: nullable columns in BigQuery and ``scores.<name>`` in MongoDB when present. Both from the one
#: score registry, :mod:`schemas.scores`.
SCORE_NAMES = score_registry.names(column=True)
EXTRA_SCORES = tuple((s.name, s.description) for s in score_registry.SCORES if not s.column)
EXTRA_SCORE_NAMES = tuple(name for name, _ in EXTRA_SCORES)


class Field(NamedTuple):
    """One column: BigQuery standard SQL type (``STRING``, ``INT64``, ``FLOAT64``, ``BOOL``,
    ``TIMESTAMP`` or ``RECORD``), mode (``REQUIRED``, ``NULLABLE`` or ``REPEATED``), description,
    and for a ``RECORD`` (``STRUCT``) its sub-fields."""
    name: str
    bigquery_type: str
    mode: str  # REQUIRED, NULLABLE or REPEATED
    description: str
    fields: Tuple["Field", ...] = ()


#: ``detections.box``: a box's corners in pixels of the decoded frame (x to the right, y down).
BOX_FIELDS = tuple(Field(name, "FLOAT64", "REQUIRED", f"{edge} edge of the box, pixels of the decoded frame.")
                   for name, edge in zip(BOX_CORNERS, ("Left", "Top", "Right", "Bottom")))
#: One element of ``detections`` (BigQuery ``ARRAY<STRUCT<label, class_id, score, box>>``).
DETECTION_FIELDS = (
    Field("label", "STRING", "REQUIRED", "Class name in the detector's class list (e.g. COCO's 'person')."),
    Field("class_id", "INT64", "REQUIRED", "0-based index of label in the detector's class list."),
    Field("score", "FLOAT64", "REQUIRED", "The detector's confidence in [0, 1]."),
    Field("box", "RECORD", "REQUIRED", "The box: x1, y1 (top left) and x2, y2 (bottom right) in pixels of the decoded frame.",
          BOX_FIELDS),
)


#: The name beside every class index (frames and candidates).
PREDICTED_LABEL = Field("predicted_label", "STRING", "NULLABLE", "Name of predicted_class in the model's class list "
                        "(its sidecar's class_names, the ImageNet names of the default backbone, the Fashion-MNIST names of the bundled model); null when the model declares none.")

FRAME_FIELDS = (
    Field("frame_id", "STRING", "REQUIRED", "Deterministic id: sha256(source_uri NUL frame_index)[:32]; MongoDB _id."),
    Field("source_uri", "STRING", "REQUIRED", "URI of the image or video file the frame comes from."),
    Field("frame_index", "INT64", "REQUIRED", "0 for a still image; 0-based index in the decoded video stream."),
    Field("timestamp_s", "FLOAT64", "NULLABLE", "Presentation time in seconds from the video start; null for still images."),
    Field("media_type", "STRING", "REQUIRED", "'image' or 'video'."),
    Field("width", "INT64", "REQUIRED", "Decoded width in pixels."),
    Field("height", "INT64", "REQUIRED", "Decoded height in pixels."),
    Field("pixel_hash", "STRING", "REQUIRED", "MurmurHash3 x64-128 (hex) of the decoded RGB pixels and shape; equal for identical frames."),
    Field("embedding", "FLOAT64", "REPEATED", "Output of the model's embedding layer."),
    Field("predicted_class", "INT64", "REQUIRED", "argmax of the class probabilities."),
) + tuple(Field(name, "FLOAT64", "REQUIRED", score_registry.get(name).description) for name in SCORE_NAMES) + (
    Field("model_name", "STRING", "REQUIRED", "Name of the model (file stem)."),
    Field("model_version", "STRING", "REQUIRED", "Model version, 16 hex digits: the conversion recipe's for the default pretrained "
          "models (the same on every machine), else the first 16 of the sha256 of the model file."),
    Field("channels", "INT64", "NULLABLE", "Channels stored in the file: 1 grey, 2 grey+alpha, 3 colour, 4 RGBA/CMYK."),
    Field("format", "STRING", "NULLABLE", "Image format (JPEG, PNG, ...) or video container/codec (AVI/msmpeg4)."),
    Field("file_size", "INT64", "NULLABLE", "Size of the source file in bytes."),
    Field("content_sha256", "STRING", "NULLABLE", "sha256 (hex) of the source file's bytes (images)."),
    Field("capture_time", "STRING", "NULLABLE", "EXIF capture time, ISO 8601 without time zone (images)."),
) + tuple(Field(name, "FLOAT64", "NULLABLE", description) for name, description in EXTRA_SCORES) + (
    # Streaming (appended last: BigQuery adds columns at the end of an existing table).
    Field("event_time", "FLOAT64", "NULLABLE", "Streaming: capture time the frame was windowed by, seconds since the epoch (UTC); null in batch."),
    Field("event_time_source", "STRING", "NULLABLE", "Streaming: where event_time came from: 'exif', 'container' (creation_time + presentation time), 'notification' (the object's timeCreated) or 'mtime'."),
    # Detector and near-duplicates (appended last, as above).
    Field("detections", "RECORD", "REPEATED", "The detector's boxes, best first: {label, class_id, score, box: {x1, y1, x2, y2}} (pixels of the decoded frame); empty when no detector ran or it found nothing.",
          DETECTION_FIELDS),
    Field("detector_name", "STRING", "NULLABLE", "Name of the detector model (file name); null when none ran."),
    Field("detector_version", "STRING", "NULLABLE", "sha256 of the detector model file, first 16 hex digits."),
    Field("duplicate_group", "STRING", "NULLABLE", "frame_id of the representative of the frame's near-duplicate group (embedding cosine similarity >= the run's near_duplicate_similarity; the representative, the group's smallest frame_id, stays eligible for candidates, the others are excluded); null if the frame has no near-duplicate."),
    PREDICTED_LABEL,
)


class IndexSpec(NamedTuple):
    keys: tuple  # ((field, direction), ...) as pymongo's create_index takes them
    name: str
    unique: bool = False


MONGO_INDEXES = (
    IndexSpec((("source_uri", 1), ("frame_index", 1)), "source_uri_frame_index", unique=True),
    IndexSpec((("pixel_hash", 1),), "pixel_hash"),
) + tuple(IndexSpec(((f"scores.{name}", -1),), f"scores_{name}") for name in SCORE_NAMES)


def _frame_columns(record: FrameRecord) -> dict:
    """What both stores hold of a frame: its metadata, embedding and predicted class."""
    columns = record.frame._asdict()
    columns["embedding"] = [float(x) for x in record.embedding]
    columns["predicted_class"] = record.predicted_class
    columns["predicted_label"] = getattr(record, "predicted_label", None)
    return columns


def _extra_scores(record: FrameRecord) -> dict:
    """The record's known extra scores as floats (unknown names are not stored)."""
    return {name: float(value) for name, value in getattr(record, "extra_scores", ())
            if name in EXTRA_SCORE_NAMES}


def to_mongo_document(record: FrameRecord) -> dict:
    """The MongoDB document of a frame; ``_id`` is the deterministic ``frame_id``."""
    doc = _frame_columns(record)
    doc["_id"] = doc.pop("frame_id")
    doc["probabilities"] = [float(x) for x in record.probabilities]
    doc["scores"] = {name: float(getattr(record, name)) for name in SCORE_NAMES}
    doc["scores"].update(_extra_scores(record))
    doc["model"] = record.model._asdict()
    _detector_columns(record, doc)
    if record.detector is not None:
        doc["model"].update(detector_name=doc.pop("detector_name"), detector_version=doc.pop("detector_version"))
        doc["detections"] = [d.to_json_dict() for d in record.detections]
    return doc


def detection_from_document(d: dict) -> Detection:
    """A stored detection (``{label, class_id, score, box}``; the box as ``{x1, y1, x2, y2}`` or,
    from versions before the nested schema, ``[x1, y1, x2, y2]``) as a :class:`Detection`."""
    return Detection(d["label"], int(d["class_id"]), float(d["score"]), box_corners(d["box"]))


def _detector_columns(record: FrameRecord, columns: dict) -> None:
    """Detector name and version (when one ran) and the near-duplicate group (always: a rerun
    that finds the frame no longer in a group clears it)."""
    columns["duplicate_group"] = record.duplicate_group
    if record.detector is not None:
        columns["detector_name"] = record.detector.name
        columns["detector_version"] = record.detector.version


def to_bigquery_row(record: FrameRecord) -> dict:
    """The BigQuery row of a frame: the columns of :data:`FRAME_FIELDS`; extra scores the record
    does not carry are left out (NULL in BigQuery, and never a ``$set`` to null in MongoDB that
    would erase a score an earlier run stored)."""
    row = _frame_columns(record)
    row["model_name"] = record.model.name
    row["model_version"] = record.model.version
    row.update({name: float(getattr(record, name)) for name in SCORE_NAMES})
    row.update(_extra_scores(record))
    _detector_columns(record, row)
    if record.detector is not None:
        row["detections"] = [d.to_json_dict() for d in record.detections]
    return row


def field_names() -> List[str]:
    return [f.name for f in FRAME_FIELDS]


def from_mongo_document(doc: dict) -> FrameRecord:
    """The :class:`~schemas.records.FrameRecord` of a frame document (the inverse of
    :func:`to_mongo_document`, up to float32 rounding of the stored embedding and probabilities):
    how a restarted streaming job puts indexed frames back into their windows."""
    metadata = {name: doc.get(name) for name in FrameMetadata._fields if name != "frame_id"}
    scores = dict(doc.get("scores") or {})
    extra = tuple(sorted((name, float(value)) for name, value in scores.items()
                         if name in EXTRA_SCORE_NAMES and value is not None))
    return FrameRecord(
        frame=FrameMetadata(frame_id=doc["_id"], **metadata),
        embedding=np.asarray(doc.get("embedding") or [], dtype=np.float32),
        probabilities=np.asarray(doc.get("probabilities") or [], dtype=np.float32),
        predicted_class=int(doc["predicted_class"]),
        entropy=float(scores["entropy"]), margin=float(scores["margin"]),
        least_confidence=float(scores["least_confidence"]),
        model=ModelVersion(**{k: (doc.get("model") or {}).get(k) for k in ModelVersion._fields}),
        extra_scores=extra,
        detections=tuple(detection_from_document(d) for d in doc.get("detections") or ()),
        detector=(ModelVersion(model["detector_name"], model.get("detector_version") or "", "")
                  if (model := doc.get("model") or {}).get("detector_name") else None),
        duplicate_group=doc.get("duplicate_group"), predicted_label=doc.get("predicted_label"))

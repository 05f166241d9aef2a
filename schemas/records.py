"""Typed records that flow between activebeam's pipeline stages.

Only :class:`Frame` carries pixels. It is produced by decoding and consumed by the model stage in
the same fused step, so pixels never cross a shuffle; every later stage sees
:class:`FrameRecord` (metadata, embedding, scores).
"""
import hashlib
import json
from typing import NamedTuple, Optional, Tuple

import numpy as np

# Stage names used in dead letters (``DeadLetter.stage``) and Beam metric names.
STAGE_MATCH = "match"
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_PREPROCESS = "preprocess"
STAGE_INFERENCE = "inference"
STAGE_MONGODB = "mongodb"
STAGE_BIGQUERY = "bigquery"
STAGE_CANDIDATES = "candidates"
STAGE_NOTIFICATION = "notification"  # streaming: a Pub/Sub message that is not a usable notification
STAGE_WINDOW = "window"  # streaming: a frame later than its window's allowed lateness
STAGE_LABEL_EXPORT = "label_export"  # annotate export: a frame whose picture or task could not be made
STAGE_LABEL_IMPORT = "label_import"  # annotate import: a malformed, orphaned or skipped annotation
STAGE_LABEL_ISSUES = "label_issues"  # annotate qc --label_issues: an annotation without usable predictions
#: Tag of the dead-letter output of every DoFn: ``beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(...))``.
DEAD_LETTER_TAG = "dead_letter"
#: Longest ``DeadLetter.error`` written by the stores (server messages can be long).
MAX_ERROR_CHARS = 500


def make_frame_id(source_uri: str, frame_index: int) -> str:
    """Deterministic frame id: the first 32 hex digits of sha256(``source_uri`` NUL ``frame_index``).

    The same file and frame always get the same id, so writes keyed by it are idempotent.
    """
    digest = hashlib.sha256(f"{source_uri}\0{int(frame_index)}".encode("utf-8"))
    return digest.hexdigest()[:32]


class Frame(NamedTuple):
    """One decoded frame.

    ``frame_index`` is 0 for a still image and the 0-based index in the decoded video stream for a
    video frame; ``timestamp_s`` is the presentation time in seconds from the stream start (``None``
    for still images). ``pixels`` is RGB ``uint8`` of shape ``(height, width, 3)``.
    ``pixel_hash`` is the MurmurHash3 x64-128 (hex) of the decoded pixel bytes and their shape: equal hashes mean
    identical frames. Optional file-level metadata: ``channels`` stored in the file (1 grey,
    2 grey+alpha, 3, 4 RGBA/CMYK; 3 for video), ``format`` (e.g. ``JPEG``, ``PNG``, ``AVI/msmpeg4``),
    ``file_size`` in bytes, ``content_sha256`` (hex sha256 of the file bytes; images only) and
    ``capture_time`` (EXIF DateTimeOriginal as ISO 8601 without time zone; images only).
    Streaming only: ``event_time``, seconds since the epoch (UTC), the time the frame was
    captured as the streaming job windows it, and ``event_time_source``, where that time came
    from (``exif``, ``container``, ``notification`` or ``mtime``; see
    :mod:`transforms.intake.event_time`).
    """
    frame_id: str
    source_uri: str
    frame_index: int
    timestamp_s: Optional[float]
    width: int
    height: int
    media_type: str
    pixel_hash: str
    pixels: np.ndarray
    channels: Optional[int] = None
    format: Optional[str] = None
    file_size: Optional[int] = None
    content_sha256: Optional[str] = None
    capture_time: Optional[str] = None
    event_time: Optional[float] = None
    event_time_source: Optional[str] = None

    def metadata(self) -> "FrameMetadata":
        fields = self._asdict()
        del fields["pixels"]
        return FrameMetadata(**fields)


class FrameMetadata(NamedTuple):
    """A :class:`Frame` without its pixels (what travels next to the model input)."""
    frame_id: str
    source_uri: str
    frame_index: int
    timestamp_s: Optional[float]
    width: int
    height: int
    media_type: str
    pixel_hash: str
    channels: Optional[int] = None
    format: Optional[str] = None
    file_size: Optional[int] = None
    content_sha256: Optional[str] = None
    capture_time: Optional[str] = None
    event_time: Optional[float] = None
    event_time_source: Optional[str] = None


class ModelVersion(NamedTuple):
    """Which model produced an embedding or score.

    ``version`` is the first 16 hex digits of the sha256 of the model file's bytes.
    """
    name: str
    version: str
    embedding_layer: str


#: Corners of a stored box, in this order: ``{"x1", "y1", "x2", "y2"}`` (pixels).
BOX_CORNERS = ("x1", "y1", "x2", "y2")


def box_corners(box) -> Tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` of a stored box: the ``{"x1", "y1", "x2", "y2"}`` mapping that
    documents and rows hold, or the ``[x1, y1, x2, y2]`` list that versions before the
    nested BigQuery schema stored (so documents not yet migrated still read).

    Raises
    ------
    ValueError
        If ``box`` is neither a mapping with the four corners nor a sequence of four numbers.
    """
    if isinstance(box, dict):
        if not all(k in box for k in BOX_CORNERS):
            raise ValueError(f"a box needs the keys {BOX_CORNERS}, got {sorted(box)}")
        return tuple(float(box[k]) for k in BOX_CORNERS)
    if isinstance(box, (list, tuple)) and len(box) == 4:
        return tuple(float(v) for v in box)
    raise ValueError(f"a box is {{x1, y1, x2, y2}} or [x1, y1, x2, y2], got {box!r:.80}")


class Detection(NamedTuple):
    """One object a detector found in a frame: ``label`` (e.g. COCO's ``"person"``), its
    ``class_id`` in the detector's class list, the detector's confidence ``score`` in [0, 1], and
    ``box`` ``(x1, y1, x2, y2)`` in pixels of the decoded frame (floats, x to the right, y down)."""
    label: str
    class_id: int
    score: float
    box: Tuple[float, float, float, float]

    def to_json_dict(self) -> dict:
        """The stored form (MongoDB sub-document and BigQuery ``STRUCT``): ``{label, class_id,
        score, box: {x1, y1, x2, y2}}``."""
        return {"label": self.label, "class_id": int(self.class_id), "score": float(self.score),
                "box": dict(zip(BOX_CORNERS, (float(v) for v in self.box)))}


class FrameRecord(NamedTuple):
    """A frame's metadata with the model's output, as indexed and sampled.

    ``embedding``: float32, shape ``(D,)`` (D = width of the model's embedding layer).
    ``probabilities``: float32, shape ``(C,)``, sums to 1. Scores (see
    :mod:`transforms.score.uncertainty`): ``entropy`` in nats, ``margin`` = p(1st) - p(2nd) (low is
    uncertain), ``least_confidence`` = 1 - p(1st). ``extra_scores``: further scores as sorted
    ``(name, value)`` pairs (names in :data:`schemas.frames.EXTRA_SCORE_NAMES`, e.g. ``ratio``,
    ``entropy_normalised``, ``bald``, ``uniqueness``, ``detection_max``); a score that was not
    computed is absent. ``detections``: the boxes of the detector (if one ran), best first;
    ``detector``: which detector (``None`` if none ran). ``duplicate_group``: the ``frame_id`` of
    the representative of the frame's near-duplicate group (the representative itself included),
    ``None`` for a frame with no near-duplicate or when groups were not computed.
    ``object_embedding``: float32 ``(D,)``, the mean of the unit-normalised embeddings of the
    frame's object crops (``ScoreFrames(objects=True)``; ``None`` without objects); used by
    selection, not stored. ``predicted_label``: the name of ``predicted_class`` in the model's
    class list (``None`` when the model declares no names).
    """
    frame: FrameMetadata
    embedding: np.ndarray
    probabilities: np.ndarray
    predicted_class: int
    entropy: float
    margin: float
    least_confidence: float
    model: ModelVersion
    extra_scores: Tuple[Tuple[str, float], ...] = ()
    detections: Tuple[Detection, ...] = ()
    detector: Optional[ModelVersion] = None
    duplicate_group: Optional[str] = None
    object_embedding: Optional[np.ndarray] = None
    predicted_label: Optional[str] = None


class Candidate(NamedTuple):
    """A frame proposed for annotation; ``rank`` 1 is the most wanted.

    ``score`` is the value of the ranking score named by ``strategy``; ``duplicates`` counts the
    frames with identical pixels that this candidate stands for (itself included).
    ``selection_id`` identifies the selection (deterministic: strategy, parameters, model
    version, inputs, window); ``parameters`` is the strategy's description as a JSON string;
    ``components`` are the per-frame values that explain the rank (e.g. margin and cluster
    size for Cluster-Margin); ``window_start``/``window_end`` bound the event-time window of a
    streaming selection in seconds since the epoch (``None`` in batch); ``predicted_label``
    names ``predicted_class`` (``None`` when the model declares no class names).
    """
    rank: int
    frame_id: str
    source_uri: str
    frame_index: int
    timestamp_s: Optional[float]
    score: float
    strategy: str
    scores: Tuple[Tuple[str, float], ...]
    predicted_class: int
    duplicates: int
    model: ModelVersion
    selection_id: str = ""
    parameters: str = "{}"
    components: Tuple[Tuple[str, float], ...] = ()
    window_start: Optional[float] = None
    window_end: Optional[float] = None
    predicted_label: Optional[str] = None

    def to_json_dict(self) -> dict:
        return {
                "rank": self.rank,
                "frame_id": self.frame_id,
                "source_uri": self.source_uri,
                "frame_index": self.frame_index,
                "timestamp_s": self.timestamp_s,
                "score": self.score,
                "strategy": self.strategy,
                "scores": dict(self.scores),
                "predicted_class": self.predicted_class,
                "duplicates": self.duplicates,
                "model": self.model._asdict(),
                "selection_id": self.selection_id,
                "parameters": json.loads(self.parameters),
                "components": dict(self.components),
                "window_start": self.window_start,
                "window_end": self.window_end,
                "predicted_label": self.predicted_label,
        }


class DeadLetter(NamedTuple):
    """An input that could not be processed: which file (and frame), at which stage, and why."""
    source_uri: str
    stage: str
    error: str
    frame_index: Optional[int] = None
    frame_id: Optional[str] = None

    def to_json_dict(self) -> dict:
        return {k: v for k, v in self._asdict().items() if v is not None}


class FileOutcome(NamedTuple):
    """What became of one matched file: ``frames`` decoded, ``failed`` if it yielded none.

    A video that stops decoding part-way has ``frames > 0``, ``failed`` False and a dead letter.
    ``video_info`` (videos only) is what :class:`transforms.decode.video.VideoInfo` records once per file.
    """
    source_uri: str
    media_type: Optional[str]
    frames: int
    failed: bool
    video_info: Optional[dict] = None  # codec, fps, duration_s, frame_count, width, height, ...


class Arrival(NamedTuple):
    """A file version a streaming job takes in: a Cloud Storage object generation it was notified
    of, or a file version it found in a watched glob.

    ``key`` identifies the version (``gs://bucket/object#generation``, or ``path#mtime:size``;
    see :mod:`transforms.intake.notifications`): a duplicated or re-sent notification has the same
    key and changes nothing. ``fallback_time`` (seconds since the epoch) is the event time of its
    frames that have no capture time of their own: the object's ``timeCreated``
    (``fallback_source`` ``notification``) or the file's modification time (``mtime``).
    ``message_id`` and ``ack_ids`` are the Pub/Sub message(s) that announced it (acknowledged once
    its frames are indexed).
    """
    key: str
    uri: str
    fallback_time: float
    fallback_source: str
    generation: Optional[str] = None
    size: Optional[int] = None
    message_id: Optional[str] = None
    ack_ids: Tuple[str, ...] = ()


class WindowPane(NamedTuple):
    """One firing of an event-time window of the streaming ``mine`` job: everything its output
    files and ``windows.jsonl`` line hold.

    ``window_start``/``window_end`` in seconds since the epoch; ``pane`` ``on_time`` (the
    watermark passed the window's end, or the job drained) or ``late`` (a late frame or dead
    letter updated it; the pane holds the window's whole content, not just the late part);
    ``pane_index`` counts the window's firings in this run (0 the first). ``files`` distinct
    source files and ``frames`` frames seen in the window (identical frames included);
    ``candidates`` in rank order; ``dead_letters`` of the window (sorted).
    """
    window_start: float
    window_end: float
    pane: str
    pane_index: int
    files: int
    frames: int
    candidates: Tuple[Candidate, ...]
    dead_letters: Tuple[DeadLetter, ...]


class Restored(NamedTuple):
    """A :class:`FrameRecord` or :class:`DeadLetter` a restarted streaming job replays from its
    stores into its window: counted in the window, never indexed again, and dropped without a
    dead letter if its window no longer accepts data."""
    item: object

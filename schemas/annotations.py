"""The ``annotations`` index: labels coming back from annotators, one entry per (frame, task, annotator).

An annotation is identified by :func:`make_annotation_id` of ``(frame_id, task, annotator)``, so
importing the same export twice rewrites the same entries, and a corrected label replaces the old
one (a ``$set`` upsert in MongoDB). A review task's answer (``annotate qc --label_issues`` sends
likely errors for review) replaces the reviewed entry's label in place, keeping the old one in
``label_before_review``.
"""
import hashlib

from schemas.frames import Field

ANNOTATIONS_COLLECTION = "annotations"

ANNOTATION_FIELDS = (
    Field("annotation_id", "STRING", "REQUIRED", "Deterministic id: sha256(frame_id NUL task NUL annotator)[:32]; MongoDB _id."),
    Field("frame_id", "STRING", "REQUIRED", "The annotated frame's id in the frames index."),
    Field("source_uri", "STRING", "REQUIRED", "URI of the image or video file the frame comes from."),
    Field("frame_index", "INT64", "REQUIRED", "0 for a still image; 0-based index in the decoded video stream."),
    Field("task", "STRING", "REQUIRED", "Annotation task (e.g. 'classification')."),
    Field("label", "STRING", "REQUIRED", "The label the annotator gave."),
    Field("label_index", "INT64", "NULLABLE", "Class index of the label in the model's output, if it has one."),
    Field("annotator", "STRING", "REQUIRED", "Who (or which tool) labelled the frame."),
    Field("selection_id", "STRING", "NULLABLE", "The selection that proposed the frame, if any."),
    Field("annotated_at", "TIMESTAMP", "REQUIRED", "When the label was given (UTC); the BigQuery partitioning column."),
    # Filled by `annotate import` (Label Studio); appended last, as BigQuery adds columns at the end.
    Field("boxes", "STRING", "NULLABLE", "Detection: JSON list of {label, box: [x1, y1, x2, y2]} in pixels of the decoded frame; null for classification."),
    Field("label_project", "STRING", "NULLABLE", "Label Studio project the label came from."),
    Field("label_task_id", "INT64", "NULLABLE", "Label Studio task id."),
    Field("label_annotation_id", "INT64", "NULLABLE", "Label Studio annotation id."),
    Field("model_version", "STRING", "NULLABLE", "Model (name@version) whose pre-annotation the annotator saw, if any."),
    Field("lead_time_s", "FLOAT64", "NULLABLE", "Seconds the annotator spent on the task (Label Studio lead time)."),
    Field("updated_at", "TIMESTAMP", "NULLABLE", "When the annotation was last changed in the annotation tool (UTC)."),
    Field("imported_at", "TIMESTAMP", "NULLABLE", "When activebeam imported it (UTC)."),
    # Filled when a review task of `annotate qc --label_issues` corrected the label (appended last).
    Field("reviewed_by", "STRING", "NULLABLE", "Who corrected the label in a review task (<project>-review); null if never reviewed."),
    Field("review_task_id", "INT64", "NULLABLE", "Label Studio task id of that review task."),
    Field("reviewed_at", "TIMESTAMP", "NULLABLE", "When the review answer was given (UTC)."),
    Field("label_before_review", "STRING", "NULLABLE", "The annotator's label that the review replaced."),
)


def make_annotation_id(frame_id: str, task: str, annotator: str) -> str:
    """Deterministic annotation id: the first 32 hex digits of sha256(frame_id NUL task NUL annotator)."""
    return hashlib.sha256(f"{frame_id}\0{task}\0{annotator}".encode("utf-8")).hexdigest()[:32]

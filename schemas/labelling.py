"""The labelling loop's records: tasks sent to annotators, QC reports, and retraining triggers.

* ``label_tasks``: one entry per (annotation project, frame) that ``annotate export`` sent to
  Label Studio (``_id`` = :func:`make_label_task_key`), with its QC ``status``: ``exported``,
  then ``labelled`` (answers imported), ``accepted`` (the labels stand) or ``relabel`` (sent
  back), or ``gold`` for gold tasks. What every selection skips by default, and the labelling
  funnel of ``stats``.
* ``qc_reports``: per QC run, one row per annotator and per batch (selection) with agreement,
  gold accuracy and throughput (:mod:`transforms.annotate.qc`).
* ``label_issues``: one entry per (annotation, model) that ``annotate qc --label_issues``
  scored against the model's predictions with cleanlab (:mod:`transforms.annotate.label_issues`):
  the label quality score and rank, whether cleanlab flags it, the issue type, its rank in that
  type's review queue, and the suspect box.
* ``retrain_triggers``: one entry each time accepted labels since the previous trigger reach
  ``--retrain_after``; a training job starts from it (and from its Pub/Sub message).
"""
import hashlib

from schemas.frames import Field

LABEL_TASKS_COLLECTION = "label_tasks"
QC_REPORTS_COLLECTION = "qc_reports"
RETRAIN_TRIGGERS_COLLECTION = "retrain_triggers"
LABEL_ISSUES_COLLECTION = "label_issues"
#: ``issue_type`` values: a wrong class, a missing box, a badly located box (cleanlab's names).
LABEL_ISSUE_TYPES = ("swap", "overlooked", "badloc")
#: What each issue type means, for people (report headings, help texts).
LABEL_ISSUE_TYPE_NAMES = {"swap": "wrong class", "overlooked": "missing box", "badloc": "badly located box"}
LABEL_TASK_STATUSES = ("exported", "labelled", "accepted", "relabel", "gold")

LABEL_TASK_FIELDS = (
    Field("label_task_key", "STRING", "REQUIRED", "Deterministic id: sha256(project NUL frame_id)[:32]; MongoDB _id."),
    Field("project", "STRING", "REQUIRED", "Label Studio project title."),
    Field("frame_id", "STRING", "REQUIRED", "The frame's id in the frames index."),
    Field("source_uri", "STRING", "REQUIRED", "URI of the image or video file the frame comes from."),
    Field("frame_index", "INT64", "REQUIRED", "0 for a still image; 0-based index in the decoded video stream."),
    Field("kind", "STRING", "REQUIRED", "'classification' or 'detection'."),
    Field("selection_id", "STRING", "NULLABLE", "The selection that proposed the frame (null for a gold task added by hand)."),
    Field("task_id", "INT64", "NULLABLE", "Label Studio task id."),
    Field("image", "STRING", "REQUIRED", "Local path of the picture Label Studio shows."),
    Field("image_width", "INT64", "REQUIRED", "Width of that picture in pixels."),
    Field("image_height", "INT64", "REQUIRED", "Height of that picture in pixels."),
    Field("model_version", "STRING", "NULLABLE", "Model (name@version) of the pre-annotation, if any."),
    Field("overlap", "INT64", "REQUIRED", "Annotators wanted for the task (2 for overlap tasks)."),
    Field("gold", "BOOL", "REQUIRED", "A gold task: its answer is known and measures annotators."),
    Field("gold_label", "STRING", "NULLABLE", "The known answer of a gold task (never sent to Label Studio)."),
    Field("gold_boxes", "STRING", "NULLABLE", "Detection gold: JSON list of {label, box} in pixels of the decoded frame."),
    Field("status", "STRING", "REQUIRED", "'exported', 'labelled', 'accepted', 'relabel' or 'gold'."),
    Field("accepted_label", "STRING", "NULLABLE", "The label that stands after QC."),
    Field("accepted_boxes", "STRING", "NULLABLE", "Detection: the boxes that stand after QC (JSON, decoded-frame pixels)."),
    Field("qc_reason", "STRING", "NULLABLE", "Why QC accepted or sent the task back."),
    Field("exported_at", "TIMESTAMP", "NULLABLE", "When the task was first exported (UTC); the BigQuery partitioning column."),
    Field("qc_at", "TIMESTAMP", "NULLABLE", "When QC last decided the task's status (UTC)."),
)

QC_REPORT_FIELDS = (
    Field("qc_row_id", "STRING", "REQUIRED", "Deterministic id: qc_id:scope:name; MongoDB _id."),
    Field("qc_id", "STRING", "REQUIRED", "Id of the QC run: sha256 of project, thresholds and the annotations' ids and update times."),
    Field("project", "STRING", "REQUIRED", "Label Studio project title."),
    Field("kind", "STRING", "REQUIRED", "'classification' or 'detection'."),
    Field("scope", "STRING", "REQUIRED", "'annotator' or 'batch' (a selection)."),
    Field("name", "STRING", "REQUIRED", "The annotator, or the selection id of the batch."),
    Field("annotations", "INT64", "REQUIRED", "Annotations counted."),
    Field("frames", "INT64", "REQUIRED", "Distinct frames annotated."),
    Field("overlap_pairs", "INT64", "REQUIRED", "Pairs of annotations of the same frame by two annotators."),
    Field("class_agreement", "FLOAT64", "NULLABLE", "Mean class agreement over those pairs (1 = same label)."),
    Field("box_f1", "FLOAT64", "NULLABLE", "Detection: mean IoU-matched box F1 over those pairs."),
    Field("gold_answers", "INT64", "REQUIRED", "Answers to gold tasks."),
    Field("gold_accuracy", "FLOAT64", "NULLABLE", "Share of right answers to gold tasks."),
    Field("lead_time_s", "FLOAT64", "REQUIRED", "Total annotation time in seconds."),
    Field("per_hour", "FLOAT64", "NULLABLE", "Throughput: annotations per hour of annotation time."),
    Field("accepted", "INT64", "REQUIRED", "Tasks whose labels stand."),
    Field("relabel", "INT64", "REQUIRED", "Tasks sent back for relabelling."),
    Field("created_at", "TIMESTAMP", "REQUIRED", "When the QC run wrote the row (UTC); the BigQuery partitioning column."),
)

RETRAIN_TRIGGER_FIELDS = (
    Field("trigger_id", "STRING", "REQUIRED", "Deterministic id: sha256(project NUL dataset_version)[:32]; MongoDB _id."),
    Field("project", "STRING", "REQUIRED", "Label Studio project title."),
    Field("dataset_dir", "STRING", "REQUIRED", "Where the training set was written."),
    Field("dataset_version", "STRING", "REQUIRED", "sha256 of the training set's labels, first 16 hex digits."),
    Field("accepted_labels", "INT64", "REQUIRED", "Accepted labels in the training set."),
    Field("new_labels", "INT64", "REQUIRED", "Accepted labels not in the previous trigger's training set."),
    Field("retrain_after", "INT64", "REQUIRED", "The threshold that fired."),
    Field("model_versions", "STRING", "REPEATED", "Model versions whose pre-annotations the labels saw."),
    Field("pubsub_topic", "STRING", "NULLABLE", "Topic the trigger message was published to, if any."),
    Field("created_at", "TIMESTAMP", "REQUIRED", "When the trigger was written (UTC); the BigQuery partitioning column."),
)

LABEL_ISSUE_FIELDS = (
    Field("label_issue_id", "STRING", "REQUIRED", "Deterministic id: sha256(annotation_id NUL model_version)[:32]; MongoDB _id."),
    Field("annotation_id", "STRING", "REQUIRED", "The scored annotation (annotations table)."),
    Field("frame_id", "STRING", "REQUIRED", "The annotated frame's id in the frames index."),
    Field("source_uri", "STRING", "REQUIRED", "URI of the image or video file the frame comes from."),
    Field("frame_index", "INT64", "REQUIRED", "0 for a still image; 0-based index in the decoded video stream."),
    Field("project", "STRING", "REQUIRED", "Label Studio project title."),
    Field("kind", "STRING", "REQUIRED", "'classification' or 'detection'."),
    Field("annotator", "STRING", "REQUIRED", "Who gave the label."),
    Field("label", "STRING", "REQUIRED", "The given label (detection: the sorted distinct box labels joined by ',')."),
    Field("quality_score", "FLOAT64", "REQUIRED", "cleanlab label quality score in [0, 1]; low = likely wrong (classification: self-confidence; detection: ObjectLab)."),
    Field("rank", "INT64", "REQUIRED", "1 = the likeliest error of the run (quality_score ascending)."),
    Field("is_issue", "BOOL", "REQUIRED", "Flagged by cleanlab's find_label_issues (confident learning; ObjectLab for boxes)."),
    Field("issue_type", "STRING", "REQUIRED", "Likeliest kind of error: 'swap' (wrong class), 'overlooked' (missing box) or 'badloc' (badly located box)."),
    Field("type_score", "FLOAT64", "NULLABLE", "The pooled score of issue_type itself in [0, 1] (its swap_score, overlooked_score or badloc_score; classification: quality_score); orders the type's review queue. Always set by the current writer; NULLABLE so migrate can add it."),
    Field("type_rank", "INT64", "NULLABLE", "1 = the first of issue_type's review queue in the run: the run's rows of that issue_type by type_score ascending. Always set by the current writer; NULLABLE so migrate can add it."),
    Field("swap_score", "FLOAT64", "NULLABLE", "Pooled swap score in [0, 1] (low = a wrong class is likely)."),
    Field("overlooked_score", "FLOAT64", "NULLABLE", "Detection: pooled overlooked score in [0, 1] (low = a missing box is likely)."),
    Field("badloc_score", "FLOAT64", "NULLABLE", "Detection: pooled badly-located score in [0, 1] (low = a misplaced box is likely)."),
    Field("suggested_label", "STRING", "NULLABLE", "The model's class where it differs (classification: argmax; detection: the class of the model's box)."),
    Field("suspect_box", "STRING", "NULLABLE", "Detection: JSON {label, box: [x1, y1, x2, y2]} of the given box at fault, or of the model's box no given box covers (overlooked); decoded-frame pixels."),
    Field("model_box", "STRING", "NULLABLE", "Detection: JSON {label, box, score} of the model's box the suspect is compared with."),
    Field("model_version", "STRING", "REQUIRED", "Model (name@version) whose predictions scored the label."),
    Field("method", "STRING", "REQUIRED", "The cleanlab functions and version that scored it."),
    Field("run_id", "STRING", "REQUIRED", "Id of the scoring run: sha256 of the project, the annotations' ids and update times."),
    Field("review_task_id", "INT64", "NULLABLE", "Label Studio task id of the review task, when the issue was sent for review."),
    Field("created_at", "TIMESTAMP", "REQUIRED", "When the run wrote the row (UTC); the BigQuery partitioning column."),
)


def make_label_issue_id(annotation_id: str, model_version: str) -> str:
    """Deterministic label-issue id: the first 32 hex digits of sha256(annotation_id NUL model_version)."""
    return hashlib.sha256(f"{annotation_id}\0{model_version}".encode("utf-8")).hexdigest()[:32]


def make_label_task_key(project: str, frame_id: str) -> str:
    """Deterministic label-task id: the first 32 hex digits of sha256(project NUL frame_id)."""
    return hashlib.sha256(f"{project}\0{frame_id}".encode("utf-8")).hexdigest()[:32]

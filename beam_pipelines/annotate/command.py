"""The ``annotate`` job: a selection to Label Studio and back, vendor QC, a training set, a trigger.

    python -m beam_pipelines.annotate export  --selection_id ID [--overlap 0.2 --gold gold.csv]
    python -m beam_pipelines.annotate import   # finished annotations -> annotations collection (+ BigQuery)
    python -m beam_pipelines.annotate qc       # agreement, gold accuracy, throughput; relabel the failures
    python -m beam_pipelines.annotate qc --label_issues [--review_budget 20]   # + likely label errors
    python -m beam_pipelines.annotate qc --label_issues --review_issue_types swap,overlooked  # queues by type
    python -m beam_pipelines.annotate dataset [--retrain_after 500 --retrain_topic projects/P/topics/T]

Every subcommand takes ``--mongo_uri`` (default: the embedded mongod of ``<output_dir>/mongo-data``,
as ``mine``), ``--mongo_database``, ``--label_studio_url`` / ``--label_studio_api_key`` (default:
an embedded Label Studio with its data in ``<output_dir>/label-studio``, loopback only, whose URL
and credentials are printed) and ``--label_studio_project`` (default ``activebeam-<kind>``).

* ``export``: the selection's candidates (``candidates`` collection) and the ``--gold`` frames go to
  the project as tasks with the model's pre-annotations (:class:`transforms.annotate.ExportToLabelStudio`);
  every task is recorded in ``label_tasks``; ``--overlap`` of them want two annotators.
* ``import``: every annotation of the project (API, or ``--export_file``) becomes an ``annotations``
  row (:class:`transforms.annotate.NormaliseAnnotations`), or a dead letter with its reason.
* ``qc``: :func:`transforms.annotate.qc.qc_report` over the project's annotations: ``qc_report.json``,
  the ``qc_reports`` table, each task's status in ``label_tasks`` (accepted / relabel / gold); tasks
  sent back get one more annotator in Label Studio. With ``--label_issues``, every annotation is
  scored against its frame's predictions with cleanlab (:class:`transforms.annotate.FindLabelIssues`)
  into ``label_issues``, and the ``--review_budget`` worst flagged ones become tasks of the project
  ``<project>-review``, whose answers the next ``import`` applies. With ``--review_issue_types
  swap,overlooked`` the review goes by issue type instead: each listed type's ``--review_budget``
  first flagged issues in that type's queue (``type_rank``: by the type's own cleanlab score),
  queue after queue, into the same project; each task's ``data.issue_type`` and ``data.type_rank``
  let a reviewer filter and sort Label Studio's Data Manager to their own queue.
* ``dataset``: accepted labels as COCO (detection) or manifest + class folders (classification)
  (:class:`transforms.annotate.WriteTrainingSet`); with ``--retrain_after`` a ``retrain_triggers``
  entry (and a Pub/Sub message with ``--retrain_topic``) when enough new labels arrived.

Exit codes as ``mine`` (docs/failures.md): 2 bad options, 3 a store or Label Studio that does not
answer, 1 a failed run.
"""
import contextlib
import csv
import datetime
import hashlib
import json
import logging
import os
import re
import sys
import time
from typing import Dict, List, Optional, Tuple

from beam_pipelines.cli import preflight, shutdown
from beam_pipelines.annotate.options import (PROG, UPLOAD, AnnotateJob, AnnotateOptions, check_options,
                                            split_command)
from beam_pipelines.mine.options import MineOptions
from schemas.labelling import LABEL_ISSUE_TYPES
from transforms.annotate import label_studio as ls

_LOG = logging.getLogger(__name__)
DEAD_LETTER_FILE = "annotate_dead_letter.jsonl"
QC_REPORT_FILE = "qc_report.json"
LABEL_ISSUES_DEAD_LETTER_FILE = "label_issues_dead_letter.jsonl"
#: Title suffix of the project that holds review tasks of likely label errors.
REVIEW_SUFFIX = "-review"
#: Issues listed in the QC report (all are in the label_issues table).
REPORTED_ISSUES = 50
MEDIA_FOLDER = "label-studio-media"
#: Scratch folder (under --output_dir) of the pictures uploaded to a Label Studio without shared disk.
UPLOAD_FOLDER = "label-studio-upload"
#: The bundled model's classes, when the frames were scored by it.
BUNDLED_MODEL = "fashion_mnist_cnn"


class Session:
    """The stores one command talks to: MongoDB (``db``) and Label Studio (``client``, ``url``,
    ``document_root``), embedded ones started for the life of the ``with`` block."""

    def __init__(self, options, job: AnnotateJob, need_label_studio: bool = True):
        self.o, self.job = options.view_as(AnnotateOptions), job
        self._need_ls = need_label_studio
        self._stack = contextlib.ExitStack()
        self.mongo_uri = self.db = self.client = self.url = self.document_root = None
        self.embedded_ls = None

    def __enter__(self):
        from transforms.annotate.client import LabelStudioClient
        from transforms.index.mongodb_client import mongo_client
        stack = self._stack.__enter__()
        os.makedirs(self.job.output_dir, exist_ok=True)
        if self.job.mongo_uri:
            preflight.check_stores(self.job.mongo_uri, (), None, self.job.store_check_timeout_s)
            self.mongo_uri = self.job.mongo_uri
        else:
            from beam_pipelines.local.mongod import LocalMongoD
            self.mongo_uri = stack.enter_context(LocalMongoD(os.path.join(self.job.output_dir, "mongo-data"))).uri
        mongo = stack.enter_context(mongo_client(self.mongo_uri, appname="activebeam-annotate"))
        self.db = mongo[self.job.mongo_database]
        if not self._need_ls:
            return self
        if self.o.label_studio_url:
            self.url, key = self.o.label_studio_url, self.o.label_studio_api_key
            # None: a server this job cannot write files for (pictures are uploaded)
            self.document_root = (os.path.abspath(self.o.label_studio_document_root)
                                  if self.o.label_studio_document_root else None)
        else:
            from beam_pipelines.local.label_studio import LabelStudioNotFound, LabelStudioStartError, LocalLabelStudio
            try:
                self.embedded_ls = stack.enter_context(LocalLabelStudio(
                    os.path.join(self.job.output_dir, "label-studio"), document_root=self.job.output_dir))
            except (LabelStudioNotFound, LabelStudioStartError) as e:
                raise preflight.StoreUnavailable(f"the embedded Label Studio cannot start: {e}") from e
            self.url, key, self.document_root = self.embedded_ls.url, self.embedded_ls.api_key, self.job.output_dir
            print(f"Label Studio: {self.url}  user {self.embedded_ls.user}  password {self.embedded_ls.password}  "
                  f"API key {key}", flush=True)
        self.client = LabelStudioClient(self.url, key)
        if not self.client.health():
            raise preflight.StoreUnavailable(f"--label_studio_url {self.url}: Label Studio does not answer /health")
        self.api_key = key
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def project_title(self, kind: Optional[str]) -> str:
        return self.o.label_studio_project or f"activebeam-{kind or 'classification'}"

    def existing_project(self) -> dict:
        """The project named by the options (for import, qc, dataset); OptionError if missing."""
        for kind in (None, "detection"):
            title = self.project_title(kind)
            project = self.client.project_by_title(title) if self.client else None
            if project:
                return project
            if self.o.label_studio_project:
                break
        raise preflight.OptionError(f"Label Studio at {self.url} has no project "
                                    f"{self.project_title(None)!r}: run `annotate export` first")


def _frames_by_id(db, frame_ids: List[str]) -> Dict[str, dict]:
    cursor = db["frames"].find({"_id": {"$in": list(frame_ids)}}, {"embedding": 0})
    return {doc["_id"]: doc for doc in cursor}


def _default_classes(frames: List[dict], kind: str) -> Tuple[str, ...]:
    if kind == ls.DETECTION:
        names = sorted({d["label"] for f in frames for d in f.get("detections") or () if d.get("label")})
        if not names:
            raise preflight.OptionError("no frame of the selection carries detections: give --classes")
        return tuple(names)
    model = (frames[0].get("model") or {}).get("name") if frames else None
    if model == BUNDLED_MODEL:
        from beam_pipelines.local.sample_media import CLASS_NAMES
        return tuple(CLASS_NAMES)
    width = max((len(f.get("probabilities") or ()) for f in frames), default=0)
    width = max(width, 1 + max((int(f.get("predicted_class", 0)) for f in frames), default=0))
    return tuple(f"class_{i}" for i in range(width))


def read_gold(path: str, db) -> Dict[str, dict]:
    """``frame_id -> {"label", "boxes"}`` from a CSV or JSONL gold file (``frame_id``, or
    ``source_uri`` [+ ``frame_index``], ``label`` [, ``boxes`` JSON]); OptionError on a line that
    names no indexed frame."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines()))
    gold = {}
    for n, row in enumerate(rows, start=1):
        frame_id = row.get("frame_id")
        if not frame_id and row.get("source_uri"):
            doc = db["frames"].find_one({"source_uri": row["source_uri"],
                                         "frame_index": int(row.get("frame_index") or 0)}, {"_id": 1})
            frame_id = doc and doc["_id"]
        if not frame_id or not db["frames"].count_documents({"_id": frame_id}, limit=1):
            raise preflight.OptionError(f"--gold {path} line {n}: no indexed frame for {row}")
        if not row.get("label") and not row.get("boxes"):
            raise preflight.OptionError(f"--gold {path} line {n}: no label")
        boxes = row.get("boxes")
        boxes = json.loads(boxes) if isinstance(boxes, str) and boxes else boxes
        label = row.get("label") or ",".join(sorted({b["label"] for b in boxes or ()}))
        gold[frame_id] = {"label": label, "boxes": boxes}
    return gold


def _run(build, options):
    """Runs a pipeline on the local FnApiRunner (or the given runner) and waits."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions
    runner = options.view_as(StandardOptions).runner or "FnApiRunner"
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        build(pipeline)


def _write_dead_letters(pcoll, path: str):
    from transforms.common.outputs import WriteDeadLetters
    return pcoll | "WriteDeadLetters" >> WriteDeadLetters(path)


def _count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# --- export ----------------------------------------------------------------------------------

def export(options, job: AnnotateJob) -> dict:
    """Sends the selection's candidates (and gold tasks) to Label Studio; returns the counts."""
    import apache_beam as beam
    from schemas import tables
    from transforms.annotate.ptransforms import ExportItem, ExportToLabelStudio
    from transforms.index.mongodb import WriteDocumentsToMongoDB
    o = options.view_as(AnnotateOptions)
    with Session(options, job) as s:
        candidates = list(s.db["candidates"].find({"selection_id": o.selection_id}).sort("rank", 1))
        if not candidates:
            raise preflight.OptionError(f"--selection_id {o.selection_id}: no candidates in "
                                        f"{job.mongo_database}.candidates")
        gold = read_gold(o.gold, s.db) if o.gold else {}
        frames = _frames_by_id(s.db, [c["frame_id"] for c in candidates] + list(gold))
        kind = o.task if o.task != "auto" else (
            ls.DETECTION if any("detections" in f for f in frames.values()) else ls.CLASSIFICATION)
        classes = job.classes or _default_classes(list(frames.values()), kind)
        title = s.project_title(kind)
        project = s.client.ensure_project(title, ls.label_config(kind, classes), maximum_annotations=1)
        upload = o.label_studio_media == UPLOAD or (o.label_studio_media == "auto" and s.document_root is None)
        document_root = None if upload else s.document_root
        media_dir = os.path.join(document_root or job.output_dir, UPLOAD_FOLDER if upload else MEDIA_FOLDER,
                                 re.sub(r"[^A-Za-z0-9._-]+", "_", title))
        os.makedirs(media_dir, exist_ok=True)
        if not upload:
            s.client.ensure_local_storage(project["id"], media_dir)
        items = []
        for c in candidates:
            frame = frames.get(c["frame_id"])
            if frame is not None and c["frame_id"] not in gold:
                overlap = 2 if ls.is_gold_or_overlap(c["frame_id"], o.overlap, title) else 1
                items.append(ExportItem(frame, o.selection_id, overlap=overlap))
        for frame_id, answer in sorted(gold.items()):
            items.append(ExportItem(frames[frame_id], o.selection_id, gold=True, gold_label=answer["label"],
                                    gold_boxes=answer.get("boxes"), overlap=2))
        dead_path = os.path.join(job.output_dir, DEAD_LETTER_FILE)
        export_transform = ExportToLabelStudio(s.url, s.api_key, project["id"], title, kind, classes,
                                               media_dir=media_dir, document_root=document_root)

        def build(p):
            exported = p | "Frames" >> beam.Create(items) | "Export" >> export_transform
            docs = exported.label_tasks | "ToDocuments" >> beam.Map(
                lambda row: tables.to_mongo_document(tables.label_tasks_table(), row))
            written = docs | "LabelTasksToMongoDB" >> WriteDocumentsToMongoDB(
                s.mongo_uri, job.mongo_database, tables.label_tasks_table())
            _write_dead_letters((exported.dead_letters, written.dead_letters) | beam.Flatten(), dead_path)
        _run(build, options)
        synced = _sync_tasks(s, project["id"], title)
        counts = {"project": title, "project_id": project["id"], "kind": kind, "classes": list(classes),
                  "selection_id": o.selection_id, "candidates": len(candidates), "gold_tasks": len(gold),
                  "tasks_in_project": synced, "dead_letters": _count_lines(dead_path),
                  "label_studio_url": s.url, "media": "upload" if upload else "local_files",
                  **_labelling_cost(s.db, items)}
        if o.serve and s.embedded_ls:
            print(json.dumps(counts, indent=2), flush=True)
            print(f"serving Label Studio at {s.url} until Ctrl-C ...", flush=True)
            while True:
                time.sleep(1)
        return counts


def _labelling_cost(db, items) -> dict:
    """What the exported tasks cost to label: ``frames``, ``predicted_boxes`` (the pre-annotations)
    and ``estimated_label_seconds`` (every annotation of an overlap or gold task counted), with
    the ``cost_model`` fitted to the index's annotations, else the published one
    (:mod:`transforms.select.cost`)."""
    from transforms.select.cost import checked_cost_model, fit_to_annotations, selection_cost
    model = checked_cost_model(calibrated=fit_to_annotations(db))
    boxes = [len(item.frame.get("detections") or ()) for item in items for _ in range(item.overlap)]
    cost = selection_cost(boxes, model)
    return {"frames": len(items), "predicted_boxes": sum(len(i.frame.get("detections") or ()) for i in items),
            "estimated_label_seconds": cost["estimated_label_seconds"], "cost_model": model.describe()}


def _sync_tasks(s: Session, project_id: int, title: str) -> int:
    """Writes Label Studio's task ids into ``label_tasks`` and sets each new task's ``overlap``
    (annotators wanted); returns the number of tasks in the project."""
    from schemas import tables
    from schemas.labelling import make_label_task_key
    from transforms.index.mongodb_client import upsert_documents
    ledger = {d["frame_id"]: d for d in s.db["label_tasks"].find({"project": title})}
    updates, n = [], 0
    for task in s.client.tasks(project_id):
        n += 1
        entry = ledger.get(task["data"].get("frame_id"))
        if entry is None:
            continue
        if entry.get("task_id") != task["id"]:
            updates.append({"_id": make_label_task_key(title, entry["frame_id"]), "task_id": int(task["id"])})
        if not task.get("annotations") and task.get("overlap") != entry["overlap"]:
            s.client.update_task(task["id"], overlap=int(entry["overlap"]))
    if updates:
        upsert_documents(s.mongo_uri, s.job.mongo_database, tables.label_tasks_table(), updates)
    return n


# --- import ----------------------------------------------------------------------------------

def import_annotations(options, job: AnnotateJob) -> dict:
    """Reads the project's finished annotations into the ``annotations`` table."""
    import apache_beam as beam
    from schemas import tables
    from transforms.annotate.ptransforms import NormaliseAnnotations
    from transforms.index.mongodb_client import upsert_documents
    o = options.view_as(AnnotateOptions)
    with Session(options, job) as s:
        project = s.existing_project()
        classes = job.classes or tuple(ls.classes_of_config(project["label_config"]))
        if o.export_file:
            with open(o.export_file, encoding="utf-8") as f:
                tasks = json.load(f)
        else:
            tasks = list(s.client.tasks(project["id"]))
        ledger = list(s.db["label_tasks"].find({"project": project["title"]}))
        sizes = {d["_id"]: d for d in s.db["frames"].find(
            {"_id": {"$in": [e["frame_id"] for e in ledger]}}, {"width": 1, "height": 1})}
        for entry in ledger:
            size = sizes.get(entry["frame_id"]) or {}
            entry["frame_width"] = size.get("width") or entry["image_width"]
            entry["frame_height"] = size.get("height") or entry["image_height"]
            entry["label_task_key"] = entry.pop("_id")
            entry.pop("exported_at", None)
            entry.pop("qc_at", None)
        users = s.client.users()
        dead_path = os.path.join(job.output_dir, DEAD_LETTER_FILE)
        spec = tables.annotations_table()

        def build(p):
            imported = (p | "Tasks" >> beam.Create(tasks)
                        | "Normalise" >> NormaliseAnnotations(classes, users, p | "Ledger" >> beam.Create(ledger)))
            _store_rows(s, imported.annotations, spec, o.bigquery_annotations_table, "task",
                        imported.dead_letters, dead_path)
        _run(build, options)
        labelled = s.db["annotations"].distinct("frame_id", {"label_project": project["title"]})
        updates = [{"_id": e["label_task_key"], "status": "labelled"} for e in ledger
                   if e["frame_id"] in set(labelled) and e.get("status") == "exported"]
        if updates:
            upsert_documents(s.mongo_uri, job.mongo_database, tables.label_tasks_table(), updates)
        reviewed = _apply_reviews(s, project, classes, dead_path)
        return {"project": project["title"], "tasks_read": len(tasks),
                "annotations": s.db["annotations"].count_documents({"label_project": project["title"]}),
                "frames_labelled": len(labelled), "reviewed": reviewed, "dead_letters": _count_lines(dead_path)}


def _apply_reviews(s: Session, project: dict, classes, dead_path: str) -> int:
    """Answers of the review project (``<title>-review``, made by ``qc --label_issues``) replace
    the labels of the annotations they review (``data.annotation_id``): ``label``, ``boxes``,
    ``reviewed_by``, ``review_task_id``, ``reviewed_at``, ``label_before_review``. A changed label
    adds a ``superseded:`` dead letter for the old one, as an annotator's later answer does; a
    review of no imported annotation or a malformed answer is a dead letter. Returns the number
    of reviewed annotations."""
    from schemas import tables
    from schemas.records import MAX_ERROR_CHARS, STAGE_LABEL_IMPORT, DeadLetter
    from transforms.index.mongodb_client import upsert_documents
    review = s.client.project_by_title(project["title"] + REVIEW_SUFFIX)
    if review is None:
        return 0
    kind, users = ls.kind_of_config(project["label_config"]), s.client.users()
    updates, dead = [], []
    for task in s.client.tasks(review["id"]):
        data, answer = task.get("data") or {}, ls.latest_answer(task, users)
        if answer is None:
            continue
        where = f"review task {task['id']} annotation {answer.get('id')} of {ls.annotator_name(answer, users)}"
        original = s.db["annotations"].find_one({"_id": data.get("annotation_id")})
        try:
            if original is None:
                raise LookupError(f"orphaned: {where} reviews no imported annotation ({data.get('annotation_id')!r})")
            parsed = ls.parse_result(answer.get("result"), kind, int(data["width"]), int(data["height"]), classes)
        except (LookupError, ValueError, TypeError) as e:
            reason = str(e) if isinstance(e, LookupError) else f"malformed: {where}: {e}"
            dead.append(DeadLetter(str(data.get("source_uri") or ""), STAGE_LABEL_IMPORT, reason[:MAX_ERROR_CHARS],
                                   data.get("frame_index"), data.get("frame_id")))
            continue
        before = original.get("label_before_review") or original["label"]
        boxes = ls.dumps(parsed.boxes) if kind == ls.DETECTION else None
        updates.append({"_id": original["_id"], "label": parsed.label, "boxes": boxes,
                        "label_index": classes.index(parsed.label) if parsed.label in classes else None,
                        "reviewed_by": ls.annotator_name(answer, users), "review_task_id": int(task["id"]),
                        "reviewed_at": ls.parse_time(answer.get("updated_at") or answer.get("created_at")),
                        "label_before_review": before})
        if (parsed.label, boxes) != (original["label"], original.get("boxes")):
            dead.append(DeadLetter(original["source_uri"], STAGE_LABEL_IMPORT,
                                   f"superseded: annotation {original.get('label_annotation_id')} of "
                                   f"{original['annotator']} ({before!r}) by {where}"[:MAX_ERROR_CHARS],
                                   original["frame_index"], original["frame_id"]))
    failed = upsert_documents(s.mongo_uri, s.job.mongo_database, tables.annotations_table(), updates) if updates else []
    with open(dead_path, "a", encoding="utf-8") as f:
        for d in dead + failed:
            f.write(json.dumps(d.to_json_dict(), sort_keys=True) + "\n")
    return len(updates) - len(failed)


def _store_rows(s: Session, rows, spec, bigquery_table: Optional[str], filter_column: str, dead_letters,
                dead_path: str) -> None:
    """Writes rows of a :mod:`schemas.tables` table to MongoDB (and appends them to
    ``bigquery_table`` when given, keyed by the spec's id field); every dead letter, the
    upstream ones included, to ``dead_path``."""
    import apache_beam as beam
    from schemas import tables
    from transforms.index.bigquery import WriteRowsToBigQuery
    from transforms.index.mongodb import WriteDocumentsToMongoDB
    name = spec.name.title().replace("_", "")
    written = (rows | f"{name}ToDocuments" >> beam.Map(lambda r: tables.to_mongo_document(spec, r))
               | f"{name}ToMongoDB" >> WriteDocumentsToMongoDB(s.mongo_uri, s.job.mongo_database, spec))
    dead = [dead_letters, written.dead_letters]
    if bigquery_table:
        dead.append(rows | f"{name}ToBigQuery" >> WriteRowsToBigQuery(
            bigquery_table, spec, _bigquery_row, (spec.id_field,), filter_column, method="STREAMING_INSERTS"))
    _write_dead_letters(dead | beam.Flatten(), dead_path)


def _bigquery_row(row: dict) -> dict:
    return {k: (v.isoformat(sep=" ") + " UTC" if isinstance(v, datetime.datetime) else v) for k, v in row.items()}


# --- qc --------------------------------------------------------------------------------------

def run_qc(options, job: AnnotateJob) -> dict:
    """QC of the project's annotations: report, statuses, relabelling."""
    from schemas import tables
    from transforms.annotate import qc
    from transforms.index.mongodb_client import upsert_documents
    o = options.view_as(AnnotateOptions)
    with Session(options, job) as s:
        project = s.existing_project()
        title, kind = project["title"], ls.kind_of_config(project["label_config"])
        _check_review_issue_types(job, title, kind)
        annotations = []
        for a in s.db["annotations"].find({"label_project": title}).sort("_id", 1):
            annotations.append(dict(a, boxes=json.loads(a["boxes"]) if a.get("boxes") else []))
        ledger = {e["frame_id"]: e for e in s.db["label_tasks"].find({"project": title})}
        gold = {fid: {"label": e.get("gold_label"),
                      "boxes": json.loads(e["gold_boxes"]) if e.get("gold_boxes") else None}
                for fid, e in ledger.items() if e.get("gold")}
        report = qc.qc_report(annotations, gold, kind, o.iou_threshold, o.min_agreement, o.min_gold_accuracy)
        fingerprint = json.dumps([title, report["thresholds"], [(a["_id"], str(a.get("updated_at")), a["label"])
                                                               for a in annotations], sorted(gold)], default=str)
        qc_id = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:32]
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        rows = [dict(r, qc_row_id=f"{qc_id}:{r['scope']}:{r['name']}", created_at=now)
                for r in qc.report_rows(report, title, qc_id)]
        docs = [tables.to_mongo_document(tables.qc_reports_table(), r) for r in rows]
        updates, relabel = [], []
        for frame_id, task in report["tasks"].items():
            entry = ledger.get(frame_id)
            if entry is None:
                continue
            updates.append({"_id": entry["_id"], "status": task["status"], "qc_reason": task["reason"],
                            "accepted_label": task["label"] if task["status"] == qc.ACCEPTED else None,
                            "accepted_boxes": ls.dumps(task["boxes"]) if task["status"] == qc.ACCEPTED
                            and kind == ls.DETECTION else None, "qc_at": now})
            if task["status"] == qc.RELABEL and entry.get("task_id") is not None:
                relabel.append((entry["task_id"], len(task["annotators"]) + 1))
        dead = upsert_documents(s.mongo_uri, job.mongo_database, tables.qc_reports_table(), docs)
        dead += upsert_documents(s.mongo_uri, job.mongo_database, tables.label_tasks_table(), updates) if updates else []
        if not o.no_relabel:
            for task_id, overlap in relabel:  # one more annotator: Label Studio offers the task again
                s.client.update_task(task_id, overlap=overlap)
        out = dict(report, qc_id=qc_id, project=title)
        found = _label_issues(s, options, job, project, annotations, ledger, now) if o.label_issues else None
        if found is not None:
            out["label_issues"] = found
        with open(os.path.join(job.output_dir, QC_REPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, sort_keys=True, default=str)
        return {"project": title, "qc_id": qc_id, "annotators": report["annotators"], "batches": report["batches"],
                "accepted": sum(t["status"] == qc.ACCEPTED for t in report["tasks"].values()),
                "relabel": sum(t["status"] == qc.RELABEL for t in report["tasks"].values()),
                "gold": sum(t["status"] == qc.GOLD for t in report["tasks"].values()),
                "report": os.path.join(job.output_dir, QC_REPORT_FILE), "store_failures": len(dead),
                **({"label_issues": found} if found is not None else {})}


def _check_review_issue_types(job: AnnotateJob, title: str, kind: str):
    """``OptionError`` when ``--review_issue_types`` names a box issue type (``overlooked``,
    ``badloc``) for a classification project, whose only label issue is a swap (a wrong class):
    its queue would always be empty and send nothing."""
    box_types = [t for t in job.review_issue_types if t != LABEL_ISSUE_TYPES[0]]
    if kind == ls.CLASSIFICATION and box_types:
        raise preflight.OptionError(
            f"--review_issue_types {','.join(box_types)}: project {title} labels classes, whose only label issue "
            f"type is {LABEL_ISSUE_TYPES[0]} (a wrong class); {' and '.join(LABEL_ISSUE_TYPES[1:])} are issues "
            f"of boxes")


def _label_issues(s: Session, options, job: AnnotateJob, project: dict, annotations: List[dict],
                  ledger: Dict[str, dict], now: datetime.datetime) -> dict:
    """``qc --label_issues``: every annotation scored with cleanlab against its frame's
    predictions (:class:`transforms.annotate.FindLabelIssues`) into ``label_issues``, and the worst
    flagged ones sent for review (:func:`transforms.annotate.label_issues.review_queue`: by overall
    quality, or per ``--review_issue_types`` queue); returns the section of the QC report
    (``worst``: the first rows by ``rank``; ``worst_by_type``: each type's first rows by ``type_rank``)."""
    import apache_beam as beam
    from schemas import tables
    from transforms.annotate.label_issues import review_queue
    from transforms.annotate.ptransforms import FindLabelIssues
    o = options.view_as(AnnotateOptions)
    title, kind = project["title"], ls.kind_of_config(project["label_config"])
    classes = job.classes or tuple(ls.classes_of_config(project["label_config"]))
    frames = list(s.db["frames"].find({"_id": {"$in": sorted({a["frame_id"] for a in annotations})}},
                                      {"embedding": 0}))
    fingerprint = json.dumps([title, kind, list(classes), [(a["_id"], str(a.get("updated_at")), a["label"],
                                                            a.get("boxes")) for a in annotations],
                              sorted((f["_id"], str(f.get("model"))) for f in frames)], default=str)
    run_id = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:32]
    spec = tables.label_issues_table()
    dead_path = os.path.join(job.output_dir, LABEL_ISSUES_DEAD_LETTER_FILE)

    def build(p):
        found = (p | "Annotations" >> beam.Create(annotations)
                 | "FindLabelIssues" >> FindLabelIssues(kind, classes, p | "Frames" >> beam.Create(frames),
                                                        title, run_id, created_at=now))
        _store_rows(s, found.issues, spec, o.bigquery_label_issues_table, "project", found.dead_letters, dead_path)
    _run(build, options)
    issues = list(s.db["label_issues"].find({"project": title, "run_id": run_id}).sort("rank", 1))
    picks = review_queue(issues, o.review_budget, job.review_issue_types)
    review = _send_for_review(s, project, kind, classes, picks, ledger, frames, annotations) if picks else {}
    flagged = [i for i in issues if i["is_issue"]]
    keep = ("rank", "type_rank", "frame_id", "annotator", "label", "issue_type", "quality_score", "type_score",
            "suggested_label", "suspect_box", "model_box", "review_task_id")
    task_ids = review.get("task_ids") or {}

    def listed(rows: List[dict]) -> List[dict]:
        return [{k: i.get(k) for k in keep} | {"review_task_id": task_ids.get(i["_id"], i.get("review_task_id"))}
                for i in rows[:REPORTED_ISSUES]]
    return {"run_id": run_id, "method": issues[0]["method"] if issues else None, "scored": len(issues),
            "flagged": len(flagged), "unscorable": _count_lines(dead_path),
            "flagged_by_type": {t: sum(i["issue_type"] == t for i in flagged) for t in LABEL_ISSUE_TYPES},
            "review_by": list(job.review_issue_types) or "quality",
            "review_project": review.get("project"), "review_tasks": len(task_ids),
            "worst": listed(issues),
            "worst_by_type": {t: listed(sorted((i for i in issues if i["issue_type"] == t), key=lambda i: i["type_rank"]))
                              for t in LABEL_ISSUE_TYPES}}


def _send_for_review(s: Session, project: dict, kind: str, classes, picks: List[dict], ledger: Dict[str, dict],
                     frames: List[dict], annotations: List[dict]) -> dict:
    """The picked issues as tasks of the project ``<title>-review`` (one per frame, by
    ``data.frame_id``: a rerun adds none), the same pictures, the suspect box highlighted and
    the model's fix as pre-annotation; ``label_issues.review_task_id`` set. Returns
    ``{"project", "task_ids": {label_issue_id: task id}}``."""
    from schemas import tables
    from transforms.index.mongodb_client import upsert_documents
    title = project["title"] + REVIEW_SUFFIX
    review = s.client.ensure_project(title, ls.review_config(kind, classes), maximum_annotations=1)
    present = {t["data"].get("frame_id") for t in s.client.tasks(review["id"])}
    sizes = {f["_id"]: (int(f["width"]), int(f["height"])) for f in frames}
    given = {a["_id"]: a.get("boxes") or [] for a in annotations}
    new, storages = [], set()
    for issue in picks:
        entry = ledger.get(issue["frame_id"])
        if issue["frame_id"] in present or entry is None or not entry.get("image"):
            continue
        folder = os.path.dirname(os.path.abspath(entry["image"]))
        if folder not in storages:
            s.client.ensure_local_storage(review["id"], folder)
            storages.add(folder)
        width, height = sizes[issue["frame_id"]]
        issue = dict(issue, label_issue_id=issue["_id"])  # the MongoDB document: its id is _id
        new.append(ls.make_review_task(issue, ls.local_files_url(entry["image"], s.document_root), width, height,
                                       given.get(issue["annotation_id"]) or []))
        present.add(issue["frame_id"])
    if new:
        s.client.import_tasks(review["id"], new)
    task_ids = {t["data"]["label_issue_id"]: int(t["id"]) for t in s.client.tasks(review["id"])
                if t["data"].get("label_issue_id")}
    updates = [{"_id": issue_id, "review_task_id": task_id} for issue_id, task_id in sorted(task_ids.items())]
    dead = upsert_documents(s.mongo_uri, s.job.mongo_database, tables.label_issues_table(), updates) if updates else []
    if dead:
        raise shutdown.RunFailed(f"could not record the review tasks: {dead[0].error}")
    return {"project": title, "task_ids": task_ids}


# --- dataset ---------------------------------------------------------------------------------

def write_dataset(options, job: AnnotateJob) -> dict:
    """Accepted labels as a training set; a retraining trigger when enough are new."""
    import apache_beam as beam
    from transforms.annotate.ptransforms import WriteTrainingSet
    o = options.view_as(AnnotateOptions)
    with Session(options, job, need_label_studio=job.classes is None) as s:
        if job.classes is None:
            project = s.existing_project()
            title, classes = project["title"], tuple(ls.classes_of_config(project["label_config"]))
            kind = ls.kind_of_config(project["label_config"])
        else:
            title, classes = s.project_title(None if o.task == "auto" else o.task), job.classes
            kind = ls.DETECTION if o.task == "detection" else ls.CLASSIFICATION
        accepted = list(s.db["label_tasks"].find({"project": title, "status": "accepted"}).sort("frame_id", 1))
        sizes = {d["_id"]: d for d in s.db["frames"].find(
            {"_id": {"$in": [e["frame_id"] for e in accepted]}}, {"width": 1, "height": 1})}
        labels = [{"frame_id": e["frame_id"], "image": e["image"], "image_width": e["image_width"],
                   "image_height": e["image_height"], "source_uri": e["source_uri"], "frame_index": e["frame_index"],
                   "width": (sizes.get(e["frame_id"]) or {}).get("width") or e["image_width"],
                   "height": (sizes.get(e["frame_id"]) or {}).get("height") or e["image_height"],
                   "label": e["accepted_label"],
                   "boxes": json.loads(e["accepted_boxes"]) if e.get("accepted_boxes") else []} for e in accepted]
        version = hashlib.sha256(json.dumps([(l["frame_id"], l["label"], l["boxes"]) for l in labels],
                                            sort_keys=True).encode("utf-8")).hexdigest()[:16]
        latest_qc = s.db["qc_reports"].find_one({"project": title}, sort=[("created_at", -1)])
        reviewed = sorted(set(s.db["annotations"].distinct("frame_id", {"label_project": title,
                                                                        "reviewed_by": {"$type": "string"}}))
                          & {l["frame_id"] for l in labels})
        lineage = {"project": title, "dataset_version": version, "reviewed_frames": reviewed,
                   "selections": sorted({e.get("selection_id") for e in accepted if e.get("selection_id")}),
                   "model_versions": sorted({e.get("model_version") for e in accepted if e.get("model_version")}),
                   "qc_id": latest_qc and latest_qc["qc_id"], "accepted_labels": len(labels)}
        _run(lambda p: p | "Accepted" >> beam.Create(labels) | "Write" >> WriteTrainingSet(
            job.dataset_dir, kind, classes, o.val_fraction, lineage), options)
        trigger = _retrain_trigger(s, title, job.dataset_dir, version, lineage) if o.retrain_after else None
        return dict(lineage, dataset_dir=job.dataset_dir, kind=kind, trigger=trigger)


def _retrain_trigger(s: Session, title: str, dataset_dir: str, version: str, lineage: dict) -> Optional[dict]:
    """A ``retrain_triggers`` entry (and a Pub/Sub message) when the accepted labels grew by
    ``--retrain_after`` since the previous trigger; the existing entry on a rerun."""
    from schemas import tables
    from schemas.labelling import make_label_task_key
    from transforms.index.mongodb_client import upsert_documents
    trigger_id = make_label_task_key(title, version)  # sha256(project NUL dataset_version)[:32]
    existing = s.db["retrain_triggers"].find_one({"_id": trigger_id})
    if existing:
        return {"trigger_id": trigger_id, "new": False, "new_labels": existing["new_labels"]}
    previous = s.db["retrain_triggers"].find_one({"project": title}, sort=[("created_at", -1)])
    new_labels = lineage["accepted_labels"] - (previous["accepted_labels"] if previous else 0)
    if new_labels < s.o.retrain_after:
        return {"trigger_id": None, "new": False, "new_labels": new_labels}
    doc = {"_id": trigger_id, "project": title, "dataset_dir": dataset_dir, "dataset_version": version,
           "accepted_labels": lineage["accepted_labels"], "new_labels": new_labels,
           "retrain_after": s.o.retrain_after, "model_versions": lineage["model_versions"],
           "pubsub_topic": s.o.retrain_topic,
           "created_at": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)}
    if s.o.retrain_topic:
        from google.cloud import pubsub_v1
        message = json.dumps({k: v for k, v in doc.items() if k != "created_at"}, default=str).encode("utf-8")
        pubsub_v1.PublisherClient().publish(s.o.retrain_topic, message, trigger_id=trigger_id).result(timeout=60)
    dead = upsert_documents(s.mongo_uri, s.job.mongo_database, tables.retrain_triggers_table(), [doc])
    if dead:
        raise shutdown.RunFailed(f"could not write the retraining trigger: {dead[0].error}")
    return {"trigger_id": trigger_id, "new": True, "new_labels": new_labels}


COMMANDS = {"export": export, "import": import_annotations, "qc": run_qc, "dataset": write_dataset}


def run(argv: List[str]) -> dict:
    """Runs one subcommand; returns its counts. OptionError (exit 2), StoreUnavailable (exit 3)."""
    from transforms.annotate.client import LabelStudioError
    from transforms.common import gcp_emulators
    gcp_emulators.use_emulators_if_configured()  # BigQuery / Pub/Sub emulators when their hosts are set
    try:
        command, rest = split_command(list(argv))
    except ValueError as e:
        raise preflight.OptionError(str(e)) from None
    options, job = preflight.check_job(rest, AnnotateOptions, lambda opts: check_options(command, opts))
    try:
        return COMMANDS[command](options, job)
    except LabelStudioError as e:
        raise preflight.StoreUnavailable(str(e)) from e


#: The options of ``mine`` that this job reads too (``--help`` lists them with their help).
SHARED_OPTIONS = ("--output_dir", "--mongo_uri", "--mongo_database", "--store_check_timeout_s")


def main(argv=None):
    args = list(argv if argv is not None else sys.argv[1:])
    if "-h" in args or "--help" in args:
        preflight.print_help(PROG + " {export,import,qc,dataset}", AnnotateOptions, shared=SHARED_OPTIONS,
                             shared_from=MineOptions)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    with shutdown.exit_codes("annotate"), shutdown.cancel_on_signals():
        result = run(args)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))

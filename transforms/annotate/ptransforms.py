"""The labelling loop in Beam: frames to Label Studio tasks, annotations back, training sets out.

::

    exported = items | ExportToLabelStudio(url, api_key, project_id, "cams", "detection", classes,
                                           media_dir="/srv/ls-root/activebeam/cams", document_root="/srv/ls-root")
    exported.label_tasks    # PCollection[dict]: rows of the label_tasks table (one per frame)
    exported.dead_letters   # PCollection[DeadLetter]: frames without a picture or a task (stage label_export)

    imported = ls_tasks | NormaliseAnnotations(classes, users, ledger)
    imported.annotations    # PCollection[dict]: rows of the annotations table
    imported.dead_letters   # malformed, orphaned, skipped or superseded annotations (stage label_import)

    accepted | WriteTrainingSet("/out/dataset", "classification", classes, val_fraction=0.2)

    found = annotations | FindLabelIssues("detection", classes, frames, project="cams", run_id=run_id)
    found.issues            # PCollection[dict]: rows of the label_issues table, ranked
    found.dead_letters      # annotations without a frame or usable predictions (stage label_issues)

* :class:`ExportToLabelStudio` groups frames by source file, decodes each frame again at full
  resolution (:func:`transforms.decode.redecode.map_frames`: one pass per video), writes it as a
  PNG under ``media_dir`` (which Label Studio serves through its local-files storage, or, for a
  server the job cannot write files for, from which it is uploaded through the import API), then imports
  tasks in batches with the model's pre-annotations
  (:func:`transforms.annotate.label_studio.make_task`). A frame whose task already exists in the
  project (its ``data.frame_id``) is not imported again: exporting twice makes no duplicate.
* :class:`NormaliseAnnotations` turns each Label Studio task (API or JSON export) into one row per
  (frame, annotator) (:func:`schemas.annotations.make_annotation_id`), checked against the
  project's classes; every annotation is a row or a dead letter with its reason.
* :class:`FindLabelIssues` joins each annotation with its frame's predictions and scores them all
  together with cleanlab (:mod:`transforms.annotate.label_issues`): one ranked ``label_issues``
  row per annotation.
* :class:`WriteTrainingSet` writes accepted labels as COCO files (detection) or a CSV manifest
  and class folders (classification), split by :func:`transforms.annotate.dataset.split_of`.
"""
import csv
import datetime
import io
import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from schemas.annotations import make_annotation_id
from schemas.labelling import make_label_issue_id, make_label_task_key
from schemas.records import DEAD_LETTER_TAG as DEAD_LETTER
from schemas.records import MAX_ERROR_CHARS, STAGE_LABEL_EXPORT, STAGE_LABEL_IMPORT, STAGE_LABEL_ISSUES, DeadLetter
from transforms.annotate import dataset as dataset_lib
from transforms.annotate import label_issues as issues_lib
from transforms.annotate import label_studio as ls
from transforms.index.mongodb_client import labelled_frame_ids

METRICS_NAMESPACE = "activebeam.annotate"


class ExportItem(NamedTuple):
    """A frame to send for labelling: its frame document (``_id``, ``source_uri``,
    ``frame_index``, ``timestamp_s``, ``width``, ``height``, prediction fields), the selection that
    proposed it, whether it is a gold task (with its known answer) and how many annotators it wants."""
    frame: dict
    selection_id: Optional[str]
    gold: bool = False
    gold_label: Optional[str] = None
    gold_boxes: Optional[list] = None
    overlap: int = 1


class Exported(NamedTuple):
    label_tasks: beam.PCollection
    dead_letters: beam.PCollection


class Imported(NamedTuple):
    annotations: beam.PCollection
    dead_letters: beam.PCollection


def _frame_id(frame: dict) -> str:
    return frame.get("_id") or frame["frame_id"]


def _dead_letter(frame: dict, stage: str, error: str) -> DeadLetter:
    return DeadLetter(frame.get("source_uri", ""), stage, error[:MAX_ERROR_CHARS],
                      frame.get("frame_index"), frame.get("_id") or frame.get("frame_id"))


class _WritePicturesFn(beam.DoFn):
    """All requested frames of one source: decoded again, written as ``<media_dir>/<frame_id>.png``."""

    def __init__(self, media_dir: str):
        self._media_dir = media_dir
        self._written = Metrics.counter(METRICS_NAMESPACE, "pictures_written")

    def process(self, element):
        from transforms.decode.redecode import FrameRequest, map_frames
        _, items = element
        items = list(items)
        os.makedirs(self._media_dir, exist_ok=True)
        requests = [FrameRequest(_frame_id(i.frame), i.frame["source_uri"], int(i.frame.get("frame_index", 0)),
                                 i.frame.get("timestamp_s")) for i in items]
        results = map_frames(requests, self._write, lambda reason: reason, workers=1)
        for item in items:
            result = results[_frame_id(item.frame)]
            if isinstance(result, str):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(
                    item.frame, STAGE_LABEL_EXPORT, f"cannot decode the frame again for its picture: {result}"))
            else:
                self._written.inc()
                yield item, result

    def _write(self, request, rgb):
        import cv2
        path = os.path.join(self._media_dir, f"{request.frame_id}.png")
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
        if not ok:
            return "OpenCV could not encode the PNG"
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(png.tobytes())
        os.replace(tmp, path)  # atomic: Label Studio never serves half a picture
        return path, int(rgb.shape[1]), int(rgb.shape[0])


class _ImportTasksFn(beam.DoFn):
    """Imports a batch of tasks into the project, skipping frames it already holds; yields the
    ``label_tasks`` row of every frame of the batch."""

    def __init__(self, url: str, api_key: str, project_id: int, project: str, kind: str,
                 classes: Sequence[str], document_root: Optional[str]):
        self._url, self._api_key, self._project_id = url, api_key, project_id
        self._project, self._kind, self._classes = project, kind, tuple(classes)
        self._document_root = os.path.abspath(document_root) if document_root else None
        self._uploaded = Metrics.counter(METRICS_NAMESPACE, "pictures_uploaded")
        self._imported = Metrics.counter(METRICS_NAMESPACE, "tasks_imported")
        self._present = Metrics.counter(METRICS_NAMESPACE, "tasks_already_present")
        self._client, self._existing = None, set()

    def setup(self):
        from transforms.annotate.client import LabelStudioClient
        self._client = LabelStudioClient(self._url, self._api_key)
        self._existing = {t["data"].get("frame_id") for t in self._client.tasks(self._project_id)}

    def _url_of(self, path: str) -> str:
        """The picture's URL for the task: under the local-files root, or (no root) the URL Label
        Studio gives the picture once uploaded through its import API."""
        if self._document_root is None:
            url = self._client.upload_file(self._project_id, path)
            self._uploaded.inc()
            return url
        return ls.local_files_url(path, self._document_root)

    def process(self, batch):
        new_tasks, rows = [], []
        for item, (path, width, height) in batch:
            frame_id = _frame_id(item.frame)
            try:  # a frame already in the project keeps its picture: nothing is uploaded again
                image = "" if frame_id in self._existing else self._url_of(path)
            except Exception as e:  # noqa: BLE001 - this frame is a dead letter, the batch goes on
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(
                    item.frame, STAGE_LABEL_EXPORT, f"Label Studio did not take the picture: {type(e).__name__}: {e}"))
                continue
            task = ls.make_task(item.frame, image, self._kind, self._classes,
                                selection_id=item.selection_id, gold=item.gold, overlap=item.overlap)
            row = {"label_task_key": make_label_task_key(self._project, frame_id), "project": self._project,
                   "frame_id": frame_id, "source_uri": item.frame["source_uri"],
                   "frame_index": int(item.frame.get("frame_index", 0)), "kind": self._kind,
                   "selection_id": item.selection_id, "image": path, "image_width": width,
                   "image_height": height, "overlap": int(item.overlap), "gold": bool(item.gold),
                   "gold_label": item.gold_label,
                   "gold_boxes": ls.dumps(item.gold_boxes) if item.gold_boxes is not None else None,
                   "model_version": (task.get("predictions") or [{}])[0].get("model_version")}
            if frame_id in self._existing:
                self._present.inc()  # its status (labelled, accepted, ...) and batch stay as they were
                row.pop("selection_id")
            else:
                new_tasks.append(task)
                row["status"] = "gold" if item.gold else "exported"
            rows.append((item, row))
        if new_tasks:
            try:
                self._client.import_tasks(self._project_id, new_tasks)
            except Exception as e:  # noqa: BLE001 - the batch's frames are dead letters, the run goes on
                for item, _ in rows:
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(
                        item.frame, STAGE_LABEL_EXPORT, f"Label Studio import failed: {type(e).__name__}: {e}"))
                return
            self._imported.inc(len(new_tasks))
            self._existing.update(t["data"]["frame_id"] for t in new_tasks)
        for _, row in rows:
            yield row


class ExportToLabelStudio(beam.PTransform):
    """Sends frames to a Label Studio project as tasks with pre-annotations, idempotently.

    Parameters
    ----------
    url, api_key : str
        Label Studio's base URL and an access token.
    project_id : int
        The project (made by :meth:`transforms.annotate.client.LabelStudioClient.ensure_project`
        with :func:`transforms.annotate.label_studio.label_config`).
    project : str
        Its title (the ``project`` of the ``label_tasks`` rows).
    kind : str
        ``classification`` or ``detection``.
    classes : sequence of str
        Class names, in the model's class order.
    media_dir : str
        Local folder for the pictures: with ``document_root``, under it and registered as the
        project's local-files storage; without, a scratch folder of this job.
    document_root : str, optional
        Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``, when the job can write there. ``None``: a
        Label Studio the job cannot write files for; each new task's picture is uploaded through
        the server's import API (``POST /api/projects/ID/import?commit_to_project=false``) and the
        task points at the URL the server gives it (``/data/upload/...``, kept in its own storage).
    batch_size : int
        Tasks per import request.

    Input: ``PCollection[ExportItem]``. Returns :class:`Exported`: ``label_tasks`` rows (a frame
    already in the project has no ``status``, so a rerun leaves its QC status alone) and dead
    letters (stage ``label_export``).
    """

    def __init__(self, url: str, api_key: str, project_id: int, project: str, kind: str,
                 classes: Sequence[str], media_dir: str, document_root: Optional[str], batch_size: int = 100):
        super().__init__()
        ls.check_kind(kind)
        if document_root and not os.path.abspath(media_dir).startswith(os.path.abspath(document_root) + os.sep):
            raise ValueError(f"media_dir {media_dir} must be under document_root {document_root}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._media_dir = media_dir
        self._batch_size = batch_size
        self._import = _ImportTasksFn(url, api_key, project_id, project, kind, classes, document_root)

    def expand(self, items):
        pictures = (items
                    | "BySource" >> beam.Map(lambda item: (item.frame["source_uri"], item))
                    | "GroupBySource" >> beam.GroupByKey()
                    | "WritePictures" >> beam.ParDo(_WritePicturesFn(self._media_dir))
                    .with_outputs(DEAD_LETTER, main="pictures"))
        imported = (pictures.pictures
                    | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
                    | "ImportTasks" >> beam.ParDo(self._import).with_outputs(DEAD_LETTER, main="rows"))
        dead = (pictures[DEAD_LETTER], imported[DEAD_LETTER]) | "ExportDeadLetters" >> beam.Flatten()
        return Exported(imported.rows, dead)


class _NormaliseFn(beam.DoFn):
    """One Label Studio task -> one annotation row per annotator (the latest), or dead letters."""

    def __init__(self, classes: Sequence[str], users: Dict[int, str]):
        self._classes, self._users = tuple(classes), dict(users)
        self._rows = Metrics.counter(METRICS_NAMESPACE, "annotations_normalised")
        self._dead = Metrics.counter(METRICS_NAMESPACE, "annotations_dead_lettered")

    def _dead_letter(self, data: dict, error: str) -> DeadLetter:
        self._dead.inc()
        return DeadLetter(str(data.get("source_uri") or ""), STAGE_LABEL_IMPORT, error[:MAX_ERROR_CHARS],
                          data.get("frame_index") if isinstance(data.get("frame_index"), int) else None,
                          data.get("frame_id") if isinstance(data.get("frame_id"), str) else None)

    def process(self, task, ledger):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(
                {}, f"malformed: not a Label Studio task: {str(task)[:200]}"))
            return
        data, task_id = task["data"], task.get("id")
        entry = ledger.get(data.get("frame_id"))
        annotations = [a for a in task.get("annotations") or () if isinstance(a, dict)]
        if entry is None:
            for a in annotations or [None]:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(
                    data, f"orphaned: task {task_id} (annotation {a and a.get('id')}) has no frame exported "
                          f"to this project (data.frame_id={data.get('frame_id')!r})"))
            return
        latest: Dict[str, dict] = {}
        for a in sorted(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                                    a.get("id") or 0)):
            annotator = ls.annotator_name(a, self._users)
            where = f"task {task_id} annotation {a.get('id')}"
            if annotator is None:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(data, f"malformed: {where} has no annotator"))
            elif a.get("was_cancelled"):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(
                    data, f"skipped: {where}: {annotator} skipped the task"))
            else:
                if annotator in latest:
                    old = latest[annotator]
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(
                        data, f"superseded: task {task_id} annotation {old.get('id')} of {annotator} "
                              f"by the later annotation {a.get('id')}"))
                latest[annotator] = a
        for annotator, a in sorted(latest.items()):
            try:
                yield self._row(a, annotator, entry, task_id)
                self._rows.inc()
            except (ValueError, TypeError, KeyError) as e:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(
                    data, f"malformed: task {task_id} annotation {a.get('id')} of {annotator}: {e}"))

    def _row(self, a: dict, annotator: str, entry: dict, task_id) -> dict:
        kind = entry["kind"]
        width, height = int(entry["frame_width"]), int(entry["frame_height"])
        parsed = ls.parse_result(a.get("result"), kind, width, height, self._classes)
        created = ls.parse_time(a.get("created_at"))
        if created is None:
            raise ValueError("no created_at")
        lead = a.get("lead_time")
        return {
            "annotation_id": make_annotation_id(entry["frame_id"], kind, annotator),
            "frame_id": entry["frame_id"], "source_uri": entry["source_uri"],
            "frame_index": int(entry["frame_index"]), "task": kind, "label": parsed.label,
            "label_index": self._classes.index(parsed.label) if parsed.label in self._classes else None,
            "annotator": annotator, "selection_id": entry.get("selection_id"), "annotated_at": created,
            "boxes": ls.dumps(parsed.boxes) if kind == ls.DETECTION else None,
            "label_project": entry["project"], "label_task_id": int(task_id) if task_id is not None else None,
            "label_annotation_id": int(a["id"]) if a.get("id") is not None else None,
            "model_version": entry.get("model_version"),
            "lead_time_s": float(lead) if lead is not None else None,
            "updated_at": ls.parse_time(a.get("updated_at")),
        }  # imported_at: the table's ingest time, set by the writer on first insert


class NormaliseAnnotations(beam.PTransform):
    """Label Studio tasks (API ``fields=all`` or JSON export) -> rows of the ``annotations`` table.

    Parameters
    ----------
    classes : sequence of str
        The project's classes (a label outside them is malformed).
    users : dict
        ``{user id: e-mail}``: who ``completed_by`` is.
    ledger : PCollection[dict]
        The project's ``label_tasks`` entries with ``frame_width``/``frame_height`` (the frame's
        decoded size) added; a task whose ``data.frame_id`` is not among them is orphaned.

    Input: ``PCollection[dict]``. Returns :class:`Imported`; dead letters (stage
    ``label_import``) say ``malformed:``, ``orphaned:``, ``skipped:`` or ``superseded:``.
    """

    def __init__(self, classes: Sequence[str], users: Dict[int, str], ledger):
        super().__init__()
        self._classes, self._users, self._ledger = tuple(classes), dict(users), ledger

    def expand(self, tasks):
        ledger = beam.pvalue.AsDict(self._ledger | "KeyByFrame" >> beam.Map(lambda e: (e["frame_id"], e)))
        out = tasks | "Normalise" >> beam.ParDo(_NormaliseFn(self._classes, self._users), ledger).with_outputs(
            DEAD_LETTER, main="rows")
        return Imported(out.rows, out[DEAD_LETTER])


class _LabelledIdsFn(beam.DoFn):
    """Frame ids already sent for labelling or labelled, and their near-duplicates, from MongoDB."""

    def __init__(self, uri: str, database: str):
        self._uri, self._database = uri, database
        self._excluded = Metrics.counter(METRICS_NAMESPACE, "frames_excluded_as_labelled")

    def process(self, _):
        ids, near = labelled_frame_ids(self._uri, self._database)
        yield from sorted(ids)
        self._excluded.inc(len(ids))
        yield from sorted(near)
        self._excluded.inc(len(near))


class ReadLabelledFrameIds(beam.PTransform):
    """The frame ids a new selection must skip: every frame in ``label_tasks`` (sent for
    labelling) or ``annotations`` (labelled), and the frames of their ``duplicate_group``
    (near-duplicates, when the frames carry one).

    Apply to a pipeline (``pipeline | ReadLabelledFrameIds(uri, db)``); returns
    ``PCollection[str]``, the ``exclude_ids`` of :class:`transforms.select.SelectCandidates`.
    Missing collections count as empty.
    """

    def __init__(self, uri: str, database: str):
        super().__init__()
        self._uri, self._database = uri, database

    def expand(self, pbegin):
        return (pbegin | "Once" >> beam.Create([None])
                | "QueryLabelled" >> beam.ParDo(_LabelledIdsFn(self._uri, self._database)))


def _write_text(path: str, text: str):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class _WriteSetFn(beam.DoFn):
    def __init__(self, out_dir: str, kind: str, classes: Sequence[str], val_fraction: float, lineage: dict):
        self._out_dir, self._kind, self._classes = out_dir, kind, tuple(classes)
        self._val_fraction, self._lineage = val_fraction, lineage

    def process(self, labels):
        labels = sorted(labels, key=lambda l: l["frame_id"])
        splits = {dataset_lib.TRAIN: [], dataset_lib.VAL: []}
        for label in labels:
            splits[dataset_lib.split_of(label["frame_id"], self._val_fraction)].append(label)
        files = {}
        if self._kind == ls.DETECTION:
            for split, members in splits.items():
                name = f"coco_{split}.json"
                _write_text(os.path.join(self._out_dir, name), json.dumps(
                    dataset_lib.coco_document(members, self._classes, f"activebeam {split}"), indent=1) + "\n")
                files[split] = name
        else:
            buffer = io.StringIO()
            columns = ["frame_id", "split", "label", "image", "source_uri", "frame_index"]
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in dataset_lib.manifest_rows(labels, self._val_fraction):
                writer.writerow(row)
            _write_text(os.path.join(self._out_dir, "manifest.csv"), buffer.getvalue())
            files = {"manifest": "manifest.csv"}
        counts = {split: len(members) for split, members in splits.items()}
        lineage = dict(self._lineage, kind=self._kind, classes=list(self._classes), files=files,
                       counts=counts, val_fraction=self._val_fraction,
                       labels_per_class=_per_class(labels, self._kind))
        _write_text(os.path.join(self._out_dir, "dataset.json"), json.dumps(lineage, indent=1, sort_keys=True) + "\n")
        yield lineage


def _per_class(labels: List[dict], kind: str) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for label in labels:
        names = [b["label"] for b in label.get("boxes") or ()] if kind == ls.DETECTION else [label["label"]]
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


class _LinkIntoClassFolderFn(beam.DoFn):
    """Classification: ``<out>/<split>/<label>/<frame_id>.png`` as a hard link (a copy across devices)."""

    def __init__(self, out_dir: str, val_fraction: float):
        self._out_dir, self._val_fraction = out_dir, val_fraction
        self._linked = Metrics.counter(METRICS_NAMESPACE, "dataset_pictures")

    def process(self, label):
        import shutil
        split = dataset_lib.split_of(label["frame_id"], self._val_fraction)
        folder = os.path.join(self._out_dir, split, label["label"].replace("/", "_"))
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, f"{label['frame_id']}{os.path.splitext(label['image'])[1]}")
        if not os.path.exists(target):
            try:
                os.link(label["image"], target)
            except OSError:
                shutil.copyfile(label["image"], target)
        self._linked.inc()
        yield target


class WriteTrainingSet(beam.PTransform):
    """Writes accepted labels as a training set under a local ``out_dir``.

    Detection: ``coco_train.json`` and ``coco_val.json`` (:func:`transforms.annotate.dataset.coco_document`,
    ``file_name`` = the picture's path). Classification: ``manifest.csv`` (``frame_id, split,
    label, image, source_uri, frame_index``) and ``<split>/<label>/<frame_id>.png`` class folders.
    Both: ``dataset.json`` with ``lineage`` (selections, model versions, QC) and the counts.

    Parameters
    ----------
    out_dir : str
        Local directory (created).
    kind : str
        ``classification`` or ``detection``.
    classes : sequence of str
        Category order of the COCO file.
    val_fraction : float
        Share of frames in the validation split, in [0, 1).
    lineage : dict
        Facts about where the labels came from, written to ``dataset.json``.

    Input: ``PCollection[dict]`` of accepted labels (see :mod:`transforms.annotate.dataset`).
    Returns ``PCollection[dict]``: the one ``dataset.json`` content.
    """

    def __init__(self, out_dir: str, kind: str, classes: Sequence[str], val_fraction: float = 0.2,
                 lineage: Optional[dict] = None):
        super().__init__()
        ls.check_kind(kind)
        dataset_lib.split_of("check", val_fraction)  # ValueError naming val_fraction
        self._out_dir, self._kind, self._classes = out_dir, kind, tuple(classes)
        self._val_fraction, self._lineage = val_fraction, dict(lineage or {})

    def expand(self, labels):
        os.makedirs(self._out_dir, exist_ok=True)
        if self._kind == ls.CLASSIFICATION:
            _ = labels | "ClassFolders" >> beam.ParDo(_LinkIntoClassFolderFn(self._out_dir, self._val_fraction))
        return (labels
                | "Gather" >> beam.combiners.ToList()
                | "WriteFiles" >> beam.ParDo(_WriteSetFn(self._out_dir, self._kind, self._classes,
                                                         self._val_fraction, self._lineage)))


class LabelIssues(NamedTuple):
    issues: beam.PCollection
    dead_letters: beam.PCollection


class _Scorable(NamedTuple):
    """An annotation ready for cleanlab: its row, the frame's identity, what it says and what the
    model said (classification: ``label_index`` and ``probabilities``; detection: ``given``
    ``[(class, box)]`` and ``predicted`` ``[(class, box, confidence)]``)."""
    annotation: dict
    model_version: str
    label_index: Optional[int] = None
    probabilities: Optional[tuple] = None
    given: Optional[list] = None
    predicted: Optional[list] = None


class _JoinPredictionsFn(beam.DoFn):
    """``(frame_id, {"annotations": [...], "frames": [...]})`` -> one :class:`_Scorable` per
    annotation, or a dead letter saying why it cannot be scored."""

    def __init__(self, kind: str, classes: Sequence[str]):
        self._kind, self._classes = kind, tuple(classes)
        self._index = {c: i for i, c in enumerate(self._classes)}
        self._dead = Metrics.counter(METRICS_NAMESPACE, "label_issues_unscorable")

    def process(self, element):
        frame_id, grouped = element
        frames = list(grouped["frames"])
        for annotation in grouped["annotations"]:
            try:
                if not frames:
                    raise ValueError(f"frame {frame_id} is not in the frames index")
                yield self._scorable(annotation, frames[0])
            except (ValueError, TypeError, KeyError) as e:
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                    str(annotation.get("source_uri") or ""), STAGE_LABEL_ISSUES,
                    f"annotation {_annotation_id(annotation)} of {annotation.get('annotator')}: {e}"[:MAX_ERROR_CHARS],
                    annotation.get("frame_index"), frame_id))

    def _class(self, name: str, what: str) -> int:
        if name not in self._index:
            raise ValueError(f"{what} {name!r} is not one of the project's classes")
        return self._index[name]

    def _scorable(self, annotation: dict, frame: dict) -> _Scorable:
        model = frame.get("model") or {}
        if self._kind == ls.CLASSIFICATION:
            probabilities = tuple(float(p) for p in frame.get("probabilities") or ())
            if len(probabilities) != len(self._classes):
                raise ValueError(f"the frame carries {len(probabilities)} class probabilities, the project has "
                                 f"{len(self._classes)} classes (scored by another model?)")
            return _Scorable(annotation, f"{model.get('name')}@{model.get('version')}",
                             label_index=self._class(annotation["label"], "label"), probabilities=probabilities)
        if frame.get("detections") is None:
            raise ValueError("the frame carries no detections (no detector ran)")
        boxes = annotation.get("boxes") or []
        boxes = json.loads(boxes) if isinstance(boxes, str) else boxes
        given = [(self._class(b["label"], "box label"), [float(v) for v in b["box"]]) for b in boxes]
        predicted = [(self._index[d["label"]], [float(v) for v in d["box"]], float(d["score"]))
                     for d in frame["detections"] if d.get("label") in self._index]
        return _Scorable(annotation, f"{model.get('detector_name')}@{model.get('detector_version')}",
                         given=given, predicted=predicted)


def _annotation_id(annotation: dict) -> str:
    return annotation.get("annotation_id") or annotation.get("_id")


class _ScoreFn(beam.DoFn):
    """All scorable annotations of the project at once (cleanlab's thresholds are dataset-level)
    -> ``label_issues`` rows, ranked."""

    def __init__(self, kind: str, classes: Sequence[str], project: str, run_id: str, created_at):
        self._kind, self._classes, self._project = kind, tuple(classes), project
        self._run_id, self._created_at = run_id, created_at
        self._scored = Metrics.counter(METRICS_NAMESPACE, "label_issues_scored")
        self._flagged = Metrics.counter(METRICS_NAMESPACE, "label_issues_flagged")
        self._quality = Metrics.distribution(METRICS_NAMESPACE, "label_quality_permille")

    def process(self, items):
        items = sorted(items, key=lambda i: _annotation_id(i.annotation))  # a stable order: stable ranks
        if not items:
            return
        if self._kind == ls.CLASSIFICATION:
            scored = issues_lib.classification_issues([i.label_index for i in items],
                                                      np.asarray([i.probabilities for i in items]))
            method = issues_lib.CLASSIFICATION_METHOD
        else:
            given, predicted = [i.given for i in items], [i.predicted for i in items]
            confident = issues_lib.confident_threshold(given, predicted)
            scored = issues_lib.detection_issues(given, predicted, len(self._classes),
                                                 high_probability_threshold=confident)
            method = f"{issues_lib.DETECTION_METHOD}, high_probability_threshold {confident:.3f}"
        method = f"{method} (cleanlab {_cleanlab_version()})"
        type_ranks = {i: r for queue in issues_lib.ranked_by_type(scored).values()
                      for r, i in enumerate(queue, start=1)}
        for rank, i in enumerate(issues_lib.ranked(scored), start=1):
            self._scored.inc()
            self._flagged.inc(int(scored[i].is_issue))
            self._quality.update(int(round(1000 * scored[i].quality)))
            yield self._row(items[i], scored[i], rank, type_ranks[i], method)

    def _name(self, index: Optional[int]) -> Optional[str]:
        return None if index is None else self._classes[index]

    def _row(self, item: _Scorable, s: "issues_lib.ScoredLabel", rank: int, type_rank: int, method: str) -> dict:
        a = item.annotation
        suspect = model = None
        if s.suspect_box is not None:
            suspect = ls.dumps({"label": self._name(s.suspect_box[0]), "box": [round(v, 3) for v in s.suspect_box[1]]})
        if s.model_box is not None:
            model = ls.dumps({"label": self._name(s.model_box[0]), "box": [round(v, 3) for v in s.model_box[1]],
                              "score": round(s.model_box[2], 6)})
        detection = self._kind == ls.DETECTION
        return {
            "label_issue_id": make_label_issue_id(_annotation_id(a), item.model_version),
            "annotation_id": _annotation_id(a), "frame_id": a["frame_id"], "source_uri": a["source_uri"],
            "frame_index": int(a["frame_index"]), "project": self._project, "kind": self._kind,
            "annotator": a["annotator"], "label": a["label"], "quality_score": s.quality, "rank": rank,
            "is_issue": s.is_issue, "issue_type": s.issue_type,
            "type_score": issues_lib.type_score(s), "type_rank": type_rank,
            "swap_score": s.subtype_scores.get(issues_lib.SWAP),
            "overlooked_score": s.subtype_scores.get(issues_lib.OVERLOOKED) if detection else None,
            "badloc_score": s.subtype_scores.get(issues_lib.BADLOC) if detection else None,
            "suggested_label": self._name(s.suggested_class), "suspect_box": suspect, "model_box": model,
            "model_version": item.model_version, "method": method, "run_id": self._run_id,
            "created_at": self._created_at,
        }  # review_task_id: set by whoever sends the review task (a rerun's $set leaves it alone)


def _cleanlab_version() -> str:
    import cleanlab
    return cleanlab.__version__


class FindLabelIssues(beam.PTransform):
    """Scores every annotation against the model's predictions for its frame with cleanlab and
    ranks them: likely label errors first (:mod:`transforms.annotate.label_issues`: confident
    learning, Northcutt et al., JAIR 2021, for classes; ObjectLab, Tkachenko et al. 2023, for boxes).

    Parameters
    ----------
    kind : str
        ``classification`` or ``detection``.
    classes : sequence of str
        The project's classes, in the model's class order (classification: ``probabilities[k]``
        is class ``k``; detection: boxes and detections are matched by class name).
    frames : PCollection[dict]
        ``frames`` documents of the annotated frames (``_id``, ``model``, ``probabilities``,
        ``detections``); frames without annotations are ignored.
    project : str
        The Label Studio project title (``label_issues.project``).
    run_id : str
        Id of this scoring run (``label_issues.run_id``).
    created_at : datetime.datetime, optional
        The rows' ``created_at`` (UTC, naive); default: when the transform is built.

    Input: ``PCollection[dict]`` of ``annotations`` rows or documents (``annotation_id`` or
    ``_id``, ``frame_id``, ``source_uri``, ``frame_index``, ``annotator``, ``label``, ``boxes``).
    Returns :class:`LabelIssues`: ``issues``, one ``label_issues`` row per scorable annotation
    (``rank`` 1 = lowest quality score; ``type_rank`` 1 = first of its ``issue_type``'s review
    queue, by ``type_score``: :func:`transforms.annotate.label_issues.ranked_by_type`;
    ``label_issue_id`` deterministic, so a rerun rewrites the same rows), and ``dead_letters`` (stage ``label_issues``): an annotation whose frame is not
    indexed, carries no probabilities for the project's classes (classification) or no
    detections (detection), or whose label is not a project class.

    All scorable annotations meet in one worker (cleanlab's per-class thresholds are computed
    over the whole set): memory is about ``n * K * 8`` bytes for classification and the boxes
    for detection, a few hundred MB for a million labels.

    Raises
    ------
    ValueError
        On an unknown ``kind`` or no classes.
    """

    def __init__(self, kind: str, classes: Sequence[str], frames, project: str, run_id: str,
                 created_at: Optional[datetime.datetime] = None):
        super().__init__()
        ls.check_kind(kind)
        if not classes:
            raise ValueError("classes must not be empty")
        self._kind, self._classes, self._frames = kind, tuple(classes), frames
        self._project, self._run_id = project, run_id
        self._created_at = created_at or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def expand(self, annotations):
        keyed = {"annotations": annotations | "KeyAnnotations" >> beam.Map(lambda a: (a["frame_id"], a)),
                 "frames": self._frames | "KeyFrames" >> beam.Map(lambda f: (f.get("_id") or f["frame_id"], f))}
        joined = (keyed | "JoinPredictions" >> beam.CoGroupByKey()
                  | "Scorable" >> beam.ParDo(_JoinPredictionsFn(self._kind, self._classes)).with_outputs(
                      DEAD_LETTER, main="scorable"))
        issues = (joined.scorable
                  | "Gather" >> beam.combiners.ToList()
                  | "Score" >> beam.ParDo(_ScoreFn(self._kind, self._classes, self._project, self._run_id,
                                                   self._created_at)))
        return LabelIssues(issues, joined[DEAD_LETTER])

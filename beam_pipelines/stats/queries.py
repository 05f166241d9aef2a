"""Counts users ask for, from the MongoDB index or the BigQuery tables.

    python -m beam_pipelines.stats --mongo_uri mongodb://host:27017 [--mongo_database activebeam]
    python -m beam_pipelines.stats --bigquery_dataset PROJECT.DATASET [--create_views]
    ... [--format json]

Reports (same names and columns from both stores):

* ``overview``: distinct sources (files), frames and model versions;
* ``frames_per_source_day``: frames per source file and day of indexing (UTC);
* ``candidates_per_selection``: candidates, strategy, model version and best score per selection;
* ``annotations_per_label``: annotations and distinct frames per (task, label);
* ``labelling_funnel``: per selection sent to annotators (``annotate export``), frames selected ->
  exported -> labelled -> accepted (and sent back for relabelling), gold tasks left out;
* ``qc_per_annotator``: the latest ``annotate qc`` of each project: per annotator and per batch,
  annotations, class agreement, box F1, gold accuracy, throughput, accepted and relabelled tasks;
* ``near_duplicates``: frames and sources per near-duplicate group (``duplicate_group``, the
  frame_id of the group's representative, the one frame of the group that can be a candidate);
* ``detections_per_label``: the detector's boxes per label (BigQuery: ``UNNEST(detections)``,
  MongoDB: ``$unwind``): boxes, frames, mean confidence, boxes below 0.5 and mean box area (px²);
* ``frames_per_predicted_label``: frames per model version and predicted class, with its name.

On BigQuery each report is the SQL view shipped in ``schemas/views/NAME.sql`` (``{dataset}``
stands for ``PROJECT.DATASET``); ``--create_views`` also creates them as views in the dataset.
On MongoDB the same counts are aggregation pipelines over the ``frames``, ``candidates`` and
``annotations`` collections. A missing table or collection counts as empty.
"""
import argparse
import json
import os
import sys
from typing import Dict, List

import schemas

REPORTS = ("overview", "frames_per_source_day", "candidates_per_selection", "annotations_per_label",
           "labelling_funnel", "qc_per_annotator", "near_duplicates", "detections_per_label",
           "frames_per_predicted_label")
QC_COLUMNS = ("project", "scope", "name", "annotations", "class_agreement", "box_f1", "gold_accuracy",
              "per_hour", "accepted", "relabel")
VIEWS_DIR = os.path.join(os.path.dirname(os.path.abspath(schemas.__file__)), "views")


def view_sql(name: str, dataset: str) -> str:
    """The SELECT of report ``name`` for ``PROJECT.DATASET`` (from ``schemas/views/NAME.sql``)."""
    if name not in REPORTS:
        raise ValueError(f"unknown report {name!r}; reports: {REPORTS}")
    with open(os.path.join(VIEWS_DIR, f"{name}.sql"), encoding="utf-8") as f:
        return f.read().replace("{dataset}", dataset)


# --- MongoDB ---------------------------------------------------------------------------------

def _mongo_reports(database) -> Dict[str, List[dict]]:
    frames, candidates, annotations = database["frames"], database["candidates"], database["annotations"]
    overview = list(frames.aggregate([
        {"$group": {"_id": None, "sources": {"$addToSet": "$source_uri"}, "frames": {"$sum": 1},
                    "versions": {"$addToSet": "$model.version"}}},
        {"$project": {"_id": 0, "sources": {"$size": "$sources"}, "frames": 1,
                      "model_versions": {"$size": "$versions"}}}]))
    per_day = frames.aggregate([
        {"$group": {"_id": {"source_uri": "$source_uri",
                            "day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$indexed_at"}}},
                    "frames": {"$sum": 1}}},
        {"$project": {"_id": 0, "source_uri": "$_id.source_uri", "day": "$_id.day", "frames": 1}},
        {"$sort": {"source_uri": 1, "day": 1}}])
    per_selection = candidates.aggregate([
        {"$group": {"_id": {"selection_id": "$selection_id", "strategy": "$strategy",
                            # flat rows (schemas.tables) or the mine job's nested documents
                            "model_version": {"$ifNull": ["$model_version", "$model.version"]}},
                    "candidates": {"$sum": 1}, "best_score": {"$max": "$score"}}},
        {"$project": {"_id": 0, "selection_id": "$_id.selection_id", "strategy": "$_id.strategy",
                      "model_version": "$_id.model_version", "candidates": 1, "best_score": 1}},
        {"$sort": {"selection_id": 1}}])
    per_label = annotations.aggregate([
        {"$group": {"_id": {"task": "$task", "label": "$label"}, "annotations": {"$sum": 1},
                    "frames": {"$addToSet": "$frame_id"}}},
        {"$project": {"_id": 0, "task": "$_id.task", "label": "$_id.label", "annotations": 1,
                      "frames": {"$size": "$frames"}}},
        {"$sort": {"task": 1, "annotations": -1, "label": 1}}])
    near_duplicates = frames.aggregate([
        {"$match": {"duplicate_group": {"$type": "string"}}},
        {"$group": {"_id": "$duplicate_group", "frames": {"$sum": 1}, "sources": {"$addToSet": "$source_uri"}}},
        {"$project": {"_id": 0, "duplicate_group": "$_id", "frames": 1, "sources": {"$size": "$sources"}}},
        {"$sort": {"duplicate_group": 1}}])
    return {
        "overview": overview or [{"sources": 0, "frames": 0, "model_versions": 0}],
        "frames_per_source_day": list(per_day),
        "candidates_per_selection": list(per_selection),
        "annotations_per_label": list(per_label),
        "labelling_funnel": _mongo_funnel(database),
        "qc_per_annotator": _mongo_latest_qc(database),
        "near_duplicates": list(near_duplicates),
        "detections_per_label": _mongo_detections_per_label(frames),
        "frames_per_predicted_label": list(frames.aggregate([
            {"$group": {"_id": {"model_version": "$model.version", "predicted_class": "$predicted_class",
                                "predicted_label": "$predicted_label"}, "frames": {"$sum": 1}}},
            {"$project": {"_id": 0, "model_version": "$_id.model_version", "predicted_class": "$_id.predicted_class",
                          "predicted_label": "$_id.predicted_label", "frames": 1}},
            {"$sort": {"model_version": 1, "frames": -1, "predicted_class": 1}}])),
    }


def _mongo_detections_per_label(frames) -> List[dict]:
    """``detections_per_label`` (as ``schemas/views/detections_per_label.sql``)."""
    box = "$detections.box"
    area = {"$multiply": [{"$subtract": [f"{box}.x2", f"{box}.x1"]}, {"$subtract": [f"{box}.y2", f"{box}.y1"]}]}
    return list(frames.aggregate([
        {"$unwind": "$detections"},
        {"$group": {"_id": "$detections.label", "boxes": {"$sum": 1}, "frames": {"$addToSet": "$_id"},
                    "mean_score": {"$avg": "$detections.score"},
                    "uncertain_boxes": {"$sum": {"$cond": [{"$lt": ["$detections.score", 0.5]}, 1, 0]}},
                    "mean_area_px": {"$avg": area}}},
        {"$project": {"_id": 0, "label": "$_id", "boxes": 1, "frames": {"$size": "$frames"}, "mean_score": 1,
                      "uncertain_boxes": 1, "mean_area_px": 1}},
        {"$sort": {"boxes": -1, "label": 1}}]))


def _mongo_funnel(database) -> List[dict]:
    """``labelling_funnel`` (as ``schemas/views/labelling_funnel.sql``)."""
    rows = list(database["label_tasks"].aggregate([
        {"$match": {"gold": False, "selection_id": {"$type": "string"}}},
        {"$group": {"_id": "$selection_id", "exported": {"$sum": 1},
                    "labelled": {"$sum": {"$cond": [{"$in": ["$status", ["labelled", "accepted", "relabel"]]}, 1, 0]}},
                    "accepted": {"$sum": {"$cond": [{"$eq": ["$status", "accepted"]}, 1, 0]}},
                    "relabel": {"$sum": {"$cond": [{"$eq": ["$status", "relabel"]}, 1, 0]}}}},
        {"$sort": {"_id": 1}}]))
    out = []
    for row in rows:
        selected = len(database["candidates"].distinct("frame_id", {"selection_id": row["_id"]}))
        out.append({"selection_id": row["_id"], "selected": selected, "exported": row["exported"],
                    "labelled": row["labelled"], "accepted": row["accepted"], "relabel": row["relabel"]})
    return out


def _mongo_latest_qc(database) -> List[dict]:
    """``qc_per_annotator`` (as ``schemas/views/qc_per_annotator.sql``)."""
    rows = []
    for project in sorted(database["qc_reports"].distinct("project")):
        latest = database["qc_reports"].find_one({"project": project}, sort=[("created_at", -1)])
        for doc in database["qc_reports"].find({"qc_id": latest["qc_id"]}).sort([("scope", 1), ("name", 1)]):
            rows.append({c: doc.get(c) for c in QC_COLUMNS})
    return rows


def mongo_stats(uri: str, database: str = "activebeam") -> Dict[str, List[dict]]:
    """Every report from MongoDB: ``{report: [row dict, ...]}``, in :data:`REPORTS` order."""
    from transforms.index.mongodb_client import mongo_client
    with mongo_client(uri, appname="activebeam-stats") as client:
        return _mongo_reports(client[database])


# --- BigQuery --------------------------------------------------------------------------------

def bigquery_stats(dataset: str, client=None, create_views: bool = False) -> Dict[str, List[dict]]:
    """Every report from BigQuery ``PROJECT.DATASET`` (or ``PROJECT:DATASET``), by running the
    shipped views' SQL; with ``create_views`` also (re)creates them as views named after the report."""
    from google.api_core import exceptions
    from google.cloud import bigquery
    from transforms.index.bigquery_client import make_client, parse_dataset_id
    project, dataset_name = parse_dataset_id(dataset)
    client = client or make_client(project)
    dataset = f"{project or client.project}.{dataset_name}"
    reports = {}
    for name in REPORTS:
        sql = view_sql(name, dataset)
        if create_views:
            view = bigquery.Table(f"{dataset}.{name}")
            view.view_query = sql
            client.delete_table(view, not_found_ok=True)
            client.create_table(view)
        try:
            reports[name] = [dict(row.items()) for row in client.query(sql).result()]
        except exceptions.NotFound:  # the table of this report was never written
            reports[name] = []
    if not reports["overview"]:
        reports["overview"] = [{"sources": 0, "frames": 0, "model_versions": 0}]
    return reports


# --- printing --------------------------------------------------------------------------------

def format_text(reports: Dict[str, List[dict]]) -> str:
    """Reports as aligned text tables."""
    out = []
    for name in REPORTS:
        rows = reports.get(name, [])
        out.append(f"== {name} ({len(rows)} rows)")
        if rows:
            columns = list(rows[0])
            cells = [[str(row.get(c, "")) for c in columns] for row in rows]
            widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
            out.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
            out.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells)
        out.append("")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m beam_pipelines.stats", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mongo_uri", help="MongoDB connection string")
    source.add_argument("--bigquery_dataset", help="PROJECT.DATASET (or PROJECT:DATASET)")
    parser.add_argument("--mongo_database", default="activebeam")
    parser.add_argument("--create_views", action="store_true",
                        help="BigQuery: also create the reports as views in the dataset")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    from transforms.common.redact import redact_text
    try:
        if args.mongo_uri:
            reports = mongo_stats(args.mongo_uri, args.mongo_database)
        else:
            from transforms.common import gcp_emulators
            gcp_emulators.use_emulators_if_configured()
            reports = bigquery_stats(args.bigquery_dataset, create_views=args.create_views)
    except Exception as e:  # noqa: BLE001 - one clear line instead of a driver traceback
        where = redact_text(args.mongo_uri) if args.mongo_uri else args.bigquery_dataset
        print(f"stats: cannot read {where}: {type(e).__name__}: {redact_text(str(e))[:500]}",
              file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(reports, default=str, sort_keys=True))
    else:
        print(format_text(reports))
    return 0

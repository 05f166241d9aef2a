"""Brings tables and collections made by earlier versions to the current schema.

    python -m beam_pipelines.tools.migrate --bigquery_dataset PROJECT.DATASET [--dry_run]
    python -m beam_pipelines.tools.migrate --mongo_uri mongodb://host:27017 [--mongo_database activebeam]
    ... [--class_names MODEL=FILE.json ...]

What changes (the steps are in :mod:`schemas.migrations`; each is idempotent, so running it
twice, or on current tables, changes nothing):

* BigQuery ``frames``: the JSON-text column ``detections`` is renamed ``detections_json`` (kept
  and readable), a ``REPEATED RECORD`` ``detections`` is added and filled from it;
* every table: the columns of :mod:`schemas.tables` it lacks are added (e.g.
  ``predicted_label`` on ``frames`` and ``candidates``), and the new columns' descriptions set;
* ``predicted_label`` is filled from ``predicted_class`` for the models whose class names are
  known: the bundled Fashion-MNIST CNN, the converted EfficientNet-Lite0 (ImageNet), and each
  ``--class_names MODEL=FILE`` (a JSON list, as a model sidecar's ``class_names``);
* MongoDB ``frames``: each ``detections[].box`` list becomes ``{x1, y1, x2, y2}``;
  ``predicted_label`` is set on frames and candidates as above.

A table that does not exist is skipped. The output is one JSON line of what was done.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from schemas import migrations, tables
from transforms.score import pretrained
from transforms.score.model_base import DEFAULT_MODEL_CLASS_NAMES, DEFAULT_MODEL_NAME

#: Tables that may hold ``predicted_label`` (and ``model_name``), in both stores.
LABELLED_TABLES = ("frames", "candidates")


def known_class_names(extra: Optional[Dict[str, Sequence[str]]] = None) -> Dict[str, List[str]]:
    """Model name -> class names: the bundled model's, the converted backbone's (when set-up wrote
    them) and ``extra``'s (which win)."""
    names = {os.path.splitext(DEFAULT_MODEL_NAME)[0]: list(DEFAULT_MODEL_CLASS_NAMES)}
    backbone = os.path.splitext(pretrained.BACKBONE_FILE)[0]
    imagenet = pretrained.class_names(backbone)
    if imagenet:
        names[backbone] = list(imagenet)
    names.update({model: list(values) for model, values in (extra or {}).items()})
    return names


def migrate_bigquery(dataset: str, class_names: Dict[str, Sequence[str]], client=None,
                     dry_run: bool = False) -> Dict[str, dict]:
    """Migrates every table of :func:`schemas.tables.all_tables` in ``PROJECT.DATASET``; returns
    per table ``{"ddl": n, "fills": n, "rows_filled": n}`` (``"missing": True`` for a table that
    does not exist; with ``dry_run`` the statements as ``"sql"``, nothing run).

    Raises
    ------
    schemas.migrations.MigrationError
        For a table no step can migrate (nothing of that table is changed).
    google.api_core.exceptions.GoogleAPIError
        When BigQuery refuses a statement.
    """
    from google.api_core import exceptions
    from google.cloud import bigquery
    from transforms.index.bigquery_client import make_client, parse_dataset_id
    project, name = parse_dataset_id(dataset)
    client = client or make_client(project)
    dataset_id = f"{project or client.project}.{name}"
    done = {}
    for spec in tables.all_tables().values():
        table_id = f"{dataset_id}.{spec.name}"
        try:
            table = client.get_table(table_id)
        except exceptions.NotFound:
            done[spec.name] = {"missing": True}
            continue
        labelled = class_names if spec.name in LABELLED_TABLES else {}
        plan = migrations.bigquery_plan(table_id, spec, [f.to_api_repr() for f in table.schema], labelled)
        if dry_run:
            done[spec.name] = {"sql": migrations.describe(plan)}
            continue
        filled = 0
        for statement in plan.ddl + plan.fills:
            parameters = [bigquery.ArrayQueryParameter(n, "STRING", v) if t.startswith("ARRAY")
                          else bigquery.ScalarQueryParameter(n, t, v) for n, t, v in statement.parameters]
            job = client.query(statement.sql, job_config=bigquery.QueryJobConfig(query_parameters=parameters))
            job.result()
            if statement in plan.fills:
                filled += job.num_dml_affected_rows or 0
        if plan.ddl:  # the new columns' descriptions (DDL sets none)
            table = client.get_table(table_id)
            table.schema = [bigquery.SchemaField.from_api_repr(c) for c in plan.schema]
            client.update_table(table, ["schema"])
        done[spec.name] = {"ddl": len(plan.ddl), "fills": len(plan.fills), "rows_filled": filled}
    return done


def migrate_mongo(uri: str, database: str, class_names: Dict[str, Sequence[str]]) -> Dict[str, dict]:
    """Migrates the ``frames`` and ``candidates`` collections; returns per collection the number
    of documents changed."""
    from transforms.index.mongodb_client import mongo_client
    done = {}
    with mongo_client(uri, appname="activebeam-migrate") as client:
        db = client[database]
        boxes = db["frames"].update_many(migrations.MONGO_LEGACY_BOXES, migrations.mongo_boxes_update())
        done["frames"] = {"boxes": boxes.modified_count}
        for name in LABELLED_TABLES:
            labelled = sum(db[name].update_many(query, update).modified_count
                           for query, update in migrations.mongo_label_updates(class_names))
            done.setdefault(name, {})["predicted_label"] = labelled
    return done


def _class_names_option(values: Sequence[str]) -> Dict[str, List[str]]:
    out = {}
    for value in values or ():
        model, sep, path = value.partition("=")
        if not sep or not model or not path:
            raise ValueError(f"--class_names must be MODEL=FILE.json, got {value!r}")
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"--class_names {path}: must be a JSON list of strings")
        out[model] = names
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipelines.tools.migrate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--bigquery_dataset", help="PROJECT.DATASET (or PROJECT:DATASET) to migrate")
    parser.add_argument("--mongo_uri", help="MongoDB connection string")
    parser.add_argument("--mongo_database", default="activebeam")
    parser.add_argument("--class_names", action="append", metavar="MODEL=FILE.json",
                        help="Class names of a model (model_name as stored) to fill predicted_label; repeatable.")
    parser.add_argument("--dry_run", action="store_true", help="BigQuery: print the statements, run nothing.")
    args = parser.parse_args(argv)
    if not args.bigquery_dataset and not args.mongo_uri:
        parser.error("give --bigquery_dataset and/or --mongo_uri")
    os.environ.setdefault("NO_GCE_CHECK", "true")
    names = known_class_names(_class_names_option(args.class_names))
    result = {}
    if args.bigquery_dataset:
        from transforms.common import gcp_emulators
        gcp_emulators.use_emulators_if_configured()
        result["bigquery"] = migrate_bigquery(args.bigquery_dataset, names, dry_run=args.dry_run)
    if args.mongo_uri:
        result["mongodb"] = migrate_mongo(args.mongo_uri, args.mongo_database, names)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

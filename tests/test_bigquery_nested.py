"""Detections as BigQuery users expect them, checked with Google's own ``bq`` CLI against the
BigQuery emulator: tables made by the generated ``create_tables.sh``, rows written by the frame
writer, ``UNNEST(detections)`` and the label names; and the migration of tables and collections
made by earlier versions (JSON-text detections, no ``predicted_label``)."""
import json
import os
import shutil
import subprocess

import apache_beam as beam
import pymongo
import pytest

from beam_pipelines import stats
from beam_pipelines.tools import migrate
from schemas import frames, generate, tables
from schemas.records import Detection, ModelVersion
from tests import harness
from tests.records_factory import frame_record
from transforms.index import WriteFramesToBigQuery

DISCOVERY = "/usr/lib/google-cloud-sdk/platform/bq/discovery_next/bigquery.json"
BQ = shutil.which("bq")
pytestmark = pytest.mark.skipif(not BQ or not os.path.exists(DISCOVERY),
                                reason="Google Cloud SDK's bq CLI is not installed")
PROJECT = harness.BIGQUERY_PROJECT
DETECTOR = ModelVersion("nanodet_g.tflite", "fedcba9876543210", "")
FASHION = ModelVersion("fashion_mnist_cnn", "0123456789abcdef", "embedding")
BOXES = (Detection("person", 0, 0.9, (10.0, 20.0, 110.0, 220.0)),
         Detection("person", 0, 0.3, (200.5, 40.0, 260.0, 180.25)),
         Detection("car", 2, 0.45, (300.0, 300.0, 400.0, 350.0)))


def _records():
    """Three frames: boxes on the first two, none found on the third; Fashion-MNIST names."""
    out = []
    for i, boxes in enumerate((BOXES[:2], BOXES[2:], ())):
        record = frame_record("gs://cams/lobby.mp4", i, timestamp_s=float(i), probabilities=(0.1, 0.2, 0.7))
        out.append(record._replace(model=FASHION, detections=boxes, detector=DETECTOR,
                                   predicted_label="pullover"))
    return out


@pytest.fixture(scope="module")
def bigquery():
    with harness.bigquery_emulator() as endpoint:
        from transforms.common import gcp_emulators
        gcp_emulators.use_emulators_if_configured()
        yield endpoint


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


def bq(endpoint, *args) -> str:
    """Google's ``bq`` CLI against the emulator (the recipe of PLATFORM.md); returns stdout."""
    argv = [BQ, "--api", endpoint, "--project_id", PROJECT, "--discovery_file", DISCOVERY, *args]
    environment = dict(os.environ, CLOUDSDK_AUTH_ACCESS_TOKEN="x", CLOUDSDK_CONFIG=harness.tmpdir("gcloud-"))
    done = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, f"bq {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def bq_query(endpoint, sql):
    return json.loads(bq(endpoint, "query", "--use_legacy_sql=false", "--format=json", sql) or "[]")


def query(client, sql):
    """The same through the Python client (no CLI start-up), for the checks around the CLI's."""
    return [dict(row.items()) for row in client.query(sql).result()]


def test_create_tables_script_then_unnest_detections(bigquery):
    client = harness.bigquery_client(bigquery)
    client.create_dataset(f"{PROJECT}.nested")
    script = os.path.join(generate.GENERATED_DIR, "bigquery", "create_tables.sh")
    subprocess.run(["sh", script, f"{PROJECT}:nested"], check=True, timeout=300, env=dict(
        os.environ, CLOUDSDK_AUTH_ACCESS_TOKEN="x", CLOUDSDK_CONFIG=harness.tmpdir("gcloud-"),
        BQ=f"{BQ} --api {bigquery} --project_id {PROJECT} --discovery_file {DISCOVERY}"))
    schema = [f.to_api_repr() for f in client.get_table(f"{PROJECT}.nested.frames").schema]
    detections = next(c for c in schema if c["name"] == "detections")
    assert (detections["type"], detections["mode"]) == ("RECORD", "REPEATED")
    box = next(c for c in detections["fields"] if c["name"] == "box")
    assert box["type"] == "RECORD" and [c["name"] for c in box["fields"]] == ["x1", "y1", "x2", "y2"]
    assert "predicted_label" in [c["name"] for c in schema]

    records = _records()
    out = harness.run_collect(lambda p: {"dead": p | beam.Create(records) | WriteFramesToBigQuery(
        f"{PROJECT}:nested.frames", "STREAMING_INSERTS")})
    assert out["dead"] == []
    # What a BigQuery user writes: one row per box, filtered on the struct's fields.
    rows = bq_query(bigquery, f"""
        SELECT f.frame_id, f.frame_index, f.predicted_label, d.label, d.class_id, d.score,
               d.box.x1, d.box.y1, d.box.x2, d.box.y2
        FROM `{PROJECT}.nested.frames` AS f, UNNEST(f.detections) AS d WITH OFFSET AS k
        ORDER BY f.frame_index, k""")
    expected = [(r.frame.frame_id, d) for r in records for d in r.detections]
    assert [(row["frame_id"], row["label"], int(row["class_id"]), float(row["score"]),
             tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2"))) for row in rows] == [
        (fid, d.label, d.class_id, d.score, d.box) for fid, d in expected]
    assert {row["predicted_label"] for row in rows} == {"pullover"}
    uncertain = query(client, f"""
        SELECT f.frame_index, d.box.x1 FROM `{PROJECT}.nested.frames` AS f, UNNEST(f.detections) AS d
        WHERE d.label = 'person' AND d.score < 0.5""")
    assert [(int(r["frame_index"]), float(r["x1"])) for r in uncertain] == [(0, 200.5)]
    # The frame without boxes has an empty array, not a NULL or a string.
    counts = query(client, f"SELECT frame_index, ARRAY_LENGTH(detections) AS n FROM `{PROJECT}.nested.frames` "
                                "ORDER BY frame_index")
    assert [int(r["n"]) for r in counts] == [2, 1, 0]
    # The shipped view reads the same boxes.
    per_label = query(client, stats.view_sql("detections_per_label", f"{PROJECT}.nested"))
    assert {(r["label"], int(r["boxes"]), int(r["uncertain_boxes"])) for r in per_label} == {
        ("person", 2, 1), ("car", 1, 1)}


def _old_frame_row(record, with_label_model=True) -> dict:
    """The row an earlier version wrote: detections as JSON text with list boxes, no predicted_label."""
    row = frames.to_bigquery_row(record)
    row.pop("predicted_label")
    row["detections"] = json.dumps([{"label": d.label, "class_id": d.class_id, "score": d.score,
                                     "box": list(d.box)} for d in record.detections]) if record.detections else None
    return row


def _old_frames_schema():
    schema = [c for c in tables.bigquery_fields(tables.frames_table()) if c["name"] != "predicted_label"]
    return [{"name": "detections", "type": "STRING", "mode": "NULLABLE"} if c["name"] == "detections" else c
            for c in schema]


def test_migration_of_earlier_tables_and_documents(bigquery, mongo):
    from google.cloud import bigquery as bq_api
    client = harness.bigquery_client(bigquery)
    dataset = f"{PROJECT}.legacy"
    client.create_dataset(dataset)
    old = bq_api.Table(f"{dataset}.frames", schema=[bq_api.SchemaField.from_api_repr(c) for c in _old_frames_schema()])
    old.time_partitioning = bq_api.TimePartitioning(field="indexed_at")
    client.create_table(old)
    other = ModelVersion("someone_elses_model", "aaaaaaaaaaaaaaaa", "embedding")
    records = _records()
    records[2] = records[2]._replace(model=other)
    assert client.insert_rows_json(f"{dataset}.frames", [_old_frame_row(r) for r in records]) == []

    dry = migrate.migrate_bigquery(dataset, migrate.known_class_names(), client=client, dry_run=True)
    assert "RENAME COLUMN detections TO detections_json" in dry["frames"]["sql"]
    assert dry["candidates"] == {"missing": True}
    done = migrate.migrate_bigquery(dataset, migrate.known_class_names(), client=client)
    # rename + add detections + add predicted_label; fills: detections, then a label fill per known model.
    assert done["frames"]["ddl"] == 3 and done["frames"]["rows_filled"] == 2 + 2

    rows = bq_query(bigquery, f"""
        SELECT f.frame_index, d.label, d.score, d.box.x1, d.box.y2
        FROM `{dataset}.frames` AS f, UNNEST(f.detections) AS d WITH OFFSET AS k ORDER BY f.frame_index, k""")
    assert [(int(r["frame_index"]), r["label"], float(r["score"]), float(r["x1"]), float(r["y2"])) for r in rows] == [
        (r.frame.frame_index, d.label, d.score, d.box[0], d.box[3]) for r in records for d in r.detections]
    kept = query(client, f"SELECT frame_index, JSON_VALUE(detections_json, '$[0].label') AS first, predicted_label "
                              f"FROM `{dataset}.frames` ORDER BY frame_index")
    assert [(r["first"], r["predicted_label"]) for r in kept] == [
        ("person", "pullover"), ("car", "pullover"), (None, None)]  # the third model's names are unknown
    # Run again: nothing to do. New rows from this version go into the migrated table.
    again = migrate.migrate_bigquery(dataset, migrate.known_class_names(), client=client)
    assert again["frames"] == {"ddl": 0, "fills": len(migrate.known_class_names()), "rows_filled": 0}
    fresh = frame_record("gs://cams/gate.mp4", 0, timestamp_s=0.0)._replace(
        model=FASHION, detections=BOXES[:1], detector=DETECTOR, predicted_label="trouser")
    out = harness.run_collect(lambda p: {"dead": p | beam.Create([fresh]) | WriteFramesToBigQuery(
        f"{PROJECT}:legacy.frames", "STREAMING_INSERTS")})
    assert out["dead"] == []
    gate = query(client, f"SELECT d.box.x2, f.predicted_label FROM `{dataset}.frames` AS f, "
                              "UNNEST(f.detections) AS d WHERE f.source_uri = 'gs://cams/gate.mp4'")
    assert [(float(r["x2"]), r["predicted_label"]) for r in gate] == [(110.0, "trouser")]

    # MongoDB: documents of an earlier version get the same shape as this version's.
    db = pymongo.MongoClient(mongo.uri)["legacy"]
    for record in records:
        doc = frames.to_mongo_document(record)
        doc.pop("predicted_label")
        doc["detections"] = [dict(d, box=[d["box"][c] for c in ("x1", "y1", "x2", "y2")]) for d in doc["detections"]]
        db.frames.insert_one(doc)
    assert migrate.main(["--mongo_uri", mongo.uri, "--mongo_database", "legacy"]) == 0
    for record in records:
        doc = db.frames.find_one({"_id": record.frame.frame_id})
        expected = frames.to_mongo_document(record)
        assert doc["detections"] == expected["detections"]
        assert doc.get("predicted_label") == (None if record.model is other else "pullover")
        assert frames.from_mongo_document(doc).detections == record.detections
    assert migrate.migrate_mongo(mongo.uri, "legacy", migrate.known_class_names()) == {
        "frames": {"boxes": 0, "predicted_label": 0}, "candidates": {"predicted_label": 0}}

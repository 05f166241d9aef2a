"""schemas/ is the single source of truth: generated files match it, and what it derives works
on the real servers (MongoDB validators and indexes, BigQuery partitioning and clustering)."""
import datetime
import json
import os

import pymongo
import pytest

from schemas import annotations, frames, generate, runs, tables
from tests import harness
from tests.records_factory import frame_record


def test_generated_files_match_the_schemas():
    assert generate.drift() == {}, "run `python -m schemas.generate` and commit schemas/generated/"


def test_drift_is_detected(tmp_path):
    generate.write(str(tmp_path))
    assert generate.drift(str(tmp_path)) == {}
    path = tmp_path / "bigquery" / "frames.json"
    fields = json.loads(path.read_text())
    path.write_text(json.dumps(fields[:-1]))  # a column lost
    (tmp_path / "mongodb" / "old.validator.json").write_text("{}")
    os.remove(tmp_path / "mongodb" / "runs.indexes.json")
    assert generate.drift(str(tmp_path)) == {
        "bigquery/frames.json": "differs", "mongodb/old.validator.json": "stale",
        "mongodb/runs.indexes.json": "missing"}
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1


def test_generation_follows_frame_fields(monkeypatch):
    """A NULLABLE field appended to FRAME_FIELDS reaches every derived form."""
    extra = frames.Field("camera_id", "STRING", "NULLABLE", "Camera that captured the frame.")
    monkeypatch.setattr(frames, "FRAME_FIELDS", frames.FRAME_FIELDS + (extra,))
    spec = tables.all_tables()["frames"]
    assert "camera_id" in [f["name"] for f in tables.bigquery_fields(spec)]
    validator = tables.mongo_validator(spec)["$jsonSchema"]
    assert validator["properties"]["camera_id"]["bsonType"] == ["string", "null"]
    assert "camera_id" not in validator["required"]
    assert generate.drift() == {"bigquery/frames.json": "differs", "mongodb/frames.validator.json": "differs"}


def test_frames_bigquery_schema_and_mongo_layout():
    spec = tables.frames_table()
    names = [f["name"] for f in tables.bigquery_fields(spec)]
    assert names == frames.field_names() + ["indexed_at"]
    assert tables.bigquery_table_options(spec) == {
        "timePartitioning": {"type": "DAY", "field": "indexed_at"},
        "clustering": {"fields": ["source_uri", "model_version"]}}
    validator = tables.mongo_validator(spec)["$jsonSchema"]
    assert validator["properties"]["scores"]["required"] == ["entropy", "margin", "least_confidence"]
    assert validator["properties"]["model"]["required"] == ["name", "version"]
    assert validator["properties"]["embedding"]["bsonType"] == "array"
    assert "frame_id" not in validator["properties"] and "_id" in validator["required"]


def test_rows_to_mongo_documents():
    from schemas.frames import to_bigquery_row, to_mongo_document
    record = frame_record("file:///cam/a.png")
    frame_doc = tables.to_mongo_document(tables.frames_table(), to_bigquery_row(record))
    expected = to_mongo_document(record)
    del expected["probabilities"]  # MongoDB-only field, not a BigQuery column
    expected["model"].pop("embedding_layer")
    assert frame_doc == expected
    candidate = {"selection_id": "s1", "frame_id": "f1", "rank": 1}
    assert tables.to_mongo_document(tables.candidates_table(), candidate)["_id"] == "s1:f1"
    with pytest.raises(KeyError, match="run_id"):
        tables.to_mongo_document(tables.runs_table(), {"job": "mine"})


def test_nested_detections_are_checked_before_they_are_sent():
    from schemas.frames import to_bigquery_row
    from schemas.records import Detection, ModelVersion
    record = frame_record("file:///cam/a.png")._replace(
        detections=(Detection("person", 0, 0.5, (1.0, 2.0, 30.0, 40.0)),), detector=ModelVersion("d", "v", ""))
    row = to_bigquery_row(record)
    assert row["detections"] == [{"label": "person", "class_id": 0, "score": 0.5,
                                  "box": {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0}}]
    spec = tables.frames_table()
    assert tables.bigquery_row_errors(spec, row) == []
    legacy = dict(row, detections=[dict(row["detections"][0], box=[1.0, 2.0, 30.0, 40.0])])  # an old list box
    assert tables.bigquery_row_errors(spec, legacy) == ["detections.box: expected a RECORD (dict), got list"]
    missing = dict(row, detections=[dict(row["detections"][0], box={"x1": 1.0, "y1": 2.0, "x2": 3.0})])
    assert tables.bigquery_row_errors(spec, missing) == ["detections.box.y2: REQUIRED value missing"]


def test_migration_plan_of_an_earlier_frames_table():
    from schemas import migrations
    spec = tables.frames_table()
    current = tables.bigquery_fields(spec)
    assert migrations.bigquery_plan("p.d.frames", spec, current) == migrations.BigQueryPlan([], [], current)
    old = [dict(c, type="STRING", mode="NULLABLE") if c["name"] == "detections" else c
           for c in current if c["name"] != "predicted_label"]
    plan = migrations.bigquery_plan("p.d.frames", spec, old, {"cnn": ["a", "b"]})
    assert [s.sql for s in plan.ddl] == [
        "ALTER TABLE `p.d.frames` RENAME COLUMN detections TO detections_json",
        "ALTER TABLE `p.d.frames` ADD COLUMN IF NOT EXISTS detections ARRAY<STRUCT<label STRING, class_id INT64, "
        "score FLOAT64, box STRUCT<x1 FLOAT64, y1 FLOAT64, x2 FLOAT64, y2 FLOAT64>>>",
        "ALTER TABLE `p.d.frames` ADD COLUMN IF NOT EXISTS predicted_label STRING"]
    assert "JSON_QUERY_ARRAY(detections_json)" in plan.fills[0].sql
    assert plan.fills[1].parameters == (("names", "ARRAY<STRING>", ["a", "b"]), ("model", "STRING", "cnn"))
    names = [c["name"] for c in plan.schema]
    assert names[-2:] == ["detections", "predicted_label"] and "detections_json" in names
    with pytest.raises(migrations.MigrationError, match="REQUIRED column frame_id"):
        migrations.bigquery_plan("p.d.frames", spec, [c for c in current if c["name"] != "frame_id"])
    with pytest.raises(migrations.MigrationError, match="no migration step"):
        migrations.bigquery_plan("p.d.frames", spec, [dict(c, type="STRING") if c["name"] == "width" else c
                                                      for c in current])


def test_unknown_type_is_a_clear_error():
    spec = tables.runs_table()._replace(fields=(frames.Field("x", "GEOGRAPHY", "NULLABLE", ""),))
    with pytest.raises(ValueError, match="GEOGRAPHY"):
        tables.mongo_validator(spec)


def test_deterministic_ids():
    assert annotations.make_annotation_id("f1", "cls", "ann") == annotations.make_annotation_id("f1", "cls", "ann")
    assert annotations.make_annotation_id("f1", "cls", "ann") != annotations.make_annotation_id("f1", "cls", "bob")
    t = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    assert runs.make_run_id("mine", t, {"a": 1}) == runs.make_run_id("mine", t, {"a": 1})
    assert runs.make_run_id("mine", t, {"a": 1}) != runs.make_run_id("mine", t, {"a": 2})
    assert len(runs.code_version()) >= 7


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


def test_generated_validators_accept_real_documents_and_reject_bad_ones(mongo):
    database = pymongo.MongoClient(mongo.uri)["schemas_test"]
    for name in ("frames", "annotations", "runs"):
        with open(os.path.join(generate.GENERATED_DIR, "mongodb", f"{name}.validator.json")) as f:
            database.create_collection(name, validator=json.load(f))
    doc = frames.to_mongo_document(frame_record("file:///cam/a.png"))
    database.frames.insert_one(dict(doc))
    for bad in ({"frame_index": "zero"}, {"scores": {"entropy": 0.1}}, {"source_uri": None}):
        with pytest.raises(pymongo.errors.WriteError, match="failed validation"):
            database.frames.insert_one(dict(doc, _id="other", **bad))
    # Fields of later stages are allowed.
    database.frames.insert_one(dict(doc, _id="third", frame_index=1, label="coat"))
    now = datetime.datetime.now(datetime.timezone.utc)
    database.annotations.insert_one({
        "_id": "a1", "frame_id": "f", "source_uri": "file:///x.png", "frame_index": 0,
        "task": "classification", "label": "coat", "label_index": 4, "annotator": "ann",
        "selection_id": None, "annotated_at": now})
    with pytest.raises(pymongo.errors.WriteError):
        database.annotations.insert_one({"_id": "a2", "frame_id": "f", "label": "coat"})
    database.runs.insert_one({
        "_id": "r1", "job": "mine", "started_at": now, "finished_at": None, "status": "running",
        "code_version": "abc", "model_name": None, "model_version": None, "inputs": ["/x/*"],
        "output_dir": "/out", "options": "{}", "counts": None})


def test_bigquery_tables_created_partitioned_and_clustered():
    from transforms.index.bigquery_client import ensure_table
    with harness.bigquery_emulator() as endpoint:
        client = harness.bigquery_client(endpoint)
        client.create_dataset("schemas_test")
        for spec in tables.all_tables().values():
            table_id = f"{harness.BIGQUERY_PROJECT}.schemas_test.{spec.name}"
            assert ensure_table(client, table_id, spec) is True
            assert ensure_table(client, table_id, spec) is False  # already there: left alone
            table = client.get_table(table_id)
            assert [f.name for f in table.schema] == spec.field_names()
            assert table.time_partitioning.type_ == "DAY"
            assert table.time_partitioning.field == spec.partition_field
            assert table.clustering_fields == list(spec.clustering)


if __name__ == "__main__":
    harness.main(__file__)

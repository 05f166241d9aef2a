"""The `mine` job with inputs and outputs on gs:// (GCS emulator), a password-protected MongoDB
URI, and its run record: results land in the bucket, lineage in MongoDB, no credential anywhere."""
import json
import logging

import pymongo
import pytest

from beam_pipelines import mine
from tests import harness

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def bucket():
    with harness.gcs_emulator() as bucket:
        yield bucket


def test_mine_on_gcs_with_credentials_never_leaked(bucket, caplog, capsys):
    for i in range(6):
        name = f"t10k-{i:05d}.png"
        bucket.blob(f"camera drop/{name}").upload_from_filename(harness.media("fashion-mnist", name))
    bucket.blob("camera drop/broken.png").upload_from_string(b"\x89PNG\r\n\x1a\n not really")
    bucket.blob("camera drop/cup.mp4").upload_from_filename(harness.media("cup.mp4"))
    with harness.mongod() as server, harness.bigquery_emulator(gcs_data_dir=bucket.data_dir) as endpoint:
        bigquery = harness.bigquery_client(endpoint)
        bigquery.create_dataset("gcs_test")
        admin = pymongo.MongoClient(server.uri)
        admin.admin.command("createUser", "activebeam", pwd=PASSWORD, roles=["root"])
        uri = f"mongodb://activebeam:{PASSWORD}@127.0.0.1:{server.port}/?retryWrites=false&authSource=admin"
        caplog.set_level(logging.DEBUG)
        argv = [f"--input=gs://{bucket.name}/camera drop/*", f"--output_dir=gs://{bucket.name}/out",
                f"--mongo_uri={uri}", "--budget=4", "--mongo_database=gcs_test",
                f"--bigquery_table={harness.BIGQUERY_PROJECT}:gcs_test.frames",
                f"--temp_location=gs://{bucket.name}/tmp", f"--project={harness.BIGQUERY_PROJECT}"]
        summary = mine.run(argv)

        assert summary["files_matched"] == 8 and summary["files_failed"] == 1
        assert summary["frames_written"] == summary["frames_decoded"] == 6 + 9  # cup.mp4: 9 frames at 1 fps
        assert summary["mongo_uri"] == f"mongodb://activebeam:***@127.0.0.1:{server.port}/?retryWrites=false&authSource=admin"
        # A gs:// temp location makes the BigQuery write a load job (AUTO), into the partitioned table.
        assert summary["bigquery_write_method"] == "FILE_LOADS"
        rows = list(bigquery.query("SELECT COUNT(DISTINCT frame_id) AS n FROM `gcs_test.frames`").result())
        assert rows[0]["n"] == 15
        assert bigquery.get_table("gcs_test.frames").time_partitioning.field == "indexed_at"
        [run_row] = [dict(r.items()) for r in bigquery.query(
            "SELECT run_id, status, model_version, inputs, counts FROM `gcs_test.runs`").result()]
        assert run_row["run_id"] == summary["run_id"] and run_row["status"] == "succeeded"
        assert run_row["model_version"] == summary["model"]["version"]
        assert list(run_row["inputs"]) == [f"gs://{bucket.name}/camera drop/*"]
        assert json.loads(run_row["counts"])["frames_written"] == 15
        assert bigquery.get_table("gcs_test.runs").time_partitioning.field == "started_at"
        written = {b.name: b.download_as_bytes() for b in bucket.list_blobs(prefix="out/")}
        results = {"out/candidates.jsonl", "out/dead_letter.jsonl", "out/summary.json"}
        report = {name for name in written if name.startswith("out/report/")}
        assert set(written) == results | report and "out/report/index.html" in report
        assert any(name.startswith("out/report/thumbs/") for name in report)
        outputs = {name: written[name].decode("utf-8") for name in results}
        candidates = [json.loads(line) for line in outputs["out/candidates.jsonl"].splitlines()]
        assert [c["rank"] for c in candidates] == [1, 2, 3, 4]
        assert all(c["source_uri"].startswith(f"gs://{bucket.name}/camera drop/") for c in candidates)
        [dead] = [json.loads(line) for line in outputs["out/dead_letter.jsonl"].splitlines()]
        assert dead["source_uri"] == f"gs://{bucket.name}/camera drop/broken.png"

        database = admin["gcs_test"]
        assert database.frames.count_documents({}) == 15
        [run] = list(database.runs.find())
        assert run["_id"] == summary["run_id"] and run["status"] == "succeeded"
        assert run["finished_at"] >= run["started_at"]
        assert run["model_version"] == summary["model"]["version"]
        assert run["inputs"] == [f"gs://{bucket.name}/camera drop/*"]
        assert json.loads(run["counts"])["frames_written"] == 15
        assert json.loads(run["options"])["mongo_uri"].startswith("mongodb://activebeam:***@")
        assert len(run["code_version"]) >= 7

        # The password is nowhere: result files, MongoDB run record, logs, stdout/stderr.
        stored = json.dumps(list(database.runs.find()), default=str)
        captured = capsys.readouterr()
        for where, text in [("outputs", json.dumps(outputs)), ("runs", stored), ("logs", caplog.text),
                            ("stdout", captured.out), ("stderr", captured.err)]:
            assert PASSWORD not in text, where
        for name, data in written.items():  # the report too (its summary and lineage)
            assert PASSWORD.encode() not in data, name


def test_redaction_of_messages():
    from transforms.common.redact import redact_text
    text = "failed: mongodb://u:pw@h1:1,h2:2/db and gs://bucket/x and https://a:b@example.com/p"
    assert redact_text(text) == "failed: mongodb://u:***@h1:1,h2:2/db and gs://bucket/x and https://a:***@example.com/p"


if __name__ == "__main__":
    harness.main(__file__)


def test_bigquery_file_loads_through_gcs(bucket):
    """Bounded input goes by FILE_LOADS (temp files on gs://) into the pre-created, partitioned table."""
    import apache_beam as beam
    from tests.records_factory import frame_record
    from transforms.index import WriteFramesToBigQuery
    from schemas.records import Detection, ModelVersion
    detector = ModelVersion("nanodet_g.tflite", "fedcba9876543210", "")
    records = [frame_record(f"gs://{bucket.name}/cam/{i}.png")._replace(
        detections=(Detection("person", 0, 0.5, (1.0, 2.0, 3.0, 4.0 + i)),), detector=detector, predicted_label="coat")
        for i in range(5)]
    bad = frame_record(f"gs://{bucket.name}/cam/bad.png")._replace(margin=float("inf"))
    with harness.bigquery_emulator(gcs_data_dir=bucket.data_dir) as endpoint:
        from transforms.common import gcp_emulators
        gcp_emulators.use_emulators_if_configured()
        client = harness.bigquery_client(endpoint)
        client.create_dataset("loads")
        table = f"{harness.BIGQUERY_PROJECT}:loads.frames"
        options = harness.local_options(temp_location=f"gs://{bucket.name}/tmp",
                                        project=harness.BIGQUERY_PROJECT)
        for _ in range(2):  # the rerun loads nothing new
            out = harness.run_collect(lambda p: {"dead": p | beam.Create(records + [bad])
                                                 | WriteFramesToBigQuery(table)}, options)
            [dead] = out["dead"]
            assert dead.frame_id == bad.frame.frame_id and "margin" in dead.error
            rows = list(client.query("SELECT frame_id, indexed_at FROM `loads.frames`").result())
            assert sorted(r["frame_id"] for r in rows) == sorted(r.frame.frame_id for r in records)
            assert all(r["indexed_at"] is not None for r in rows)
            # The nested detections and the class name load as they stream (REPEATED RECORD).
            boxes = {r["frame_id"]: (r["y2"], r["predicted_label"]) for r in client.query(
                "SELECT f.frame_id, d.box.y2, f.predicted_label FROM `loads.frames` AS f, "
                "UNNEST(f.detections) AS d").result()}
            assert boxes == {r.frame.frame_id: (r.detections[0].box[3], "coat") for r in records}
        created = client.get_table("loads.frames")
        assert created.time_partitioning.field == "indexed_at"
        assert created.clustering_fields == ["source_uri", "model_version"]

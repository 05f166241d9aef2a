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
    with harness.mongod() as server:
        admin = pymongo.MongoClient(server.uri)
        admin.admin.command("createUser", "activebeam", pwd=PASSWORD, roles=["root"])
        uri = f"mongodb://activebeam:{PASSWORD}@127.0.0.1:{server.port}/?retryWrites=false&authSource=admin"
        caplog.set_level(logging.DEBUG)
        argv = [f"--input=gs://{bucket.name}/camera drop/*", f"--output_dir=gs://{bucket.name}/out",
                f"--mongo_uri={uri}", "--budget=4", "--mongo_database=gcs_test"]
        summary = mine.run(argv)

        assert summary["files_matched"] == 8 and summary["files_failed"] == 1
        assert summary["frames_written"] == summary["frames_decoded"] == 6 + 9  # cup.mp4: 9 frames at 1 fps
        assert summary["mongo_uri"] == f"mongodb://activebeam:***@127.0.0.1:{server.port}/?retryWrites=false&authSource=admin"
        outputs = {b.name: b.download_as_text() for b in bucket.list_blobs(prefix="out/")}
        assert set(outputs) == {"out/candidates.jsonl", "out/dead_letter.jsonl", "out/summary.json"}
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


def test_redaction_of_messages():
    from transforms.store import redact_text
    text = "failed: mongodb://u:pw@h1:1,h2:2/db and gs://bucket/x and https://a:b@example.com/p"
    assert redact_text(text) == "failed: mongodb://u:***@h1:1,h2:2/db and gs://bucket/x and https://a:***@example.com/p"


if __name__ == "__main__":
    harness.main(__file__)

"""The `mine` job end to end on real media, against a real mongod and the BigQuery emulator."""
import json
import os
import shutil
import subprocess
import sys

import pymongo
import pytest

from beam_pipelines import mine
from beam_pipelines.local_mongo import LocalMongoD
from tests import harness

REQUIRED_CANDIDATE_FIELDS = {"frame_id", "source_uri", "frame_index", "timestamp_s", "score", "strategy", "rank"}


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def inputs():
    """Real media plus two bad files and an exact duplicate, in a directory with a space."""
    d = os.path.join(harness.tmpdir(), "camera drop")
    os.makedirs(d)
    shutil.copy(harness.media("cup.mp4"), d)
    shutil.copy(harness.media("china.jpg"), d)
    os.symlink(harness.media("vtest.avi"), os.path.join(d, "vtest.avi"))
    pngs = os.path.join(d, "fmnist")
    os.makedirs(pngs)
    for i in range(40):
        name = f"t10k-{i:05d}.png"
        shutil.copy(harness.media("fashion-mnist", name), pngs)
    shutil.copy(harness.media("fashion-mnist", "t10k-00000.png"), os.path.join(pngs, "copy-of-00000.png"))
    with open(harness.media("china.jpg"), "rb") as f:
        jpeg = f.read()
    with open(os.path.join(d, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    with open(os.path.join(d, "notes.mp4"), "w") as f:
        f.write("camera 7 was offline on Tuesday\n")
    # 3 videos/photos + truncated.jpg + notes.mp4 at top level, 41 PNGs below.
    return [os.path.join(d, "*"), os.path.join(pngs, "*.png")]


def test_mine_end_to_end_and_idempotent_rerun(inputs):
    out_dir = harness.tmpdir("mine-out-")
    with harness.mongod() as mongo, harness.bigquery_emulator() as endpoint:
        client = harness.bigquery_client(endpoint)
        client.create_dataset("activebeam")
        # Its own table name: Beam remembers tables it created (class-level cache) for the whole
        # process, and test_store may have created `frames` in another emulator of this process.
        table = f"{harness.BIGQUERY_PROJECT}:activebeam.mine_frames"
        argv = [f"--input={g}" for g in inputs] + [
            f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}", f"--bigquery_table={table}",
            "--budget=25", "--video_fps=1"]
        summary = mine.run(argv)
        frames = pymongo.MongoClient(mongo.uri)["activebeam"]["frames"]

        # Every matched file is accounted for.
        assert summary["files_matched"] == 5 + 41
        assert summary["files_failed"] == 2
        assert summary["files_decoded"] + summary["files_failed"] == summary["files_matched"]
        # vtest.avi 80 frames at 1 fps, cup.mp4 9, china.jpg 1, 41 PNGs.
        assert summary["frames_decoded"] == 80 + 9 + 1 + 41
        assert summary["frames_written"] == summary["frames_scored"] == summary["frames_decoded"]
        assert summary["dead_letters"] == 2 and summary["candidates"] == 25
        assert summary["mongo_uri"] == mongo.uri and summary["bigquery_table"] == table
        assert summary["model"]["name"] == "fashion_mnist_cnn"

        dead = _read_jsonl(os.path.join(out_dir, "dead_letter.jsonl"))
        assert sorted(os.path.basename(d["source_uri"]) for d in dead) == ["notes.mp4", "truncated.jpg"]
        assert all(d["stage"] == "decode" and d["error"] for d in dead)

        candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert [c["rank"] for c in candidates] == list(range(1, 26))
        assert all(REQUIRED_CANDIDATE_FIELDS <= set(c) for c in candidates)
        assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
        assert all(c["strategy"] == "entropy" for c in candidates)
        for c in candidates:
            doc = frames.find_one({"_id": c["frame_id"]})
            assert doc["source_uri"] == c["source_uri"] and doc["frame_index"] == c["frame_index"]
            assert doc["scores"]["entropy"] == pytest.approx(c["score"])
            assert (c["timestamp_s"] is None) == (doc["media_type"] == "image")
        # The duplicated PNG is never selected twice.
        names = [os.path.basename(c["source_uri"]) for c in candidates]
        assert not {"t10k-00000.png", "copy-of-00000.png"} <= set(names)
        # The 25 highest-entropy distinct frames in the index are exactly the candidates.
        top = frames.aggregate([
            {"$sort": {"scores.entropy": -1, "_id": -1}},
            {"$group": {"_id": "$pixel_hash", "best": {"$first": "$scores.entropy"}}},
            {"$sort": {"best": -1}}, {"$limit": 25}])
        assert [round(t["best"], 9) for t in top] == [round(c["score"], 9) for c in candidates]

        assert frames.count_documents({}) == summary["frames_decoded"]
        doc = frames.find_one({"media_type": "video", "frame_index": 10})
        assert doc["timestamp_s"] == pytest.approx(1.0) and (doc["width"], doc["height"]) == (768, 576)
        assert len(doc["embedding"]) == 128 and {"entropy", "margin", "least_confidence"} <= set(doc["scores"])
        assert 0.0 <= doc["scores"]["uniqueness"] <= 1.0 and "ratio" in doc["scores"]  # --uniqueness_k 3 default
        assert doc["model"]["version"] == summary["model"]["version"]
        assert frames.index_information()["source_uri_frame_index"]["unique"]

        rows = list(client.query("SELECT COUNT(*) AS n, COUNT(DISTINCT frame_id) AS ids "
                                 "FROM `activebeam.mine_frames`").result())
        assert (rows[0]["n"], rows[0]["ids"]) == (summary["frames_decoded"],) * 2

        # A rerun on the same input and stores changes nothing in MongoDB, BigQuery or the candidates.
        again = mine.run(argv)
        assert frames.count_documents({}) == summary["frames_decoded"]
        rows = list(client.query("SELECT COUNT(*) AS n FROM `activebeam.mine_frames`").result())
        assert rows[0]["n"] == summary["frames_decoded"]
        assert again["frames_written"] == summary["frames_written"]
        assert _read_jsonl(os.path.join(out_dir, "candidates.jsonl")) == candidates


def test_cli_with_embedded_mongod(inputs):
    out_dir = harness.tmpdir("mine-cli-")
    png_glob = inputs[1]
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.mine", f"--input={png_glob}", f"--output_dir={out_dir}",
         "--budget=5", "--strategy=margin"],
        capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.join(out_dir, "candidates.jsonl") in result.stdout
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    assert summary["mongo_embedded"] and summary["frames_written"] == 41
    candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
    assert len(candidates) == 5 and all(c["strategy"] == "margin" for c in candidates)
    # The embedded server was stopped, and its data stayed under the output directory.
    with LocalMongoD(os.path.join(out_dir, "mongo-data")) as mongo:
        assert pymongo.MongoClient(mongo.uri)["activebeam"]["frames"].count_documents({}) == 41


def test_invalid_options_fail_clearly():
    with pytest.raises(ValueError, match="--budget"):
        mine.run(["--budget=-3", f"--output_dir={harness.tmpdir()}"])
    with pytest.raises(ValueError, match="--mongo_uri is required"):
        mine.run(["--runner=DataflowRunner", f"--output_dir={harness.tmpdir()}",
                  f"--input={harness.media('china.jpg')}"])


if __name__ == "__main__":
    harness.main(__file__)

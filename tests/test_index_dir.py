"""mine --index_dir: two real daily runs against one kept novelty index (a real mongod, real video).

Day 1 mines vtest.avi. Day 2 mines cup.mp4 and a second camera's copy of vtest.avi (same
pictures, another file name): its frames are near-duplicates of frames indexed yesterday, so
they join day 1's groups and none of them can be a candidate; the index then holds both days'
frames once. A run with another embedding model is refused with a message that says what to do.
"""
import json
import os
import shutil

import pymongo
import pytest

from beam_pipelines import mine
from beam_pipelines.cli.preflight import OptionError
from schemas.records import ModelVersion
from tests import harness
from transforms.score.history import MANIFEST, ModelVersionChanged, NoveltyHistory


@pytest.fixture(scope="module")
def days():
    """``(mongod, day 1 inputs, day 2 inputs, index directory)``, one mongod for the file."""
    d = harness.tmpdir("index-dir-")
    day1, day2 = os.path.join(d, "day1"), os.path.join(d, "day2")
    for directory in (day1, day2):
        os.makedirs(directory)
    shutil.copy(harness.media("vtest.avi"), os.path.join(day1, "cam1.avi"))
    shutil.copy(harness.media("vtest.avi"), os.path.join(day2, "cam2.avi"))  # later name: day 1's frame leads
    shutil.copy(harness.media("cup.mp4"), day2)
    with harness.mongod() as server:
        yield server, day1, day2, os.path.join(d, "index")


def _run(inputs, index_dir, mongo, *extra):
    out = harness.tmpdir("index-dir-out-")
    summary = mine.run([f"--input={inputs}/*", f"--output_dir={out}", f"--mongo_uri={mongo.uri}",
                        f"--index_dir={index_dir}", "--budget=10", "--video_fps=1", "--quiet", *extra])
    with open(os.path.join(out, "candidates.jsonl")) as f:
        return summary, [json.loads(line) for line in f if line.strip()]


def _manifest(index_dir):
    with open(os.path.join(index_dir, MANIFEST)) as f:
        return json.load(f)


def test_a_daily_run_remembers_yesterday(days):
    mongo, day1, day2, index_dir = days
    first, _ = _run(day1, index_dir, mongo)
    assert first["frames_written"] == 80
    assert _manifest(index_dir)["frames"] == 80 and _manifest(index_dir)["generation"] == 1

    second, candidates = _run(day2, index_dir, mongo)
    frames = pymongo.MongoClient(mongo.uri)["activebeam"]["frames"]
    cam1 = {d["_id"] for d in frames.find({"source_uri": {"$regex": "cam1.avi$"}}, {"_id": 1})}
    cam2 = list(frames.find({"source_uri": {"$regex": "cam2.avi$"}}))
    assert len(cam1) == len(cam2) == 80
    # Every frame of the copy is grouped under a frame indexed yesterday, so none is a candidate.
    assert all(doc["duplicate_group"] in cam1 for doc in cam2)
    assert not {c["frame_id"] for c in candidates} & {doc["_id"] for doc in cam2}
    assert candidates and all(c["source_uri"].endswith("cup.mp4") for c in candidates)
    # An exact copy of a history frame has a neighbour at distance 0: it is among the least unique.
    cup = list(frames.find({"source_uri": {"$regex": "cup.mp4$"}}))
    assert max(d["scores"]["uniqueness"] for d in cam2) < min(d["scores"]["uniqueness"] for d in cup)
    manifest = _manifest(index_dir)
    assert manifest["generation"] == 2 and manifest["frames"] == 80 + second["frames_written"]
    assert not [name for name in os.listdir(index_dir) if name.startswith("pending-")]

    # A rerun of day 2 adds nothing twice.
    _run(day2, index_dir, mongo)
    assert _manifest(index_dir)["frames"] == manifest["frames"]


def test_another_model_is_refused_and_renewed_on_request(days):
    mongo, _, day2, index_dir = days
    manifest = _manifest(index_dir)
    other = ModelVersion(manifest["model"]["name"], "0" * 16, manifest["model"]["embedding_layer"])
    with pytest.raises(ModelVersionChanged, match="--renew_index"):
        NoveltyHistory(index_dir, other)
    renewed = NoveltyHistory(index_dir, other, renew=True)
    assert renewed.renewed and renewed.load().index is None and renewed.next_generation == manifest["generation"] + 1
    # The job refuses before it runs anything, as a bad option (exit code 2).
    changed = dict(manifest, model=dict(manifest["model"], version="0" * 16))
    with open(os.path.join(index_dir, MANIFEST), "w") as f:
        json.dump(changed, f)
    with pytest.raises(OptionError, match="holds .* embeddings of model .* --renew_index"):
        _run(day2, index_dir, mongo)

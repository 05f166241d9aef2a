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
    assert renewed.renewed and renewed.load().segments == [] and renewed.next_generation == manifest["generation"] + 1
    # The job refuses before it runs anything, as a bad option (exit code 2).
    changed = dict(manifest, model=dict(manifest["model"], version="0" * 16))
    with open(os.path.join(index_dir, MANIFEST), "w") as f:
        json.dump(changed, f)
    with pytest.raises(OptionError, match="holds .* embeddings of model .* --renew_index"):
        _run(day2, index_dir, mongo)


def _day(rng, n, first, dim=32):
    ids = [f"frame-{i:06d}" for i in range(first, first + n)]
    return ids, rng.normal(size=(n, dim)).astype("float32"), [(f"cam/{i // 50}.mp4", i % 50) for i in range(first, first + n)]


def _files(index_dir):
    out = {}
    for name in sorted(os.listdir(index_dir)):
        with open(os.path.join(index_dir, name), "rb") as f:
            out[name] = f.read()
    return out


def test_days_append_segments_merged_by_the_logarithmic_method():
    """Each day writes only a segment of its new frames; committed files are never rewritten; a
    segment is merged into the one before while that one holds fewer than twice its frames, so
    segments halve from oldest to newest; an uncommitted day changes nothing; every frame is
    searchable once; a format-1 directory reads as one segment."""
    import numpy as np
    from schemas.records import ModelVersion
    from transforms.score.history import FORMAT, MERGE_FACTOR
    rng = np.random.default_rng(0)
    model = ModelVersion("m", "v1", "emb")
    index_dir = harness.tmpdir("segments-")
    sizes, first, everything = [400, 100, 30, 40, 20], 0, {}
    # the rule by hand: 40 merges 30 (30 < 2 x 40), then that 70 merges 100 (100 < 140), not 400
    expected = [[400], [400, 100], [400, 100, 30], [400, 170], [400, 170, 20]]
    for day, n in enumerate(sizes, start=1):
        ids, x, keys = _day(rng, n, first)
        everything.update(zip(ids, x))
        history = NoveltyHistory(index_dir, model)
        before = _files(index_dir)
        assert history.write_next(ids + ids[:5], np.concatenate([x, x[:5]]), keys + keys[:5]) == n
        if day == 3:  # a run that dies before commit: generation 2 stays current, its rerun redoes 3
            assert _manifest(index_dir)["generation"] == 2
            history = NoveltyHistory(index_dir, model)
            assert history.write_next(ids, x, keys) == n
        assert history.commit()
        assert [s["count"] for s in _manifest(index_dir)["segments"]] == expected[day - 1]
        for name, data in before.items():  # append-only: nothing committed is rewritten
            if not name.startswith("pending-") and name != MANIFEST:
                assert _files(index_dir)[name] == data, name
        first += n
    manifest = _manifest(index_dir)
    counts = [s["count"] for s in manifest["segments"]]
    assert manifest["format"] == FORMAT and sum(counts) == manifest["frames"] == sum(sizes)
    assert all(a >= MERGE_FACTOR * b for a, b in zip(counts, counts[1:])), counts
    snapshot = NoveltyHistory(index_dir, model).load()
    assert sorted(snapshot.ids) == sorted(everything) and len(set(snapshot.ids)) == len(snapshot.ids)
    for segment in snapshot.segments:  # each vector is in its segment's index, where its id says
        stored = segment.index.reconstruct_n(0, segment.index.ntotal)
        want = np.stack([everything[i] for i in segment.ids])
        assert np.allclose(stored, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    # A format-1 directory (one index and frame list per generation) is one segment.
    old_dir = harness.tmpdir("format1-")
    segment = snapshot.segments[0]
    for name, src in (("index-000007.faiss", manifest["segments"][0]["index"]),
                      ("frames-000007.jsonl", manifest["segments"][0]["frames"])):
        shutil.copy(os.path.join(index_dir, src), os.path.join(old_dir, name))
    with open(os.path.join(old_dir, MANIFEST), "w") as f:
        json.dump({"format": 1, "generation": 7, "frames": len(segment.ids), "model": manifest["model"],
                   "factory": "Flat"}, f)
    old = NoveltyHistory(old_dir, model)
    assert old.load().ids == segment.ids
    ids, x, keys = _day(rng, 10, first)
    assert old.write_next(ids, x, keys) == 10 and old.commit()
    assert [s["count"] for s in _manifest(old_dir)["segments"]] == [len(segment.ids), 10]

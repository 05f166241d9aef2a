"""The `mine` job end to end on real media, against a real mongod and the BigQuery emulator;
its option checks and its run record."""
import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pymongo
import pytest

from beam_pipelines import mine
from beam_pipelines.local.mongod import LocalMongoD
from beam_pipelines.cli.run_record import RunRecord, describe_run
from tests import harness

REQUIRED_CANDIDATE_FIELDS = {"frame_id", "source_uri", "frame_index", "timestamp_s", "score", "strategy", "rank"}
RUNS_DATABASE = "activebeam_runs_test"  # the run-record tests' own database: no frames in it


@pytest.fixture(scope="module")
def mongo():
    """One real mongod for the tests of this file."""
    with harness.mongod() as server:
        yield server


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
    # 3 videos/photos + truncated.jpg + notes.mp4 at top level, 41 PNGs below (in fmnist/, which
    # the top-level glob matches as a directory: a dead letter, its PNGs come from the second glob).
    return [os.path.join(d, "*"), os.path.join(pngs, "*.png")]


def test_mine_end_to_end_and_idempotent_rerun(inputs, mongo):
    out_dir = harness.tmpdir("mine-out-")
    with harness.bigquery_emulator() as endpoint:
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
        assert summary["dead_letters"] == 3 and summary["candidates"] == 25
        assert summary["mongo_uri"] == mongo.uri and summary["bigquery_table"] == table
        assert summary["model"]["name"] == "fashion_mnist_cnn"
        # The run's entry takes its counts from the pipeline's metrics: those of summary.json.
        with open(os.path.join(out_dir, "summary.json")) as f:
            written = json.load(f)
        run = pymongo.MongoClient(mongo.uri)["activebeam"]["runs"].find_one({"_id": summary["run_id"]})
        assert run["status"] == "succeeded" and run["code_version"] == written["code_version"]
        counts = json.loads(run["counts"])
        assert {name: counts[name] for name in mine.SUMMARY_COUNTERS} == {name: written[name] for name in mine.SUMMARY_COUNTERS}
        # and what the selection costs to label (no detector: 25 frames at the published 5 s each)
        assert counts["estimated_label_seconds"] == written["selection_figures"]["estimated_label_seconds"] == 125.0
        integers = {k for k, v in written.items() if isinstance(v, int) and not isinstance(v, bool)}
        assert set(mine.SUMMARY_COUNTERS) == integers - {"budget", "mc_passes", "uniqueness_k"}

        dead = _read_jsonl(os.path.join(out_dir, "dead_letter.jsonl"))
        assert sorted((os.path.basename(d["source_uri"]), d["stage"]) for d in dead) == [
            ("fmnist", "match"), ("notes.mp4", "decode"), ("truncated.jpg", "decode")]
        assert all(d["error"] for d in dead)

        candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert [c["rank"] for c in candidates] == list(range(1, 26))
        assert all(REQUIRED_CANDIDATE_FIELDS <= set(c) for c in candidates)
        # The default selection, uncertain and diverse (no detector: an entropy pool, then k-centre):
        # the most uncertain first, then farthest-first, each pick no farther than the one before.
        assert all(c["strategy"] == "uncertainty_kcenter" for c in candidates)
        assert candidates[0]["score"] == max(c["score"] for c in candidates)
        gains = [c["components"]["distance_to_selected"] for c in candidates]
        assert gains == sorted(gains, reverse=True) and gains[0] == 2.0
        for c in candidates:
            doc = frames.find_one({"_id": c["frame_id"]})
            assert doc["source_uri"] == c["source_uri"] and doc["frame_index"] == c["frame_index"]
            assert doc["scores"]["entropy"] == pytest.approx(c["score"])
            assert (c["timestamp_s"] is None) == (doc["media_type"] == "image")
        # The duplicated PNG is never selected twice.
        names = [os.path.basename(c["source_uri"]) for c in candidates]
        assert not {"t10k-00000.png", "copy-of-00000.png"} <= set(names)
        # The first candidate is the highest-entropy frame in the index.
        [top] = frames.aggregate([{"$sort": {"scores.entropy": -1, "_id": -1}}, {"$limit": 1}])
        assert round(top["scores"]["entropy"], 9) == round(candidates[0]["score"], 9)

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


def test_two_worker_processes_give_what_one_gives_with_one_model_copy_each(inputs, mongo):
    """The job with two worker processes (FnApiRunner multi_processing) on a fresh database:
    every file accounted for, the same frames and candidates as one in-process worker, each
    worker loading the model once (not per bundle)."""
    runs, scraped = {}, {}
    for workers in (2, 1):
        out_dir = harness.tmpdir(f"mine-{workers}w-")
        port = harness.free_port()
        argv = [f"--input={g}" for g in inputs] + [
            f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}", f"--mongo_database=workers{workers}",
            "--budget=10", "--video_fps=1", "--video_split_seconds=20", f"--metrics_port={port}"]
        if workers > 1:
            argv += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        with _scraping(port) as scraped[workers]:
            runs[workers] = mine.run(argv), _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
    (two, two_candidates), (one, one_candidates) = runs[2], runs[1]
    # --metrics_port: Prometheus saw the frames while the job ran, from the worker processes too
    # (the client's multiprocess mode), and never more than the run's committed counts.
    for workers, summary in ((2, two), (1, one)):
        seen = scraped[workers]
        assert 0 < seen.get("activebeam_frames_indexed_total", 0) <= summary["frames_written"], (workers, seen)
        assert seen.get("activebeam_frames_decoded_total", 0) <= summary["frames_written"] + summary["dead_letters"]
    import prometheus_client  # the in-process run's final values, in this process
    assert prometheus_client.REGISTRY.get_sample_value("activebeam_candidates_total") == one["candidates"]
    assert sum(sample.value for metric in prometheus_client.REGISTRY.collect() for sample in metric.samples
               if sample.name == "activebeam_dead_letters_total") == one["dead_letters"]
    for name in mine.SUMMARY_COUNTERS:
        assert two[name] == one[name], name
    assert two["dead_letters"] == 3 and two["frames_written"] == 80 + 9 + 1 + 41  # + the fmnist/ directory
    assert 1 <= two["model_loads"] <= 2 and one["model_loads"] == 1
    assert [(c["frame_id"], c["rank"]) for c in two_candidates] == [(c["frame_id"], c["rank"]) for c in one_candidates]
    client = pymongo.MongoClient(mongo.uri)
    assert (sorted(client["workers2"]["frames"].distinct("_id"))
            == sorted(client["workers1"]["frames"].distinct("_id")))


@contextlib.contextmanager
def _scraping(port):
    """Scrapes ``port`` every 0.2 s in a thread while the block runs; yields ``{sample name: the
    largest value seen}`` (unlabelled samples)."""
    seen, stop = {}, threading.Event()

    def loop():
        while not stop.is_set():
            for (name, labels), value in harness.scrape_metrics(port).items():
                if not labels:
                    seen[name] = max(seen.get(name, 0), value)
            stop.wait(0.2)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


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


BAD_OPTIONS = [
    (["--budget=-3"], "--budget must be >= 0"),
    (["--uniqueness_k=-1"], "--uniqueness_k must be >= 0"),
    (["--mc_passes=-2"], "--mc_passes must be 0 (off) or >= 2"),
    (["--strategy=bald"], "--mc_passes >= 2"),
    (["--strategy=uniqueness", "--uniqueness_k=0"], "--uniqueness_k >= 1"),
    (["--index_dir=/tmp/index", "--uniqueness_k=0"], "--index_dir keeps the novelty index: set --uniqueness_k >= 1"),
    (["--strategy_params=[1]"], "--strategy_params must be a JSON object"),
    (["--strategy=coreset", '--strategy_params={"n_clusters": 2}'], "--strategy_params: bad parameters"),
    (["--video_fps=nan"], "--video_fps must be a number"),
    (["--video_every_n=0"], "--video_every_n must be >= 1"),
    (["--scene_threshold=1.5"], "--scene_threshold must be in (0, 1]"),
    (["--max_image_pixels=-1"], "--max_image_pixels must be >= 0"),
    (["--resize_longest_side=-1"], "--resize_longest_side must be >= 0"),
    (["--video_split_seconds=-5"], "--video_split_seconds must be >= 0"),
    (["--bigquery_table=frames"], "--bigquery_table must be PROJECT:DATASET.TABLE"),
    (["--bigquery_candidates_table=p:d.t.x"], "--bigquery_candidates_table must be"),
    (["--output_dir=gs://bucket/out"], "--mongo_uri is required"),
    (["--runner=DataflowRunner", "--mongo_uri=mongodb://127.0.0.1:1"], "--input is required"),
    (["--metrics_port=70000"], "--metrics_port must be a TCP port"),
    (["--runner=DataflowRunner", "--mongo_uri=mongodb://127.0.0.1:1", "--metrics_port=9464"],
     "--metrics_port serves the local runners' metrics"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[argv[0] for argv, _ in BAD_OPTIONS])
def test_every_option_is_checked_before_the_model_loads_or_a_server_starts(argv, message, monkeypatch):
    from beam_pipelines.mine import batch, job
    loaded = []
    monkeypatch.setattr(job, "load_model_spec", lambda *args: loaded.append("model"))
    monkeypatch.setattr(job, "LocalMongoD", lambda *args: loaded.append("mongod"))
    monkeypatch.setattr(batch.sample_media, "prepare", lambda: loaded.append("sample media"))
    started = time.monotonic()
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        mine.run([f"--output_dir={harness.tmpdir()}"] + argv)
    # Nothing slow first: about 0.1 s here; the bound leaves room for a loaded machine (1.06 s
    # was seen with two other jobs on both cores) and still fails on a TensorFlow import (3-5 s).
    assert time.monotonic() - started < 3.0 and loaded == []
    assert "\n" not in str(raised.value)  # one line


@pytest.mark.parametrize("interruption, status", [(KeyboardInterrupt, "cancelled"), (RuntimeError, "failed")])
def test_run_record_says_cancelled_or_failed(interruption, status, mongo, monkeypatch):
    def interrupted(pipeline):
        raise interruption("stopped while the pipeline runs")
    monkeypatch.setattr(beam.Pipeline, "run", interrupted)
    out_dir = harness.tmpdir("mine-stopped-")
    with pytest.raises(interruption):
        mine.run([f"--input={harness.media('china.jpg')}", f"--output_dir={out_dir}",
                  f"--mongo_uri={mongo.uri}", f"--mongo_database={RUNS_DATABASE}"])
    [run] = pymongo.MongoClient(mongo.uri)[RUNS_DATABASE]["runs"].find({"output_dir": out_dir})
    assert run["status"] == status and run["finished_at"] is not None and run["counts"] is None
    assert run["model_name"] == "fashion_mnist_cnn" and run["inputs"] == [harness.media("china.jpg")]


def test_run_record_changes_nothing_it_is_given(mongo):
    facts = {"inputs": ["/data/*.jpg"], "output_dir": "/out", "model": {"name": "m", "version": "v1"},
             "mongo_uri": "mongodb://127.0.0.1:1"}
    options = {"budget": 5, "mongo_uri": "mongodb://reader:s3cret@127.0.0.1:1"}
    before = copy.deepcopy((facts, options))
    lineage = describe_run("mine", options, facts, inputs=facts["inputs"], output_dir="/out",
                           model=facts["model"])
    counts = {"frames_written": 3}
    with RunRecord(lineage, mongo.uri, RUNS_DATABASE) as run:
        run.set_counts(counts)
    assert (facts, options) == before and counts == {"frames_written": 3}
    entry = pymongo.MongoClient(mongo.uri)[RUNS_DATABASE]["runs"].find_one({"_id": lineage.run_id})
    assert entry["status"] == "succeeded" and json.loads(entry["counts"]) == counts
    assert entry["code_version"] == lineage.code_version and "s3cret" not in entry["options"]
    assert json.loads(entry["options"])["mongo_uri"] == "mongodb://127.0.0.1:1"  # facts win


_KILLED_DRIVER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from beam_pipelines.cli.run_record import RunRecord, describe_run
lineage = describe_run("mine", {"budget": 1}, {}, inputs=["/killed/*.jpg"])
RunRecord(lineage, sys.argv[2], sys.argv[3], local_driver=True).__enter__()
print(lineage.run_id, flush=True)
os.kill(os.getpid(), 9)  # the driver dies without a word
"""


def test_a_run_whose_driver_was_killed_is_closed_by_the_next_run_on_the_machine(mongo, monkeypatch):
    """A local run killed by SIGKILL stays ``running``; the next local run on the same machine
    marks it ``failed`` and says why, and leaves alone the running entries of live drivers, of
    other machines and of runs without a driver (Dataflow)."""
    from beam_pipelines.cli.run_record import driver_identity, driver_is_alive
    killed = subprocess.run([sys.executable, "-c", _KILLED_DRIVER, harness.CHECKOUT, mongo.uri, RUNS_DATABASE],
                            capture_output=True, text=True, timeout=120, cwd=harness.CHECKOUT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    killed_id = killed.stdout.strip()
    runs = pymongo.MongoClient(mongo.uri)[RUNS_DATABASE]["runs"]
    entry = runs.find_one({"_id": killed_id})
    assert entry["status"] == "running" and entry["driver"]["pid"] != os.getpid()
    assert not driver_is_alive(entry["driver"])
    me = driver_identity()
    assert driver_is_alive(me) and me["host"] == entry["driver"]["host"]
    # A live driver, a reused pid (this process, but started at another time), another machine,
    # and a run left running on Dataflow (no driver).
    others = {"live": dict(me), "reused_pid": dict(me, process_start=str(int(me["process_start"]) - 1)),
              "elsewhere": dict(entry["driver"], host=entry["driver"]["host"] + "-other"), "dataflow": None}
    assert not driver_is_alive(others["reused_pid"])
    base = {k: v for k, v in entry.items() if k not in ("_id", "driver")}
    for name, driver in others.items():
        runs.insert_one(dict(base, _id=f"other-{name}", **({"driver": driver} if driver else {})))
    lineage = describe_run("mine", {"budget": 2}, {}, inputs=["/next/*.jpg"])
    with RunRecord(lineage, mongo.uri, RUNS_DATABASE, local_driver=True):
        pass
    closed = runs.find_one({"_id": killed_id})
    assert closed["status"] == "failed" and closed["finished_at"] is None
    assert closed["failure"] == (
        f"lost: its driver (pid {entry['driver']['pid']} on {entry['driver']['host']}) ended without "
        f"recording an end (killed, e.g. SIGKILL or out of memory); found when run {lineage.run_id} started")
    assert runs.find_one({"_id": "other-reused_pid"})["status"] == "failed"
    for name in ("live", "elsewhere", "dataflow"):
        assert runs.find_one({"_id": f"other-{name}"})["status"] == "running", name
    assert runs.find_one({"_id": lineage.run_id})["status"] == "succeeded"
    assert runs.find_one({"_id": lineage.run_id})["driver"]["pid"] == os.getpid()
    # A store that did not take the run's own entry is not asked for lost runs (no second wait).
    looked = []
    monkeypatch.setattr(RunRecord, "_close_lost_runs", lambda self: looked.append(self.run_id))
    with RunRecord(lineage, "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300", RUNS_DATABASE, local_driver=True):
        pass
    with RunRecord(lineage, mongo.uri, RUNS_DATABASE, local_driver=True):
        pass
    assert looked == [lineage.run_id]


def test_help_lists_the_jobs_options_and_says_how_to_see_beams(capsys):
    from beam_pipelines.mine.options import MineOptions
    import argparse
    parser = argparse.ArgumentParser()
    MineOptions._add_argparse_args(parser)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}
    mine.main(["--help"])
    text = capsys.readouterr().out
    assert flags and all(flag in text for flag in flags), flags - {f for f in flags if f in text}
    assert "--help_beam" in text and "--runner RUNNER" not in text
    mine.main(["--help_beam"])
    beam_text = capsys.readouterr().out
    assert "--runner" in beam_text and "--direct_num_workers" in beam_text and "--budget" not in beam_text


def test_dead_letter_fraction():
    from beam_pipelines.mine.options import dead_letter_fraction
    assert dead_letter_fraction({"files_matched": 4, "files_failed": 4, "dead_letters": 4}) == 1.0
    assert dead_letter_fraction({"files_matched": 10, "files_failed": 1, "dead_letters": 1,
                                 "frames_decoded": 50}) == 0.1
    # every decoded frame lost later (e.g. the model fails on all of them): 100 % though no file failed
    assert dead_letter_fraction({"files_matched": 100, "files_failed": 0, "dead_letters": 100,
                                 "frames_decoded": 100}) == 1.0
    assert dead_letter_fraction({"files_matched": 0, "dead_letters": 1}) == 1.0  # a glob matched nothing
    # with the stages: what matching refused is a lost input, not a lost frame
    counts = {"files_matched": 8, "files_failed": 2, "dead_letters": 4, "frames_decoded": 6}
    assert dead_letter_fraction(counts, {"match": 2, "decode": 2}) == 0.4
    assert dead_letter_fraction(counts, {"match": 1, "decode": 2, "inference": 1}) == max(3 / 9, 1 / 6)


def test_run_fails_past_max_dead_letter_fraction_and_accounts_for_every_input(mongo, capsys):
    folder = harness.tmpdir("mine-all-bad-")
    for name, data in (("empty.jpg", b""), ("notes.png", b"not an image at all"), ("cut.jpg", b"\xff\xd8\xff\xe0")):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    out_dir = harness.tmpdir("mine-all-bad-out-")
    argv = [f"--input={folder}/*", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}",
            f"--mongo_database={RUNS_DATABASE}"]
    with pytest.raises(SystemExit) as exited:
        mine.main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mine: failed: 100% of the inputs failed (3 of 3 files")
    assert len(_read_jsonl(os.path.join(out_dir, "dead_letter.jsonl"))) == 3  # all accounted for
    [run] = pymongo.MongoClient(mongo.uri)[RUNS_DATABASE]["runs"].find({"output_dir": out_dir})
    assert run["status"] == "failed"
    assert json.loads(run["counts"])["files_failed"] == 3 and json.loads(run["counts"])["dead_letters"] == 3
    mine.main(argv + ["--max_dead_letter_fraction=1"])  # allowed: succeeds, nothing duplicated
    assert len(_read_jsonl(os.path.join(out_dir, "dead_letter.jsonl"))) == 3


if __name__ == "__main__":
    harness.main(__file__)


def test_every_prometheus_metric_is_documented_with_its_beam_metric():
    from beam_pipelines.cli import metrics
    with open(os.path.join(harness.CHECKOUT, "docs", "operations.md")) as f:
        rows = {line.split("|")[1].strip(" `"): line for line in f if line.startswith("| `activebeam_")}
    assert set(rows) == {spec.name for spec in metrics.METRICS}
    for spec in metrics.METRICS:
        beam_name = spec.beam.split(" ")[0].rstrip(",")
        assert beam_name in rows[spec.name] or spec.beam.startswith("none"), spec.name

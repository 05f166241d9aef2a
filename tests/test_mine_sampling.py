"""The `mine` job with a diversity strategy: --strategy/--strategy_params, candidates in the
MongoDB ``candidates`` collection and the BigQuery candidates table, matching candidates.jsonl."""
import json
import os

import pymongo
import pytest

from beam_pipelines import mine
from tests import harness


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_mine_with_cluster_margin_indexes_candidates_everywhere():
    out_dir = harness.tmpdir("mine-sampling-")
    pngs = harness.media("fashion-mnist", "t10k-000[0-5]*.png")
    with harness.mongod() as mongo, harness.bigquery_emulator() as endpoint:
        client = harness.bigquery_client(endpoint)
        client.create_dataset("activebeam")
        argv = [f"--input={pngs}", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}",
                f"--bigquery_table={harness.BIGQUERY_PROJECT}:activebeam.sampling_frames",
                # Its own name: Beam caches the tables it created per process (see test_mine).
                f"--bigquery_candidates_table={harness.BIGQUERY_PROJECT}:activebeam.sampling_candidates",
                "--budget=8", "--strategy=cluster_margin",
                '--strategy_params={"n_clusters": 3, "margin_multiplier": 3}']
        summary = mine.run(argv)
        assert summary["candidates"] == summary["candidates_written"] == 8
        assert summary["strategy_params"] == {"n_clusters": 3, "margin_multiplier": 3}
        assert summary["bigquery_candidates_table"] == f"{harness.BIGQUERY_PROJECT}:activebeam.sampling_candidates"
        candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert [c["rank"] for c in candidates] == list(range(1, 9))
        assert {c["strategy"] for c in candidates} == {"cluster_margin"}
        assert all(set(c["components"]) == {"margin", "cluster_size", "predicted_boxes", "label_seconds"}
                   for c in candidates)
        # Cluster-Margin's candidates are among the 3 * 8 lowest-margin frames of the index.
        frames = pymongo.MongoClient(mongo.uri)["activebeam"]["frames"]
        lowest = {d["_id"] for d in frames.find().sort("scores.margin", 1).limit(24)}
        assert {c["frame_id"] for c in candidates} <= lowest

        stored = {d["frame_id"]: d for d in pymongo.MongoClient(mongo.uri)["activebeam"]["candidates"].find()}
        assert set(stored) == {c["frame_id"] for c in candidates}
        for c in candidates:
            assert stored[c["frame_id"]]["rank"] == c["rank"]
            assert stored[c["frame_id"]]["selection_id"] == c["selection_id"]
            assert stored[c["frame_id"]]["model"]["version"] == summary["model"]["version"]
        rows = list(client.query("SELECT frame_id, `rank`, model_version, parameters "
                                 "FROM `activebeam.sampling_candidates` ORDER BY `rank`").result())
        assert [r["frame_id"] for r in rows] == [c["frame_id"] for c in candidates]
        assert json.loads(rows[0]["parameters"])["params"]["n_clusters"] == 3

        again = mine.run(argv)
        assert again["candidates"] == 8
        assert _read_jsonl(os.path.join(out_dir, "candidates.jsonl")) == candidates
        n = list(client.query("SELECT COUNT(*) AS n FROM `activebeam.sampling_candidates`").result())[0]["n"]
        assert n == 8


def test_a_default_selection_short_of_its_budget_says_why(caplog):
    """min_distance 1.5 (cosine): after the first pick no Fashion-MNIST frame is that far from it,
    so 1 of a budget of 5 is selected from 60 indexed frames, and one warning line says which
    rule and how to set it; a selection that fills its budget says nothing."""
    out_dir = harness.tmpdir("mine-short-")
    pngs = harness.media("fashion-mnist", "t10k-000[0-5]*.png")
    with harness.mongod() as mongo, caplog.at_level("WARNING", logger="beam_pipelines.mine.batch"):
        argv = [f"--input={pngs}", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}", "--budget=5"]
        short = mine.run(argv + ['--strategy_params={"min_distance": 1.5}'])
        assert short["candidates"] < 5 < short["frames_written"]
        (line,) = [r.getMessage() for r in caplog.records if "of a budget of" in r.getMessage()]
        assert line.startswith(f"selected {short['candidates']} frames of a budget of 5 from {short['frames_written']} "
                               "indexed: uncertainty_kcenter admits no frame within cosine distance 1.5 (min_distance)")
        assert "--strategy_params" in line
        caplog.clear()
        assert mine.run(argv)["candidates"] == 5
        assert not [r for r in caplog.records if "of a budget of" in r.getMessage()]


def test_bad_strategy_params_fail_before_running():
    with pytest.raises(ValueError, match="JSON object"):
        mine.run(["--strategy=coreset", "--strategy_params=[1, 2]"])
    with pytest.raises(ValueError, match="bad parameters"):
        mine.run(["--strategy=coreset", '--strategy_params={"n_clusters": 2}'])
    with pytest.raises(ValueError, match="--mc_passes"):
        mine.run(["--strategy=bald"])
    with pytest.raises(ValueError, match="--uniqueness_k"):
        mine.run(["--strategy=uniqueness", "--uniqueness_k=0"])


def test_a_budget_of_labelling_seconds_with_a_cost_model_fitted_to_lead_times():
    """--budget_unit seconds: the candidates are what the budget pays for at the cost model that
    the index's annotations give (40 classification answers of 3 s and 5 s: 4 s per frame)."""
    out_dir = harness.tmpdir("mine-cost-")
    pngs = harness.media("fashion-mnist", "t10k-000[0-4]*.png")
    with harness.mongod() as mongo:
        db = pymongo.MongoClient(mongo.uri)["activebeam"]
        db["annotations"].insert_many([{"_id": f"a{i}", "lead_time_s": 3.0 + 2 * (i % 2), "boxes": None,
                                        "annotated_at": i} for i in range(40)])
        argv = [f"--input={pngs}", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}",
                "--budget=40", "--budget_unit=seconds"]
        summary = mine.run(argv)
        assert summary["cost_model"] == {"seconds_per_frame": 4.0, "seconds_per_box": 7.0,
                                         "source": "calibrated", "annotations": 40}
        assert summary["budget_unit"] == "seconds" and "budget_unit" not in summary["strategy_params"]
        assert summary["candidates"] == 10  # 40 s at 4 s a frame
        candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert [c["components"]["label_seconds"] for c in candidates] == [4.0] * 10
        assert summary["selection_figures"]["estimated_label_seconds"] == 40.0
        run = db["runs"].find_one({"_id": summary["run_id"]})
        assert json.loads(run["counts"])["estimated_label_seconds"] == 40.0
        assert json.loads(run["options"])["cost_model"]["source"] == "calibrated"
        assert candidates[0]["parameters"]["params"]["budget_unit"] == "seconds"
        # the user's numbers win over the fit
        given = mine.run(argv + ["--seconds_per_frame=8"])
        assert given["candidates"] == 5 and given["cost_model"]["source"] == "given"
    with pytest.raises(ValueError, match="needs a detector"):
        mine.run(["--budget_unit=boxes"])
    with pytest.raises(ValueError, match="set with --budget_unit"):
        mine.run(['--strategy_params={"budget_unit": "frames"}'])


@pytest.mark.parametrize("strategy, extra", [("bald", ["--mc_passes=5"]), ("uniqueness", [])])
def test_mine_ranks_by_a_stored_score(strategy, extra):
    """BALD (MC dropout) and k-NN uniqueness, computed in EmbedAndScore and stored under
    ``scores.<name>``, rank the candidates: they are the top of the index by that score."""
    out_dir = harness.tmpdir("mine-sampling-")
    pngs = harness.media("fashion-mnist", "t10k-000[0-4]*.png")
    with harness.mongod() as mongo:
        summary = mine.run([f"--input={pngs}", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}",
                            "--budget=6", f"--strategy={strategy}"] + extra)
        candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert summary["candidates"] == 6 and {c["strategy"] for c in candidates} == {strategy}
        frames = pymongo.MongoClient(mongo.uri)["activebeam"]["frames"]
        stored = {d["_id"]: d["scores"][strategy] for d in frames.find()}
        assert len(stored) == 50 and len(set(stored.values())) > 40  # a real, varied score
        top = sorted(stored, key=lambda frame_id: (-stored[frame_id], frame_id))[:6]
        assert [c["frame_id"] for c in candidates] == top
        assert [c["components"][strategy] for c in candidates] == [stored[f] for f in top]


def _vessal_pass(frames, label_rate, labelled=()):
    """The pure VeSSAL over the frame documents in event-time order (no capture times here: file,
    time in the file, frame id), the frames left given as ``remaining`` as a batch pass does:
    ``{frame_id: (rank, probability)}`` of its picks."""
    from transforms.select.vessal import Embedder, VeSSAL, frame_draw
    embed, sampler = Embedder(64, 0), VeSSAL(label_rate, 64)
    picks = {}
    ordered = sorted(frames, key=lambda d: (d["source_uri"], d.get("timestamp_s") or 0.0, d["frame_index"], d["_id"]))
    for i, doc in enumerate(ordered):
        decision = sampler.decide(embed(doc["embedding"], doc["probabilities"]), frame_draw(doc["_id"], 0),
                                  keys=(doc["_id"], doc["pixel_hash"]), labelled=doc["_id"] in labelled,
                                  camera=os.path.dirname(doc["source_uri"]), remaining=len(ordered) - i)
        if decision.picked:
            picks[doc["_id"]] = (decision.picks, decision.probability)
    return picks


def test_vessal_in_batch_is_one_pass_in_event_time_order_at_the_rate():
    """--strategy vessal --label_rate on a batch input (300 Fashion-MNIST PNGs and the 795 frames of
    vtest.avi, one global state): the candidates are the picks of the pure VeSSAL over the indexed
    frames in event-time order, at the rate within 10 %; a rerun gives the same candidates and
    selection_id; a frame sent for labelling is refused and the selection gets a new id."""
    out_dir = harness.tmpdir("mine-vessal-")
    inputs = [harness.media("fashion-mnist", "*.png"), harness.media("vtest.avi")]
    with harness.mongod() as mongo:
        argv = [f"--input={inputs[0]}", f"--input={inputs[1]}", "--video_fps=0", f"--output_dir={out_dir}",
                f"--mongo_uri={mongo.uri}", "--strategy=vessal", "--label_rate=0.1",
                "--vessal_state_key=global", "--quiet"]
        summary = mine.run(argv)
        db = pymongo.MongoClient(mongo.uri)["activebeam"]
        frames = list(db["frames"].find())
        assert len(frames) == summary["frames_scored"] == 300 + 795
        assert summary["label_rate"] == 0.1 and summary["budget"] is None and summary["vessal_state_key"] == "global"
        assert summary["strategy_params"] == {"uncertainty": "badge"}  # no detector: BADGE's ||p - e_yhat||
        assert "event time" in summary["selection_order"]
        run = db["runs"].find_one({"_id": summary["run_id"]})
        assert json.loads(run["options"])["label_rate"] == 0.1
        with open(os.path.join(out_dir, "report", "index.html"), encoding="utf-8") as f:
            report = f.read()
        assert "label_rate" in report and "selection_order" in report and "vessal" in report
        candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert summary["candidates"] == summary["candidates_written"] == len(candidates)
        assert abs(len(candidates) / len(frames) / 0.1 - 1) <= 0.10, len(candidates)
        expected = _vessal_pass(frames, 0.1)
        assert {c["frame_id"]: (c["rank"], c["score"]) for c in candidates} == expected
        assert {c["strategy"] for c in candidates} == {"vessal"} and len({c["selection_id"] for c in candidates}) == 1
        assert all(c["components"]["probability"] == c["score"] > 0 for c in candidates)
        stored = {d["frame_id"]: d for d in db["candidates"].find()}
        assert set(stored) == set(expected)

        again = mine.run(argv)
        assert _read_jsonl(os.path.join(out_dir, "candidates.jsonl")) == candidates
        assert db["candidates"].count_documents({}) == len(candidates) and again["candidates"] == len(candidates)

        first = candidates[0]["frame_id"]
        db["label_tasks"].insert_one({"_id": "task-1", "frame_id": first})
        mine.run(argv)
        after = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
        assert first not in {c["frame_id"] for c in after}
        assert {c["frame_id"]: (c["rank"], c["score"]) for c in after} == _vessal_pass(frames, 0.1, {first})
        assert after[0]["selection_id"] != candidates[0]["selection_id"]
    with pytest.raises(ValueError, match="--budget does not apply to --strategy vessal"):
        mine.run(["--strategy=vessal", "--label_rate=0.1", "--budget=5"])


def _vessal_job(*argv):
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.mine.options import check_options
    return check_options(PipelineOptions(["--strategy=vessal", "--label_rate=0.1",
                                          f"--output_dir={harness.tmpdir('vessal-opts-')}", *argv]))


def test_vessal_refuses_a_budget_also_given_at_its_default_value():
    """--budget 50 and --budget_unit frames are their defaults, but given on the command line they
    are still refused with --strategy vessal (not ignored silently), as are the vessal-only options
    given at their defaults with another strategy."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.mine.options import check_options
    for argv, message in ((["--budget=50"], "--budget does not apply to --strategy vessal"),
                          (["--budget", "50"], "--budget does not apply to --strategy vessal"),
                          (["--budget_unit=frames"], "--budget_unit does not apply to --strategy vessal")):
        with pytest.raises(ValueError, match=message):
            _vessal_job(*argv)
    for flag in ("--max_per_hour=0", "--vessal_state_key=camera"):
        with pytest.raises(ValueError, match=f"{flag.split('=')[0]} applies to --strategy vessal only"):
            check_options(PipelineOptions(["--strategy=random", flag,
                                           f"--output_dir={harness.tmpdir('vessal-opts-')}"]))
    assert _vessal_job().per_frame.label_rate == 0.1  # nothing given: accepted


def test_vessal_uncertainty_is_the_detectors_when_one_runs_else_badge():
    """auto: detection_max with a detector (the default models' NanoDet-g, or --detector nanodet),
    badge without (the small default model, or --detector none); set in --strategy_params it is
    kept; it is one of the selection's parameters, so it changes the selection_id."""
    from transforms.select.per_frame import SelectPerFrame

    def uncertainty(job):
        return dict(job.per_frame.params)["uncertainty"]

    assert uncertainty(_vessal_job()) == "badge"  # the pinned Fashion-MNIST model: no detector
    assert uncertainty(_vessal_job("--detector=nanodet")) == "detection_max"
    with harness.pretrained_defaults():
        assert uncertainty(_vessal_job()) == "detection_max"
        assert uncertainty(_vessal_job("--detector=none")) == "badge"
        forced = _vessal_job('--strategy_params={"uncertainty": "badge", "dim": 32}')
        assert dict(forced.per_frame.params) == {"uncertainty": "badge", "dim": 32}
        mean = _vessal_job('--strategy_params={"uncertainty": "detection_mean"}')
        assert uncertainty(mean) == "detection_mean"
        auto = _vessal_job()
    ids = {SelectPerFrame(job.per_frame).selection_id for job in (auto, forced, mean)}
    assert len(ids) == 3


@pytest.mark.parametrize("params, message", [
    ('{"uncertainty": "detection_sum"}', "mine: error: --strategy_params for vessal: uncertainty must be one of "
     "badge, detection_max, detection_mean, got 'detection_sum' (it takes dim, horizon, memory, cov_inv_scaling, "
     "seed, uncertainty, new_camera_pick, payback)"),
    ('{"new_camera_pick": 1}', "mine: error: --strategy_params for vessal: new_camera_pick must be true or false, "
     "got 1 (it takes dim, horizon, memory, cov_inv_scaling, seed, uncertainty, new_camera_pick, payback)"),
    ('{"payback": "later"}', "mine: error: --strategy_params for vessal: payback must be one of at_once, horizon, "
     "got 'later' (it takes dim, horizon, memory, cov_inv_scaling, seed, uncertainty, new_camera_pick, payback)"),
    ('{"uncertainty": "detection_max"}', "mine: error: --strategy_params uncertainty detection_max needs "
     "detections: set --detector (or --detector_background), or uncertainty badge"),
])
def test_a_bad_vessal_uncertainty_exits_2_with_one_line(params, message, capsys):
    with pytest.raises(SystemExit) as exited:
        mine.main(["--strategy=vessal", "--label_rate=0.1", f"--strategy_params={params}",
                   f"--output_dir={harness.tmpdir('vessal-bad-')}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


if __name__ == "__main__":
    harness.main(__file__)

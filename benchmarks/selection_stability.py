"""How much the default selection moves when the scores move: the int8 detector against the float
one, the float scores with small Gaussian noise, and two-stage scoring's margin.

    python -m benchmarks.selection_stability [--input GLOB ...] [--draws 5] [--budget 50]

Runs the ``mine`` job twice on the same input (default: the bundled media, several videos and
photos), with ``--detector nanodet`` (float32) and ``--detector nanodet_int8``, everything else
default (``uncertainty_kcenter`` on ``detection_max``, budget 50), each with its own embedded
``mongod``. Then, from each run's ``frames``:

* ``int8_selection_jaccard``: |A ∩ B| / |A ∪ B| of the two runs' candidates (goal >= 0.8, the
  bar for making the faster detector the default), and ``int8_pool_jaccard``: the same for the
  uncertainty pools the k-centre step starts from (:meth:`UncertaintyKCenter.preselect`);
* ``detection_max_abs_diff_median`` / ``_p90``: how far the int8 scores are from the float ones;
  ``frames_detection_max_above_0_95``: float frames with a box near c = 0.5;
* ``noise_jaccard``: for each sigma, the median over ``--draws`` draws of the Jaccard overlap of
  the default strategy run on the float frames' ``detection_max`` and on the same plus
  N(0, sigma²) (clipped to [0, 1]); ``topk_noise_jaccard``: the same for plain ``detection_max``
  top-k. This says how much of the int8 gap is the detector and how much the selection's own
  sensitivity: a sigma well below the int8 differences that already moves the selection means a
  faster detector cannot keep it whatever its accuracy.

``two_stage``: for each margin ``m`` of :data:`MARGINS`, what ``--two_stage_scoring on`` would
select with that ``--two_stage_margin``: frames whose int8 ``detection_max`` is at least the
int8 pool's lowest score minus ``m`` take their float score, the others keep the int8 one; the
share of frames so rescored (the second stage's cost) and the Jaccard overlap of that selection
with the float run's (``--budget`` picks; ``--budget`` may be lowered to model a run whose pool
is a smaller part of it).

``replay_matches_job`` checks that the strategy run here on the stored frames picks what the job
picked (the figures are about the job's selection, not a copy of it).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.common import print_result

SIGMAS = (1e-5, 1e-4, 1e-3, 1e-2, 3e-2)
MARGINS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)
BUDGET = 50
GOAL_JACCARD = 0.8


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def run_job(detector: str, inputs, output_dir: str, video_fps=None) -> None:
    argv = [sys.executable, "-m", "beam_pipelines.mine", "--detector", detector, "--output_dir", output_dir,
            "--budget", str(BUDGET)] + [f"--input={glob}" for glob in inputs]
    argv += [] if video_fps is None else [f"--video_fps={video_fps:g}"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_pool(output_dir: str):
    """The run's eligible frames as a strategy :class:`Pool` (:func:`figures.pool_from_documents`:
    stored scores, source and timestamp metadata; near-duplicate group members other than the
    representative left out, as ``SelectCandidates`` leaves them out) and its candidates' frame
    ids in rank order."""
    import pymongo

    from beam_pipelines.local.mongod import LocalMongoD
    from beam_pipelines.report import figures
    with LocalMongoD(os.path.join(output_dir, "mongo-data")) as mongod:
        frames = pymongo.MongoClient(mongod.uri)["activebeam"]["frames"]
        docs = sorted((d for d in frames.find({}, {"embedding": 1, "scores": 1, "source_uri": 1, "timestamp_s": 1,
                                                   "duplicate_group": 1})
                       if d.get("duplicate_group") in (None, d["_id"])), key=lambda d: d["_id"])
    pool = figures.pool_from_documents(docs)
    with open(os.path.join(output_dir, "candidates.jsonl")) as f:
        candidates = [json.loads(line)["frame_id"] for line in f if line.strip()]
    return pool, candidates


def select(pool, strategy) -> list:
    return list(pool.ids[strategy.select(pool, BUDGET).indices])


def noise_curve(pool, strategy, draws: int) -> dict:
    base = select(pool, strategy)
    curve = {}
    for sigma in SIGMAS:
        overlaps = []
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            noisy = np.clip(pool.scores["detection_max"] + rng.normal(0.0, sigma, len(pool)), 0.0, 1.0)
            overlaps.append(jaccard(base, select(pool.replace(scores={"detection_max": noisy}), strategy)))
        curve[f"{sigma:g}"] = round(float(np.median(overlaps)), 3)
    return curve


def two_stage_curve(float_pool, int8_pool, strategy, budget: int) -> dict:
    """margin -> {rescored share, Jaccard with the float selection} (see the module docstring)."""
    cheap, exact = int8_pool.scores["detection_max"], float_pool.scores["detection_max"]
    floor = float(np.min(cheap[strategy.preselect(int8_pool, budget)]))
    base = set(float_pool.ids[strategy.select(float_pool, budget).indices])
    curve = {}
    for margin in MARGINS:
        again = cheap >= floor - margin
        hybrid = int8_pool.replace(scores={"detection_max": np.where(again, exact, cheap)})
        picks = set(hybrid.ids[strategy.select(hybrid, budget).indices])
        curve[f"{margin:g}"] = {"rescored_share": round(float(again.mean()), 3),
                                "jaccard": round(jaccard(base, picks), 3)}
    return curve


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", action="append", default=None,
                        help="file glob for both jobs (repeatable; default: the bundled media)")
    parser.add_argument("--draws", type=int, default=5, help="noise draws per sigma")
    parser.add_argument("--video_fps", type=float, default=None, help="the jobs' --video_fps (default: theirs)")
    parser.add_argument("--budget", type=int, default=BUDGET,
                        help="the selection's budget for the two-stage figures (the jobs run with 50)")
    return parser.parse_args(argv)


def main(argv=None):
    from transforms.select.base import Strategy
    from transforms.select.factory import make_strategy
    from transforms.select.uncertainty_kcenter import UncertaintyKCenter
    args = parse_args(argv)
    inputs = args.input or []
    with tempfile.TemporaryDirectory(prefix="activebeam-stability-") as tmp:
        runs = {}
        for detector in ("nanodet", "nanodet_int8"):
            out = os.path.join(tmp, detector)
            run_job(detector, inputs, out, args.video_fps)
            runs[detector] = read_pool(out)
    (float_pool, float_picks), (int8_pool, int8_picks) = runs["nanodet"], runs["nanodet_int8"]
    default: Strategy = UncertaintyKCenter("detection_max")
    topk = make_strategy("detection_max")
    same_frames = list(float_pool.ids) == list(int8_pool.ids)
    diff = (np.abs(float_pool.scores["detection_max"] - int8_pool.scores["detection_max"])
            if same_frames else np.array([np.nan]))

    def pool_ids(pool):  # the thinned uncertainty pool (what a shard keeps: the whole pool here)
        return pool.ids[default.preselect(pool, BUDGET)]
    result = {
        "frames": len(float_pool), "budget": BUDGET,
        "replay_matches_job": select(float_pool, default) == float_picks and select(int8_pool, default) == int8_picks,
        "int8_selection_jaccard": round(jaccard(float_picks, int8_picks), 3),
        "int8_pool_jaccard": round(jaccard(pool_ids(float_pool), pool_ids(int8_pool)), 3),
        "int8_topk_jaccard": round(jaccard(select(float_pool, topk), select(int8_pool, topk)), 3),
        "detection_max_abs_diff_median": round(float(np.median(diff)), 4),
        "detection_max_abs_diff_p90": round(float(np.percentile(diff, 90)), 4),
        "frames_detection_max_above_0_95": int(np.sum(float_pool.scores["detection_max"] > 0.95)),
        "noise_jaccard": noise_curve(float_pool, default, args.draws),
        "topk_noise_jaccard": noise_curve(float_pool, topk, args.draws),
        "two_stage_budget": args.budget,
        "two_stage": two_stage_curve(float_pool, int8_pool, default, args.budget) if same_frames else None,
    }
    result["int8_selection_jaccard_goal_met"] = result["int8_selection_jaccard"] >= GOAL_JACCARD
    print_result(result)


if __name__ == "__main__":
    main()

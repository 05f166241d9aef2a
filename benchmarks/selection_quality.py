"""How uncertain AND how diverse each selection strategy's batch is, on a multi-camera pool.

    python -m benchmarks.selection_quality                      # pool made at run time, budget 30
    python -m benchmarks.selection_quality --input '/data/cams/**' --budget 100

1. The pool: unless ``--input`` is given, camera-like sources of unequal length made from
   packaged media (:func:`make_pool_media`): ``vtest.avi`` (a fixed camera over pedestrians, 80 s,
   the long run of near-identical frames), ``Megamind.avi`` (an animation), ``box.mp4`` and
   ``cup.mp4`` (hand-held objects), and two clips ffmpeg makes from scikit-learn's photos (a slow
   pan over ``china.jpg`` with sensor noise, a zoom into ``flower.jpg``).
2. The ``mine`` job runs on it with its defaults (EfficientNet-Lite0, NanoDet-g, the default
   strategy) at ``--video_fps`` frames per second; every frame record is read back from its
   MongoDB.
3. Every strategy selects ``--budget`` frames from that same pool, in this process, with the
   library's own classes (:func:`transforms.select.factory.make_strategy`); the job's own
   candidates are measured too, and must be the default strategy's picks.
4. Each batch is measured with :func:`transforms.select.redundancy.redundancy_figures`: sources,
   top source share (and its share of the pool), near-duplicate pairs, same-source pairs within
   2 s, coverage radius (cosine; and its ratio to a k-centre batch of the same size), mean
   uncertainty (and its ratio to the top-k of that score). The default's ``pool_multiplier``
   frontier is printed as well.

Prints one JSON object per strategy, then on the last line the default's figures with a
``<figure>_goal_met`` boolean per goal: coverage radius <= 1.25 x k-centre's, mean score >= 0.75
x top-k's, top source share <= 0.5.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

GOALS = {"coverage_radius_ratio": ("<=", 1.25), "mean_score_ratio": (">=", 0.75), "top_source_share": ("<=", 0.5)}
FRONTIER = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"


def _ffmpeg(args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def make_pool_media(directory: str) -> str:
    """The benchmark's pool (see the module docstring) in ``directory``; returns its glob."""
    from beam_pipelines.local import sample_media
    from beam_pipelines.local.home import media_dir
    sample_media.prepare()
    os.makedirs(directory, exist_ok=True)
    for name in ("vtest.avi", "box.mp4", "cup.mp4"):
        shutil.copy(os.path.join(media_dir(), name), os.path.join(directory, name))
    shutil.copy(os.path.join(OPENCV_DATA, "Megamind.avi"), os.path.join(directory, "megamind.avi"))
    china, flower = (os.path.join(media_dir(), n) for n in ("china.jpg", "flower.jpg"))
    _ffmpeg(["-loop", "1", "-i", china, "-t", "40", "-vf",
             "crop=320:240:x='t*6':y=120,noise=alls=12:allf=t,fps=10", "-c:v", "libx264", "-pix_fmt", "yuv420p",
             os.path.join(directory, "street_pan.mp4")])
    _ffmpeg(["-loop", "1", "-i", flower, "-t", "20", "-vf",
             "zoompan=z='min(zoom+0.004,2.5)':d=1:s=426x320:fps=10", "-c:v", "libx264", "-pix_fmt", "yuv420p",
             os.path.join(directory, "flower_zoom.mp4")])
    return os.path.join(directory, "*")


def read_pool(mongo_dir: str):
    """The :class:`~transforms.select.base.Pool` of the frames the job could select: every indexed
    frame but the non-representatives of near-duplicate groups (as ``SelectCandidates`` sees it)."""
    import pymongo
    from beam_pipelines.local.mongod import LocalMongoD
    from beam_pipelines.report.figures import pool_from_documents
    with LocalMongoD(mongo_dir) as mongo, pymongo.MongoClient(mongo.uri) as client:
        docs = sorted(client.activebeam.frames.find({}, {"embedding": 1, "scores": 1, "source_uri": 1,
                                                          "timestamp_s": 1, "duplicate_group": 1}),
                      key=lambda d: d["_id"])
    return pool_from_documents([d for d in docs if d.get("duplicate_group") in (None, d["_id"])])


def strategies(default_score: str):
    return {
        "detection_sum (top-k)": ("detection_sum", {}),
        f"{default_score} (top-k)": (default_score, {}),
        "coreset": ("coreset", {}),
        "cluster_margin": ("cluster_margin", {"score": default_score, "n_clusters": 10}),
        "combined (detection_sum + uniqueness)": ("combined", {"strengths": {"detection_sum": 1, "uniqueness": 1}}),
        "balanced by source": (default_score, {"balance_key": "source"}),
        "random": ("random", {}),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.selection_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="a glob of the pool's media (default: made at run time)")
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--video_fps", type=float, default=2.0)
    parser.add_argument("--output_dir", help="where the job's outputs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    from beam_pipelines import mine
    from transforms.select.factory import make_strategy
    from transforms.select.redundancy import redundancy_figures
    work = args.output_dir or tempfile.mkdtemp(prefix="activebeam-selection-quality-")
    glob_ = args.input or make_pool_media(os.path.join(work, "media"))
    out = os.path.join(work, "out")
    summary = mine.run([f"--input={glob_}", f"--output_dir={out}", f"--budget={args.budget}",
                        f"--video_fps={args.video_fps}", "--quiet"])
    pool = read_pool(os.path.join(out, "mongo-data"))
    with open(os.path.join(out, "candidates.jsonl")) as f:
        job_picks = [json.loads(line) for line in f]
    position = {frame_id: i for i, frame_id in enumerate(pool.ids)}
    default = summary["strategy"]
    params = summary["strategy_params"]
    score = params.get("score", default)
    rows = {}

    def measure(label, indices, extra=None):
        figures = dict(redundancy_figures(pool, indices, score=score), strategy=label, **(extra or {}))
        rows[label] = figures
        print(json.dumps(figures, sort_keys=True), flush=True)
        return figures

    for label, (name, strategy_params) in strategies(score).items():
        try:
            picks = make_strategy(name, strategy_params).select(pool, args.budget).indices
        except ValueError as e:
            print(json.dumps({"strategy": label, "skipped": str(e)}), flush=True)
            continue
        measure(label, picks)
    for m in FRONTIER:
        picks = make_strategy(default, dict(params, pool_multiplier=m)).select(pool, args.budget).indices
        measure(f"{default} pool_multiplier={m:g}", picks, {"pool_multiplier": m})
    library = make_strategy(default, params).select(pool, args.budget).indices
    job = np.array([position[c["frame_id"]] for c in job_picks], dtype=np.int64)
    final = measure(f"{default} (the mine job's candidates)", job,
                    {"job_equals_library": sorted(job.tolist()) == sorted(library.tolist()),
                     "params": params, "pool_frames": len(pool), "wall_seconds_job": summary.get("wall_seconds")})
    for figure, (op, goal) in GOALS.items():
        value = final.get(figure)
        final[f"{figure}_goal_met"] = value is not None and (value <= goal if op == "<=" else value >= goal)
    print(json.dumps(final, sort_keys=True))
    if not args.output_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

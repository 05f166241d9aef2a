"""Benchmark of per-frame streaming selection (VeSSAL, ``--strategy vessal --label_rate R``) against
uniform random sampling at the same rate and per-window top-k with the same total.

    python -m benchmarks.stream_selection --quick      # 3 seeds x 12,000 frames, R = 0.02
    python -m benchmarks.stream_selection               # 5 seeds x 30,000 frames, R = 0.01

The stream (stream order = event time): Fashion-MNIST training images made into camera clips:
each clip repeats one image for 10-40 frames, each frame shifted by up to 2 pixels, its
brightness scaled by 0.9-1.1 and Gaussian noise (sigma 8 grey levels) added. Nine classes are
present from the start with long-tailed shares (Zipf, exponent 1.2, order shuffled per seed:
a few classes fill most of the stream, as a few scenes fill a fleet's footage); the tenth (the
drift class) appears halfway, with the median class's share. The test set is 2,000 balanced
Fashion-MNIST test images (all ten classes: what the labels are for).

The learner: scikit-learn ``LogisticRegression`` on 50 PCA components of the pixels (PCA fitted
on 5,000 other training images, no labels), retrained on the labels acquired so far every 200
frames of the stream; each frame's probabilities come from the latest model, its embedding is
its PCA vector. Sides (same stream, same learner):

* ``vessal``: :class:`transforms.select.vessal.VeSSAL` with ``label_rate`` R, deciding each frame;
* ``random``: each frame picked with probability R (its draw fixed by the frame id);
* ``window_topk``: per window of 1,000 frames, ``R x 1,000`` picks by the streaming job's default
  per-window strategy (``uncertainty_kcenter`` on entropy, :mod:`transforms.select`), labelled
  when the window closes.

Printed per side and seed: labels acquired, labels needed to reach ``--target`` test accuracy
(first evaluation at or above it; also ``--target`` + 0.05), the accuracy at the stream's end, and for the drift class the share of its frames seen until
its first pick. Also: VeSSAL's realised rate / R, and its per-frame decision cost: the pure
decision (embedding + decide) in µs, and ``SelectPerFrame``'s (Beam state read and written per
frame, on the FnApiRunner) from its ``vessal_decision_us`` metric, as a share of the ``mine``
job's marginal per-frame time (:func:`job_frame_ms`) with the bundled CNN, the cheapest model it
runs (3,000 and 1,000 Fashion-MNIST PNGs; 9,000 and 3,000 without ``--quick``): the largest share
the decision can take, which the goal uses; and with the default models a user's run gets
(EfficientNet-Lite0 and NanoDet-g; 200 and 50 PNGs, 600 and 200 without ``--quick``).

Last line: JSON with the figures and ``rate_goal_met`` (|rate / R - 1| <= 0.10 in every seed),
``decision_cost_goal_met`` (``SelectPerFrame``'s decision <= 5 % of the bundled CNN job's
per-frame time; the share of the default models' job is printed too), ``labels_vs_random_goal_met`` (mean
labels-to-target <= 0.6 x random's), ``labels_vs_window_goal_met`` (fewer than window top-k in
every seed), ``drift_goal_met`` (first drift pick within the first 2 % of its frames, every seed).
"""
import argparse
import statistics
import time

import numpy as np

from benchmarks.common import print_result
from transforms.select.vessal import Embedder, VeSSAL, frame_draw

CLASSES = 10
CLIP_FRAMES = (10, 40)
RETRAIN_EVERY = 200
WINDOW = 1000
PCA_DIM = 50


def make_stream(images, labels, n_frames, seed):
    """``(frames uint8 (N, 28, 28), labels (N,), drift_class)`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(CLASSES)
    drift, present = int(order[-1]), order[:-1]
    shares = 1.0 / np.arange(1, len(present) + 1) ** 1.2
    shares /= shares.sum()
    by_class = {c: np.flatnonzero(labels == c) for c in range(CLASSES)}
    frames, frame_labels = [], []
    while len(frames) < n_frames:
        second_half = len(frames) >= n_frames // 2
        classes, p = present, shares
        if second_half:  # the drift class joins with the median class's share
            classes = np.append(present, drift)
            p = np.append(shares, np.median(shares))
            p = p / p.sum()
        c = int(rng.choice(classes, p=p))
        base = images[rng.choice(by_class[c])].astype(np.float32)
        for _ in range(int(rng.integers(*CLIP_FRAMES))):
            shifted = np.roll(base, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
            frame = shifted * rng.uniform(0.9, 1.1) + rng.normal(0, 8, size=base.shape)
            frames.append(np.clip(frame, 0, 255).astype(np.uint8))
            frame_labels.append(c)
    return np.stack(frames[:n_frames]), np.array(frame_labels[:n_frames]), drift


class Learner:
    """Logistic regression on PCA features, retrained on the labels acquired so far."""

    def __init__(self, x_test, y_test):
        self.x_test, self.y_test = x_test, y_test
        self.model = None
        self.curve = []  # (labels, test accuracy)

    def fit(self, x, y):
        from sklearn.linear_model import LogisticRegression
        if len(set(y.tolist())) < 2:
            return
        self.model = LogisticRegression(max_iter=300).fit(x, y)
        self.curve.append((len(y), float(self.model.score(self.x_test, self.y_test))))

    def probabilities(self, x):
        if self.model is None:
            return np.full((len(x), CLASSES), 1.0 / CLASSES)
        p = np.zeros((len(x), CLASSES))
        p[:, self.model.classes_] = self.model.predict_proba(x)
        return p


def labels_to(curve, target):
    """Labels of the first evaluation at or above ``target`` (None: never reached)."""
    return next((n for n, accuracy in curve if accuracy >= target), None)


def run_side(side, features, labels, x_test, y_test, rate, seed):
    """One side over the stream; returns its curve, picks (indices in stream order) and, for
    VeSSAL, the per-frame decision time in µs."""
    learner = Learner(x_test, y_test)
    picked, decide_s = [], 0.0
    sampler, embed = VeSSAL(rate, 64, seed=seed), Embedder(64, seed=seed)
    window_start = 0
    for start in range(0, len(features), RETRAIN_EVERY):
        stop = min(start + RETRAIN_EVERY, len(features))
        probs = learner.probabilities(features[start:stop])
        if side == "vessal":
            began = time.perf_counter()
            for i in range(start, stop):
                if sampler.decide(embed(features[i], probs[i - start]), frame_draw(f"{seed}:{i}", seed)).picked:
                    picked.append(i)
            decide_s += time.perf_counter() - began
        elif side == "random":
            picked.extend(i for i in range(start, stop) if frame_draw(f"{seed}:{i}", seed + 1) < rate)
        elif stop - window_start >= WINDOW or stop == len(features):
            picked.extend(window_picks(learner, features, window_start, stop, int(round(rate * (stop - window_start)))))
            window_start = stop
        if picked and (not learner.curve or learner.curve[-1][0] < len(picked)):
            learner.fit(features[picked], labels[picked])
    return learner.curve, picked, decide_s / len(features) * 1e6


def window_picks(learner, features, start, stop, budget):
    """The streaming job's default per-window selection over frames ``start..stop-1``."""
    from transforms.select.base import Pool
    from transforms.select.factory import make_strategy
    probs = learner.probabilities(features[start:stop])
    pool = Pool(np.array([str(i) for i in range(start, stop)]), embeddings=features[start:stop].astype(np.float32),
                probabilities=probs.astype(np.float32))
    selection = make_strategy("uncertainty_kcenter", {"score": "entropy"}).select(pool, budget)
    return [start + int(i) for i in selection.indices]


def pipeline_decision_us(features, probabilities, rate) -> float:
    """``SelectPerFrame``'s mean ``vessal_decision_us`` over the frames (FnApiRunner, Beam state)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion
    from transforms.select.per_frame import PerFrameSpec, SelectPerFrame
    model = ModelVersion("bench", "0" * 16, "embedding")
    records = [FrameRecord(FrameMetadata(f"f{i}", f"/cam/{i}.png", 0, None, 28, 28, "image", f"h{i}",
                                         event_time=float(i)),
                           features[i].astype(np.float32), probabilities[i].astype(np.float32),
                           int(np.argmax(probabilities[i])), 0.0, 0.0, 0.0, model) for i in range(len(features))]
    pipeline = beam.Pipeline("FnApiRunner")
    _ = (pipeline | beam.Create(records) | SelectPerFrame(PerFrameSpec(rate, state_key="global")))
    result = pipeline.run()
    result.wait_until_finish()
    dist = result.metrics().query(MetricsFilter().with_name("vessal_decision_us"))["distributions"]
    return float(dist[0].committed.mean)


def job_frame_ms(frames: int, fewer: int, default_models: bool = False) -> dict:
    """The ``mine`` job's per-frame time (ms): the batch job (its own process, a local mongod) on
    ``frames`` and on ``fewer`` Fashion-MNIST PNGs (:func:`benchmarks.common.batch_seconds`), with
    the bundled CNN (the cheapest model it runs) or, with ``default_models``, the models a user's
    run gets (EfficientNet-Lite0 and NanoDet-g, from ``$ACTIVEBEAM_HOME``). ``marginal_ms``:
    ``(t_N - t_n) / (N - n)``, the start-up left out; ``whole_ms``: ``t_N / N``, start-up included."""
    import os
    import shutil
    import tempfile
    from beam_pipelines.local.mongod import LocalMongoD
    from benchmarks.common import batch_seconds, fashion_pngs
    work = tempfile.mkdtemp(prefix="activebeam-bench-select-")
    env = dict(os.environ, NO_GCE_CHECK="true", TF_CPP_MIN_LOG_LEVEL="3", ACTIVEBEAM_DEFAULT_MODEL="fashion_mnist")
    if default_models:
        env.pop("ACTIVEBEAM_DEFAULT_MODEL")
    try:
        runs = {}
        for count in (fewer, frames):
            folder = os.path.join(work, f"in-{count}")
            os.makedirs(folder)
            for i, data in enumerate(fashion_pngs(count)):
                with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                    f.write(data)
            with LocalMongoD(os.path.join(work, f"mongo-{count}")) as mongo:
                runs[count] = batch_seconds(os.path.join(folder, "*.png"), mongo.uri, "bench",
                                            os.path.join(work, f"out-{count}"), env)
        (t_few, n_few), (t_all, n_all) = runs[fewer], runs[frames]
        print(f"mine job ({'default models' if default_models else 'bundled CNN'}): {n_few} frames in "
              f"{t_few:.1f} s, {n_all} in {t_all:.1f} s", flush=True)
        return {"marginal_ms": (t_all - t_few) / (n_all - n_few) * 1e3, "whole_ms": t_all / n_all * 1e3}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds x 12,000 frames at R = 0.02")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--target", type=float, default=0.55, help="balanced test accuracy to reach")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (3 if args.quick else 5)
    args.frames = args.frames or (12_000 if args.quick else 30_000)
    args.rate = args.rate or (0.02 if args.quick else 0.01)
    return args


def main(argv=None):
    from sklearn.decomposition import PCA
    from models.train_fashion_mnist import load_split
    args = parse_args(argv)
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("t10k")
    pca = PCA(PCA_DIM, random_state=0).fit(train_x[-5000:].reshape(5000, -1) / 255.0)
    test_rng = np.random.default_rng(0)
    test_idx = np.concatenate([test_rng.choice(np.flatnonzero(test_y == c), 200, replace=False) for c in range(CLASSES)])
    x_test, y_test = pca.transform(test_x[test_idx].reshape(len(test_idx), -1) / 255.0), test_y[test_idx]
    per_seed = []
    for seed in range(args.seeds):
        frames, labels, drift = make_stream(train_x[:-5000], train_y[:-5000], args.frames, seed)
        features = pca.transform(frames.reshape(len(frames), -1) / 255.0)
        drift_frames = np.flatnonzero(labels == drift)
        row = {"seed": seed, "drift_class": drift}
        for side in ("vessal", "random", "window_topk"):
            curve, picked, decision_us = run_side(side, features, labels, x_test, y_test, args.rate, seed)
            drift_picks = [i for i in picked if labels[i] == drift]
            row[side] = {
                "labels": len(picked), "labels_to_target": labels_to(curve, args.target),
                "labels_to_higher_target": labels_to(curve, args.target + 0.05),
                "final_accuracy": curve[-1][1] if curve else None,
                "drift_first_pick_share": (float(np.searchsorted(drift_frames, drift_picks[0]) + 1) / len(drift_frames)
                                           if drift_picks else None)}
            if side == "vessal":
                row["rate_ratio"] = len(picked) / len(frames) / args.rate
                row["decision_us"] = decision_us
        print({k: v for k, v in row.items()}, flush=True)
        per_seed.append(row)
        if seed == 0:
            sample = slice(0, 2000)
            probs = Learner(x_test, y_test).probabilities(features[sample])
            beam_us = pipeline_decision_us(features[sample], probs, args.rate)
    job = job_frame_ms(3000, 1000) if args.quick else job_frame_ms(9000, 3000)
    frame_ms = job["marginal_ms"]
    default_job = job_frame_ms(200, 50, True) if args.quick else job_frame_ms(600, 200, True)

    def mean_labels(side):
        values = [r[side]["labels_to_target"] for r in per_seed]
        return None if None in values else statistics.mean(values)

    vessal_labels, random_labels, window_labels = (mean_labels(s) for s in ("vessal", "random", "window_topk"))
    decision_us = statistics.median(r["decision_us"] for r in per_seed)
    result = {
        "label_rate": args.rate, "frames": args.frames, "seeds": args.seeds, "target_accuracy": args.target,
        "rate_ratio": [round(r["rate_ratio"], 3) for r in per_seed],
        "decision_us": round(decision_us, 1), "pipeline_decision_us": round(beam_us, 1),
        "job_frame_ms": round(frame_ms, 3), "job_frame_ms_with_start_up": round(job["whole_ms"], 3),
        "decision_share": round(decision_us / 1e3 / frame_ms, 4),
        "pipeline_decision_share": round(beam_us / 1e3 / frame_ms, 4),
        "job_frame_ms_default_models": round(default_job["marginal_ms"], 3),
        "pipeline_decision_share_default_models": round(beam_us / 1e3 / default_job["marginal_ms"], 5),
        # The goal is held against the cheapest model's job: the largest share the decision can
        # take, so a goal met there is met with every model the job runs.
        "decision_cost_goal_basis": "pipeline_decision_share (bundled CNN, the cheapest job)",
        "labels_to_target": {s: [r[s]["labels_to_target"] for r in per_seed] for s in ("vessal", "random", "window_topk")},
        "labels_to_higher_target": {s: [r[s]["labels_to_higher_target"] for r in per_seed]
                                    for s in ("vessal", "random", "window_topk")},
        "final_accuracy": {s: [round(r[s]["final_accuracy"], 3) for r in per_seed] for s in ("vessal", "random", "window_topk")},
        "labels_vs_random": (round(vessal_labels / random_labels, 3) if vessal_labels and random_labels else None),
        "drift_first_pick_share": {s: [r[s]["drift_first_pick_share"] for r in per_seed]
                                   for s in ("vessal", "random", "window_topk")},
    }
    result["rate_goal_met"] = all(abs(r - 1) <= 0.10 for r in result["rate_ratio"])
    result["decision_cost_goal_met"] = frame_ms > 0 and result["pipeline_decision_share"] <= 0.05
    result["labels_vs_random_goal_met"] = result["labels_vs_random"] is not None and result["labels_vs_random"] <= 0.6
    result["labels_vs_window_goal_met"] = all(
        r["vessal"]["labels_to_target"] is not None
        and (r["window_topk"]["labels_to_target"] is None or r["vessal"]["labels_to_target"] < r["window_topk"]["labels_to_target"])
        for r in per_seed)
    result["drift_goal_met"] = all(s is not None and s <= 0.02 for s in result["drift_first_pick_share"]["vessal"])
    print(f"VeSSAL realised rate / target: {result['rate_ratio']}")
    print(f"decision: {result['decision_us']} µs pure, {result['pipeline_decision_us']} µs in SelectPerFrame; "
          f"mine job {result['job_frame_ms']} ms/frame (bundled CNN) -> share {result['pipeline_decision_share']:.2%} "
          f"(the goal's); default models {result['job_frame_ms_default_models']} ms/frame -> share "
          f"{result['pipeline_decision_share_default_models']:.3%}")
    print(f"labels to {args.target:.0%} accuracy: {result['labels_to_target']} (vessal / random = "
          f"{result['labels_vs_random']})")
    print(f"labels to {args.target + 0.05:.0%} accuracy: {result['labels_to_higher_target']}; accuracy at the "
          f"stream's end: {result['final_accuracy']}")
    print(f"drift: share of the new class's frames until its first pick: {result['drift_first_pick_share']}")
    print_result(result)


if __name__ == "__main__":
    main()

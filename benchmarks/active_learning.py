"""Proof on real labels: does activebeam's sampler save labels against random sampling?

    python -m benchmarks.active_learning                    # default protocol: about 80 min on 2 cores (see docs/sampling.md)
    python -m benchmarks.active_learning --quick            # the same loop, small (not timed with this schedule)
    python -m benchmarks.active_learning --full             # pool 60,000, 10 seeds: hours
    python -m benchmarks.active_learning --dataset digits   # OpenCV's digits.png, Gal et al.'s table beside it

**Protocol** (defaults): Fashion-MNIST, a pool of 20,000 images of the train split and 5,000 test
images of the t10k split; 5 seeds; per strategy and seed, start from 200 labels drawn at random
(the same for every strategy of a seed), then rounds of 1,000. Each round trains the same small
CNN from scratch on the labelled set (:func:`build_model`; ``--epochs`` 10 with at least
``--min_steps`` 1,000 steps, so that small labelled sets are trained as well as large ones),
measures test accuracy, computes the model's outputs on the unlabelled pool (probabilities, the
``embedding`` layer for diversity, ``--mc_samples`` consistent MC-dropout passes for BALD,
:func:`pool_outputs`) and lets the strategy choose the batch, whose labels
the dataset then reveals (the annotator). A curve runs at least to ``--auc_labels`` labels, then
until it reaches the target or ``--max_labels``, or (``--stop_after_random``, the default) until
it has as many labels as random needed in the same seed: past that it has lost the seed, and
its ``labels_to_target`` for that seed is null. Random runs first.

**Target**: ``--target_fraction`` (0.98) of the test accuracy of the same model trained the same
way on the whole pool (mean of 2 seeds). Per strategy and seed ``labels_to_target`` is the first
label count whose accuracy reaches the target (linear interpolation between rounds; null if
never). Reported: its mean and spread over seeds, the area under the learning curve up to
``--auc_labels`` (mean accuracy over the label range), and a paired comparison with random per
seed (ratio, wins, one-sided sign-test p-value). ``best_vs_random`` = the lowest ratio of mean
``labels_to_target`` to random's; ``strategies_beating_random`` = the strategies whose
``labels_to_target`` is below random's in every seed (a seed that never reaches counts as
``inf``). Per round the run also records the evidence that explains a loss: the class balance of
the picks (normalised entropy of their true labels, 1 = balanced), their redundancy (mean
distance of each pick to the nearest other pick, divided by the same for a random batch; < 1 =
clumped) and how far out they are (mean distance to their 10 nearest pool frames, divided by the
same for random frames; > 1 = outliers), the model's expected calibration error on the test
split and, for BALD, how many of its top-k frames stay top-k under a second, independent set of
MC-dropout samples (``mc_topk_overlap``; 1 = a stable ranking).

**The selections are the project's own**: the strategy objects of
:func:`transforms.select.factory.make_strategy`, called in-process each round; and for the
strategies of ``--beam_check`` (default ``margin,bald+power,ens3:bald+power``), in every round of seed 0 the
same frames go through :class:`transforms.select.SelectCandidates` on Beam's FnApiRunner (as
``FrameRecord``\\s, in shards of ``--beam_shard_size`` so the per-shard preselection runs), and
the run fails unless Beam's ranked frame ids equal the in-process picks.

Strategy names: any ``--strategy`` of the ``mine`` job, ``<score>+<mode>`` for stochastic
batch acquisition of a score (Kirsch et al. 2023; :mod:`transforms.select.stochastic`),
``mode`` one of power, softmax, softrank, with ``--beta`` and a seed derived from the seed and
the round, or ``batchbald`` (Kirsch et al. 2019; :mod:`transforms.select.batchbald`, with
``--batchbald_configs``; not in the defaults, see its cost there). ``ens<M>:<name>`` (e.g.
``ens3:bald+power``) gives the strategy the probabilities of a deep ensemble of ``M`` models as
its samples instead of MC dropout (:func:`ensemble_samples`; ``M`` trainings per round; the
curve's accuracy is still the one model trained like every other strategy's).

Writes ``learning_curves_<dataset>.png``, ``diagnostics_<dataset>.png`` and
``results_<dataset>.json`` to ``--out_dir``; the last stdout line is the JSON result.

For digits the result adds Gal, Islam & Ghahramani (2017), table 1 (MNIST, labels to reach 5 %
test error: random 835, BALD 335, variation ratios 295, max entropy 355) beside this run's
labels to reach 95 % test accuracy. Their setting differs (MNIST 28x28, 20 balanced initial
labels, batches of 10, Bayesian CNN with dropout); ours is OpenCV's 5,000 20x20 digits.
"""
import argparse
import json
import math
import os
import re
import time

import numpy as np

from benchmarks.common import print_result
from models import train_fashion_mnist
from transforms.select.base import Pool
from transforms.select.factory import make_strategy

DIGITS_PNG = "/usr/share/doc/opencv-doc/examples/data/digits.png"
STRATEGIES = ("random", "margin", "bald+power", "bald", "cluster_margin", "coreset")
GAL_2017_MNIST = {"random": 835, "bald": 335, "variation_ratios": 295, "entropy": 355}
#: Sizes per preset and dataset; flags given on the command line win.
PRESETS = {
    ("fashion_mnist", "default"): dict(pool_size=20000, test_size=5000, seeds=5, initial=200, batch=1000,
                                       auc_labels=3200, max_labels=15200, epochs=10, min_steps=1000,
                                       strategies="random,margin,bald+power,ens3:bald+power"),
    ("fashion_mnist", "quick"): dict(pool_size=6000, test_size=2000, seeds=3, initial=100, batch=300,
                                     auc_labels=1300, max_labels=5200, epochs=10, min_steps=1000,
                                     strategies="random,margin,bald+power,ens3:bald+power"),
    ("fashion_mnist", "full"): dict(pool_size=60000, test_size=10000, seeds=10, initial=500, batch=1000,
                                    auc_labels=10500, max_labels=30500, epochs=10, min_steps=1000),
    ("digits", "default"): dict(pool_size=4000, test_size=1000, seeds=5, initial=50, batch=75,
                                auc_labels=500, max_labels=1500, epochs=25, min_steps=1000,
                                strategies="random,entropy,margin,bald,bald+power,variation_ratios"),
}
PRESETS[("digits", "quick")] = dict(PRESETS[("digits", "default")], pool_size=2000, seeds=3,
                                    max_labels=800, strategies="random,margin,bald,bald+power")
PRESETS[("digits", "full")] = dict(PRESETS[("digits", "default")], seeds=10)


def load_dataset(name, pool_size, test_size, seed=0):
    """Returns ``(x_pool, y_pool, x_test, y_test)``: uint8 images (N, H, W, 1) and int labels."""
    rng = np.random.default_rng(seed)
    if name == "fashion_mnist":
        x, y = train_fashion_mnist.load_split("train")
        xt, yt = train_fashion_mnist.load_split("t10k")
        pi = rng.permutation(len(x))[:pool_size]
        ti = rng.permutation(len(xt))[:test_size]
        return x[pi, ..., None], y[pi].astype(np.int64), xt[ti, ..., None], yt[ti].astype(np.int64)
    if name == "digits":
        import cv2
        img = cv2.imread(DIGITS_PNG, cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise FileNotFoundError(f"{DIGITS_PNG} is missing (Debian package opencv-doc)")
        cells = np.array([np.hsplit(row, 100) for row in np.vsplit(img, 50)]).reshape(-1, 20, 20)
        labels = np.repeat(np.arange(10), 500)
        order = rng.permutation(len(cells))
        n_test = min(test_size, len(cells) // 5)
        test, pool = order[:n_test], order[n_test:][:pool_size]
        return cells[pool, ..., None], labels[pool], cells[test, ..., None], labels[test]
    raise ValueError(f"dataset must be fashion_mnist or digits, got {name!r}")


def build_model(input_shape, n_classes):
    """The default model's architecture (:func:`models.train_fashion_mnist.build_model`),
    narrower (16/32 filters, a 64-d ``embedding`` layer); returns the compiled model."""
    import keras
    model = train_fashion_mnist.build_model(input_shape, n_classes, filters=(16, 32), embedding_size=64)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def train(x, y, x_test, y_test, n_classes, seed, epochs, min_steps, batch_size=64):
    """Trains a fresh model; returns (model, test accuracy, test probabilities (N, C))."""
    import keras
    keras.utils.set_random_seed(seed)
    model = build_model(x.shape[1:], n_classes)
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    epochs = max(epochs, int(np.ceil(min_steps / steps_per_epoch)))
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    probs = model.predict(x_test.astype("float32"), batch_size=1024, verbose=0)
    return model, float(np.mean(probs.argmax(axis=1) == y_test)), probs


def pool_outputs(model, x, mc_samples, seed=0):
    """Probabilities (N, C), embeddings (N, 64) and ``mc_samples`` MC-dropout samples (T, N, C)
    (or None when 0), float32.

    The convolutions are deterministic, so they run once (Keras); the head (``Dropout`` ->
    ``embedding`` -> ``Dropout`` -> ``probabilities``) runs in numpy with the model's weights.
    MC dropout is *consistent* (Kirsch, van Amersfoort & Gal 2019, BatchBALD's appendix): pass
    ``t`` draws one pair of dropout masks (the ``t``-th draws of a generator seeded by ``seed``)
    and applies that one sampled network to every frame of the pool, so frames are compared
    under the same ``T`` networks and their BALD ranking is not dominated by per-frame mask noise
    (the ``mine`` job's handler draws a mask per row, which is the same distribution per frame).
    """
    import keras

    from transforms.score import uncertainty
    names = [layer.name for layer in model.layers]
    first = names.index("embedding") - 1
    drop1, dense1, drop2, dense2 = model.layers[first:first + 4]
    trunk = keras.Model(model.input, drop1.input)
    features = trunk.predict(x.astype("float32"), batch_size=1024, verbose=0).astype(np.float32)
    w1, b1 = (np.asarray(w, np.float32) for w in dense1.get_weights())
    w2, b2 = (np.asarray(w, np.float32) for w in dense2.get_weights())

    def softmax(logits):
        return uncertainty.softmax(logits).astype(np.float32)

    emb = np.maximum(features @ w1 + b1, 0)
    probs = softmax(emb @ w2 + b2)
    if not mc_samples:
        return probs, emb, None
    rng = np.random.default_rng([seed, 7])
    samples = np.empty((mc_samples,) + probs.shape, np.float32)
    for t in range(mc_samples):
        keep1 = (rng.random(w1.shape[0]) >= drop1.rate).astype(np.float32) / (1 - drop1.rate)
        keep2 = (rng.random(w2.shape[0]) >= drop2.rate).astype(np.float32) / (1 - drop2.rate)
        hidden = np.maximum(features @ (keep1[:, None] * w1) + b1, 0)
        samples[t] = softmax(hidden @ (keep2[:, None] * w2) + b2)
    return probs, emb, samples


#: ``ens<M>:<strategy>``: the strategy's MC samples are the pool probabilities of a deep ensemble
#: of ``M`` models (Lakshminarayanan et al. 2017; for active learning Beluch et al. 2018)
#: instead of MC-dropout passes of one model.
_ENSEMBLE = re.compile(r"^ens(\d+):(.+)$")


def ensemble_size(name: str) -> int:
    """``M`` of an ``ens<M>:`` strategy name, 0 otherwise."""
    match = _ENSEMBLE.match(name)
    return int(match.group(1)) if match else 0


def base_name(name: str) -> str:
    """The strategy name without its ``ens<M>:`` prefix."""
    match = _ENSEMBLE.match(name)
    return match.group(2) if match else name


def ensemble_samples(probabilities, x_labelled, y_labelled, x_test, y_test, x_unlabelled, n_classes, seed,
                     members, args) -> np.ndarray:
    """Pool probabilities (M, N, C) float32 of a deep ensemble: ``probabilities`` (N, C), the
    round's model's (trained with ``seed``, whose accuracy is the curve's), and those of
    ``members - 1`` more models trained the same way on the same labels from seeds
    ``seed + 100,000 m`` (their own initialisation and batch order), each run deterministically
    (no dropout) over the pool."""
    probabilities = [probabilities]
    for m in range(1, members):
        other = train(x_labelled, y_labelled, x_test, y_test, n_classes, seed + 100_000 * m,
                      args.epochs, args.min_steps)[0]
        probabilities.append(pool_outputs(other, x_unlabelled, 0)[0])
    return np.stack(probabilities)


def strategy_for(name, seed, round_index, args):
    """The strategy object of ``name`` for one round (stochastic ones get a per-round seed)."""
    name = base_name(name)
    if "+" in name:
        score, mode = name.split("+", 1)
        return make_strategy(score, {"stochastic": mode, "beta": args.beta,
                                     "seed": seed * 1000 + round_index})
    if name == "batchbald":  # a library strategy: needs every frame's MC samples (see its cost)
        from transforms.select.batchbald import BatchBALD
        return BatchBALD(num_configs=args.batchbald_configs, seed=seed * 1000 + round_index)
    if name == "cluster_margin":
        return make_strategy(name, {"n_clusters": args.clusters, "margin_multiplier": args.margin_multiplier,
                                    "seed": seed})
    if name in ("random", "coreset"):
        return make_strategy(name, {"seed": seed})
    return make_strategy(name)


def needs_samples(name):
    from transforms.score import registry
    name = base_name(name)
    return name == "batchbald" or any(part in registry.names(needs=registry.MC_SAMPLES) for part in name.split("+"))


def frame_ids(n, dataset):
    """Deterministic frame ids of the pool's images (as the ``mine`` job would give them)."""
    from schemas.records import make_frame_id
    return np.array([make_frame_id(f"{dataset}://pool/{i}", 0) for i in range(n)], dtype=object)


def to_records(pool: Pool, dataset: str):
    """The unlabelled pool as ``FrameRecord``\\s (what ``SelectCandidates`` consumes): probabilities,
    embedding, the column scores from the probabilities and BALD / variation ratios / mean std as
    extra scores when MC samples are given (as ``--mc_passes`` stores them)."""
    from schemas.frames import SCORE_NAMES
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion
    from transforms.score import registry
    column = {name: registry.compute(name, pool.probabilities) for name in SCORE_NAMES}
    extra = {}
    if pool.probability_samples is not None:
        extra = {name: registry.compute(name, pool.probability_samples)
                 for name in registry.names(needs=registry.MC_SAMPLES)}
    model = ModelVersion(name="active_learning_cnn", version="round", embedding_layer="embedding")
    return [FrameRecord(
        frame=FrameMetadata(frame_id=fid, source_uri=f"{dataset}://pool/{fid}", frame_index=0,
                            timestamp_s=None, width=28, height=28, media_type="image",
                            pixel_hash=f"sha256:{fid}"),
        embedding=pool.embeddings[i], probabilities=pool.probabilities[i],
        predicted_class=int(pool.probabilities[i].argmax()),
        model=model, extra_scores=tuple(sorted((k, float(v[i])) for k, v in extra.items())),
        **{name: float(column[name][i]) for name in SCORE_NAMES})
        for i, fid in enumerate(pool.ids)]


def beam_selection_matches(pool: Pool, budget: int, strategy, expected_ids, dataset: str,
                           shard_size: int) -> float:
    """Runs ``SelectCandidates`` on the FnApiRunner over the pool's records and asserts (Beam's
    ``assert_that``) that its ``(rank, frame_id)`` pairs are the in-process picks, in order.

    Returns the wall seconds. Raises ``BeamAssertException`` (through the runner) on a mismatch.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.select import SelectCandidates
    records = to_records(pool, dataset)
    expected = [(rank, fid) for rank, fid in enumerate(expected_ids, start=1)]
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        got = (p | beam.Create(records, reshuffle=True)
               | SelectCandidates(budget, strategy, shard_size=shard_size)
               | beam.Map(lambda c: (c.rank, c.frame_id)))
        assert_that(got, equal_to(expected))
    return time.monotonic() - started


def expected_calibration_error(probs, labels, bins=15):
    """ECE (Guo et al. 2017): bin-weighted |accuracy - confidence| over equal-width confidence bins."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return float(sum(np.sum(which == b) / len(conf) * abs(correct[which == b].mean() - conf[which == b].mean())
                     for b in range(bins) if np.any(which == b)))


def _nearest(queries, base, k, exclude_self=False):
    """Mean Euclidean distance of each query to its ``k`` nearest rows of ``base`` (faiss)."""
    import faiss
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    d, _ = index.search(np.ascontiguousarray(queries, np.float32), k + int(exclude_self))
    return np.sqrt(np.maximum(d[:, int(exclude_self):], 0)).mean(axis=1)


def pick_diagnostics(emb, picked, labels, n_classes, rng):
    """Class balance, redundancy and outlier ratio of a batch of ``picked`` pool positions."""
    reference = rng.choice(len(emb), size=len(picked), replace=False)
    counts = np.bincount(labels[picked], minlength=n_classes) / len(picked)
    nz = counts[counts > 0]
    redundancy = (_nearest(emb[picked], emb[picked], 1, True).mean()
                  / _nearest(emb[reference], emb[reference], 1, True).mean())
    outliers = _nearest(emb[picked], emb, 10, True).mean() / _nearest(emb[reference], emb, 10, True).mean()
    return {"class_balance": float(-(nz * np.log(nz)).sum() / np.log(n_classes)),
            "redundancy": float(redundancy), "outlier_ratio": float(outliers)}


def mc_topk_overlap(samples, other_samples, k):
    """Share of the top-``k`` BALD frames under one set of MC-dropout samples (T, N, C) that are
    also top-``k`` under an independent set: how much of a top-k BALD batch is signal, not
    Monte-Carlo noise (1 = stable ranking)."""
    from transforms.score import registry
    a, b = (set(np.argsort(-registry.compute("bald", s))[:k].tolist()) for s in (samples, other_samples))
    return len(a & b) / k


def run_curve(name, seed, data, args, n_classes, target, beam_check=False, cap=None):
    """One learning curve: list of per-round dicts (labels, accuracy, ece, pick diagnostics).

    The curve stops at the first round (past ``args.auc_labels``) that reaches ``target``, or at
    ``args.max_labels``, or at ``cap`` labels (random's labels to target for this seed: past it
    the strategy has lost the seed)."""
    x_pool, y_pool, x_test, y_test = data
    rng = np.random.default_rng(1000 + seed)
    labelled = rng.choice(len(x_pool), size=args.initial, replace=False)
    ids = frame_ids(len(x_pool), args.dataset)
    curve, beam_seconds = [], []
    for round_index in range(10**6):
        model, acc, test_probs = train(x_pool[labelled], y_pool[labelled], x_test, y_test, n_classes,
                                       seed, args.epochs, args.min_steps)
        point = {"labels": int(len(labelled)), "accuracy": acc,
                 "ece": expected_calibration_error(test_probs, y_test)}
        curve.append(point)
        reached = acc >= target or (cap is not None and len(labelled) >= cap)
        if (reached and len(labelled) >= args.auc_labels) or len(labelled) >= args.max_labels:
            break
        unl = np.setdiff1d(np.arange(len(x_pool)), labelled)
        members = ensemble_size(name)
        probs, emb, samples = pool_outputs(model, x_pool[unl], 0 if members or not needs_samples(name)
                                           else args.mc_samples, seed=seed * 1000 + round_index)
        if members:
            samples = ensemble_samples(probs, x_pool[labelled], y_pool[labelled], x_test, y_test, x_pool[unl],
                                       n_classes, seed, members, args)
        pool = Pool(ids=ids[unl], embeddings=emb, probabilities=probs, probability_samples=samples)
        labelled_pool = None
        if name == "coreset":
            _, lab_emb, _ = pool_outputs(model, x_pool[labelled], 0)
            labelled_pool = Pool(ids=ids[labelled], embeddings=lab_emb)
        batch = min(args.batch, args.max_labels - len(labelled))
        strategy = strategy_for(name, seed, round_index, args)
        selection = strategy.select(pool, batch, labelled=labelled_pool)
        if beam_check:
            beam_seconds.append(beam_selection_matches(pool, batch, strategy, pool.ids[selection.indices],
                                                       args.dataset, args.beam_shard_size))
        point.update(pick_diagnostics(emb, selection.indices, y_pool[unl], n_classes, rng))
        if samples is not None and not members:
            point["mc_topk_overlap"] = mc_topk_overlap(samples, pool_outputs(model, x_pool[unl], len(samples),
                                                                              seed=10**7 + seed * 1000 + round_index)[2],
                                                       batch)
        labelled = np.concatenate([labelled, unl[selection.indices]])
    return curve, beam_seconds


def labels_to_reach(curve, target):
    """First label count where the curve (``[(labels, accuracy)]``) reaches ``target`` (linear
    interpolation between rounds), or None."""
    for (n0, a0), (n1, a1) in zip([(None, None)] + curve[:-1], curve):
        if a1 >= target:
            if n0 is None or a1 == a0:
                return float(n1)
            return float(n0 + (target - a0) / (a1 - a0) * (n1 - n0))
    return None


def area_under_curve(curve, upto):
    """Mean accuracy over labels ``[first, upto]`` (trapezoids; ``curve`` must reach ``upto``)."""
    n = np.array([p[0] for p in curve], dtype=float)
    a = np.array([p[1] for p in curve], dtype=float)
    keep = n <= upto
    n, a = n[keep], a[keep]
    return float(np.trapezoid(a, n) / (n[-1] - n[0])) if len(n) > 1 else float(a[0])


def sign_test_p(wins, n):
    """One-sided sign test: P(at least ``wins`` of ``n`` paired seeds favour a strategy | no difference)."""
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def summarise(curves, target, args):
    """The JSON result's per-strategy figures and the paired comparison with random."""
    points = {name: [[(p["labels"], p["accuracy"]) for p in run] for run in runs] for name, runs in curves.items()}
    per_seed = {name: [labels_to_reach(c, target) for c in runs] for name, runs in points.items()}
    inf = float("inf")
    out = {"labels_to_target": {}, "labels_to_target_per_seed": {}, "auc": {}, "vs_random": {},
           "diagnostics": {}}
    for name, values in per_seed.items():
        finite = [v for v in values if v is not None]
        out["labels_to_target_per_seed"][name] = [None if v is None else round(v, 1) for v in values]
        out["labels_to_target"][name] = {
            "mean": round(float(np.mean(finite)), 1) if len(finite) == len(values) else None,
            "std": round(float(np.std(finite)), 1) if len(finite) == len(values) else None,
            "min": round(min(finite), 1) if finite else None, "max": round(max(finite), 1) if finite else None,
            "reached": f"{len(finite)}/{len(values)}"}
        aucs = [area_under_curve(c, args.auc_labels) for c in points[name]]
        out["auc"][name] = {"mean": round(float(np.mean(aucs)), 4), "std": round(float(np.std(aucs)), 4)}
        rounds = [p for run in curves[name] for p in run if "class_balance" in p]
        if rounds:
            out["diagnostics"][name] = {k: round(float(np.mean([p[k] for p in rounds])), 3)
                                        for k in ("class_balance", "redundancy", "outlier_ratio", "mc_topk_overlap")
                                        if k in rounds[0]}
        out["diagnostics"].setdefault(name, {})["ece"] = round(float(np.mean([p["ece"] for run in curves[name]
                                                                               for p in run])), 4)
    random_seeds = per_seed.get("random")
    beating = []
    if random_seeds:
        r = [inf if v is None else v for v in random_seeds]
        for name, values in per_seed.items():
            if name == "random":
                continue
            v = [inf if x is None else x for x in values]
            wins = sum(a < b for a, b in zip(v, r))
            ratios = [a / b if math.isfinite(a) and math.isfinite(b) else None for a, b in zip(v, r)]
            out["vs_random"][name] = {"ratio_per_seed": [None if x is None else round(x, 3) for x in ratios],
                                      "wins": f"{wins}/{len(r)}", "sign_test_p": round(sign_test_p(wins, len(r)), 4)}
            if wins == len(r):
                beating.append(name)
    out["strategies_beating_random"] = beating
    means = {k: v["mean"] for k, v in out["labels_to_target"].items()}
    candidates = [(v, k) for k, v in means.items() if k != "random" and v is not None]
    if means.get("random") and candidates:
        best, best_name = min(candidates)
        out["best_strategy"], out["best_vs_random"] = best_name, round(best / means["random"], 3)
    else:
        out["best_strategy"], out["best_vs_random"] = None, None  # random (or every strategy) never reached
    return out


def plot(curves, target, out_dir, dataset, title):
    """Learning curves (mean over the seeds' common rounds, every seed thin) and per-round pick
    diagnostics; returns the two PNG paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = dict(zip(curves, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in curves.items():
        for run in runs:
            ax.plot([p["labels"] for p in run], [p["accuracy"] for p in run], color=colours[name], lw=0.5, alpha=0.4)
        common = min(len(run) for run in runs)
        ax.plot([p["labels"] for p in runs[0][:common]],
                np.mean([[p["accuracy"] for p in run[:common]] for run in runs], axis=0),
                color=colours[name], marker="o", ms=3, label=name)
    ax.axhline(target, color="k", ls="--", lw=1, label="target")
    ax.set(xlabel="labels", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    curves_png = os.path.join(out_dir, f"learning_curves_{dataset}.png")
    fig.savefig(curves_png, dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("class_balance", "redundancy", "outlier_ratio"),
                              ("class balance of the picks (1 = even)", "redundancy (NN distance / random's)",
                               "outlier ratio (10-NN distance / random's)")):
        for name, runs in curves.items():
            common = min(len(run) for run in runs) - 1
            if common < 1 or key not in runs[0][0]:
                continue
            ax.plot([p["labels"] for p in runs[0][:common]],
                    np.mean([[p[key] for p in run[:common]] for run in runs], axis=0),
                    color=colours[name], marker="o", ms=3, label=name)
        ax.set(xlabel="labels before the round", title=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    diagnostics_png = os.path.join(out_dir, f"diagnostics_{dataset}.png")
    fig.savefig(diagnostics_png, dpi=110)
    plt.close(fig)
    return curves_png, diagnostics_png


#: What must match for a run's curves to be reused by another (same data, seeds, rounds, model).
REUSE_KEYS = ("dataset", "pool_size", "test_size", "seeds", "initial", "batch", "auc_labels", "max_labels",
              "target_fraction", "epochs", "min_steps")


def reused_run(args):
    """Whole-pool accuracy and curves of an earlier ``results_<dataset>.json`` (``--reuse``) run
    with the same protocol, so that new strategies are compared with the same random curves.
    A strategy name the earlier run has is not run again, whatever its ``--beta``.

    Raises
    ------
    ValueError
        If the earlier run's protocol differs (names the first differing setting).
    """
    with open(args.reuse) as f:
        earlier = json.load(f)
    for key in REUSE_KEYS:
        if earlier.get(key, getattr(args, key)) != getattr(args, key):  # results before 2026-11-30 lack epochs
            raise ValueError(f"--reuse {args.reuse}: {key} was {earlier.get(key)!r}, this run has "
                             f"{getattr(args, key)!r}")
    return float(earlier.get("full_pool_accuracy_exact", earlier["full_pool_accuracy"])), earlier["curves"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small run of the same loop (minutes)")
    size.add_argument("--full", action="store_true", help="the full-size run (hours)")
    parser.add_argument("--pool_size", type=int)
    parser.add_argument("--test_size", type=int)
    parser.add_argument("--initial", type=int, help="random labels to start from")
    parser.add_argument("--batch", type=int, help="labels per round")
    parser.add_argument("--auc_labels", type=int, help="every curve runs at least to this many labels (AUC range)")
    parser.add_argument("--max_labels", type=int, help="a curve stops here if it never reaches the target")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--strategies", help=f"comma-separated; default {','.join(STRATEGIES)}")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--min_steps", type=int, help="gradient steps at least, for small labelled sets")
    parser.add_argument("--mc_samples", type=int, default=100,
                        help="MC-dropout passes for BALD (consistent masks, numpy head: ~40 ms each on 20,000 frames)")
    parser.add_argument("--beta", type=float, default=1.0, help="coldness of stochastic acquisition")
    parser.add_argument("--batchbald_configs", type=int, default=1000,
                        help="joint label configurations of BatchBALD (strategy batchbald; not in the defaults: "
                             "its cost, see transforms.select.batchbald)")
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--margin_multiplier", type=float, default=5.0)
    parser.add_argument("--target_fraction", type=float, default=0.98)
    parser.add_argument("--stop_after_random", type=int, default=1,
                        help="1: a strategy's curve stops once it has as many labels as random needed "
                             "in that seed (it has lost the seed; saves time); 0: run every curve out")
    parser.add_argument("--beam_check", default="margin,bald+power,ens3:bald+power",
                        help="strategies whose every seed-0 selection also runs through SelectCandidates")
    parser.add_argument("--beam_shard_size", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads (0: TensorFlow's default); 1 helps on a busy machine")
    parser.add_argument("--reuse", help="results_<dataset>.json of an earlier run with the same protocol: "
                                        "its curves (random's among them) are kept, only new strategies run")
    parser.add_argument("--out_dir", default="activebeam-out/active_learning")
    args = parser.parse_args(argv)
    preset = PRESETS[(args.dataset, "quick" if args.quick else "full" if args.full else "default")]
    for key, value in dict(preset, strategies=preset.get("strategies", ",".join(STRATEGIES))).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.beam_shard_size <= args.batch:
        parser.error(f"--beam_shard_size must be > --batch ({args.batch})")
    return args


def main(argv=None):
    args = parse_args(argv)
    caller = os.environ.get("BUILD_WORKING_DIRECTORY")
    out_dir = os.path.join(caller, args.out_dir) if caller and not os.path.isabs(args.out_dir) else args.out_dir
    os.makedirs(out_dir, exist_ok=True)
    names = args.strategies.split(",")
    for name in names:  # fail on a bad name before any training
        strategy_for(name, 0, 0, args)

    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    started = time.monotonic()
    data = load_dataset(args.dataset, args.pool_size, args.test_size)
    n_classes = 10
    curves, beam_checks = {}, {}
    if args.reuse:
        full, curves = reused_run(args)
    else:
        full = float(np.mean([train(data[0], data[1], data[2], data[3], n_classes, s, args.epochs,
                                    args.min_steps)[1] for s in range(2)]))
    target = args.target_fraction * full
    print(f"whole pool ({len(data[0])} labels): accuracy {full:.4f}; target {target:.4f}", flush=True)
    caps = [labels_to_reach([(p["labels"], p["accuracy"]) for p in run], target)
            for run in curves["random"]] if "random" in curves else [None] * args.seeds
    names = [n for n in names if n not in curves]  # reused curves are not run again
    for name in sorted(names, key=lambda n: n != "random"):  # random first: it caps the others
        curves[name] = []
        for seed in range(args.seeds):
            t0 = time.monotonic()
            check = seed == 0 and name in args.beam_check.split(",")
            curve, beam_seconds = run_curve(name, seed, data, args, n_classes, target, beam_check=check,
                                            cap=caps[seed] if args.stop_after_random else None)
            if name == "random":
                caps[seed] = labels_to_reach([(p["labels"], p["accuracy"]) for p in curve], target)
            curves[name].append(curve)
            if check:
                beam_checks[name] = {"rounds": len(beam_seconds), "equal": True,
                                     "seconds_per_round": round(float(np.mean(beam_seconds)), 1)
                                     if beam_seconds else None}
            print(f"{name} seed {seed}: {[(p['labels'], round(p['accuracy'], 4)) for p in curve]} "
                  f"({time.monotonic() - t0:.0f}s)", flush=True)
        with open(os.path.join(out_dir, f"results_{args.dataset}.partial.json"), "w") as f:
            json.dump(dict(summarise(curves, target, args), curves=curves, target_accuracy=target), f)

    result = {"dataset": args.dataset, "preset": "quick" if args.quick else "full" if args.full else "default",
              "pool_size": len(data[0]), "test_size": len(data[2]), "seeds": args.seeds,
              "initial": args.initial, "batch": args.batch, "auc_labels": args.auc_labels,
              "max_labels": args.max_labels, "epochs": args.epochs, "min_steps": args.min_steps,
              "mc_samples": args.mc_samples, "beta": args.beta,
              "full_pool_accuracy": round(full, 4), "full_pool_accuracy_exact": full,
              "target_fraction": args.target_fraction,
              "target_accuracy": round(target, 4)}
    result.update(summarise(curves, target, args))
    result["beam_selections_equal_in_process"] = beam_checks
    if args.dataset == "digits":
        result["labels_to_95pct_accuracy_per_seed"] = {
            name: [None if (v := labels_to_reach([(p["labels"], p["accuracy"]) for p in run], 0.95)) is None
                   else round(v, 1) for run in runs] for name, runs in curves.items()}
        result["gal_2017_mnist_labels_to_5pct_error"] = GAL_2017_MNIST
    result["png"] = plot(curves, target, out_dir, args.dataset,
                         f"{args.dataset}: pool {len(data[0])}, {args.seeds} seeds (mean, each seed thin)")
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    with open(os.path.join(out_dir, f"results_{args.dataset}.json"), "w") as f:
        json.dump(dict(result, curves=curves), f, indent=2)
    print_result(result)


if __name__ == "__main__":
    main()

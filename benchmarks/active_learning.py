"""Proof on real labels: does activebeam's sampler save labels against random sampling?

    python -m benchmarks.active_learning --dataset fashion_mnist     # ~15 min on 2 cores
    python -m benchmarks.active_learning --dataset digits            # OpenCV's digits.png
    python -m benchmarks.active_learning --dataset fashion_mnist --pool_size 60000 --seeds 5 \\
        --batch 1000 --max_labels 20000                                # full-size run

The loop, per strategy and seed: a pool and a held-out test split of the dataset; start from
``--initial`` labels drawn at random (the same for every strategy of a seed); each round train a
small CNN from scratch on the labelled set, measure test accuracy, compute the model's outputs
on the unlabelled pool (probabilities, ``--mc_samples`` MC-dropout passes for BALD, the
``embedding`` layer for diversity) and let the strategy choose ``--batch`` frames, whose labels
the dataset then reveals (the annotator). The selection is made by the project's own strategy
classes (:func:`transforms.select.strategies.make_strategy`, the objects the Beam transforms of
:mod:`transforms.select.ptransforms` run per shard and window), called in-process, not a reimplementation.

Target: ``--target_fraction`` (0.95) of the accuracy of the same model trained on the whole pool.
``labels_to_target``: labels at which the mean curve over seeds first reaches the target
(linear interpolation between rounds; null if never within ``--max_labels``).
``best_vs_random`` = min over strategies of ``labels_to_target`` / random's (goal <= 0.6 on
Fashion-MNIST). Writes ``learning_curves_<dataset>.png`` and ``results_<dataset>.json`` to
``--out_dir``; the last stdout line is the JSON result.

For digits the report adds Gal, Islam & Ghahramani (2017), table 1 (MNIST, labels to reach 5 %
test error: random 835, BALD 335, variation ratios 295, max entropy 355) beside this run's
labels to reach 95 % test accuracy. Their setting differs (MNIST 28x28, 20 balanced initial
labels, batches of 10, Bayesian CNN with dropout); ours is OpenCV's 5,000 20x20 digits.
"""
import argparse
import json
import os
import time

import numpy as np

from benchmarks.common import print_result
from models import train_fashion_mnist
from transforms.select.strategies import Pool, make_strategy

DIGITS_PNG = "/usr/share/doc/opencv-doc/examples/data/digits.png"
STRATEGIES = ("random", "entropy", "margin", "bald", "coreset", "cluster_margin")
GAL_2017_MNIST = {"random": 835, "bald": 335, "variation_ratios": 295, "entropy": 355}


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
    narrower (16/32 filters, a 64-d ``embedding`` layer); returns the compiled model and a
    model giving ``[probabilities, embedding]``."""
    import keras
    model = train_fashion_mnist.build_model(input_shape, n_classes, filters=(16, 32), embedding_size=64)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, keras.Model(model.input, [model.output, model.get_layer("embedding").output])


def train(x, y, x_test, y_test, n_classes, seed, epochs, min_steps, batch_size=64):
    """Trains a fresh model; returns (model, both-outputs model, test accuracy)."""
    import keras
    keras.utils.set_random_seed(seed)
    model, both = build_model(x.shape[1:], n_classes)
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    epochs = max(epochs, int(np.ceil(min_steps / steps_per_epoch)))
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    _, accuracy = model.evaluate(x_test.astype("float32"), y_test, verbose=0, batch_size=512)
    return model, both, float(accuracy)


def pool_outputs(model, both, x, mc_samples, need_samples):
    """Probabilities (N, C), embeddings (N, 64) and optionally MC-dropout samples (T, N, C)."""
    xf = x.astype("float32")
    probs, emb = both.predict(xf, batch_size=1024, verbose=0)
    samples = None
    if need_samples:
        import tensorflow as tf
        samples = np.stack([
            np.concatenate([model(tf.constant(xf[i:i + 2048]), training=True).numpy()
                            for i in range(0, len(xf), 2048)])
            for _ in range(mc_samples)])
    return probs, emb, samples


def strategy_for(name, seed, args):
    if name == "cluster_margin":
        return make_strategy(name, {"n_clusters": args.clusters, "margin_multiplier": args.margin_multiplier,
                                    "seed": seed})
    if name in ("random", "coreset"):
        return make_strategy(name, {"seed": seed})
    return make_strategy(name)


def run_curve(name, seed, data, args, n_classes):
    x_pool, y_pool, x_test, y_test = data
    rng = np.random.default_rng(1000 + seed)
    labelled = rng.choice(len(x_pool), size=args.initial, replace=False)
    strategy = strategy_for(name, seed, args)
    ids = np.array([f"{i}" for i in range(len(x_pool))])
    curve = []
    while True:
        model, both, acc = train(x_pool[labelled], y_pool[labelled], x_test, y_test, n_classes,
                                 seed, args.epochs, args.min_steps)
        curve.append((int(len(labelled)), acc))
        if len(labelled) >= args.max_labels:
            break
        unl = np.setdiff1d(np.arange(len(x_pool)), labelled)
        probs, emb, samples = pool_outputs(model, both, x_pool[unl], args.mc_samples, name == "bald")
        pool = Pool(ids=ids[unl], embeddings=emb, probabilities=probs, probability_samples=samples)
        labelled_pool = None
        if name == "coreset":
            _, lab_emb = both.predict(x_pool[labelled].astype("float32"), batch_size=1024, verbose=0)
            labelled_pool = Pool(ids=ids[labelled], embeddings=lab_emb)
        batch = min(args.batch, args.max_labels - len(labelled))
        selection = strategy.select(pool, batch, labelled=labelled_pool)
        labelled = np.concatenate([labelled, unl[selection.indices]])
    return curve


def labels_to_reach(curve, target):
    """First label count where the curve reaches ``target`` (linear interpolation), or None."""
    for (n0, a0), (n1, a1) in zip([(None, None)] + curve[:-1], curve):
        if a1 >= target:
            if n0 is None or a1 == a0:
                return float(n1)
            return float(n0 + (target - a0) / (a1 - a0) * (n1 - n0))
    return None


def plot(curves, target, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        n = [p[0] for p in runs[0]]
        acc = np.array([[p[1] for p in run] for run in runs])
        ax.plot(n, acc.mean(axis=0), marker="o", ms=3, label=name)
        ax.fill_between(n, acc.min(axis=0), acc.max(axis=0), alpha=0.15)
    ax.axhline(target, color="k", ls="--", lw=1, label="target")
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--pool_size", type=int, default=None, help="default 8000 (fashion) / 4000 (digits)")
    parser.add_argument("--test_size", type=int, default=2000)
    parser.add_argument("--initial", type=int, default=None, help="default 100 (fashion) / 50 (digits)")
    parser.add_argument("--batch", type=int, default=None, help="labels per round; default 250 / 75")
    parser.add_argument("--max_labels", type=int, default=None, help="default 3100 / 875")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (fashion) / 25 (digits)")
    parser.add_argument("--min_steps", type=int, default=None,
                        help="gradient steps at least, for small labelled sets; default 150 / 300")
    parser.add_argument("--mc_samples", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--margin_multiplier", type=float, default=5.0)
    parser.add_argument("--target_fraction", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads (0: TensorFlow's default); 1 helps on a busy machine")
    parser.add_argument("--out_dir", default="activebeam-out/active_learning")
    args = parser.parse_args(argv)
    digits = args.dataset == "digits"
    args.pool_size = args.pool_size or (4000 if digits else 8000)
    args.initial = args.initial or (50 if digits else 100)
    args.batch = args.batch or (75 if digits else 250)
    args.max_labels = args.max_labels or (875 if digits else 3100)
    args.epochs = args.epochs or (25 if digits else 10)
    args.min_steps = args.min_steps or (300 if digits else 150)
    caller = os.environ.get("BUILD_WORKING_DIRECTORY")
    out_dir = os.path.join(caller, args.out_dir) if caller and not os.path.isabs(args.out_dir) else args.out_dir
    os.makedirs(out_dir, exist_ok=True)

    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    started = time.monotonic()
    data = load_dataset(args.dataset, args.pool_size, args.test_size)
    n_classes = 10
    full_acc = [train(data[0], data[1], data[2], data[3], n_classes, s, args.epochs, args.min_steps)[2]
                for s in range(min(args.seeds, 2))]
    full = float(np.mean(full_acc))
    target = args.target_fraction * full
    print(f"whole pool ({len(data[0])} labels): accuracy {full:.4f}; target {target:.4f}", flush=True)

    curves = {}
    for name in args.strategies.split(","):
        curves[name] = []
        for seed in range(args.seeds):
            t0 = time.monotonic()
            curve = run_curve(name, seed, data, args, n_classes)
            curves[name].append(curve)
            print(f"{name} seed {seed}: {[(n, round(a, 4)) for n, a in curve]} "
                  f"({time.monotonic() - t0:.0f}s)", flush=True)

    mean_curves = {name: [(runs[0][i][0], float(np.mean([r[i][1] for r in runs])))
                          for i in range(len(runs[0]))] for name, runs in curves.items()}
    to_target = {name: labels_to_reach(c, target) for name, c in mean_curves.items()}
    result = {
        "dataset": args.dataset, "pool_size": len(data[0]), "test_size": len(data[2]),
        "seeds": args.seeds, "initial": args.initial, "batch": args.batch, "max_labels": args.max_labels,
        "full_pool_accuracy": round(full, 4), "target_accuracy": round(target, 4),
        "labels_to_target": {k: None if v is None else round(v, 1) for k, v in to_target.items()},
        "final_accuracy": {k: round(c[-1][1], 4) for k, c in mean_curves.items()},
        "selection": "transforms.select.strategies classes in-process (same classes as transforms.select.ptransforms)",
    }
    others = [v for k, v in to_target.items() if k != "random" and v is not None]
    random_labels = to_target.get("random")
    if random_labels and others:
        best = min(others)
        result["best_strategy"] = min((v, k) for k, v in to_target.items()
                                      if k != "random" and v is not None)[1]
        result["best_vs_random"] = round(best / random_labels, 3)
    else:
        result["best_vs_random"] = None  # random (or every strategy) never reached the target
    if digits:
        result["labels_to_95pct_accuracy"] = {
            k: (None if (v := labels_to_reach(c, 0.95)) is None else round(v, 1))
            for k, c in mean_curves.items()}
        result["gal_2017_mnist_labels_to_5pct_error"] = GAL_2017_MNIST
    png = os.path.join(out_dir, f"learning_curves_{args.dataset}.png")
    plot(curves, target, png, f"{args.dataset}: pool {len(data[0])}, {args.seeds} seeds "
         f"(mean, min-max band)")
    result["png"] = png
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["curves"] = mean_curves
    with open(os.path.join(out_dir, f"results_{args.dataset}.json"), "w") as f:
        json.dump(result, f, indent=2)
    print_result(result)


if __name__ == "__main__":
    main()

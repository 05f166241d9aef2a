"""Scale of the core-set sampler: greedy k-center over 1,000,000 embeddings, and vs scikit-activeml.

    python -m benchmarks.sampler_scale                      # 10,000 of 1,000,000 x 128; ~3-5 min
    python -m benchmarks.sampler_scale --n 200000 --budget 2000 --compare_n 50000   # quick

1. ``seconds_1m`` / ``peak_rss_mb_1m``: :class:`transforms.select.strategies.KCenterGreedy` (exact
   greedy k-center with lazy, batched distance updates, :mod:`transforms.select.kcenter`) selects
   ``--budget`` of ``--n`` clustered synthetic 128-d float32 embeddings (``--clusters``
   Gaussian blobs of random spread, like embeddings of many scenes). Peak RSS is the whole
   process, data included (``n * 128 * 4`` bytes = 512 MB at 1M).
2. ``coreset_speedup_vs_skactiveml`` and ``coverage_radius_ratio``: on the first
   ``--compare_n`` (100,000) points, ours and scikit-activeml's ``CoreSet`` (the naive
   farthest-first traversal, one ``pairwise_distances_argmin_min`` pass per pick) select
   ``--compare_budget`` points, interleaved ``--repeats`` times (median seconds); the ratio is
   the coverage radius (largest distance of a point to its nearest pick) of ours over theirs.
   ``--compare_budget`` defaults to 1,000 (the same 1 % as 10k of 1M): scikit-activeml keeps
   a ``(batch_size, n)`` float64 utilities matrix, 8 GB at 10,000 x 100,000.

Both sides run with the same BLAS/OpenMP thread limit, ``--threads`` (default 1: the machine
is shared, and oversubscribed BLAS threads slow both sides by an order of magnitude).

Goals (issue 6): seconds_1m <= 120, peak_rss_mb_1m <= 4096, speedup >= 10, radius ratio <= 1.05.
The last stdout line is one JSON object.
"""
import argparse
import statistics

import numpy as np

from benchmarks.common import PeakRss, interleaved_rates, print_result, timed
from transforms.select.kcenter import coverage_radius
from transforms.select.base import Pool
from transforms.select.strategies import KCenterGreedy


def clustered_embeddings(n, dim=128, clusters=1000, seed=0, chunk=100_000):
    """float32 ``(n, dim)``: ``clusters`` Gaussian blobs, centres ~N(0, 1), spreads 0.05-0.3."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    spreads = rng.uniform(0.05, 0.3, size=clusters).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        c = rng.integers(clusters, size=m)
        x[start:start + m] = centres[c] + rng.standard_normal((m, dim), dtype=np.float32) * spreads[c, None]
    return x


def ours(x, budget, seed=0):
    pool = Pool(ids=np.arange(len(x)), embeddings=x)
    return KCenterGreedy(seed=seed).select(pool, budget).indices


def theirs(x, budget, seed=0):
    from skactiveml.pool import CoreSet
    y = np.full(len(x), np.nan)
    return CoreSet(random_state=seed).query(x, y, batch_size=budget)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--compare_n", type=int, default=100_000)
    parser.add_argument("--compare_budget", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and OpenMP threads, both sides")
    args = parser.parse_args(argv)
    import faiss
    from threadpoolctl import threadpool_limits
    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


def run(args):

    x = clustered_embeddings(args.n, args.dim, args.clusters, args.seed)
    with PeakRss() as rss:
        seconds_1m, picks = timed(lambda: ours(x, args.budget, args.seed))
    radius_1m = coverage_radius(x, x[picks])
    print(f"ours: {args.budget} of {args.n} in {seconds_1m:.1f}s, peak RSS {rss.peak_mb:.0f} MB, "
          f"radius {radius_1m:.4f}", flush=True)

    sub = np.ascontiguousarray(x[:args.compare_n])
    del x
    results = {}

    def side(name, fn):
        def run():
            results[name] = fn(sub, args.compare_budget, args.seed)
            return args.compare_budget
        return run
    rates = interleaved_rates({"activebeam": side("activebeam", ours),
                               "skactiveml": side("skactiveml", theirs)}, args.repeats)
    seconds = {k: statistics.median(args.compare_budget / r for r in v) for k, v in rates.items()}
    radius = {k: coverage_radius(sub, sub[idx]) for k, idx in results.items()}
    print(f"at {args.compare_n}: seconds {seconds}, radius {radius}", flush=True)
    print_result({
        "n": args.n, "budget": args.budget, "dim": args.dim, "clusters": args.clusters,
        "seconds_1m": round(seconds_1m, 2), "peak_rss_mb_1m": round(rss.peak_mb, 1),
        "coverage_radius_1m": round(radius_1m, 4),
        "threads": args.threads, "compare_n": args.compare_n, "compare_budget": args.compare_budget, "repeats": args.repeats,
        "seconds_activebeam_compare": round(seconds["activebeam"], 3),
        "seconds_skactiveml_compare": round(seconds["skactiveml"], 3),
        "coreset_speedup_vs_skactiveml": round(seconds["skactiveml"] / seconds["activebeam"], 1),
        "coverage_radius_ratio": round(radius["activebeam"] / radius["skactiveml"], 4),
        "goals": {"seconds_1m": 120, "peak_rss_mb_1m": 4096, "coreset_speedup_vs_skactiveml": 10,
                  "coverage_radius_ratio": 1.05},
    })


if __name__ == "__main__":
    main()

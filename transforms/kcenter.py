"""Greedy k-center (farthest-first traversal) for core-set selection (pure numpy/faiss; no Beam).

:func:`k_center_greedy` picks ``k`` points of ``x`` one at a time, each the point farthest from
every centre chosen so far (and from the already-labelled points, when given). The result is a
2-approximation of the minimax facility location (k-center) problem, the core-set selection of
Sener & Savarese (2018).

A naive implementation costs one full pass over ``x`` per pick (``k`` passes of ``N x D``). For
large ``N`` this module prunes with the triangle inequality, exactly: the points are partitioned
into blocks by k-means (faiss), each block knows its centroid ``c_j``, its radius ``r_j`` (largest
member distance to ``c_j``) and the largest current nearest-centre distance of its members
``m_j``. A new centre ``s`` can lower a member's distance only if ``|s - c_j| - r_j < m_j``, so
blocks failing that test are skipped, and the next pick is the argmax of the block maxima. The
selection is the same as the naive one (up to float32 rounding); only the work changes, from
``k * N`` to ``k * (blocks + members of the touched blocks)`` distance evaluations.

Memory: ``x`` as float32 plus one reordered copy (``2 * N * D * 4`` bytes) plus ``O(N)`` floats;
1,000,000 x 128 takes about 1.1 GB.

References
----------
* Sener, O. & Savarese, S. (2018). Active Learning for Convolutional Neural Networks: A Core-Set
  Approach. ICLR. (Greedy k-center, algorithm 1.)
* Gonzalez, T. (1985). Clustering to minimize the maximum intercluster distance. Theoretical
  Computer Science 38 (farthest-first traversal, 2-approximation).
* Elkan, C. (2003). Using the triangle inequality to accelerate k-means. ICML (the pruning idea).
* Reference implementations: scikit-activeml ``skactiveml.pool.CoreSet`` (naive), Google's
  ``active-learning`` ``sampling_methods/kcenter_greedy.py``.
"""
from typing import NamedTuple, Optional

import numpy as np

#: Below this many points the naive traversal is faster than building blocks.
NAIVE_MAX_POINTS = 50_000


class KCenterResult(NamedTuple):
    """``indices``: int64 ``(k,)`` picks in order; ``radius``: float, the coverage radius after
    the picks (largest distance of a point of ``x`` to its nearest centre, labelled points
    included); ``gains``: float32 ``(k,)``, each pick's distance to its nearest earlier centre
    when it was picked (the farthest-first "score", non-increasing)."""
    indices: np.ndarray
    radius: float
    gains: np.ndarray


def _as_float32(x, name):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


def nearest_sq_distance(x, centers):
    """Squared distance of each row of ``x`` to its nearest row of ``centers`` (faiss, exact)."""
    import faiss
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centers)
    out = np.empty(len(x), dtype=np.float32)
    step = 262_144  # bounded temporary memory
    for start in range(0, len(x), step):
        d, _ = index.search(x[start:start + step], 1)
        out[start:start + step] = d[:, 0]
    return np.maximum(out, 0.0)


def coverage_radius(x, centers) -> float:
    """Largest distance from a row of ``x`` (N, D) to its nearest row of ``centers`` (M, D)."""
    x = _as_float32(x, "x")
    centers = _as_float32(centers, "centers")
    return float(np.sqrt(nearest_sq_distance(x, centers).max())) if len(x) else 0.0


def _naive(x, k, mind, first):
    n = len(x)
    norms = np.einsum("ij,ij->i", x, x)
    picks = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float32)
    for i in range(k):
        p = first if (i == 0 and first is not None) else int(np.argmax(mind))
        picks[i], gains[i] = p, np.sqrt(max(float(mind[p]), 0.0)) if np.isfinite(mind[p]) else np.inf
        d = norms + norms[p] - 2.0 * (x @ x[p])
        np.minimum(mind, np.maximum(d, 0.0), out=mind)
        mind[p] = 0.0
    return picks, gains, float(np.sqrt(mind.max())) if n else 0.0


class _Blocks:
    """Points reordered by k-means block, with per-block centroid and radius and, per point, the
    distance to its block's centroid (for the point-wise bound)."""

    def __init__(self, x, n_blocks, seed):
        import faiss
        n, dim = x.shape
        kmeans = faiss.Kmeans(dim, n_blocks, niter=4, seed=int(seed) % (2**31), verbose=False,
                              max_points_per_centroid=32)
        kmeans.train(x)
        assign = np.empty(n, dtype=np.int64)
        step = 262_144
        for start in range(0, n, step):
            assign[start:start + step] = kmeans.index.search(x[start:start + step], 1)[1][:, 0]
        self.order = np.argsort(assign, kind="stable")
        self.xs = x[self.order]
        counts = np.bincount(assign, minlength=n_blocks)
        counts = counts[counts > 0]
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.norms = np.einsum("ij,ij->i", self.xs, self.xs)
        m = len(counts)
        self.block_of = np.repeat(np.arange(m), counts)
        self.centroids = np.empty((m, dim), dtype=np.float32)
        self.to_centroid = np.empty(n, dtype=np.float32)
        for j in range(m):
            lo, hi = self.bounds[j], self.bounds[j + 1]
            seg = self.xs[lo:hi]
            c = seg.mean(axis=0)
            self.centroids[j] = c
            self.to_centroid[lo:hi] = np.sqrt(((seg - c) ** 2).sum(axis=1))
        # float32 rounding of the distance formula: widen the bounds slightly (never prunes wrongly)
        self.to_centroid = self.to_centroid * np.float32(1.0001) + np.float32(1e-4)
        self.radii = np.maximum.reduceat(self.to_centroid, self.bounds[:-1])


def _pruned(x, k, mind_sq, first, n_blocks, seed):
    """Greedy k-center with block and point-wise triangle-inequality pruning (module docstring).

    Per pick: distances from the new centre ``s`` to the block centroids; blocks with
    ``|s - c_j| - r_j >= max_j`` are skipped; in the other blocks a point ``x`` is skipped when
    ``|s - c_j| - |x - c_j| >= mind(x)``; only the remaining points get a distance computation.
    """
    blocks = _Blocks(x, n_blocks, seed)
    order, xs, norms, bounds = blocks.order, blocks.xs, blocks.norms, blocks.bounds
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    mind = np.sqrt(mind_sq[order])  # true distances (inf where nothing covers yet)
    starts = bounds[:-1]
    block_max = np.maximum.reduceat(mind, starts)
    m, n = len(starts), len(xs)
    c_norms = np.einsum("ij,ij->i", blocks.centroids, blocks.centroids)
    picks = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float32)
    for i in range(k):
        if i == 0 and first is not None:
            p = int(inverse[first])
        else:
            j = int(np.argmax(block_max))
            p = int(bounds[j] + np.argmax(mind[bounds[j]:bounds[j + 1]]))
        picks[i], gains[i] = order[p], mind[p]
        s, s_norm = xs[p], norms[p]
        dc = np.sqrt(np.maximum(c_norms + s_norm - 2.0 * (blocks.centroids @ s), 0.0))
        touched = np.nonzero(dc - blocks.radii < block_max)[0]
        if len(touched) > m // 4:
            cand = np.nonzero(dc[blocks.block_of] - blocks.to_centroid < mind)[0]
            if len(cand) > n // 3:  # most points: one matrix-vector product beats a gather
                d = np.sqrt(np.maximum(norms + s_norm - 2.0 * (xs @ s), 0.0))
                np.minimum(mind, d, out=mind)
                mind[p] = 0.0
                block_max = np.maximum.reduceat(mind, starts)
                continue
        else:
            cand = [bounds[j] + np.nonzero(dc[j] - blocks.to_centroid[bounds[j]:bounds[j + 1]]
                                            < mind[bounds[j]:bounds[j + 1]])[0] for j in touched]
            cand = np.concatenate(cand) if cand else np.empty(0, np.int64)
        if len(cand):
            d = np.sqrt(np.maximum(norms[cand] + s_norm - 2.0 * (xs[cand] @ s), 0.0))
            better = d < mind[cand]
            mind[cand[better]] = d[better]
        mind[p] = 0.0
        changed = np.unique(blocks.block_of[cand]) if len(cand) else np.empty(0, np.int64)
        changed = np.union1d(changed, [blocks.block_of[p]])
        if len(changed) > m // 4:
            block_max = np.maximum.reduceat(mind, starts)
        else:
            for j in changed:
                block_max[j] = mind[bounds[j]:bounds[j + 1]].max()
    return picks, gains, float(block_max.max())


def k_center_greedy(x, k: int, labelled: Optional[np.ndarray] = None, seed: int = 0,
                    n_blocks: Optional[int] = None) -> KCenterResult:
    """Greedy k-center: ``k`` indices of ``x`` that cover it with the smallest radius (2-approx).

    Parameters
    ----------
    x : array-like of float, shape (N, D)
        Embeddings of the candidates (converted to float32; Euclidean distance).
    k : int
        Number of picks, ``0 <= k``; at most ``N`` are returned.
    labelled : array-like of float, shape (M, D), optional
        Embeddings of already-labelled (or already-selected) points: initial centres. Without
        them the first pick is drawn at random with ``seed``, as in Sener & Savarese (2018).
    seed : int
        Seed of the first pick (when ``labelled`` is empty) and of the k-means blocks.
    n_blocks : int, optional
        Number of pruning blocks; default ``2 * sqrt(N)`` for ``N > NAIVE_MAX_POINTS``, else the
        naive traversal. ``1`` forces the naive traversal.

    Returns
    -------
    KCenterResult
        ``indices`` (int64, ``(min(k, N),)``, in pick order), ``radius`` and ``gains``.

    Raises
    ------
    ValueError
        If ``x`` is not 2-D and finite, ``labelled`` has another width, or ``k < 0``.
    """
    x = _as_float32(x, "x")
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    n = len(x)
    k = int(min(k, n))
    mind = np.full(n, np.inf, dtype=np.float32)
    first = None
    if labelled is not None and len(labelled):
        labelled = _as_float32(labelled, "labelled")
        if labelled.shape[1] != x.shape[1]:
            raise ValueError(f"labelled has width {labelled.shape[1]}, x has {x.shape[1]}")
        mind = nearest_sq_distance(x, labelled)
    elif n:
        first = int(np.random.default_rng(seed).integers(n))
    if k == 0:
        radius = float(np.sqrt(mind.max())) if n and np.isfinite(mind.max()) else (np.inf if n else 0.0)
        return KCenterResult(np.empty(0, np.int64), radius, np.empty(0, np.float32))
    if n_blocks is None:
        n_blocks = int(2 * np.sqrt(n)) if n > NAIVE_MAX_POINTS else 1
    if n_blocks <= 1:
        picks, gains, radius = _naive(x, k, mind, first)
    else:
        picks, gains, radius = _pruned(x, k, mind, first, n_blocks, seed)
    return KCenterResult(picks, radius, gains)

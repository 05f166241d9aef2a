"""k-nearest-neighbour uniqueness and near-duplicate pairs from embeddings, with faiss (pure).

The maths behind :class:`transforms.score.novelty.ScoreNovelty`, usable without Beam:
per-shard faiss indexes (:func:`build_index`, :func:`search_shard`), FiftyOne's weighted k-NN
uniqueness (:func:`knn_uniqueness`), cosine near-duplicate pairs and their union-find groups.

References
----------
FiftyOne Brain, ``fiftyone/brain/internal/core/uniqueness.py`` (voxel51/fiftyone-brain);
Johnson, Douze & Jégou (2019), Billion-scale similarity search with GPUs (faiss);
Tarjan (1975), Efficiency of a good but not linear set union algorithm (union-find).
"""
import heapq
import itertools
import zlib
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from transforms.score import ann

FIFTYONE_K = 3
FIFTYONE_WEIGHTS = (0.6, 0.3, 0.1)
EUCLIDEAN, COSINE = "euclidean", "cosine"
DEFAULT_DUPLICATE_THRESHOLD = 0.99


class Neighbour(NamedTuple):
    """One found neighbour of a frame: distance (in the chosen metric) and its frame id."""
    distance: float
    frame_id: str


def knn_uniqueness(distances, weights: Sequence[float]) -> np.ndarray:
    """Weighted mean distance to the nearest neighbours: ``mean_j(w_j * d_j)``.

    Parameters
    ----------
    distances : array-like of float, shape (N, k)
        Distances to each sample's k nearest other samples, ascending.
    weights : sequence of float, length k
        Weight of the j-th nearest neighbour (FiftyOne: ``(0.6, 0.3, 0.1)``).

    Returns
    -------
    ndarray of float64, shape (N,).

    Raises
    ------
    ValueError
        If ``distances`` is not (N, k) with ``k == len(weights)``, or has negative values.

    References
    ----------
    FiftyOne Brain ``_compute_uniqueness`` (``np.mean(dists[:, 1:] * weights, axis=1)``).
    """
    d = np.asarray(distances, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != len(w):
        raise ValueError(f"distances must have shape (N, {len(w)}), got {d.shape}")
    if np.any(d < 0):
        raise ValueError("distances must be non-negative")
    return (d * w).mean(axis=1)


def frame_uniqueness(neighbours: Sequence[Neighbour], weights: Sequence[float]) -> float:
    """:func:`knn_uniqueness` of one frame from its neighbours (ascending). With fewer
    neighbours than weights (tiny runs) the first weights are used; with none, the frame is
    as unique as can be: ``inf`` (the normalised score maps it to 1)."""
    distances = np.array([[n.distance for n in neighbours]], dtype=np.float64).reshape(1, -1)
    return float(uniqueness_from_distances(distances, weights)[0])


def shard_of(frame_id: str, num_shards: int) -> int:
    """Deterministic shard of a frame id (crc32, stable across processes and runs)."""
    return zlib.crc32(frame_id.encode("utf-8")) % num_shards


def unit_rows(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows of ``x`` (float ``(n, D)``) divided by their L2 norms (zero rows stay zero); into
    ``out`` when given (``out=x``: in place)."""
    return np.divide(x, np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), out=out)


def build_index(embeddings: np.ndarray, metric: str = EUCLIDEAN, index_factory: str = "Flat",
                exact_below: int = ann.EXACT_BELOW, overwrite: bool = False):
    """A faiss index over ``float32 (n, D)`` embeddings (L2 for euclidean; inner product of unit
    vectors for cosine). ``index_factory`` is a ``faiss.index_factory`` string or ``"auto"``
    (:func:`transforms.score.ann.choose_index` of ``n``: exact ``Flat`` below ``exact_below``
    vectors, else HNSW); HNSW gets :mod:`~transforms.score.ann`'s ``efConstruction`` and
    ``efSearch``. Trains the index first if the factory needs training (IVF, PQ, ...).
    ``overwrite``: for cosine, normalise a float32 C-contiguous ``embeddings`` in place (the
    same values as :func:`unit_rows`) instead of in a copy, for a caller that no longer needs
    them: one copy of the vectors less in memory while the index is built."""
    import faiss
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if metric == COSINE:
        x = unit_rows(x, out=x if overwrite and x is embeddings else None)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == COSINE else faiss.METRIC_L2
    choice = ann.resolve(index_factory, len(x), exact_below)
    index = ann.new_index(x.shape[1], choice, faiss_metric)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    ann.tune(index, choice)
    return index


def search_shard(shard_ids: Sequence[str], shard_embeddings: np.ndarray, query_ids: Sequence[str],
                 queries: np.ndarray, k: int, metric: str = EUCLIDEAN, index=None) -> List[List[Neighbour]]:
    """The k nearest frames of the shard for each query, the query itself excluded.

    Parameters
    ----------
    shard_ids, shard_embeddings : frame ids and float32 ``(n, D)`` embeddings of the shard
    query_ids, queries : frame ids and float32 ``(m, D)`` embeddings of the queries
    k : int, neighbours per query
    metric : ``"euclidean"`` (L2 distance) or ``"cosine"`` (``1 - cosine similarity``)
    index : optional prebuilt :func:`build_index` of the shard

    Returns
    -------
    list (length m) of lists of at most k :class:`Neighbour`, ascending distance.
    """
    if len(shard_ids) == 0 or len(query_ids) == 0:
        return [[] for _ in query_ids]
    index = index if index is not None else build_index(shard_embeddings, metric)
    distances, positions = _search(shard_ids, index, query_ids, queries, k, metric)
    return [[Neighbour(float(d), shard_ids[p]) for d, p in zip(row_d, row_p) if np.isfinite(d)][:k]
            for row_d, row_p in zip(distances, positions)]


def _search(shard_ids, index, query_ids, queries, k, metric):
    """The faiss search both :func:`search_shard` and :func:`shard_distances` make: ``k + 1``
    results per query (one may be the query itself), as float64 distances (``inf`` for the
    query itself and for missing results, faiss's order kept) and shard positions."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores, positions = index.search(unit_rows(q) if metric == COSINE else q, min(k + 1, len(shard_ids)))
    scores = scores.astype(np.float64)
    distances = np.maximum(1.0 - scores if metric == COSINE else np.sqrt(np.maximum(scores, 0.0)), 0.0)
    found = np.asarray(shard_ids, dtype=object)[np.maximum(positions, 0)]
    distances[(positions < 0) | (found == np.asarray(query_ids, dtype=object)[:, None])] = np.inf
    return distances, positions


def shard_distances(shard_ids: Sequence[str], index, query_ids: Sequence[str], queries: np.ndarray,
                    k: int, metric: str = EUCLIDEAN) -> np.ndarray:
    """Distances from each query to its ``k`` nearest frames of a shard, the query itself
    excluded: the distances of :func:`search_shard` without the neighbours' ids, in one
    vectorised pass (uniqueness needs only the distances).

    Parameters
    ----------
    shard_ids : frame ids of the shard's ``n`` embeddings, in the index's order
    index : the shard's :func:`build_index` (same ``metric``)
    query_ids, queries : ``m`` frame ids and their float32 ``(m, D)`` embeddings
    k : int, neighbours per query
    metric : ``"euclidean"`` (L2 distance) or ``"cosine"`` (``1 - cosine similarity``)

    Returns
    -------
    ndarray of float64, shape (m, k): ascending per row, ``inf`` where the shard has fewer than
    ``k`` other frames.
    """
    out = np.full((len(query_ids), k), np.inf)
    if len(shard_ids) == 0 or len(query_ids) == 0:
        return out
    distances = np.sort(_search(shard_ids, index, query_ids, queries, k, metric)[0], axis=1)[:, :k]
    out[:, :distances.shape[1]] = distances
    return out


def distances_excluding(shard_ids: Sequence[str], index, query_ids: Sequence[str], queries: np.ndarray,
                        k: int, excluded: frozenset, metric: str = COSINE) -> np.ndarray:
    """:func:`shard_distances` that also skips the shard frames whose ids are in ``excluded``
    (e.g. a run's own frames already in the history index): ``k`` doubles for the queries that
    lost results to the exclusion until each has ``k`` or the shard is exhausted.

    Returns
    -------
    ndarray of float64, shape (m, k), ascending per row, ``inf`` for missing neighbours.
    """
    out = np.full((len(query_ids), k), np.inf)
    n = len(shard_ids)
    if n == 0 or len(query_ids) == 0:
        return out
    ids = np.asarray(shard_ids, dtype=object)
    pending, kk = np.arange(len(query_ids)), k
    while len(pending):
        distances, positions = _search(shard_ids, index, [query_ids[i] for i in pending], queries[pending], kk, metric)
        if excluded:
            distances[np.vectorize(excluded.__contains__, otypes=[bool])(ids[np.maximum(positions, 0)])] = np.inf
        distances = np.sort(distances, axis=1)
        done = (np.isfinite(distances).sum(axis=1) >= k) | (kk + 1 >= n)
        width = min(k, distances.shape[1])
        out[pending[done], :width] = distances[done, :width]
        pending, kk = pending[~done], 2 * kk
    return out


def uniqueness_from_distances(distances: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """:func:`frame_uniqueness` of many frames from their distances to candidate neighbours.

    Parameters
    ----------
    distances : float64 ``(m, K)``, any order, ``inf`` for missing neighbours (e.g. the
        :func:`shard_distances` of every shard, concatenated along axis 1)
    weights : sequence of float, length k <= K

    Returns
    -------
    ndarray of float64, shape (m,): the weighted mean over the ``k`` smallest distances; with
    fewer finite ones the first weights are used, and with none the value is ``inf``.
    """
    k = len(weights)
    d = np.sort(np.asarray(distances, dtype=np.float64), axis=1)[:, :k]
    if d.shape[1] < k:
        d = np.pad(d, ((0, 0), (0, k - d.shape[1])), constant_values=np.inf)
    finite = np.isfinite(d).sum(axis=1)
    out = np.full(len(d), np.inf)
    full = finite == k
    out[full] = knn_uniqueness(d[full], weights)
    for row in np.nonzero((finite > 0) & ~full)[0]:
        n = finite[row]
        out[row] = knn_uniqueness(d[row:row + 1, :n], weights[:n])[0]
    return out


def near_duplicate_pairs(shard_ids: Sequence[str], cosine_index, query_ids: Sequence[str],
                         queries: np.ndarray, threshold: float, each_pair_once: bool = True
                         ) -> List[Tuple[str, str]]:
    """Every (query, shard frame) pair with cosine similarity ``>= threshold`` on unit vectors:
    a faiss range search, or for an HNSW index (no range search in faiss) k-NN searches whose
    ``k`` doubles (from :data:`PAIR_K`) for the queries whose farthest result is still at or
    above the threshold. With ``each_pair_once`` each unordered pair comes once
    (``query id < frame id``), else every ``(query, other frame)``.

    ``cosine_index`` is :func:`build_index` of the shard with ``metric="cosine"``.
    """
    if len(shard_ids) == 0 or len(query_ids) == 0:
        return []
    unit_q = unit_rows(np.ascontiguousarray(queries, dtype=np.float32))
    # faiss keeps results strictly above the radius: step just below the threshold.
    radius = float(np.nextafter(np.float32(threshold), -1))
    if ann.is_graph(cosine_index):
        found = _growing_knn(cosine_index, unit_q, radius, len(shard_ids))
    else:
        lims, _, positions = cosine_index.range_search(unit_q, radius)
        found = (positions[lims[row]:lims[row + 1]] for row in range(len(query_ids)))
    pairs = []
    for query_id, row in zip(query_ids, found):
        for position in row:
            other = shard_ids[position]
            if query_id < other or (not each_pair_once and query_id != other):
                pairs.append((query_id, other))
    return pairs


#: First ``k`` of the k-NN searches that find near-duplicate pairs in an HNSW index.
PAIR_K = 16


def _growing_knn(index, unit_q, radius, n):
    """Per query, the positions with inner product above ``radius``: k-NN searches from
    :data:`PAIR_K`, doubling ``k`` for the queries whose k-th result is still above it."""
    found = [None] * len(unit_q)
    pending, k = np.arange(len(unit_q)), min(PAIR_K, n)
    while len(pending):
        scores, positions = index.search(unit_q[pending], k)
        full = (scores[:, -1] > radius) & (k < n)
        for row, s, p in zip(pending[~full], scores[~full], positions[~full]):
            found[row] = p[(s > radius) & (p >= 0)]
        pending, k = pending[full], min(2 * k, n)
    return found


def merge_neighbours(lists: Iterable[Sequence[Neighbour]], k: int) -> List[Neighbour]:
    """The k nearest of several shards' neighbour lists (ties broken by frame id)."""
    return heapq.nsmallest(k, itertools.chain.from_iterable(lists), key=lambda n: (n.distance, n.frame_id))


def duplicate_groups(pairs: Iterable[Tuple[str, str]]) -> Dict[str, Tuple[str, ...]]:
    """Connected components of near-duplicate pairs (union-find with path halving).

    Returns
    -------
    dict leader -> sorted member ids (leader = the smallest id of the group, so the result does
    not depend on the order of ``pairs``); only groups of 2 or more.
    """
    parent: Dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: Dict[str, List[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return {leader: tuple(sorted(members)) for leader, members in groups.items() if len(members) > 1}

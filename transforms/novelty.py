"""Novelty from embeddings: k-nearest-neighbour uniqueness and near-duplicate groups, with faiss.

``ScoreNovelty`` adds ``uniqueness`` to every :class:`~schemas.records.FrameRecord`'s
``extra_scores`` and finds groups of near-duplicate frames (cosine similarity of embeddings at
or above a threshold)::

    novelty = scored.records | ScoreNovelty(k=3, weights=FIFTYONE_WEIGHTS, num_shards=8)
    novelty.records            # FrameRecords with extra score "uniqueness"
    novelty.duplicate_groups   # (leader frame_id, (member frame_ids, ...)), groups of 2+

Scaling past one machine: the embeddings are split into ``num_shards`` shards by frame id; each
shard gets its own faiss index (exact ``Flat`` by default, or any ``faiss.index_factory`` string
such as ``"IVF256,Flat"`` for approximate search), and every frame is searched against every
shard (one shuffle of ``N x num_shards`` query vectors); the per-shard top-k lists are merged per
frame. No worker holds more than one shard's index, and a shard's queries are streamed through
it in batches; near-duplicate pairs come from a faiss range search (cosine) in the same pass.
The pairs (ids only) are joined into groups with union-find on one worker.

Uniqueness of a frame is ``mean_j(w_j * d_j)`` over the distances ``d_1 <= ... <= d_k`` to its
``k`` nearest other frames. FiftyOne Brain's ``compute_uniqueness`` is the setting ``k=3``,
``weights=(0.6, 0.3, 0.1)``, ``metric="euclidean"``, ``normalise=True`` (divide by the largest
value in the run, so the most unique frame has 1).

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

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from schemas.records import FrameRecord

FIFTYONE_K = 3
FIFTYONE_WEIGHTS = (0.6, 0.3, 0.1)
EUCLIDEAN, COSINE = "euclidean", "cosine"
DEFAULT_DUPLICATE_THRESHOLD = 0.99
_NAMESPACE = "activebeam.novelty"
_PAIRS = "near_duplicate_pairs"


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
    if not neighbours:
        return float("inf")
    k = min(len(neighbours), len(weights))
    return float(knn_uniqueness([[n.distance for n in neighbours[:k]]], weights[:k])[0])


def shard_of(frame_id: str, num_shards: int) -> int:
    """Deterministic shard of a frame id (crc32, stable across processes and runs)."""
    return zlib.crc32(frame_id.encode("utf-8")) % num_shards


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(embeddings: np.ndarray, metric: str = EUCLIDEAN, index_factory: str = "Flat"):
    """A faiss index over ``float32 (n, D)`` embeddings (L2 for euclidean; inner product of unit
    vectors for cosine). Trains it first if the factory needs training (IVF, PQ, ...)."""
    import faiss
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if metric == COSINE:
        x = _unit(x)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == COSINE else faiss.METRIC_L2
    index = faiss.index_factory(x.shape[1], index_factory, faiss_metric)
    if not index.is_trained:
        index.train(x)
    index.add(x)
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
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores, positions = index.search(_unit(q) if metric == COSINE else q, min(k + 1, len(shard_ids)))
    found = []
    for query_id, row_scores, row_positions in zip(query_ids, scores, positions):
        neighbours = []
        for score, position in zip(row_scores, row_positions):
            if position < 0 or shard_ids[position] == query_id:
                continue
            distance = 1.0 - float(score) if metric == COSINE else float(np.sqrt(max(score, 0.0)))
            neighbours.append(Neighbour(max(distance, 0.0), shard_ids[position]))
        found.append(neighbours[:k])
    return found


def near_duplicate_pairs(shard_ids: Sequence[str], cosine_index, query_ids: Sequence[str],
                         queries: np.ndarray, threshold: float) -> List[Tuple[str, str]]:
    """Every (query, shard frame) pair with cosine similarity ``>= threshold`` (faiss range
    search on unit vectors), each unordered pair once (``query id < frame id``).

    ``cosine_index`` is :func:`build_index` of the shard with ``metric="cosine"``.
    """
    if len(shard_ids) == 0 or len(query_ids) == 0:
        return []
    unit_q = _unit(np.ascontiguousarray(queries, dtype=np.float32))
    # faiss keeps results strictly above the radius: step just below the threshold.
    lims, _, positions = cosine_index.range_search(unit_q, float(np.nextafter(np.float32(threshold), -1)))
    pairs = []
    for row, query_id in enumerate(query_ids):
        for position in positions[lims[row]:lims[row + 1]]:
            other = shard_ids[position]
            if query_id < other:
                pairs.append((query_id, other))
    return pairs


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


class _SearchShardFn(beam.DoFn):
    """Per shard: builds its faiss index, streams every query through it in batches."""

    def __init__(self, k, metric, index_factory, batch_size, duplicate_threshold):
        self._k, self._metric, self._factory, self._batch = k, metric, index_factory, batch_size
        self._threshold = duplicate_threshold
        self._searched = Metrics.counter(_NAMESPACE, "shard_queries")

    def process(self, element):
        _, grouped = element
        members = list(grouped["shard"])
        if not members:
            return
        ids = [frame_id for frame_id, _ in members]
        embeddings = np.stack([e for _, e in members]).astype(np.float32)
        index = build_index(embeddings, self._metric, self._factory)
        cosine_index = None
        if self._threshold is not None:
            cosine_index = index if self._metric == COSINE else build_index(embeddings, COSINE, self._factory)
        queries = iter(grouped["queries"])
        while True:
            batch = list(itertools.islice(queries, self._batch))
            if not batch:
                return
            query_ids = [frame_id for frame_id, _ in batch]
            found = search_shard(ids, embeddings, query_ids, np.stack([e for _, e in batch]),
                                 self._k, self._metric, index)
            self._searched.inc(len(batch))
            yield from zip(query_ids, found)
            if cosine_index is not None:
                for pair in near_duplicate_pairs(ids, cosine_index, query_ids,
                                                 np.stack([e for _, e in batch]), self._threshold):
                    yield beam.pvalue.TaggedOutput(_PAIRS, pair)


def _with_uniqueness(joined, max_uniqueness, normalise):
    _, grouped = joined
    uniqueness = list(grouped["uniqueness"])
    for record in grouped["records"]:
        value = uniqueness[0] if uniqueness else float("inf")
        if normalise:
            value = 1.0 if not np.isfinite(value) or max_uniqueness <= 0 else value / max_uniqueness
        scores = dict(record.extra_scores, uniqueness=float(min(value, 1.0) if normalise else value))
        yield record._replace(extra_scores=tuple(sorted(scores.items())))


class NoveltyResult(NamedTuple):
    records: beam.PCollection
    duplicate_groups: beam.PCollection


class ScoreNovelty(beam.PTransform):
    """Uniqueness (k-NN distance) of every frame and near-duplicate groups, with sharded faiss.

    Parameters
    ----------
    k : int
        Neighbours per frame (FiftyOne: 3).
    weights : sequence of float, optional
        Weight of the j-th neighbour, length k (default: FiftyOne's ``(0.6, 0.3, 0.1)`` for k=3,
        else equal weights).
    metric : ``"euclidean"`` (FiftyOne) or ``"cosine"``
    normalise : bool
        Divide by the run's largest uniqueness, so scores are in [0, 1] (FiftyOne).
    duplicate_threshold : float or None
        Frames whose embeddings have cosine similarity >= this are near-duplicates (all pairs,
        by range search); ``None`` disables the groups.
    num_shards : int
        Number of faiss indexes the embeddings are split into.
    index_factory : str
        ``faiss.index_factory`` description of each shard's index (``"Flat"``: exact).

    Input ``PCollection[FrameRecord]`` (unique frame ids); output :class:`NoveltyResult`.

    Raises
    ------
    ValueError
        For parameters outside their ranges (named in the message).
    """

    def __init__(self, k: int = FIFTYONE_K, weights: Optional[Sequence[float]] = None,
                 metric: str = EUCLIDEAN, normalise: bool = True,
                 duplicate_threshold: Optional[float] = DEFAULT_DUPLICATE_THRESHOLD,
                 num_shards: int = 4, index_factory: str = "Flat", query_batch_size: int = 1024):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if weights is None:
            weights = FIFTYONE_WEIGHTS if k == FIFTYONE_K else (1.0,) * k
        if len(weights) != k or any(w < 0 for w in weights):
            raise ValueError(f"weights must be {k} non-negative numbers, got {weights}")
        if metric not in (EUCLIDEAN, COSINE):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        if duplicate_threshold is not None and not -1.0 <= duplicate_threshold <= 1.0:
            raise ValueError(f"duplicate_threshold must be a cosine similarity in [-1, 1], got {duplicate_threshold}")
        if num_shards < 1 or query_batch_size < 1:
            raise ValueError(f"num_shards and query_batch_size must be >= 1, got {num_shards}, {query_batch_size}")
        self._k, self._weights, self._metric = k, tuple(weights), metric
        self._normalise, self._threshold = normalise, duplicate_threshold
        self._shards, self._factory, self._batch = num_shards, index_factory, query_batch_size

    def expand(self, records):
        shards = self._shards
        vectors = records | "Embeddings" >> beam.Map(lambda r: (r.frame.frame_id, r.embedding))
        shard_members = vectors | "ToShard" >> beam.Map(lambda v: (shard_of(v[0], shards), v))
        queries = vectors | "QueryEveryShard" >> beam.FlatMap(lambda v: ((s, v) for s in range(shards)))
        found = ({"shard": shard_members, "queries": queries}
                 | "GroupByShard" >> beam.CoGroupByKey()
                 | "SearchShards" >> beam.ParDo(_SearchShardFn(
                     self._k, self._metric, self._factory, self._batch, self._threshold)).with_outputs(
                         _PAIRS, main="neighbours"))
        pairs, found = found[_PAIRS], found.neighbours
        k, weights = self._k, self._weights
        neighbours = (found
                      | "ByFrame" >> beam.GroupByKey()
                      | "MergeShards" >> beam.MapTuple(lambda frame_id, lists: (frame_id, merge_neighbours(lists, k))))
        uniqueness = neighbours | "Uniqueness" >> beam.MapTuple(
            lambda frame_id, near: (frame_id, frame_uniqueness(near, weights)))
        largest = (uniqueness
                   | "Finite" >> beam.FlatMap(lambda kv: [kv[1]] if np.isfinite(kv[1]) else [])
                   | "Largest" >> beam.CombineGlobally(lambda values: max(values, default=0.0)))
        scored = ({"records": records | "KeyRecords" >> beam.Map(lambda r: (r.frame.frame_id, r)),
                   "uniqueness": uniqueness}
                  | "JoinUniqueness" >> beam.CoGroupByKey()
                  | "AddUniqueness" >> beam.FlatMap(_with_uniqueness, beam.pvalue.AsSingleton(largest),
                                                    self._normalise).with_output_types(FrameRecord))
        groups = (pairs
                  | "AllPairs" >> beam.combiners.ToList()
                  | "UnionFind" >> beam.FlatMap(lambda all_pairs: sorted(duplicate_groups(all_pairs).items())))
        return NoveltyResult(scored, groups)

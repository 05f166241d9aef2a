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
import itertools
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from schemas.records import FrameRecord
from transforms.score.knn import (  # noqa: F401  (re-exported: the public names of novelty)
    COSINE, DEFAULT_DUPLICATE_THRESHOLD, EUCLIDEAN, FIFTYONE_K, FIFTYONE_WEIGHTS, Neighbour,
    build_index, duplicate_groups, frame_uniqueness, knn_uniqueness, merge_neighbours,
    near_duplicate_pairs, search_shard, shard_of)

_NAMESPACE = "activebeam.novelty"
_PAIRS = "near_duplicate_pairs"


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


def _representative(members) -> str:
    """The frame that stands for a near-duplicate group: the first by (source_uri,
    frame_index), as :class:`~transforms.select.ptransforms.SelectCandidates` keeps the first of
    identical frames; its frame_id is the group's id."""
    return min(members, key=lambda r: (r.frame.source_uri, r.frame.frame_index, r.frame.frame_id)).frame.frame_id


def _grouped(leader_and_records):
    _, members = leader_and_records
    members = list(members)
    group = _representative(members)
    for record in members:
        yield record._replace(duplicate_group=group)


def _split_by_group(joined):
    _, grouped = joined
    leaders = list(grouped["leader"])
    for record in grouped["records"]:
        if leaders:
            yield beam.pvalue.TaggedOutput("grouped", (leaders[0], record))
        else:
            yield record._replace(duplicate_group=None)


class AddDuplicateGroups(beam.PTransform):
    """Writes each frame's near-duplicate group onto its record (``duplicate_group``).

    Input: ``(records, groups)``: ``PCollection[FrameRecord]`` and :class:`ScoreNovelty`'s
    ``duplicate_groups`` (``(leader, member ids)``, groups of 2+). Output: every record, with
    ``duplicate_group`` = the frame_id of its group's representative (the member first by
    ``(source_uri, frame_index)``; the representative carries its own id) or ``None``.
    """

    def expand(self, records_and_groups):
        records, groups = records_and_groups
        leaders = groups | "MemberToLeader" >> beam.FlatMap(lambda g: ((m, g[0]) for m in g[1]))
        split = ({"records": records | "KeyById" >> beam.Map(lambda r: (r.frame.frame_id, r)),
                  "leader": leaders}
                 | "JoinGroups" >> beam.CoGroupByKey()
                 | "SplitGrouped" >> beam.FlatMap(_split_by_group).with_outputs("grouped", main="alone"))
        grouped = (split.grouped
                   | "ByGroup" >> beam.GroupByKey()
                   | "Representative" >> beam.FlatMap(_grouped))
        return (split.alone, grouped) | "AllRecords" >> beam.Flatten()

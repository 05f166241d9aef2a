"""Novelty from embeddings: k-nearest-neighbour uniqueness and near-duplicate groups, with faiss.

``ScoreNovelty`` adds ``uniqueness`` to every :class:`~schemas.records.FrameRecord`'s
``extra_scores`` and finds groups of near-duplicate frames (cosine similarity of embeddings at
or above a threshold)::

    novelty = scored.records | ScoreNovelty(k=3, weights=FIFTYONE_WEIGHTS, num_shards=8)
    novelty.records            # FrameRecords with extra score "uniqueness"
    novelty.duplicate_groups   # (leader frame_id, (member frame_ids, ...)), groups of 2+

Scaling past one machine: the embeddings are split into ``num_shards`` shards by frame id; each
shard gets its own faiss index, chosen by its size (``index_factory="auto"``,
:mod:`transforms.score.ann`: exact ``Flat`` below ``exact_below`` frames, an HNSW graph above,
so the search grows close to linearly with N instead of N²; or any ``faiss.index_factory``
string), and every frame is searched against every shard. Frames travel in blocks of ``query_batch_size`` (``BatchElements``): each block is sent
to every shard (a shuffle of ``N / query_batch_size x num_shards`` blocks, not of ``N x
num_shards`` vectors, and the only shuffle of embeddings: a shard builds its index from its own
frames of those blocks, so no second copy of the vectors is shuffled), each shard returns the block's k nearest distances, and a block's
distances are merged across shards at once (numpy). Per-frame elements cross a stage boundary
only once, when the uniqueness values are joined back to their records, so the transform's cost
is the search, not Beam's per-element work. No worker holds more than one shard's index, and a
shard's query blocks are streamed through it; near-duplicate pairs come from a faiss range
search (cosine; growing k-NN searches in an HNSW graph) in the same pass. The pairs (ids and ``(source_uri, frame_index)``) are joined
into groups with union-find on one worker; with ``assign_duplicate_groups`` each record gets its
group's representative in the same join as its uniqueness.

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
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from schemas.records import FrameRecord
from transforms.score.ann import AUTO, EXACT_BELOW
from transforms.score.history import NoveltyHistory
from transforms.score.knn import (  # noqa: F401  (re-exported: the public names of novelty)
    COSINE, DEFAULT_DUPLICATE_THRESHOLD, EUCLIDEAN, FIFTYONE_K, FIFTYONE_WEIGHTS, Neighbour,
    build_index, distances_excluding, duplicate_groups, frame_uniqueness, knn_uniqueness,
    merge_neighbours, near_duplicate_pairs, search_shard, shard_distances, shard_of,
    uniqueness_from_distances)

_NAMESPACE = "activebeam.novelty"
_PAIRS = "near_duplicate_pairs"


class _Block(NamedTuple):
    """Up to ``query_batch_size`` frames travelling together: ids, float32 ``(n, D)``
    embeddings and the frames' ``(source_uri, frame_index)`` (to pick a group's representative).
    Blocks, not frames, are what is shuffled to the shards and back (a few hundred elements for
    100,000 frames instead of ``N x num_shards``)."""
    ids: tuple
    embeddings: np.ndarray
    keys: tuple


def _to_block(batch) -> _Block:
    ids, embeddings, keys = zip(*batch)
    return _Block(ids, np.stack(embeddings).astype(np.float32), keys)


class _SearchShardFn(beam.DoFn):
    """Per shard: gathers its own frames from the query blocks (every block reaches every shard),
    builds its faiss index from them and streams every query block through it; emits
    ``(block id, (ids, distances (n, k)))`` and, on ``near_duplicate_pairs``, the pairs found
    with their frames' keys: ``((id, key), (id, key))``. The blocks are read twice from the
    grouped iterable (Beam's grouped values are re-iterable), never listed: a shard worker holds
    its own frames and index, not all N queries."""

    def __init__(self, k, metric, index_factory, duplicate_threshold, exact_below, num_shards):
        self._k, self._metric, self._factory = k, metric, index_factory
        self._exact_below, self._shards = exact_below, num_shards
        self._threshold = duplicate_threshold
        self._searched = Metrics.counter(_NAMESPACE, "shard_queries")

    def _own_frames(self, shard: int, blocks):
        """ids, ``{id: key}`` and float32 ``(n, D)`` embeddings of the shard's frames among the
        blocks, gathered into one array in two passes (no per-block copies)."""
        rows = []
        for block in blocks:
            if self._shards == 1:
                rows.append(np.arange(len(block.ids)))
            else:
                rows.append(np.nonzero([shard_of(i, self._shards) == shard for i in block.ids])[0])
        n = sum(len(r) for r in rows)
        if not n:
            return [], {}, None
        ids, keys, embeddings, at = [], {}, None, 0
        for block, own in zip(blocks, rows):
            if embeddings is None:
                embeddings = np.empty((n, block.embeddings.shape[1]), dtype=np.float32)
            embeddings[at:at + len(own)] = block.embeddings[own]
            at += len(own)
            for i in own:
                ids.append(block.ids[i])
                keys[block.ids[i]] = block.keys[i]
        return ids, keys, embeddings

    def process(self, element):
        shard, blocks = element
        ids, keys, embeddings = self._own_frames(shard, blocks)
        if not ids:
            return
        cosine_index = None
        if self._threshold is not None and self._metric != COSINE:
            cosine_index = build_index(embeddings, COSINE, self._factory, self._exact_below)
        # the shard's own copy of its vectors: normalised in place for a cosine index
        index = build_index(embeddings, self._metric, self._factory, self._exact_below, overwrite=True)
        if self._threshold is not None and self._metric == COSINE:
            cosine_index = index
        del embeddings
        for block in blocks:
            distances = shard_distances(ids, index, block.ids, block.embeddings, self._k, self._metric)
            self._searched.inc(len(block.ids))
            yield block.ids[0], (block.ids, distances)
            if cosine_index is not None:
                block_keys = dict(zip(block.ids, block.keys))
                for a, b in near_duplicate_pairs(ids, cosine_index, block.ids, block.embeddings,
                                                 self._threshold):
                    yield beam.pvalue.TaggedOutput(_PAIRS, ((a, block_keys[a]), (b, keys[b])))


class _SearchHistoryFn(beam.DoFn):
    """Searches every query block in the index of earlier runs (a :class:`NoveltyHistory`
    generation, pinned when the pipeline was built): each of its segments acts as one more
    shard, emitting ``(block id, (ids, distances (n, k)))`` and, on ``near_duplicate_pairs``,
    pairs of a block frame and a history frame. History frames that are also in this run (a
    rerun) are skipped."""

    def __init__(self, history: NoveltyHistory, k, threshold):
        self._history, self._k, self._threshold = history, k, threshold
        self._searched = Metrics.counter(_NAMESPACE, "history_queries")

    def setup(self):
        self._snapshot = self._history.load()
        self._keys = [dict(zip(segment.ids, segment.keys)) for segment in self._snapshot.segments]
        self._rerun = None

    def process(self, block: _Block, run_ids):
        if self._rerun is None:  # the same side input for every block of the (global) window
            self._rerun = frozenset(run_ids) & frozenset(self._snapshot.ids)
        block_keys = dict(zip(block.ids, block.keys))
        for segment, keys in zip(self._snapshot.segments, self._keys):
            distances = distances_excluding(segment.ids, segment.index, block.ids, block.embeddings, self._k,
                                            self._rerun, COSINE)
            yield block.ids[0], (block.ids, distances)
            if self._threshold is None:
                continue
            for a, b in near_duplicate_pairs(segment.ids, segment.index, block.ids, block.embeddings,
                                             self._threshold, each_pair_once=False):
                if b not in self._rerun:
                    yield beam.pvalue.TaggedOutput(_PAIRS, ((a, block_keys[a]), (b, keys[b])))
        if self._snapshot.segments:
            self._searched.inc(len(block.ids))


def _write_history(frames, history: NoveltyHistory):
    """Writes the next history generation with this run's frames (committed by the driver)."""
    if not frames:
        return
    ids, embeddings, keys = zip(*frames)
    added = history.write_next(list(ids), np.stack(embeddings), list(keys))
    Metrics.counter(_NAMESPACE, "history_frames_added").inc(added)
    yield added


def _block_uniqueness(block_and_hits, weights):
    """Merges a block's per-shard distances: ``(frame_id, uniqueness)`` per frame, and the
    block's largest finite value on ``largest``."""
    _, hits = block_and_hits
    hits = list(hits)
    ids = hits[0][0]
    values = uniqueness_from_distances(np.concatenate([d for _, d in hits], axis=1), weights)
    finite = values[np.isfinite(values)]
    if len(finite):
        yield beam.pvalue.TaggedOutput("largest", float(finite.max()))
    yield from zip(ids, values.tolist())


def _groups_and_representatives(all_pairs):
    """Union-find over the pairs: ``(leader, members)`` groups (as :func:`duplicate_groups`)
    and, on ``representatives``, ``(member, representative)`` for every member: the member
    first by ``(source_uri, frame_index, frame_id)``."""
    keys = {frame_id: key for pair in all_pairs for frame_id, key in pair}
    groups = duplicate_groups((a, b) for (a, _), (b, _) in all_pairs)
    for leader, members in sorted(groups.items()):
        yield leader, members
        representative = _first_frame((m, *keys[m]) for m in members)
        for member in members:
            yield beam.pvalue.TaggedOutput("representatives", (member, representative))


def _with_uniqueness(joined, max_uniqueness, normalise, assign_groups):
    _, grouped = joined
    uniqueness = list(grouped["uniqueness"])
    representative = next(iter(grouped["group"]), None) if assign_groups else None
    for record in grouped["records"]:
        value = uniqueness[0] if uniqueness else float("inf")
        if normalise:
            value = 1.0 if not np.isfinite(value) or max_uniqueness <= 0 else value / max_uniqueness
        scores = dict(record.extra_scores, uniqueness=float(min(value, 1.0) if normalise else value))
        record = record._replace(extra_scores=tuple(sorted(scores.items())))
        yield record._replace(duplicate_group=representative) if assign_groups else record


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
        ``"auto"`` (default): each shard's index chosen by its size
        (:func:`transforms.score.ann.choose_index`: ``Flat`` below ``exact_below`` frames, else
        ``HNSW32,Flat`` with efConstruction 80, efSearch 128); or a ``faiss.index_factory``
        description (``"Flat"``: always exact).
    exact_below : int
        Shards with fewer frames are searched exactly under ``"auto"`` (default 10,000).
    query_batch_size : int
        Frames per block: the unit that is shuffled to the shards and searched at once.
    assign_duplicate_groups : bool
        Also set every record's ``duplicate_group`` (as :class:`AddDuplicateGroups` does, in
        the same join as the uniqueness): the frame id of its group's representative, the member
        first by ``(source_uri, frame_index, frame_id)``, or ``None``. Needs
        ``duplicate_threshold``; ignored without it.

    history : NoveltyHistory, optional
        The index of earlier runs (:mod:`transforms.score.history`, ``mine --index_dir``):
        every frame's neighbours and near-duplicates are also searched there (a history frame
        can be a group's representative, so the run's near-copies of it are not selected), and
        the run's frames are written as the history's next generation, which the caller
        makes current with :meth:`NoveltyHistory.commit` once the pipeline succeeded. Needs
        ``metric="cosine"``. All of the run's embeddings meet on one worker for that write.

    Input ``PCollection[FrameRecord]`` (unique frame ids); output :class:`NoveltyResult`.

    Raises
    ------
    ValueError
        For parameters outside their ranges (named in the message), or a history with a
        metric other than cosine.
    """

    def __init__(self, k: int = FIFTYONE_K, weights: Optional[Sequence[float]] = None,
                 metric: str = EUCLIDEAN, normalise: bool = True,
                 duplicate_threshold: Optional[float] = DEFAULT_DUPLICATE_THRESHOLD,
                 num_shards: int = 4, index_factory: str = AUTO, query_batch_size: int = 1024,
                 assign_duplicate_groups: bool = False, exact_below: int = EXACT_BELOW,
                 history: Optional[NoveltyHistory] = None):
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
        if exact_below < 0:
            raise ValueError(f"exact_below must be >= 0, got {exact_below}")
        if num_shards < 1 or query_batch_size < 1:
            raise ValueError(f"num_shards and query_batch_size must be >= 1, got {num_shards}, {query_batch_size}")
        self._k, self._weights, self._metric = k, tuple(weights), metric
        self._normalise, self._threshold = normalise, duplicate_threshold
        self._shards, self._factory, self._batch = num_shards, index_factory, query_batch_size
        if history is not None and metric != COSINE:
            raise ValueError(f"history needs metric='cosine' (its index holds unit vectors), got {metric!r}")
        self._exact_below, self._history = exact_below, history
        self._assign_groups = bool(assign_duplicate_groups and duplicate_threshold is not None)

    def expand(self, records):
        shards, k, weights = self._shards, self._k, self._weights
        frames = records | "Embeddings" >> beam.Map(lambda r: (r.frame.frame_id, r.embedding,
                                                               (r.frame.source_uri, r.frame.frame_index)))
        blocks = (frames
                  | "Batch" >> beam.BatchElements(min_batch_size=self._batch, max_batch_size=self._batch)
                  | "ToBlocks" >> beam.Map(_to_block))
        found = (blocks
                 | "QueryEveryShard" >> beam.FlatMap(lambda b: ((s, b) for s in range(shards)))
                 | "GroupByShard" >> beam.GroupByKey()
                 | "SearchShards" >> beam.ParDo(_SearchShardFn(
                     k, self._metric, self._factory, self._threshold, self._exact_below, shards)
                 ).with_output_types(Tuple[str, Any]).with_outputs(_PAIRS, main="distances"))
        distances, pairs = found.distances, found[_PAIRS]
        if self._history is not None:
            run_ids = beam.pvalue.AsList(frames | "RunIds" >> beam.Map(lambda f: f[0]))
            past = (blocks
                    | "SearchHistory" >> beam.ParDo(_SearchHistoryFn(self._history, k, self._threshold), run_ids
                                                    ).with_output_types(Tuple[str, Any]).with_outputs(
                                                        _PAIRS, main="distances"))
            distances = (distances, past.distances) | "WithHistory" >> beam.Flatten()
            pairs = (pairs, past[_PAIRS]) | "PairsWithHistory" >> beam.Flatten()
            _ = (frames
                 | "AllRunFrames" >> beam.combiners.ToList()
                 | "WriteHistory" >> beam.FlatMap(_write_history, self._history))
        merged = (distances
                  | "ByBlock" >> beam.GroupByKey()
                  | "MergeShards" >> beam.FlatMap(_block_uniqueness, weights).with_outputs(
                      "largest", main="uniqueness"))
        largest = merged.largest | "Largest" >> beam.CombineGlobally(lambda values: max(values, default=0.0))
        grouped = (pairs
                   | "AllPairs" >> beam.combiners.ToList()
                   | "UnionFind" >> beam.FlatMap(_groups_and_representatives).with_outputs(
                       "representatives", main="groups"))
        joined = {"records": records | "KeyRecords" >> beam.Map(lambda r: (r.frame.frame_id, r)),
                  "uniqueness": merged.uniqueness}
        if self._assign_groups:
            joined["group"] = grouped.representatives
        scored = (joined
                  | "JoinUniqueness" >> beam.CoGroupByKey()
                  | "AddUniqueness" >> beam.FlatMap(_with_uniqueness, beam.pvalue.AsSingleton(largest),
                                                    self._normalise, self._assign_groups
                                                    ).with_output_types(FrameRecord))
        return NoveltyResult(scored, grouped.groups)


def _first_frame(frames) -> str:
    """The frame that stands for a near-duplicate group, from ``(frame_id, source_uri,
    frame_index)`` triples: the first by (source_uri, frame_index), as
    :class:`~transforms.select.ptransforms.SelectCandidates` keeps the first of identical frames
    (then by frame_id); its frame_id is the group's id."""
    return min(frames, key=lambda f: (f[1], f[2], f[0]))[0]


def _representative(members) -> str:
    """:func:`_first_frame` of a group's records."""
    return _first_frame((r.frame.frame_id, r.frame.source_uri, r.frame.frame_index) for r in members)


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

"""Active-learning selection strategies: one class per strategy (pure; no Beam).

Every strategy is a :class:`~transforms.select.base.Strategy` (:mod:`transforms.select.base`): ``strategy.select(pool, budget, labelled=None)`` returns a
:class:`~transforms.select.base.Selection` (pool indices in rank order, the value each was ranked by, and the score
components that explain the rank). Strategies compose: :class:`Balanced` splits the budget
over metadata groups and runs an inner strategy per group, :class:`Excluding` removes labelled
frames, earlier selections and near-duplicates around any inner strategy::

    pool = Pool(ids, embeddings=emb, probabilities=probs, metadata={"camera": cams})
    strategy = Excluding(Balanced(ClusterMargin(n_clusters=50), key="camera"),
                         exclude_ids=already_labelled, near_duplicate_distance=0.05)
    selection = strategy.select(pool, budget=500, labelled=labelled_pool)

The Beam transforms of :mod:`transforms.select.ptransforms` run these same classes on bounded per-shard and
per-window subsets (see there). :func:`transforms.select.factory.make_strategy` builds one from
a name and parameters (the ``mine`` job's ``--strategy`` and ``--strategy_params``).

Scores (:func:`transforms.select.base.score_values`) are always "higher = more wanted": ``entropy``,
``least_confidence``, ``margin`` (ranked as ``1 - margin``), ``bald`` and ``variation_ratios``
(from MC-dropout ``probability_samples``), or any name in ``pool.scores``.

References
----------
* Settles (2009), Active Learning Literature Survey (uncertainty sampling).
* Sener & Savarese (2018), Active Learning for CNNs: A Core-Set Approach (k-center greedy).
* Citovsky et al. (2021), Batch Active Learning at Scale, NeurIPS (Cluster-Margin, algorithm 1).
* Gal, Islam & Ghahramani (2017), Deep Bayesian Active Learning with Image Data (BALD).
* LightlyOne selection configuration: strategies ``input``/``strategy`` with ``strength``,
  ``threshold`` and ``BALANCE`` target distributions (docs.lightly.ai, "Selection").
"""
from typing import Mapping, Optional

import numpy as np

from transforms.select.base import (Selection, Strategy, empty_selection, rank_by, require, score_values, seeded_hash,
                                   unit_rows)
from transforms.select.kcenter import k_center_greedy, nearest_sq_distance


class TopK(Strategy):
    """The ``budget`` frames with the highest score (uncertainty sampling; Settles 2009).

    Parameters
    ----------
    score : str
        A name accepted by :func:`score_values` (``entropy``, ``margin``, ``least_confidence``,
        ``bald``, ``variation_ratios``, ``mean_std`` or a key of ``pool.scores``).
    """

    def __init__(self, score: str = "entropy"):
        if not isinstance(score, str) or not score:
            raise ValueError(f"score must be a score name, got {score!r}")
        self.score = score
        self.name = score

    def params(self):
        return {"score": self.score}

    def _select(self, pool, budget, labelled):
        values = score_values(pool, self.score)
        idx = rank_by(values, pool.ids, budget)
        return Selection(idx, values[idx], {self.score: values[idx]})


class RandomSampling(Strategy):
    """Uniform random sample without replacement: the baseline every strategy must beat.

    Parameters
    ----------
    seed : int
        The same seed and pool (same ids) give the same sample, whatever the pool's order.
    """
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def params(self):
        return {"seed": self.seed}

    def _select(self, pool, budget, labelled):
        # A per-id hash keeps the sample independent of the pool's order (a rerun or a
        # reshuffled shard selects the same frames).
        keys = seeded_hash(pool.ids, self.seed) / 2.0**64
        idx = rank_by(keys, pool.ids, budget)
        return Selection(idx, keys[idx], {"random": keys[idx]})


class KCenterGreedy(Strategy):
    """Core-set selection by greedy k-center on the embeddings (Sener & Savarese 2018), in cosine
    distance (farthest-first over L2-normalised embeddings, :func:`~transforms.select.base.unit_rows`).

    Labelled frames are the initial centres; each pick is the frame farthest from every centre.
    The rank score is the pick's cosine distance to its nearest earlier centre. Cost and memory: see
    :func:`transforms.select.kcenter.k_center_greedy` (exact, with lazy batched updates).

    Parameters
    ----------
    seed : int
        Seed of the first pick when nothing is labelled.
    """
    name = "coreset"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def params(self):
        return {"seed": self.seed}

    def _select(self, pool, budget, labelled):
        x = unit_rows(require(pool, "embeddings", self.name))
        centres = None if labelled is None or labelled.embeddings is None else unit_rows(labelled.embeddings)
        result = k_center_greedy(x, budget, labelled=centres, seed=self.seed)
        gains = result.gains.astype(np.float64) ** 2 / 2.0  # Euclidean on unit rows -> cosine distance
        finite = gains[np.isfinite(gains)]
        # The first pick without labelled frames has no earlier centre: rank it as the farthest.
        gains[~np.isfinite(gains)] = finite.max() if len(finite) else 0.0
        return Selection(result.indices, gains, {"kcenter_distance": gains})


def kmeans_labels(x: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster ids int64 ``(N,)`` of ``x`` (N, D) by k-means (faiss, 20 iterations)."""
    import faiss
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_clusters = int(max(1, min(n_clusters, len(x))))
    if n_clusters == 1:
        return np.zeros(len(x), dtype=np.int64)
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=20, seed=int(seed) % (2**31), verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(x)
    return kmeans.index.search(x, 1)[1][:, 0].astype(np.int64)


class ClusterMargin(Strategy):
    """Cluster-Margin (Citovsky et al. 2021, algorithm 1): uncertainty, then diversity by clusters.

    1. Cluster the pool's embeddings (the paper clusters once with average-linkage HAC; here
       k-means, or the ids in ``pool.metadata[cluster_key]`` when present).
    2. Keep the ``k_m = margin_multiplier * budget`` frames of lowest margin.
    3. Sort their clusters by size (counted among those ``k_m``), smallest first, and take one
       frame from each cluster in turn (round-robin; lowest margin first within a cluster)
       until ``budget`` are chosen.

    Parameters
    ----------
    n_clusters : int
        Number of k-means clusters (ignored when ``cluster_key`` ids are given).
    margin_multiplier : float
        ``k_m / budget``, ``>= 1`` (the paper uses 10 at its largest scales).
    score : str
        Uncertainty to preselect by (default ``margin``, ranked as ``1 - margin``).
    cluster_key : str
        Metadata column holding precomputed cluster ids.
    seed : int
    """
    name = "cluster_margin"

    def __init__(self, n_clusters: int = 20, margin_multiplier: float = 10.0, score: str = "margin",
                 cluster_key: str = "cluster", seed: int = 0):
        if int(n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters!r}")
        if float(margin_multiplier) < 1:
            raise ValueError(f"margin_multiplier must be >= 1, got {margin_multiplier!r}")
        self.n_clusters, self.margin_multiplier = int(n_clusters), float(margin_multiplier)
        self.score, self.cluster_key, self.seed = score, cluster_key, int(seed)

    def params(self):
        return {"n_clusters": self.n_clusters, "margin_multiplier": self.margin_multiplier,
                "score": self.score, "seed": self.seed}

    def _k_m(self, n, budget):
        return int(min(n, max(budget, np.ceil(self.margin_multiplier * budget))))

    def preselect(self, pool, budget, labelled=None):
        values = score_values(pool, self.score)
        return np.sort(rank_by(values, pool.ids, self._k_m(len(pool), budget)))

    def _select(self, pool, budget, labelled):
        values = score_values(pool, self.score)
        k_m = self._k_m(len(pool), budget)
        pre = rank_by(values, pool.ids, k_m)
        if pool.metadata is not None and self.cluster_key in pool.metadata:
            clusters = np.asarray(pool.metadata[self.cluster_key])[pre]
        else:
            clusters = kmeans_labels(unit_rows(require(pool, "embeddings", self.name)[pre]), self.n_clusters,
                                     self.seed)  # spherical k-means: clusters by cosine distance
        order = round_robin_by_cluster(clusters, budget)
        idx = pre[order]
        size_of = dict(zip(*np.unique(clusters, return_counts=True)))
        return Selection(idx, values[idx], {self.score: values[idx],
                                            "cluster_size": np.array([size_of[c] for c in clusters[order]],
                                                                     dtype=np.float64)})


def round_robin_by_cluster(clusters: np.ndarray, budget: int) -> np.ndarray:
    """Positions into ``clusters`` taken one per cluster in turn, smallest cluster first.

    ``clusters``: ``(K,)`` cluster ids of frames already sorted most-wanted first. Within a
    cluster frames keep that order; clusters are visited by ascending size (ties by id).
    Returns int64 ``(min(budget, K),)``. Source: Citovsky et al. (2021), algorithm 1, lines 6-12.
    """
    clusters = np.asarray(clusters)
    ids, sizes = np.unique(clusters, return_counts=True)
    visit = ids[np.lexsort((ids, sizes))]
    members = {c: list(np.nonzero(clusters == c)[0]) for c in visit}
    out = []
    depth = 0
    while len(out) < budget:
        progressed = False
        for c in visit:
            if depth < len(members[c]):
                out.append(members[c][depth])
                progressed = True
                if len(out) == budget:
                    break
        if not progressed:
            break
        depth += 1
    return np.asarray(out, dtype=np.int64)


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation to ``[0, 1]`` (a constant array maps to ones)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return np.ones_like(values)
    return (values - lo) / (hi - lo)


class Combined(Strategy):
    """LightlyOne's combined objective: rank by ``prod_s normalise(score_s) ** strength_s``.

    Each score is min-max normalised over the pool (LightlyOne normalises each input to
    ``[0, 1]`` before weighting by its strength); frames whose raw (oriented) score is below its
    threshold are removed first.

    Parameters
    ----------
    strengths : mapping str -> float
        Score name -> strength (exponent), ``> 0``; e.g. ``{"entropy": 1, "bald": 0.5}``.
    thresholds : mapping str -> float, optional
        Score name -> minimum oriented value (e.g. ``{"least_confidence": 0.2}``).
    """
    name = "combined"

    def __init__(self, strengths: Mapping[str, float], thresholds: Optional[Mapping[str, float]] = None):
        if not isinstance(strengths, Mapping) or not isinstance(thresholds or {}, Mapping):
            raise ValueError(f"strengths and thresholds must map score names to numbers, got "
                             f"{strengths!r} and {thresholds!r}")
        if not strengths:
            raise ValueError("strengths must name at least one score")
        if any(float(v) <= 0 for v in strengths.values()):
            raise ValueError(f"strengths must be > 0, got {dict(strengths)!r}")
        self.strengths = {k: float(v) for k, v in strengths.items()}
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items()}

    def params(self):
        return {"strengths": self.strengths, "thresholds": self.thresholds}

    def preselect(self, pool, budget, labelled=None):
        return np.sort(self.select(pool, 2 * budget, labelled).indices)

    def _select(self, pool, budget, labelled):
        raw = {name: score_values(pool, name) for name in set(self.strengths) | set(self.thresholds)}
        keep = np.ones(len(pool), dtype=bool)
        for name, minimum in self.thresholds.items():
            keep &= raw[name] >= minimum
        kept = np.nonzero(keep)[0]
        if len(kept) == 0:
            return empty_selection()
        objective = np.ones(len(kept))
        for name, strength in self.strengths.items():
            objective *= normalise(raw[name][kept]) ** strength
        order = rank_by(objective, np.asarray(pool.ids)[kept], budget)
        idx = kept[order]
        return Selection(idx, objective[order], {name: raw[name][idx] for name in raw})


class Balanced(Strategy):
    """Quotas by a metadata column (source, camera, predicted class...) around an inner strategy.

    The budget is split over the groups of ``pool.metadata[key]`` (``quotas`` as target
    fractions, or equal shares), a group's unused share (too few frames) goes to the others in
    proportion, and ``inner`` selects within each group. Ranks interleave the groups (each
    group's best first), like LightlyOne's ``BALANCE`` strategy with a target distribution.

    Parameters
    ----------
    inner : Strategy
    key : str
        Metadata column.
    quotas : mapping value -> float, optional
        Target fraction per group value (normalised to sum 1); groups not listed get none.
    """
    name = "balanced"

    def __init__(self, inner: Strategy, key: str, quotas: Optional[Mapping] = None):
        if not isinstance(inner, Strategy):
            raise ValueError(f"inner must be a Strategy, got {inner!r}")
        if quotas is not None and (not quotas or any(float(v) < 0 for v in quotas.values())):
            raise ValueError(f"quotas must map group values to fractions >= 0, got {quotas!r}")
        self.inner, self.key = inner, key
        self.quotas = None if quotas is None else {k: float(v) for k, v in quotas.items()}
        self.name = f"{inner.name}+balanced"

    def params(self):
        return {"inner": self.inner.describe(), "key": self.key,
                "quotas": None if self.quotas is None else {str(k): v for k, v in self.quotas.items()}}

    def _groups(self, pool):
        if pool.metadata is None or self.key not in pool.metadata:
            raise ValueError(f"strategy {self.name!r} needs pool.metadata[{self.key!r}]")
        return np.asarray(pool.metadata[self.key])

    def preselect(self, pool, budget, labelled=None):
        values = self._groups(pool)
        keep = [members[self.inner.preselect(pool.take(members), budget, labelled)]
                for members in (np.nonzero(values == g)[0] for g in sorted(set(values.tolist()), key=str))]
        return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)

    def _select(self, pool, budget, labelled):
        values = self._groups(pool)
        groups = sorted(set(values.tolist()), key=str)
        if self.quotas is None:
            weights = {g: 1.0 for g in groups}
        else:
            by_str = {str(k): v for k, v in self.quotas.items()}
            weights = {g: by_str.get(str(g), 0.0) for g in groups}
        sizes = {g: int(np.sum(values == g)) for g in groups}
        shares = allocate_quotas(weights, sizes, budget)
        picked = []
        for g in groups:
            if shares[g] == 0:
                continue
            members = np.nonzero(values == g)[0]
            sel = self.inner.select(pool.take(members), shares[g], labelled)
            picked.append((members[sel.indices], sel))
        # interleave: rank r of every group before rank r + 1 of any group
        rows = []
        for idx, sel in picked:
            for r, i in enumerate(idx):
                rows.append((r, str(values[i]), int(i), sel, r))
        rows.sort(key=lambda t: (t[0], t[1]))
        names = sorted({k for _, sel in picked for k in sel.components})
        idx = np.array([t[2] for t in rows], dtype=np.int64)
        scores = np.array([t[3].scores[t[4]] for t in rows])
        comps = {k: np.array([t[3].components[k][t[4]] if k in t[3].components else np.nan
                              for t in rows]) for k in names}
        return Selection(idx, scores, comps)


def allocate_quotas(weights: Mapping, sizes: Mapping, budget: int) -> dict:
    """Splits ``budget`` over groups in proportion to ``weights``, capped by ``sizes``.

    Largest-remainder rounding; capacity a small group cannot use is handed to the others by
    their weights, repeatedly. Returns group -> int, summing to ``min(budget, sum of sizes of
    groups with weight > 0)``.
    """
    shares = {g: 0 for g in weights}
    remaining = budget
    open_groups = [g for g in weights if weights[g] > 0 and sizes[g] > 0]
    while remaining > 0 and open_groups:
        total = sum(weights[g] for g in open_groups)
        exact = {g: remaining * weights[g] / total for g in open_groups}
        floor = {g: min(int(exact[g]), sizes[g] - shares[g]) for g in open_groups}
        given = sum(floor.values())
        for g in sorted(open_groups, key=lambda g: (-(exact[g] - int(exact[g])), str(g))):
            if given >= remaining:
                break
            if floor[g] < sizes[g] - shares[g]:
                floor[g] += 1
                given += 1
        if given == 0:
            break
        for g in open_groups:
            shares[g] += floor[g]
        remaining -= given
        open_groups = [g for g in open_groups if shares[g] < sizes[g]]
    return shares


class Excluding(Strategy):
    """Removes excluded frames and near-duplicates around an inner strategy.

    Excluded: ids in ``exclude_ids`` (already labelled, earlier selections) and ids of
    ``labelled``; with ``near_duplicate_distance > 0`` also every frame whose embedding lies
    within that cosine distance of a labelled frame, and every frame within that distance of
    a frame ranked above it in this selection (greedy, in the inner strategy's rank order; the
    inner strategy is asked again for more frames when too many are dropped).

    Parameters
    ----------
    inner : Strategy
    exclude_ids : iterable of str
    near_duplicate_distance : float
        Cosine distance, ``>= 0``; 0 turns near-duplicate removal off.
    """

    def __init__(self, inner: Strategy, exclude_ids=(), near_duplicate_distance: float = 0.0):
        if not isinstance(inner, Strategy):
            raise ValueError(f"inner must be a Strategy, got {inner!r}")
        if float(near_duplicate_distance) < 0:
            raise ValueError(f"near_duplicate_distance must be >= 0, got {near_duplicate_distance!r}")
        self.inner = inner
        self.exclude_ids = frozenset(str(i) for i in exclude_ids)
        self.near_duplicate_distance = float(near_duplicate_distance)
        self.name = inner.name

    def params(self):
        return {"inner": self.inner.describe(), "excluded": len(self.exclude_ids),
                "near_duplicate_distance": self.near_duplicate_distance}

    def _kept(self, pool, labelled):
        """Indices of the frames neither excluded nor near a labelled frame."""
        ids = np.asarray(pool.ids).astype(str)
        excluded = set(self.exclude_ids)
        if labelled is not None:
            excluded |= set(np.asarray(labelled.ids).astype(str).tolist())
        keep = ~np.isin(ids, list(excluded)) if excluded else np.ones(len(ids), bool)
        radius = self.near_duplicate_distance
        if radius > 0 and labelled is not None and labelled.embeddings is not None and len(labelled):
            x = np.ascontiguousarray(unit_rows(require(pool, "embeddings", "near-duplicate exclusion")), np.float32)
            near = nearest_sq_distance(x, np.ascontiguousarray(unit_rows(labelled.embeddings), np.float32))
            keep &= near / 2.0 > radius  # squared Euclidean of unit rows = 2 x cosine distance
        return np.nonzero(keep)[0]

    def preselect(self, pool, budget, labelled=None):
        kept = self._kept(pool, labelled)
        if len(kept) == 0:
            return kept.astype(np.int64)
        ask = budget if self.near_duplicate_distance <= 0 else 2 * budget
        return np.sort(kept[self.inner.preselect(pool.take(kept), ask, labelled)])

    def _select(self, pool, budget, labelled):
        kept = self._kept(pool, labelled)
        radius = self.near_duplicate_distance
        if len(kept) == 0:
            return empty_selection()
        sub = pool.take(kept)
        ask = budget
        while True:
            sel = self.inner.select(sub, min(ask, len(sub)), labelled)
            order = (np.arange(len(sel.indices)) if radius <= 0
                     else _drop_near_duplicates(sub.embeddings[sel.indices], radius))
            if len(order) >= budget or len(sel.indices) >= len(sub):
                break
            ask *= 2
        order = order[:budget]
        return Selection(kept[sel.indices[order]], sel.scores[order],
                         {k: v[order] for k, v in sel.components.items()})


def _drop_near_duplicates(x: np.ndarray, radius: float) -> np.ndarray:
    """Positions of rows of ``x`` (in order) kept when each is dropped if within cosine distance
    ``radius`` of a kept earlier row."""
    x = unit_rows(x)
    kept = []
    for i in range(len(x)):
        if not kept or np.min(1.0 - x[kept] @ x[i]) > radius:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)

"""Uncertain AND diverse selection: an uncertainty pool, then k-centre over it (pure; no Beam).

:class:`UncertaintyKCenter` takes the ``pool_multiplier x budget`` most uncertain admitted frames,
then picks ``budget`` of them by farthest-first traversal (greedy k-centre) in cosine distance over
L2-normalised embeddings, starting from the most uncertain frame. Two rules keep camera
redundancy out of the batch:

* **minimum distance** (LightlyOne's ``stopping_condition.min_distance``): no frame closer than
  ``min_distance`` to a frame already admitted (or labelled) is admitted; when the frames run
  out, the selection stops short of the budget (default: the near-duplicate threshold of the
  ``mine`` job, ``1 - 0.995``);
* **temporal rule**: no two frames of one source (file) less than ``min_seconds_apart`` seconds
  apart, unless their embeddings are at least ``temporal_distance`` apart (the content changed:
  a new person in the scene, a cut). Consecutive 1-fps frames of a fixed camera are typically
  0.03-0.08 apart (``vtest.avi``), so the default 0.1 keeps them out.

A frame whose uncertainty is 0 (no box found, or a classifier certain to float precision: every
registered score is >= 0 once oriented, 0 meaning nothing to learn) enters the pool only while
the frames with some uncertainty are fewer than the budget: farthest-first traversal favours
outliers, and a quiet night's black or empty frames are the farthest of all.

The rules apply as the uncertainty pool is formed: frames are taken in descending uncertainty and
each is admitted unless a rule excludes it next to a frame already admitted, until ``P = ceil(m x
budget)`` are admitted. So a fixed camera's thousand near-identical uncertain frames fill one
place of the pool, not a thousand, and the traversal then spreads the batch over the pool.

Memory is ``O(P x D)``, never ``O(N^2)``: forming the pool costs one ``(P, D)`` product per frame
looked at, each pick one more. Under sharding each shard keeps its own thinned pool
(:meth:`UncertaintyKCenter.preselect`) and the union is thinned again.

References
----------
* Yang, C., Huang, L., Crowley, E. J. (2022). Plug and Play Active Learning for Object
  Detection (PPAL), arXiv:2211.11612: a difficulty-calibrated uncertainty pool of a multiple of
  the budget, then diversity (k-centre-like) sampling inside it.
* Citovsky, G. et al. (2021). Batch Active Learning at Scale (Cluster-Margin): uncertainty
  preselection of ``k_m x budget``, then diversity.
* Sener, O. & Savarese, S. (2018). Active Learning for CNNs: A Core-Set Approach (greedy k-centre).
* LightlyOne selection docs, "Diversity" strategy with ``stopping_condition.min_distance``.
"""
from typing import NamedTuple

import numpy as np

from transforms.score import registry
from transforms.select.base import Selection, Strategy, empty_selection, rank_by, require, score_values, unit_rows

#: ``components["rule"]`` of a pick: why it was admitted.
MOST_UNCERTAIN, FARTHEST = 0.0, 1.0
#: ``components["distance_to_selected"]`` of the first pick (no earlier pick): the largest cosine
#: distance.
NO_EARLIER_PICK = 2.0
SOURCE_KEY, TIME_KEY = "source", "timestamp"


class ThinnedPool(NamedTuple):
    """The uncertainty pool, most uncertain first: ``indices`` int64 ``(P,)`` into the pool,
    ``unit`` float64 ``(P, D)`` their L2-normalised embeddings, ``nearest_known`` float64 ``(P,)``
    the cosine distance of each to its nearest labelled frame (``inf`` without any), ``values``
    float64 ``(P,)`` their uncertainty."""
    indices: np.ndarray
    unit: np.ndarray
    nearest_known: np.ndarray
    values: np.ndarray


class UncertaintyKCenter(Strategy):
    """The ``budget`` frames of the uncertainty pool that best cover it (see the module docstring).

    Parameters
    ----------
    score : str
        The uncertainty (a name accepted by :func:`~transforms.select.base.score_values`).
    pool_multiplier : float
        ``m``: the pool is the ``ceil(m x budget)`` most uncertain frames, ``>= 1``. ``m = 1`` is
        the score's top-k; a large ``m`` tends to plain k-centre over the whole pool.
    min_distance : float
        Cosine distance in ``[0, 2)`` below which a frame is not admitted next to a pick.
    min_seconds_apart : float
        Seconds (``>= 0``; 0: off) within which two frames of one source need ``temporal_distance``.
    temporal_distance : float
        Cosine distance in ``[0, 2]`` that two frames of one source within ``min_seconds_apart``
        must have.

    Components of the selection: ``score`` (the uncertainty), ``distance_to_selected`` (cosine
    distance to the nearest earlier pick or labelled frame when picked; :data:`NO_EARLIER_PICK`
    for the first), ``rule`` (:data:`MOST_UNCERTAIN` for the first pick, :data:`FARTHEST` after).
    """
    name = "uncertainty_kcenter"

    def __init__(self, score: str = "entropy", pool_multiplier: float = 3.0, min_distance: float = 0.005,
                 min_seconds_apart: float = 2.0, temporal_distance: float = 0.1):
        if not isinstance(score, str) or not score:
            raise ValueError(f"score must be a score name, got {score!r}")
        checks = (("pool_multiplier", pool_multiplier, lambda v: v >= 1, ">= 1"),
                  ("min_distance", min_distance, lambda v: 0 <= v < 2, "in [0, 2)"),
                  ("min_seconds_apart", min_seconds_apart, lambda v: v >= 0, ">= 0"),
                  ("temporal_distance", temporal_distance, lambda v: 0 <= v <= 2, "in [0, 2]"))
        for flag, value, valid, expected in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                    or not valid(value):
                raise ValueError(f"{flag} must be a number {expected}, got {value!r}")
        self.score = score
        self.pool_multiplier = float(pool_multiplier)
        self.min_distance = float(min_distance)
        self.min_seconds_apart = float(min_seconds_apart)
        self.temporal_distance = float(temporal_distance)

    def params(self):
        return {"score": self.score, "pool_multiplier": self.pool_multiplier, "min_distance": self.min_distance,
                "min_seconds_apart": self.min_seconds_apart, "temporal_distance": self.temporal_distance}

    def _pool_size(self, n: int, budget: int) -> int:
        return min(n, int(np.ceil(self.pool_multiplier * budget)))

    def preselect(self, pool, budget, labelled=None):
        """The shard's own thinned uncertainty pool (at most ``ceil(m x budget)`` frames). The
        final selection thins the union again: an approximation of the whole pool's thinned
        pool (a frame that a shard's frame blocks may be admitted when that blocker is itself
        thinned out by another shard's frame)."""
        return np.sort(self._thinned_pool(pool, budget, labelled).indices)

    def _select(self, pool, budget, labelled):
        candidates, x, nearest, values = self._thinned_pool(pool, budget, labelled)
        if len(candidates) == 0:
            return empty_selection()
        picks, distances, rules = [], [], []
        available = np.ones(len(candidates), dtype=bool)
        while len(picks) < min(budget, len(candidates)):
            if not picks and not np.isfinite(nearest).any():
                j, rule = 0, MOST_UNCERTAIN  # the thinned pool is ranked: the most uncertain first
            else:  # the farthest; ties go to the more uncertain (earlier) candidate
                j, rule = int(np.argmax(np.where(available, nearest, -np.inf))), FARTHEST
            picks.append(j)
            distances.append(NO_EARLIER_PICK if not np.isfinite(nearest[j]) else float(nearest[j]))
            rules.append(rule)
            available[j] = False
            nearest = np.minimum(nearest, 1.0 - x @ x[j])
        picks = np.asarray(picks, dtype=np.int64)
        return Selection(candidates[picks], values[picks], {"score": values[picks],
                                                            "distance_to_selected": np.asarray(distances),
                                                            "rule": np.asarray(rules)})

    def _thinned_pool(self, pool, budget, labelled) -> "ThinnedPool":
        """The thinned uncertainty pool (:class:`ThinnedPool`): frames in descending uncertainty
        (ties by id), each admitted unless it is
        within ``min_distance`` of an admitted or labelled frame, or within ``min_seconds_apart``
        of an admitted frame of its source and less than ``temporal_distance`` from it; until
        ``ceil(m x budget)`` are admitted. Cost: one ``(D,) x (P, D)`` product per frame looked at."""
        size = self._pool_size(len(pool), budget)
        values = score_values(pool, self.score)
        if self.score in registry.names():  # >= 0 once oriented; 0: nothing to learn (module docstring)
            size = min(size, max(budget, int(np.count_nonzero(values > 0))))
        order = rank_by(values, pool.ids, len(pool))
        embeddings = require(pool, "embeddings", self.name)  # rows normalised as they are looked at
        meta = pool.metadata or {}
        sources = np.asarray(meta[SOURCE_KEY]) if SOURCE_KEY in meta else None
        times = (np.asarray(meta[TIME_KEY], dtype=np.float64) if TIME_KEY in meta
                 else np.full(len(pool), np.nan))
        known = None
        if labelled is not None and labelled.embeddings is not None and len(labelled):
            known = unit_rows(labelled.embeddings)
        admitted, nearest_known = [], []
        kept = np.empty((size, embeddings.shape[1]))
        for i in order:
            if len(admitted) == size:
                break
            row = unit_rows(embeddings[i:i + 1])[0]
            to_known = float((1.0 - known @ row).min()) if known is not None else np.inf
            if to_known < self.min_distance:
                continue
            if admitted:
                to_kept = 1.0 - kept[:len(admitted)] @ row
                if to_kept.min() < self.min_distance:
                    continue
                if sources is not None and self.min_seconds_apart > 0 and np.isfinite(times[i]):
                    rows = np.asarray(admitted)
                    neighbours = (sources[rows] == sources[i]) & (np.abs(times[rows] - times[i]) < self.min_seconds_apart)
                    if np.any(neighbours & (to_kept < self.temporal_distance)):
                        continue
            kept[len(admitted)] = row
            admitted.append(i)
            nearest_known.append(to_known)
        admitted = np.asarray(admitted, dtype=np.int64)
        return ThinnedPool(admitted, kept[:len(admitted)], np.asarray(nearest_known, dtype=np.float64),
                           values[admitted])

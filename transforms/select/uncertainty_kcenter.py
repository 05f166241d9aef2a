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

A frame whose uncertainty is 0 (no box found, even down to the detector's uncertainty floor, or a
classifier certain to float precision: every registered score is >= 0 once oriented, 0 meaning
nothing to learn) enters the pool only while the frames with some uncertainty are fewer than the
budget: farthest-first traversal favours
outliers, and a quiet night's black or empty frames are the farthest of all.

The rules apply as the uncertainty pool is formed: frames are taken in descending uncertainty and
each is admitted unless a rule excludes it next to a frame already admitted, until ``P = ceil(m x
budget)`` are admitted. So a fixed camera's thousand near-identical uncertain frames fill one
place of the pool, not a thousand, and the traversal then spreads the batch over the pool.

Memory is ``O(P x D)``, never ``O(N^2)``: the pool is formed in blocks of frames, one matrix
product per block against the frames admitted so far, with the same result as a frame-by-frame
pass (see :meth:`UncertaintyKCenter._thinned_pool`); each pick of the traversal costs one
``(D,) x (P, D)`` product. Under sharding each shard keeps its own thinned pool
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
from typing import NamedTuple, Optional, Tuple

import numpy as np

from transforms.score import registry
from transforms.select.base import Selection, Strategy, empty_selection, rank_by, require, score_values, unit_rows

#: ``components["rule"]`` of a pick: why it was admitted.
MOST_UNCERTAIN, FARTHEST = 0.0, 1.0
#: ``components["distance_to_selected"]`` of the first pick (no earlier pick): the largest cosine
#: distance.
NO_EARLIER_PICK = 2.0
SOURCE_KEY, TIME_KEY = "source", "timestamp"
#: Frames looked at together when the pool is formed (one matrix product per block).
BLOCK = 256
#: How near its threshold (cosine distance) a block product's distance may be before the
#: frame-by-frame product decides: far above the float64 rounding of a dot product of unit rows
#: (about ``D x 1.1e-16``, 1.4e-13 at ``D`` = 1280), far below any threshold's meaning.
SCREEN_MARGIN = 1e-9


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
        ``ceil(m x budget)`` are admitted.

        The frames are looked at in blocks of :data:`BLOCK`: one matrix product gives a block's
        cosine distances to the frames admitted before it, to each other and to the labelled
        frames, then the block's frames are resolved one by one in rank order against those
        distances (:class:`_Admissions`). The result is a frame-by-frame pass's to the last bit:
        a decision whose distance lies within :data:`SCREEN_MARGIN` of its threshold, and each
        admitted frame's distance to the labelled frames, are recomputed as that pass computes
        them (one ``(D,) x (n, D)`` product). Cost: ``O(F x (P + L) x D)`` multiply-adds in
        ``F / BLOCK`` matrix products for ``F`` frames looked at and ``L`` labelled frames;
        memory ``O((P + BLOCK) x D + BLOCK x (P + BLOCK))`` floats."""
        size = self._pool_size(len(pool), budget)
        values = score_values(pool, self.score)
        if self.score in registry.names():  # >= 0 once oriented; 0: nothing to learn (module docstring)
            size = min(size, max(budget, int(np.count_nonzero(values > 0))))
        order = rank_by(values, pool.ids, len(pool))
        embeddings = require(pool, "embeddings", self.name)  # rows normalised as they are looked at
        known = None
        if labelled is not None and labelled.embeddings is not None and len(labelled):
            known = unit_rows(labelled.embeddings)
        admissions = _Admissions(self, pool.metadata or {}, len(pool), size, embeddings.shape[1], known)
        for start in range(0, len(order), BLOCK):
            if admissions.full():
                break
            block = order[start:start + BLOCK]
            admissions.resolve_block(block, embeddings)
        return admissions.thinned(values)


def _min_distance(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """float64 ``(B,)``: the smallest cosine distance ``1 - dot`` of each unit row of ``rows``
    ``(B, D)`` to the unit rows of ``reference`` ``(L, D)`` (``L >= 1``), in slices of
    ``16 x BLOCK`` reference rows so that memory stays ``O(B x 16 x BLOCK)``."""
    nearest = np.full(len(rows), np.inf)
    for start in range(0, len(reference), 16 * BLOCK):
        nearest = np.minimum(nearest, (1.0 - rows @ reference[start:start + 16 * BLOCK].T).min(axis=1))
    return nearest


class _Admissions:
    """The frames admitted so far to the thinned pool and the rules that admit the next one.

    ``kept`` float64 ``(P, D)``: the admitted unit rows in admission order (the first ``count``
    are set); ``codes``/``times``: their source (as an int code) and timestamp (seconds)."""

    def __init__(self, strategy: "UncertaintyKCenter", meta, n: int, size: int, dim: int, known):
        self.min_distance = strategy.min_distance
        self.temporal_distance = strategy.temporal_distance
        self.min_seconds_apart = strategy.min_seconds_apart
        self.size, self.known, self.count = size, known, 0
        self.temporal = SOURCE_KEY in meta and self.min_seconds_apart > 0
        codes = {}  # equal sources <=> equal codes (dict keys compare with ==, as the sources do)
        self.source_codes = (np.array([codes.setdefault(s, len(codes)) for s in meta[SOURCE_KEY]], dtype=np.int64)
                             if self.temporal else None)
        self.frame_times = (np.asarray(meta[TIME_KEY], dtype=np.float64) if TIME_KEY in meta
                            else np.full(n, np.nan))
        self.kept = np.empty((size, dim))
        self.indices = np.empty(size, dtype=np.int64)
        self.nearest_known = np.empty(size)
        self.codes = np.empty(size, dtype=np.int64)
        self.times = np.empty(size)

    def full(self) -> bool:
        return self.count == self.size

    def _neighbours(self, i: int, n: int) -> Optional[np.ndarray]:
        """bool ``(n,)``: the first ``n`` admitted frames of frame ``i``'s source within
        ``min_seconds_apart`` of it (``None``: the temporal rule does not apply to ``i``)."""
        if not self.temporal or not np.isfinite(self.frame_times[i]):
            return None
        return ((self.codes[:n] == self.source_codes[i])
                & (np.abs(self.times[:n] - self.frame_times[i]) < self.min_seconds_apart))

    def _excluded(self, i: int, to_known: float, to_kept: np.ndarray) -> bool:
        """Whether a rule excludes frame ``i`` at distance ``to_known`` from the labelled frames
        and ``to_kept`` ``(count,)`` from the admitted ones."""
        if to_known < self.min_distance:
            return True
        if not self.count:
            return False
        if to_kept.min() < self.min_distance:
            return True
        neighbours = self._neighbours(i, self.count)
        return neighbours is not None and bool(np.any(neighbours & (to_kept < self.temporal_distance)))

    def _ambiguous(self, i: int, to_known: float, to_kept: np.ndarray) -> bool:
        """Whether approximate distances lie too near a threshold to decide on."""
        if abs(to_known - self.min_distance) <= SCREEN_MARGIN:
            return True
        if not self.count:
            return False
        if np.any(np.abs(to_kept - self.min_distance) <= SCREEN_MARGIN):
            return True
        neighbours = self._neighbours(i, self.count)
        return neighbours is not None and bool(np.any(np.abs(to_kept[neighbours] - self.temporal_distance)
                                                      <= SCREEN_MARGIN))

    def _to_known(self, row: np.ndarray) -> float:
        """The frame-by-frame pass's distance of ``row`` to the nearest labelled frame (``inf``
        without any): one ``(D,) x (L, D)`` product."""
        return float((1.0 - self.known @ row).min()) if self.known is not None else np.inf

    def _to_kept(self, row: np.ndarray) -> np.ndarray:
        """The frame-by-frame pass's distances of ``row`` to the admitted frames, ``(count,)``."""
        return 1.0 - self.kept[:self.count] @ row if self.count else np.empty(0)

    def resolve_block(self, block: np.ndarray, embeddings: np.ndarray) -> None:
        """Looks at the frames ``block`` (indices in rank order) until the pool is full."""
        rows = unit_rows(embeddings[block])
        first = self.count
        to_earlier = 1.0 - rows @ self.kept[:first].T  # (B, first)
        to_block = 1.0 - rows @ rows.T  # (B, B)
        to_known = _min_distance(rows, self.known) if self.known is not None else np.full(len(block), np.inf)
        in_block = []  # block positions admitted, in order
        for b, i in enumerate(block):
            if self.full():
                return
            i = int(i)
            approx = np.concatenate([to_earlier[b], to_block[b, in_block]])
            if self._ambiguous(i, to_known[b], approx):
                row = unit_rows(embeddings[i:i + 1])[0]
                exact_known = self._to_known(row)
                if self._excluded(i, exact_known, self._to_kept(row)):
                    continue
            elif self._excluded(i, to_known[b], approx):
                continue
            else:
                row = unit_rows(embeddings[i:i + 1])[0]
                exact_known = self._to_known(row)
            self._admit(i, row, exact_known)
            in_block.append(b)

    def _admit(self, i: int, row: np.ndarray, to_known: float) -> None:
        n = self.count
        self.kept[n], self.indices[n], self.nearest_known[n] = row, i, to_known
        if self.temporal:
            self.codes[n] = self.source_codes[i]
        self.times[n] = self.frame_times[i]
        self.count += 1

    def thinned(self, values: np.ndarray) -> ThinnedPool:
        n = self.count
        return ThinnedPool(self.indices[:n].copy(), self.kept[:n], self.nearest_known[:n].copy(),
                           values[self.indices[:n]])

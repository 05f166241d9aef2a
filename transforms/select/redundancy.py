"""How redundant a selection is, and how it trades uncertainty for coverage (pure; no Beam).

:func:`redundancy_figures` measures a batch of picks against the pool it came from, in the one
distance of selection: cosine distance between L2-normalised embeddings.

* ``sources``: distinct sources (files) among the picks; ``top_source_share``: the share of the
  picks from the most picked source, beside ``top_source_pool_share``, that source's share of the
  pool;
* ``near_duplicate_pairs``: pairs of picks closer than ``duplicate_distance``;
* ``same_source_pairs_within_<window_s>s``: pairs of picks from one source less than ``window_s``
  seconds apart (video frames; still images have no time), and ``similar_...``, those of them
  less than ``similar_distance`` apart (the content did not change);
* ``coverage_radius``: the largest distance from a pool frame to its nearest pick (lower: the batch
  spans the pool), and ``coverage_radius_ratio``, its ratio to a greedy k-centre selection of the
  same size (:func:`transforms.select.kcenter.k_center_greedy`, the ``coreset`` strategy's;
  Sener & Savarese 2018), when asked;
* ``mean_score`` of the picks, and ``mean_score_ratio``, its ratio to the score's top-k.

Cost: ``O(N x k x D)`` for the radius (``N`` pool frames, ``k`` picks), in blocks; no ``N x N``.
"""
from typing import Optional

import numpy as np

from transforms.select import kcenter
from transforms.select.base import Pool, rank_by, score_values, unit_rows

def cosine_radius(pool_unit: np.ndarray, picks_unit: np.ndarray) -> float:
    """Largest cosine distance of a row of ``pool_unit`` (``(N, D)``, unit rows) to its nearest row
    of ``picks_unit``: :func:`transforms.select.kcenter.coverage_radius` (exact, faiss, in blocks),
    whose Euclidean distance ``e`` between unit rows is the cosine distance ``e**2 / 2``; 2.0 (the
    largest distance) without picks."""
    if len(picks_unit) == 0:
        return 2.0
    return kcenter.coverage_radius(pool_unit, picks_unit) ** 2 / 2.0


def redundancy_figures(pool: Pool, indices, score: Optional[str] = None, window_s: float = 2.0,
                       duplicate_distance: float = 0.005, similar_distance: float = 0.1,
                       compare: bool = True) -> dict:
    """The figures of the module docstring for the picks ``indices`` (int, into ``pool``).

    Parameters
    ----------
    pool : Pool
        With ``embeddings`` and ``metadata["source"]`` (``metadata["timestamp"]``, seconds, NaN for
        still images, for the temporal pairs).
    indices : array of int, shape (k,)
    score : str, optional
        The uncertainty whose mean (and ratio to its top-k) is reported.
    window_s : float
        Seconds of the same-source pairs.
    duplicate_distance : float
        Cosine distance under which two picks are near-duplicates.
    similar_distance : float
        Cosine distance under which same-source pairs within ``window_s`` count as similar (the
        pairs :class:`~transforms.select.uncertainty_kcenter.UncertaintyKCenter`'s temporal
        rule keeps out by default).
    compare : bool
        Also compute the ratios to a k-centre and a top-k selection of the same size.

    Returns
    -------
    dict
        JSON-serialisable numbers (``None`` where the pool lacks what a figure needs).
    """
    idx = np.asarray(indices, dtype=np.int64)
    k = len(idx)
    unit = unit_rows(pool.embeddings)
    picks = unit[idx]
    meta = pool.metadata or {}
    figures = {"picks": k}
    sources = np.asarray(meta["source"]) if "source" in meta else None
    if sources is not None and k:
        names, counts = np.unique(sources[idx].astype(str), return_counts=True)
        top = names[np.argmax(counts)]
        figures.update(sources=int(len(names)), top_source=str(top), top_source_share=float(counts.max() / k),
                       top_source_pool_share=float(np.mean(sources.astype(str) == top)))
    between = 1.0 - picks @ picks.T  # cosine distances between the picks
    figures["near_duplicate_pairs"] = int(np.triu(between < duplicate_distance, 1).sum())
    if sources is not None and "timestamp" in meta and k:
        times = np.asarray(meta["timestamp"], dtype=np.float64)[idx]
        same = (sources[idx][:, None] == sources[idx][None, :]) & (np.abs(times[:, None] - times[None, :]) < window_s)
        figures[f"same_source_pairs_within_{window_s:g}s"] = int(np.triu(same, 1).sum())
        figures[f"similar_same_source_pairs_within_{window_s:g}s"] = int(
            np.triu(same & (between < similar_distance), 1).sum())
    figures["coverage_radius"] = cosine_radius(unit, picks)
    if compare and k:  # greedy k-centre, the coreset strategy's: its radius is the reference
        reference = kcenter.k_center_greedy(unit, k).radius ** 2 / 2.0
        figures["coverage_radius_kcenter"] = reference
        figures["coverage_radius_ratio"] = figures["coverage_radius"] / reference if reference > 0 else None
    if score is not None and k:
        values = score_values(pool, score)
        figures["score"] = score
        figures["mean_score"] = float(values[idx].mean())
        if compare:
            top = float(values[rank_by(values, pool.ids, k)].mean())
            figures["mean_score_topk"] = top
            figures["mean_score_ratio"] = figures["mean_score"] / top if top > 0 else None
    return figures

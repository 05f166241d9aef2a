"""Stage **SelectCandidates**: the frames worth annotating next.

Public transforms: :class:`SelectCandidates` (:mod:`.ptransforms`: identical frames collapsed, any
strategy run as a bounded-memory ``CombineFn``, batch or per event-time window) and
:class:`SelectPerFrame` (:mod:`.per_frame`: VeSSAL, each frame decided as it arrives at a target
rate, with Beam state per camera, source or globally; :class:`SelectPerFrameInOrder`, the same
decisions in one pass over a bounded pool in event-time order). Pure modules
(no Beam; enforced by ``//transforms/select:pure_test``):

* :mod:`.base`: the ``Strategy`` interface, ``Pool``, ``Selection`` and the helpers strategies share.
* :mod:`.strategies`: a class per strategy, composable wrappers.
* :mod:`.factory`: strategies by name (``make_strategy``, the ``--strategy`` table).
* :mod:`.kcenter`: exact lazy greedy k-center (coreset) with batched faiss updates.
* :mod:`.stochastic`: stochastic batch acquisition (power, softmax, soft-rank sampling of any score).
* :mod:`.batchbald`: BatchBALD (greedy joint mutual information over MC-dropout samples), on a BALD shortlist.
* :mod:`.vessal`: VeSSAL streaming selection (Saran et al. 2023) at a target rate.
"""
from transforms._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ptransforms": ("SelectCandidates", "SelectFn", "STRATEGIES"),
    "base": ("Pool", "Selection", "Strategy", "selection_id"),
    "factory": ("make_strategy", "checked_strategy", "STRATEGY_NAMES"),
    "stochastic": ("StochasticBatch",),
    "batchbald": ("BatchBALD",),
    "vessal": ("VeSSAL",),
    "per_frame": ("SelectPerFrame", "SelectPerFrameInOrder", "PerFrameSpec"),
})

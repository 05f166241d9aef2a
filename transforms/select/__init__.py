"""Stage **SelectCandidates**: the frames worth annotating next.

Public transform: :class:`SelectCandidates` (:mod:`.ptransforms`: identical frames collapsed, any
strategy run as a bounded-memory ``CombineFn``, batch or per event-time window). Pure modules
(no Beam; enforced by ``//transforms/select:pure_test``):

* :mod:`.base`: the ``Strategy`` interface, ``Pool``, ``Selection`` and the helpers strategies share.
* :mod:`.strategies`: a class per strategy, composable wrappers.
* :mod:`.factory`: strategies by name (``make_strategy``, the ``--strategy`` table).
* :mod:`.kcenter`: exact lazy greedy k-center (coreset) with batched faiss updates.
* :mod:`.stochastic`: stochastic batch acquisition (power, softmax, soft-rank sampling of any score).
* :mod:`.batchbald`: BatchBALD (greedy joint mutual information over MC-dropout samples), on a BALD shortlist.
"""
from transforms._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ptransforms": ("SelectCandidates", "SelectFn", "STRATEGIES"),
    "base": ("Pool", "Selection", "Strategy", "selection_id"),
    "factory": ("make_strategy", "checked_strategy", "STRATEGY_NAMES"),
    "stochastic": ("StochasticBatch",),
    "batchbald": ("BatchBALD",),
})

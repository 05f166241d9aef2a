"""Strategies by name (pure; no Beam): :func:`make_strategy`, the ``mine`` job's ``--strategy`` and
``--strategy_params``, and :func:`checked_strategy`, what the Beam transforms accept.

The factory sits above every strategy module (:mod:`transforms.select.strategies`,
:mod:`transforms.select.stochastic`), which import only :mod:`transforms.select.base`: no cycle.
"""
import functools
import inspect
import re
from typing import Mapping, Optional

from schemas import scores as registry
from transforms.select.base import Strategy
from transforms.select.cost import CostBudget, CostModel
from transforms.select.stochastic import StochasticBatch
from transforms.select.strategies import (Balanced, ClusterMargin, Combined, Excluding, KCenterGreedy,
                                          RandomSampling, TopK)
from transforms.select.uncertainty_kcenter import UncertaintyKCenter

__all__ = ["STRATEGY_NAMES", "make_strategy", "checked_strategy"]


#: Strategy names accepted by :func:`make_strategy` (uncertainty names are :class:`TopK`).
STRATEGY_NAMES = registry.strategy_names()


def make_strategy(name: str, params: Optional[Mapping] = None) -> Strategy:
    """Builds a strategy from its name and parameters (e.g. the ``mine`` job's flags).

    ``params`` may also hold ``balance_key`` (+ ``quotas``) to wrap it in :class:`Balanced`,
    ``exclude_ids`` / ``near_duplicate_distance`` to wrap it in :class:`Excluding`,
    ``budget_unit`` (``frames``, ``boxes``, ``seconds``) + ``cost_model`` (the fields of
    :class:`~transforms.select.cost.CostModel`) to count the budget in annotation cost
    (:class:`~transforms.select.cost.CostBudget`, outermost), and, for a
    score (top-k) strategy, ``stochastic`` (``power``, ``softmax`` or ``softrank``, + ``beta``,
    ``seed``) to sample the batch by the score instead of taking its top-k
    (:class:`transforms.select.stochastic.StochasticBatch`, Kirsch et al. 2023).

    Raises
    ------
    ValueError
        For an unknown name or parameter, naming the allowed ones.
    """
    params = dict(params or {})
    balance_key = params.pop("balance_key", None)
    quotas = params.pop("quotas", None)
    exclude_ids = params.pop("exclude_ids", ())
    near = params.pop("near_duplicate_distance", 0.0)
    budget_unit = params.pop("budget_unit", None)
    cost_model = params.pop("cost_model", None)
    builders = {"uncertainty_kcenter": UncertaintyKCenter, "random": RandomSampling, "coreset": KCenterGreedy,
                "cluster_margin": ClusterMargin, "combined": Combined}
    if "stochastic" in params:
        if name not in registry.names(rankable=True):
            raise ValueError(f"stochastic applies to a score strategy ({', '.join(registry.names(rankable=True))}), "
                             f"not {name!r}")
        builder = functools.partial(StochasticBatch, name, params.pop("stochastic"))
    elif name in registry.names(rankable=True):
        builder = functools.partial(TopK, name)
    elif name in builders:
        builder = builders[name]
    else:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}")
    try:
        strategy = builder(**params)
    except TypeError as e:
        takes = ", ".join(inspect.signature(builder).parameters) or "no parameters"
        reason = re.sub(r"^[\w.]+[(][)] ", "", str(e))  # not the class's name: the strategy's
        raise ValueError(f"bad parameters for strategy {name!r}: {reason}; it takes {takes} (any "
                         f"strategy: balance_key, quotas, exclude_ids, near_duplicate_distance, budget_unit, cost_model; a "
                         f"score strategy also: stochastic, beta, seed)") from None
    if balance_key:
        strategy = Balanced(strategy, balance_key, quotas)
    if exclude_ids or near:
        strategy = Excluding(strategy, exclude_ids, near)
    if budget_unit or cost_model:
        try:
            model = CostModel(**dict(cost_model or {}))
        except TypeError as e:
            raise ValueError(f"bad cost_model {cost_model!r}: it takes {', '.join(CostModel._fields)}") from e
        strategy = CostBudget(strategy, budget_unit or "frames", model)
    return strategy


def checked_strategy(budget: int, strategy, params: Optional[Mapping] = None) -> Strategy:
    """``strategy`` (a name of :data:`STRATEGY_NAMES`, built with ``params``, or a
    :class:`Strategy`) for a selection of ``budget`` frames.

    Raises
    ------
    ValueError
        For a budget that is not an integer >= 0, an unknown name or parameter, or another object.
    """
    if not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
    if isinstance(strategy, str):
        return make_strategy(strategy, params)
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy must be a name or a Strategy, got {strategy!r}")
    return strategy

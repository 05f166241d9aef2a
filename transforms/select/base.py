"""The base of every selection strategy (pure; no Beam): what strategies share and nothing else.

* :class:`Pool`: the frames a strategy chooses from, as aligned arrays.
* :class:`Selection`: what a strategy chose (indices in rank order, rank values, components).
* :class:`Strategy`: the one interface (``select``, ``preselect``, ``params``, ``describe``);
  the strategies are in :mod:`transforms.select.strategies`, :mod:`transforms.select.stochastic`
  and :mod:`transforms.select.batchbald`, built by name in :mod:`transforms.select.factory`.
* Shared helpers: :func:`score_values` (any score, oriented higher = more wanted),
  :func:`rank_by` (deterministic top-k), :func:`require` (a pool array a strategy needs),
  :func:`seeded_hash` (a per-id hash, independent of the pool's order), :func:`selection_id`.
"""
import dataclasses
import hashlib
import json
from typing import Dict, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from transforms.score import registry

__all__ = ["Pool", "Selection", "Strategy", "empty_selection", "require", "score_values", "rank_by", "unit_rows",
           "seeded_hash", "selection_id", "PROBABILITY_SCORES", "SAMPLE_SCORES", "STORED_SCORES"]


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """The frames a strategy chooses from, as aligned arrays (row ``i`` is frame ``ids[i]``).

    ``ids``: ``(N,)`` str; ``embeddings``: float ``(N, D)``; ``probabilities``: float ``(N, C)``;
    ``probability_samples``: float ``(T, N, C)`` (MC dropout); ``scores``: name -> float ``(N,)``
    precomputed scores (as stored in the frame index; ``margin`` is the raw ``p1 - p2``);
    ``metadata``: name -> ``(N,)`` values (source, camera, predicted class...).
    Any of the optional fields may be ``None`` when no strategy in use needs it.
    """
    ids: np.ndarray
    embeddings: Optional[np.ndarray] = None
    probabilities: Optional[np.ndarray] = None
    probability_samples: Optional[np.ndarray] = None
    scores: Optional[Mapping[str, np.ndarray]] = None
    metadata: Optional[Mapping[str, np.ndarray]] = None

    def __len__(self):
        return len(self.ids)

    def replace(self, **changes) -> "Pool":
        """A copy with ``changes`` (field name -> value); the arrays are shared, not copied.
        (A frozen dataclass, not a ``NamedTuple``: a tuple whose ``len`` is the frame count
        broke ``NamedTuple._replace``.)"""
        return dataclasses.replace(self, **changes)

    def take(self, indices) -> "Pool":
        """The sub-pool of rows ``indices`` (int array)."""
        idx = np.asarray(indices, dtype=np.int64)

        def rows(a):
            return None if a is None else np.asarray(a)[idx]
        return Pool(
            ids=np.asarray(self.ids)[idx], embeddings=rows(self.embeddings),
            probabilities=rows(self.probabilities),
            probability_samples=(None if self.probability_samples is None
                                 else np.asarray(self.probability_samples)[:, idx]),
            scores=None if self.scores is None else {k: rows(v) for k, v in self.scores.items()},
            metadata=None if self.metadata is None else {k: rows(v) for k, v in self.metadata.items()})


class Selection(NamedTuple):
    """What a strategy chose: ``indices`` int64 ``(k,)`` into the pool, rank 1 first;
    ``scores`` float64 ``(k,)``, the value each was ranked by (higher = more wanted);
    ``components``: name -> float64 ``(k,)``, the per-frame values that explain the rank."""
    indices: np.ndarray
    scores: np.ndarray
    components: Dict[str, np.ndarray]


def empty_selection() -> "Selection":
    """The selection of no frame."""
    return Selection(np.empty(0, np.int64), np.empty(0), {})


def require(pool: Pool, field: str, strategy: str) -> np.ndarray:
    """``pool.<field>`` as an array; ``ValueError`` naming ``strategy`` when the pool lacks it."""
    value = getattr(pool, field)
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs pool.{field}")
    return np.asarray(value)


#: Rankable scores (top-k strategies) by what they are computed from, all from the one registry
#: (:mod:`transforms.score.registry`): ``probabilities`` (N, C), ``probability_samples`` (T, N, C),
#: or only read from ``pool.scores`` (computed upstream, e.g. k-NN ``uniqueness`` by
#: :mod:`transforms.score.novelty`).
PROBABILITY_SCORES = registry.names(needs=registry.PROBABILITIES, rankable=True)
SAMPLE_SCORES = registry.names(needs=registry.MC_SAMPLES, rankable=True)
STORED_SCORES = registry.names(needs=registry.EMBEDDINGS, rankable=True)
_POOL_INPUT = {registry.PROBABILITIES: "probabilities", registry.MC_SAMPLES: "probability_samples"}


def score_values(pool: Pool, name: str) -> np.ndarray:
    """Score ``name`` of every pool frame as float64 ``(N,)``, oriented so that higher = more wanted.

    Looks in ``pool.scores`` first, then computes from ``probabilities`` (entropy, margin,
    least_confidence, ...) or ``probability_samples`` (bald, variation_ratios, mean_std) with
    the registry's function; oriented by :func:`transforms.score.registry.wanted` (``margin`` is
    returned as ``1 - (p1 - p2)``).

    Raises
    ------
    ValueError
        If the score is unknown or the pool lacks the arrays it needs.
    """
    if pool.scores is not None and name in pool.scores:
        values = np.asarray(pool.scores[name], dtype=np.float64)
    elif name in PROBABILITY_SCORES + SAMPLE_SCORES:
        field = _POOL_INPUT[registry.get(name).needs]
        values = registry.compute(name, require(pool, field, name))
    else:
        raise ValueError(f"unknown score {name!r}: not in pool.scores nor one of "
                         f"{', '.join(PROBABILITY_SCORES + SAMPLE_SCORES)}")
    if name not in registry.names():
        return np.asarray(values, dtype=np.float64).reshape(-1)  # a user's own stored score
    return registry.wanted(name, values)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (``(N, D)``) scaled to unit L2 norm, float64 (a zero row stays zero).

    The one distance of selection is the cosine distance of embeddings, ``1 - dot`` of unit
    rows (k-centre, Cluster-Margin's clusters, exclusions of near-duplicates, the redundancy
    figures), as the ``mine`` job's near-duplicate groups and uniqueness: CNN features compare
    by direction, their norm tracks contrast and exposure. On unit rows the squared Euclidean
    distance is ``2 x`` the cosine distance, so a Euclidean farthest-first traversal of unit rows
    is a cosine one.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def rank_by(values: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values``; ties broken by ``ids`` (deterministic)."""
    order = np.lexsort((np.asarray(ids).astype(str), -values))
    return order[:k].astype(np.int64)


class Strategy:
    """The strategy interface. Subclasses set ``name`` and implement :meth:`_select`.

    ``select`` validates ``budget``, handles the empty pool and guarantees the contract every
    strategy is tested for (:mod:`tests.test_strategies`): at most ``budget`` distinct indices
    into the pool, ``min(budget, N)`` of them unless a threshold or exclusion removes frames,
    scores and components aligned with the indices, and the same result for the same input.
    """
    name = "strategy"
    #: Whether the strategy reads ``Pool.probabilities`` itself. The built-in strategies read
    #: class probabilities only through :func:`score_values`, which finds the stored scores
    #: first, so :class:`~transforms.select.ptransforms.SelectCandidates` carries no
    #: probabilities through selection (``C`` floats per frame) unless this is ``True``; a
    #: wrapper (``inner``) inherits its inner strategy's need.
    reads_probabilities = False

    @property
    def needs_probabilities(self) -> bool:
        """Whether this strategy, or the strategy it wraps, reads ``Pool.probabilities``."""
        inner = getattr(self, "inner", None)
        return bool(self.reads_probabilities or (isinstance(inner, Strategy) and inner.needs_probabilities))

    def params(self) -> dict:
        """The parameters that define this strategy (JSON-serialisable; part of the selection id)."""
        return {}

    def describe(self) -> dict:
        return {"strategy": self.name, "params": self.params()}

    def select(self, pool: Pool, budget: int, labelled: Optional[Pool] = None) -> Selection:
        """Chooses up to ``budget`` frames of ``pool``.

        Parameters
        ----------
        pool : Pool
            The candidates.
        budget : int
            ``>= 0``.
        labelled : Pool, optional
            Frames already labelled (or selected earlier); used by diversity strategies
            (initial k-center centres) and exclusions. Only ``ids``/``embeddings`` are read.

        Raises
        ------
        ValueError
            If ``budget`` is negative or the pool lacks an array the strategy needs.
        """
        if not isinstance(budget, (int, np.integer)) or budget < 0:
            raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
        if budget == 0 or len(pool) == 0:
            return empty_selection()
        selection = self._select(pool, int(budget), labelled)
        return Selection(np.asarray(selection.indices, dtype=np.int64),
                         np.asarray(selection.scores, dtype=np.float64),
                         {k: np.asarray(v, dtype=np.float64) for k, v in selection.components.items()})

    def _select(self, pool, budget, labelled):  # pragma: no cover - interface
        raise NotImplementedError

    def preselect(self, pool: Pool, budget: int, labelled: Optional[Pool] = None) -> np.ndarray:
        """Indices of the frames of a shard worth keeping for a final ``select(..., budget)``
        over the union of shards (int64, sorted).

        Exact for top-k, random and Cluster-Margin's margin preselection (the union of per-shard
        top ``n`` contains the global top ``n``); for k-center it is a composable core-set
        (per-shard greedy k-center, then k-center on the union: a 4-approximation, Indyk et al.
        2014; radius measured against the single-machine greedy in benchmarks.sampler_scale);
        for the combined objective the min-max normalisation of a shard is an approximation of
        the pool's, so it keeps ``2 * budget``.
        """
        return np.sort(self.select(pool, budget, labelled).indices)

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(self.params(), sort_keys=True)})"


def seeded_hash(ids, seed) -> np.ndarray:
    """64-bit blake2b hash of ``"<seed>:<id>"`` for every id, as float64 ``(N,)`` in ``[0, 2**64)``.

    The same id and seed give the same value in every shard, window rerun and process (not
    Python's salted ``hash``), whatever the order of ``ids``: random sampling and the Gumbel noise
    of stochastic acquisition are drawn from it.
    """
    ids = np.asarray(ids).astype(str)
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")
                     for i in ids], dtype=np.float64)


def selection_id(description: dict, model_version: str, inputs: Sequence[str] = ()) -> str:
    """Deterministic id of a selection: sha256 of strategy, parameters, model version and inputs
    (first 24 hex digits). The same run repeated gets the same id, so its writes are upserts."""
    payload = json.dumps({"d": description, "m": model_version, "i": sorted(inputs)}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]

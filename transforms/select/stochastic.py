"""Stochastic batch acquisition: sample a batch in proportion to any score (pure; no Beam).

Top-k of an acquisition score picks a whole batch from one model state, so a batch of BALD or
entropy picks tends to be redundant (many near-identical confusing frames). Kirsch et al.
(2023) show that *sampling* the batch instead, with probabilities that grow with the score, is
as good as the batch-aware BatchBALD at the cost of a top-k. Three distributions::

    power     p_i ∝ s_i ** beta            key_i = beta * log(s_i) + g_i
    softmax   p_i ∝ exp(beta * s_i)        key_i = beta * s_i + g_i
    softrank  p_i ∝ rank_i ** -beta        key_i = -beta * log(rank_i) + g_i

with ``g_i`` standard Gumbel noise: the ``budget`` largest keys are a sample without
replacement from ``p`` (the Gumbel-top-k trick, Kool, van Hoof & Welling 2019). ``beta`` is the
coldness: ``beta -> inf`` is top-k, ``beta = 0`` is uniform random sampling. ``rank_i`` is 1
for the highest score.

The noise of a frame is a hash of ``(seed, frame id)``: a rerun (same seed, same window) picks
the same frames whatever the order or sharding of the pool, and ``power``/``softmax`` keys do
not depend on the other frames, so per-shard preselection is exact. ``softrank``'s rank is the
rank within the pool given, so per-shard preselection (ranks within a shard are smaller than
within the union) is an approximation; it keeps ``2 * budget``.

Usable with every rankable score (``entropy``, ``margin``, ``least_confidence``, ``bald``,
``variation_ratios``, ``mean_std``, ``uniqueness``, stored scores) through
:func:`transforms.select.factory.make_strategy`::

    make_strategy("bald", {"stochastic": "power", "beta": 1.0, "seed": 7})

References
----------
* Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal (2023), Stochastic Batch
  Acquisition: A Simple Baseline for Deep Active Learning, TMLR (algorithm 1; reference
  implementation: github.com/BlackHC/stochastic_batch_acquisition, ``get_*_batch``).
* Kool, van Hoof & Welling (2019), Stochastic Beams and Where to Find Them: The Gumbel-Top-k
  Trick for Sampling Sequences Without Replacement, ICML.
"""
import numpy as np

from transforms.select.base import Selection, Strategy, rank_by, score_values, seeded_hash

#: The distributions of :class:`StochasticBatch` (Kirsch et al. 2023, section 3).
MODES = ("power", "softmax", "softrank")


def gumbel_noise(ids, seed: int) -> np.ndarray:
    """Standard Gumbel noise float64 ``(N,)``, one draw per id from a hash of ``(seed, id)``.

    Deterministic and independent of the order of ``ids``: the same frame gets the same draw
    in every shard, window rerun and process (:func:`transforms.select.base.seeded_hash`).
    """
    u = (seeded_hash(ids, seed) + 0.5) / 2.0**64  # in (0, 1)
    return -np.log(-np.log(u))


def _ranks(values: np.ndarray, ids) -> np.ndarray:
    """1-based rank of each value, highest first, ties broken by id (float64 ``(N,)``)."""
    order = np.lexsort((np.asarray(ids).astype(str), -values))
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def stochastic_keys(values: np.ndarray, ids, mode: str = "power", beta: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """Perturbed keys float64 ``(N,)`` whose top-k is a sample of k frames without replacement.

    Parameters
    ----------
    values : array (N,) float
        Acquisition scores, higher = more wanted (``power`` needs them ``>= 0``; values below
        the smallest positive float, e.g. BALD's rounding to ``-1e-17``, count as that float).
    ids : array (N,) str
        Frame ids: the noise of each frame is a hash of its id and ``seed``.
    mode : {"power", "softmax", "softrank"}
    beta : float
        Coldness ``>= 0``.
    seed : int

    Raises
    ------
    ValueError
        For an unknown ``mode``, a negative ``beta``, or non-finite values.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if mode not in MODES:
        raise ValueError(f"stochastic mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not float(beta) >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if not np.all(np.isfinite(values)):
        raise ValueError("stochastic acquisition needs finite scores")
    if mode == "power":
        base = np.log(np.maximum(values, np.finfo(np.float64).tiny))
    elif mode == "softmax":
        base = values
    else:
        base = -np.log(_ranks(values, ids))
    return float(beta) * base + gumbel_noise(ids, seed)


class StochasticBatch(Strategy):
    """Stochastic batch acquisition of any score (Kirsch et al. 2023): a batch sampled without
    replacement with probabilities given by ``mode`` (see the module docstring).

    The rank score is the perturbed key (:func:`stochastic_keys`); components are the score and
    the frame's Gumbel draw. Cost: one score evaluation and one hash per frame, ``O(N log N)``.

    Parameters
    ----------
    score : str
        A name accepted by :func:`transforms.select.base.score_values`.
    mode : {"power", "softmax", "softrank"}
        ``power`` is the paper's default for BALD (scores >= 0); ``softmax`` depends on the
        scale of the score; ``softrank`` only on its order.
    beta : float
        Coldness ``>= 0`` (paper: 1).
    seed : int
        Seed of the noise: derive it from the run or window (e.g. the active-learning round) so
        that successive selections of the same frames are independent and a rerun is identical.

    Raises
    ------
    ValueError
        For an empty score name, an unknown ``mode`` or a negative ``beta``.
    """

    def __init__(self, score: str = "bald", mode: str = "power", beta: float = 1.0, seed: int = 0):
        if not isinstance(score, str) or not score:
            raise ValueError(f"score must be a score name, got {score!r}")
        if mode not in MODES:
            raise ValueError(f"stochastic mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(beta, (int, float)) or not float(beta) >= 0:
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        self.score, self.mode, self.beta, self.seed = score, mode, float(beta), int(seed)
        self.name = f"{score}+{mode}"

    def params(self):
        return {"score": self.score, "stochastic": self.mode, "beta": self.beta, "seed": self.seed}

    def preselect(self, pool, budget, labelled=None):
        # power/softmax keys are per-frame: the union of per-shard top-k holds the global top-k.
        keep = budget if self.mode != "softrank" else 2 * budget
        return np.sort(self.select(pool, keep, labelled).indices)

    def _select(self, pool, budget, labelled):
        values = score_values(pool, self.score)
        keys = stochastic_keys(values, pool.ids, self.mode, self.beta, self.seed)
        idx = rank_by(keys, pool.ids, budget)
        return Selection(idx, keys[idx], {self.score: values[idx],
                                          "gumbel": gumbel_noise(np.asarray(pool.ids)[idx], self.seed)})

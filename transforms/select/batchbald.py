"""BatchBALD (Kirsch, van Amersfoort & Gal 2019): batch-aware Bayesian acquisition (pure; no Beam).

Top-k BALD scores each frame alone, so a batch fills with frames that are informative *for the
same reason*. BatchBALD picks greedily the frame that maximises the mutual information between
the model parameters and the labels of the whole batch so far::

    a(x_1..x_k) = H(y_1..y_k) - sum_i E_w H(y_i | w)

with the joint entropy taken over the MC-dropout samples ``w_1..w_T``: ``p(y_1..y_k) =
1/T sum_t prod_i p(y_i | x_i, w_t)``. The ``C**k`` joint label configurations are enumerated
while there are at most ``num_configs`` of them, then ``num_configs`` configurations are sampled
from the joint and the entropy is an importance-sampled estimate (the paper's section 3.2).

Cost, stated because it decides where BatchBALD is usable: each of the ``budget`` greedy steps
evaluates every candidate against every configuration and MC sample, ``O(M * T * N * C)``
multiply-adds (``M = num_configs``, ``T`` samples, ``N`` candidates, ``C`` classes) and an
``(M, N, C)`` float64 array; about ``budget * M * T * N * C`` in all, e.g. 100 picks of 2,000
candidates with M = 1,000, T = 20, C = 10: 4e11; 500 of 20,000: 2e13 (times in docs/timings.md).
So it runs on a BALD-preselected shortlist (``shortlist_multiplier * budget`` frames, as the
reference implementation's users do on large pools) and for batches of tens to a few hundred.
For larger batches use stochastic acquisition (:mod:`transforms.select.stochastic`, Kirsch et
al. 2023), which costs a top-k. It needs the MC samples of every frame, so the ``mine`` job (which
stores only the BALD score per frame) cannot run it; it is a library strategy.

References
----------
* Kirsch, van Amersfoort & Gal (2019), BatchBALD: Efficient and Diverse Batch Acquisition for
  Deep Bayesian Active Learning, NeurIPS (algorithm 1); reference implementation:
  github.com/BlackHC/batchbald_redux (``get_batchbald_batch``).
"""
import numpy as np

from transforms.select.base import Selection, Strategy, rank_by, require, score_values


def _entropy(p: np.ndarray, axis) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=axis)


def batch_bald(samples: np.ndarray, budget: int, num_configs: int = 1000, seed: int = 0):
    """Greedy BatchBALD picks.

    Parameters
    ----------
    samples : array (T, N, C) float
        MC-dropout class probabilities of the candidates.
    budget : int
        Number of picks, ``<= N``.
    num_configs : int
        ``M``: joint label configurations kept (exact enumeration while ``C**k <= M``).
    seed : int
        Seed of the configuration sampling.

    Returns
    -------
    indices : int64 (budget,)
        Candidates in pick order.
    gains : float64 (budget,)
        The batch's estimated mutual information after each pick minus before it (nats).
    """
    p = np.asarray(samples, dtype=np.float64)
    n_samples, n, _ = p.shape
    rng = np.random.default_rng(seed)
    conditional = _entropy(p, axis=2).mean(axis=0)  # E_w H(y_i | w), (N,)
    configs = np.ones((1, n_samples))  # p(config | w_t), (M, T)
    exact = True
    available = np.ones(n, dtype=bool)
    picked, gains, information = [], [], 0.0
    for _ in range(min(budget, n)):
        joint = np.einsum("mt,tnc->mnc", configs, p) / n_samples  # p(config, y_i), (M, N, C)
        if exact:
            joint_entropy = _entropy(joint, axis=2).sum(axis=0)
        else:  # configs drawn from p(config): importance weights 1 / p(config)
            weight = 1.0 / np.maximum(configs.mean(axis=1), 1e-300)
            joint_entropy = np.einsum("m,mn->n", weight, -np.sum(
                joint * np.log(np.maximum(joint, 1e-300)), axis=2)) / len(configs)
        score = joint_entropy - conditional - sum(conditional[picked])
        score[~available] = -np.inf
        i = int(np.argmax(score))
        gains.append(score[i] - information)
        information = score[i]
        picked.append(i)
        available[i] = False
        grown = (configs[:, None, :] * p[:, i, :].T[None]).reshape(-1, n_samples)
        if exact and len(grown) <= num_configs:
            configs = grown
        else:
            exact = False
            configs = _sampled_configs(p[:, picked, :], num_configs, rng)
    return np.asarray(picked, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def _sampled_configs(p_picked: np.ndarray, m: int, rng) -> np.ndarray:
    """``(m, T)`` likelihoods under each MC sample of ``m`` label configurations of the picked
    frames drawn from their joint (an MC sample ``t``, then each label from ``p(y | w_t)``)."""
    n_samples, k, n_classes = p_picked.shape
    t = rng.integers(n_samples, size=m)
    cumulative = np.cumsum(p_picked[t], axis=2)  # (m, k, C)
    labels = (rng.random((m, k, 1)) > cumulative).sum(axis=2).clip(0, n_classes - 1)  # (m, k)
    chosen = p_picked[:, np.arange(k)[None, :], labels]  # (T, m, k)
    return np.exp(np.log(np.maximum(chosen, 1e-300)).sum(axis=2)).T


class BatchBALD(Strategy):
    """BatchBALD on a BALD shortlist (see the module docstring for the maths and the cost).

    Parameters
    ----------
    num_configs : int
        Joint label configurations kept, ``>= 1`` (paper: 10,000 for MNIST; cost grows linearly).
    shortlist_multiplier : float
        The greedy search runs on the ``shortlist_multiplier * budget`` frames of highest BALD
        (``>= 1``; also what a shard keeps).
    seed : int

    Raises
    ------
    ValueError
        For ``num_configs < 1`` or ``shortlist_multiplier < 1``; at selection, when the pool has
        no ``probability_samples``.
    """
    name = "batchbald"

    def __init__(self, num_configs: int = 1000, shortlist_multiplier: float = 4.0, seed: int = 0):
        if int(num_configs) < 1:
            raise ValueError(f"num_configs must be >= 1, got {num_configs!r}")
        if float(shortlist_multiplier) < 1:
            raise ValueError(f"shortlist_multiplier must be >= 1, got {shortlist_multiplier!r}")
        self.num_configs, self.shortlist_multiplier = int(num_configs), float(shortlist_multiplier)
        self.seed = int(seed)

    def params(self):
        return {"num_configs": self.num_configs, "shortlist_multiplier": self.shortlist_multiplier,
                "seed": self.seed}

    def _shortlist(self, pool, budget):
        size = int(min(len(pool), max(budget, np.ceil(self.shortlist_multiplier * budget))))
        return rank_by(score_values(pool, "bald"), pool.ids, size)

    def preselect(self, pool, budget, labelled=None):
        return np.sort(self._shortlist(pool, budget))

    def _select(self, pool, budget, labelled):
        samples = require(pool, "probability_samples", self.name)
        shortlist = np.sort(self._shortlist(pool, budget))
        picks, gains = batch_bald(samples[:, shortlist], budget, self.num_configs, self.seed)
        idx = shortlist[picks]
        return Selection(idx, gains, {"batchbald_gain": gains, "bald": score_values(pool, "bald")[idx]})

"""Uncertainty scores of class probabilities (pure numpy; no Beam).

Every function takes ``probabilities``: float array of shape ``(N, C)`` (or ``(C,)`` for one
sample), rows summing to 1, and returns a float64 array of shape ``(N,)`` (or a float).

References
----------
* Settles, B. (2009). Active Learning Literature Survey. Computer Sciences Technical Report
  1648, University of Wisconsin-Madison, section 3.1 (least confidence, margin, entropy).
* Scheffer, Decomain & Wrobel (2001), Active hidden Markov models for information extraction
  (margin).
* Shannon, C. E. (1948), A Mathematical Theory of Communication (entropy).
* Reference implementations: modAL ``modAL.uncertainty`` (``classifier_uncertainty``,
  ``classifier_margin``, ``classifier_entropy``) and scikit-activeml
  ``skactiveml.pool.uncertainty_scores``.
"""
import numpy as np

_EPS = 1e-12


def _as_2d(probabilities):
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape[-1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) or (C,) with C >= 2, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    return p.reshape(-1, p.shape[-1]), p.ndim == 1


def _result(values, single):
    return float(values[0]) if single else values


def least_confidence(probabilities):
    """Least confidence ``1 - max_c p_c``; in ``[0, 1 - 1/C]``, high means uncertain.

    Source: Settles (2009) eq. 3.1; modAL ``classifier_uncertainty``.
    """
    p, single = _as_2d(probabilities)
    return _result(1.0 - p.max(axis=1), single)


def margin(probabilities):
    """Margin ``p_(1) - p_(2)`` between the two most probable classes; in ``[0, 1]``, low means uncertain.

    Source: Scheffer et al. (2001); Settles (2009) eq. 3.2; modAL ``classifier_margin``.
    """
    p, single = _as_2d(probabilities)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return _result(top2[:, 1] - top2[:, 0], single)


def entropy(probabilities):
    """Shannon entropy ``-sum_c p_c ln p_c`` in nats; in ``[0, ln C]``, high means uncertain.

    Source: Shannon (1948); Settles (2009) eq. 3.3; modAL ``classifier_entropy`` (which uses
    ``scipy.stats.entropy``, also in nats).
    """
    p, single = _as_2d(probabilities)
    return _result(-np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=1), single)


def softmax(logits):
    """Numerically stable softmax over the last axis: float64 array of the same shape."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)

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


def ratio(probabilities):
    """Ratio of confidence ``p_(2) / p_(1)``; in ``[0, 1]``, high means uncertain.

    Source: Monarch, R. (2021), Human-in-the-Loop Machine Learning, ch. 3 ("ratio of
    confidence"); LightlyOne's ``ActiveLearningScores`` uses the same ranking as margin.
    """
    p, single = _as_2d(probabilities)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return _result(top2[:, 0] / np.maximum(top2[:, 1], _EPS), single)


def entropy_normalised(probabilities):
    """Shannon entropy divided by its maximum ``ln C``; in ``[0, 1]``, high means uncertain.

    Source: Settles (2009) eq. 3.3 scaled as in LightlyOne's ``ActiveLearningScores``
    (``prediction_entropy`` normalised by ``log(num_classes)``).
    """
    p, single = _as_2d(probabilities)
    return _result(entropy(p) / np.log(p.shape[1]), single)


def softmax(logits):
    """Numerically stable softmax over the last axis: float64 array of the same shape."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _as_samples(probability_samples):
    p = np.asarray(probability_samples, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] < 1 or p.shape[-1] < 2:
        raise ValueError(
            f"probability_samples must have shape (T, N, C) with T >= 1 and C >= 2, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probability_samples must be finite and non-negative")
    return p


def bald(probability_samples):
    """BALD: mutual information between the prediction and the model parameters, in nats.

    ``H[mean_t p_t] - mean_t H[p_t]`` over ``T`` stochastic forward passes (MC dropout).

    Parameters
    ----------
    probability_samples : array-like of float, shape (T, N, C)
        Class probabilities of ``T`` stochastic passes over ``N`` samples.

    Returns
    -------
    ndarray of float64, shape (N,); in ``[0, ln C]``, high means the passes disagree.

    Raises
    ------
    ValueError
        If the shape is not ``(T, N, C)`` or values are negative or not finite.

    References
    ----------
    Houlsby et al. (2011), Bayesian Active Learning for Classification and Preference Learning;
    Gal, Islam & Ghahramani (2017), Deep Bayesian Active Learning with Image Data, eq. (2);
    baal ``baal.active.heuristics.BALD``.
    """
    p = _as_samples(probability_samples)
    mean = p.mean(axis=0)
    expected_entropy = -np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=2).mean(axis=0)
    return np.maximum(entropy(mean) - expected_entropy, 0.0)


def variation_ratios(probability_samples):
    """Variation ratio ``1 - f_m / T``: share of passes that disagree with the modal class.

    Parameters
    ----------
    probability_samples : array-like of float, shape (T, N, C)

    Returns
    -------
    ndarray of float64, shape (N,); in ``[0, 1 - 1/C]``.

    References
    ----------
    Freeman (1965), Elementary Applied Statistics; Gal et al. (2017) eq. (3);
    baal ``baal.active.heuristics.Variance``/modAL.
    """
    p = _as_samples(probability_samples)
    votes = p.argmax(axis=2)  # (T, N)
    counts = (votes[..., None] == np.arange(p.shape[2])).sum(axis=0)  # (N, C)
    return 1.0 - counts.max(axis=1) / p.shape[0]


def mean_std(probability_samples):
    """Mean over classes of the standard deviation of ``p_c`` across passes.

    Parameters
    ----------
    probability_samples : array-like of float, shape (T, N, C)

    Returns
    -------
    ndarray of float64, shape (N,); in ``[0, 0.5]``.

    References
    ----------
    Kampffmeyer et al. (2016), Semantic Segmentation of Small Objects and Modeling of
    Uncertainty in Urban Remote Sensing Images Using Deep CNNs; Gal et al. (2017) eq. (4).
    """
    p = _as_samples(probability_samples)
    return p.std(axis=0).mean(axis=1)


def ensemble_disagreement(member_probabilities):
    """Disagreement of an ensemble of models: the Jensen-Shannon divergence of their predictions.

    ``H[mean_m p_m] - mean_m H[p_m]`` over ``M`` models, i.e. "KL divergence to the consensus"
    (the mean over members of ``KL(p_m || mean p)``), in nats. It is the same quantity as
    :func:`bald` with models in place of dropout passes, so ``member_probabilities`` has the same
    layout.

    Parameters
    ----------
    member_probabilities : array-like of float, shape (M, N, C)
        Class probabilities of ``M`` models (the ensemble members) over ``N`` samples.

    Returns
    -------
    ndarray of float64, shape (N,); in ``[0, ln M]``, 0 when all members agree.

    Raises
    ------
    ValueError
        If the shape is not ``(M, N, C)`` or values are negative or not finite.

    References
    ----------
    McCallum & Nigam (1998), Employing EM and pool-based active learning for text classification
    (KL divergence to the mean); Settles (2009) section 3.2 eq. 3.5 (query by committee);
    Beluch et al. (2018), The power of ensembles for active learning in image classification.
    """
    return bald(member_probabilities)


def classification_scores(probabilities):
    """All single-pass scores at once (one validation, one partial sort): name -> ``(N,)``.

    Same values as :func:`least_confidence`, :func:`margin`, :func:`ratio`, :func:`entropy` and
    :func:`entropy_normalised`, for ``probabilities`` of shape ``(N, C)``.
    """
    p, _ = _as_2d(probabilities)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    h = -np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=1)
    return {
        "least_confidence": 1.0 - top2[:, 1],
        "margin": top2[:, 1] - top2[:, 0],
        "ratio": top2[:, 0] / np.maximum(top2[:, 1], _EPS),
        "entropy": h,
        "entropy_normalised": h / np.log(p.shape[1]),
    }

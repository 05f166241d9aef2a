"""Uncertainty scores: hand-computed values, bounds, and scikit-activeml / scipy as references."""
import math

import numpy as np
import pytest
from scipy import stats

from transforms.score import uncertainty


def test_known_values():
    p = [0.7, 0.2, 0.1]
    assert uncertainty.least_confidence(p) == pytest.approx(0.3)
    assert uncertainty.margin(p) == pytest.approx(0.5)
    assert uncertainty.entropy(p) == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)))


def test_extremes():
    certain = np.array([[1.0, 0.0, 0.0, 0.0]])
    uniform = np.full((1, 4), 0.25)
    assert uncertainty.entropy(certain)[0] == pytest.approx(0.0, abs=1e-9)
    assert uncertainty.entropy(uniform)[0] == pytest.approx(math.log(4))
    assert uncertainty.margin(certain)[0] == 1.0 and uncertainty.margin(uniform)[0] == 0.0
    assert uncertainty.least_confidence(certain)[0] == 0.0
    assert uncertainty.least_confidence(uniform)[0] == pytest.approx(0.75)


def test_batch_matches_references():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10) * 0.3, size=500)
    np.testing.assert_allclose(uncertainty.entropy(p), stats.entropy(p, axis=1), rtol=1e-9)
    ordered = np.sort(p, axis=1)
    np.testing.assert_allclose(uncertainty.margin(p), ordered[:, -1] - ordered[:, -2])
    np.testing.assert_allclose(uncertainty.least_confidence(p), 1 - ordered[:, -1])
    assert uncertainty.entropy(p).shape == (500,)


def test_softmax():
    logits = np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]])
    np.testing.assert_allclose(uncertainty.softmax(logits), [[0.5, 0.5], [0.25, 0.75]])


@pytest.mark.parametrize("bad", [[1.0], [[0.5, np.nan]], [[-0.1, 1.1]], np.zeros((2, 2, 2))])
def test_invalid_input_raises(bad):
    with pytest.raises(ValueError):
        uncertainty.entropy(bad)


def test_matches_scikit_activeml():
    """Same probabilities, same scores as scikit-activeml's ``uncertainty_scores`` (its margin
    is ``1 - (p1 - p2)``, so that high means uncertain)."""
    from skactiveml.pool import uncertainty_scores
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(7) * 0.5, size=1000)
    np.testing.assert_allclose(uncertainty.least_confidence(p), uncertainty_scores(p, method="least_confident"))
    np.testing.assert_allclose(uncertainty.entropy(p), uncertainty_scores(p, method="entropy"), rtol=1e-9)
    np.testing.assert_allclose(1 - uncertainty.margin(p), uncertainty_scores(p, method="margin_sampling"))


def test_ratio_and_normalised_entropy():
    p = np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(uncertainty.ratio(p), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(uncertainty.entropy_normalised(p),
                               [stats.entropy(p[0]) / math.log(3), 0.0, 1.0], atol=1e-9)
    rng = np.random.default_rng(2)
    q = rng.dirichlet(np.ones(5), size=200)
    assert np.all((uncertainty.entropy_normalised(q) >= 0) & (uncertainty.entropy_normalised(q) <= 1))
    assert np.all((uncertainty.ratio(q) >= 0) & (uncertainty.ratio(q) <= 1))


def _passes():
    """T=4 passes over 3 samples: agreeing-and-sure, agreeing-but-unsure, confidently disagreeing."""
    sure = [[0.98, 0.01, 0.01]] * 4
    unsure = [[0.34, 0.33, 0.33]] * 4
    disagree = [[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.98, 0.01, 0.01], [0.01, 0.01, 0.98]]
    return np.array([sure, unsure, disagree]).transpose(1, 0, 2)  # (T, N, C)


def test_bayesian_scores_separate_aleatoric_from_epistemic():
    p = _passes()
    bald = uncertainty.bald(p)
    assert bald[0] == pytest.approx(0.0, abs=1e-12) and bald[1] == pytest.approx(0.0, abs=1e-12)
    # Disagreement: H[mean] - mean H, by hand.
    mean = p[:, 2].mean(axis=0)
    expected = stats.entropy(mean) - np.mean([stats.entropy(q) for q in p[:, 2]])
    assert bald[2] == pytest.approx(expected)
    np.testing.assert_allclose(uncertainty.variation_ratios(p), [0.0, 0.0, 0.5])
    std = uncertainty.mean_std(p)
    assert std[0] == std[1] == 0.0 and std[2] == pytest.approx(np.std(p[:, 2], axis=0).mean())


def test_ensemble_disagreement_is_jensen_shannon():
    rng = np.random.default_rng(3)
    members = rng.dirichlet(np.ones(4), size=(3, 50))  # (M, N, C)
    mean = members.mean(axis=0)
    kl_to_mean = np.mean([stats.entropy(members[m].T, mean.T) for m in range(3)], axis=0)
    np.testing.assert_allclose(uncertainty.ensemble_disagreement(members), kl_to_mean, rtol=1e-6, atol=1e-12)
    assert np.all(uncertainty.ensemble_disagreement(members) <= math.log(3) + 1e-12)
    same = np.repeat(members[:1], 3, axis=0)
    np.testing.assert_allclose(uncertainty.ensemble_disagreement(same), 0.0, atol=1e-12)


@pytest.mark.parametrize("fn", [uncertainty.bald, uncertainty.variation_ratios, uncertainty.mean_std,
                                uncertainty.ensemble_disagreement])
def test_sample_scores_reject_bad_shapes(fn):
    with pytest.raises(ValueError, match=r"\(T, N, C\)"):
        fn(np.full((4, 3), 0.25))
    with pytest.raises(ValueError):
        fn(np.full((2, 1, 2), np.nan))


def test_classification_scores_equal_the_single_functions():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(6) * 0.4, size=300)
    scores = uncertainty.classification_scores(p)
    for name in ("least_confidence", "margin", "ratio", "entropy", "entropy_normalised"):
        np.testing.assert_allclose(scores[name], getattr(uncertainty, name)(p), err_msg=name)


if __name__ == "__main__":
    from tests import harness
    harness.main(__file__)

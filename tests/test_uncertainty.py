"""Uncertainty scores: hand-computed values, bounds, and scipy's entropy as a reference."""
import math

import numpy as np
import pytest
from scipy import stats

from transforms import uncertainty


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


if __name__ == "__main__":
    from tests import harness
    harness.main(__file__)

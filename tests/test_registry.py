"""The one score registry: consistent with the schema, the strategies and the scores themselves."""
import numpy as np
import pytest

from schemas import frames as frames_schema
from tests import harness
from transforms.score import registry, uncertainty
from transforms.select import base, factory


def _probabilities(n=50, c=10, seed=0):
    logits = np.random.default_rng(seed).normal(size=(n, c)) * 3
    return uncertainty.softmax(logits)


def test_names_are_unique_and_every_field_is_known():
    names = [s.name for s in registry.SCORES]
    assert len(names) == len(set(names))
    for s in registry.SCORES:
        assert s.needs in registry.NEEDS and s.uncertain_when in (registry.HIGH, registry.LOW)
        assert s.description.endswith(".")
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        registry.get("nope")


def test_schema_columns_follow_the_registry_in_order():
    assert frames_schema.SCORE_NAMES == registry.names(column=True) == ("entropy", "margin", "least_confidence")
    assert frames_schema.EXTRA_SCORE_NAMES == registry.names(column=False)
    described = {f.name: f.description for f in frames_schema.FRAME_FIELDS}
    for s in registry.SCORES:
        assert described[s.name] == s.description


def test_strategies_are_the_rankable_scores_then_the_set_strategies():
    assert factory.STRATEGY_NAMES == registry.strategy_names()
    assert registry.strategy_names()[-4:] == ("random", "coreset", "cluster_margin", "combined")
    for name in registry.names(rankable=True):
        assert factory.make_strategy(name).name == name


def test_functions_and_orientation():
    p = _probabilities()
    np.testing.assert_array_equal(registry.compute("entropy", p), uncertainty.entropy(p))
    np.testing.assert_array_equal(registry.compute("margin", p), uncertainty.margin(p))
    samples = np.stack([_probabilities(seed=s) for s in range(4)])
    np.testing.assert_array_equal(registry.compute("bald", samples), uncertainty.bald(samples))
    # margin is the only LOW score: ranked as 1 - margin, by the registry and the strategies alike.
    assert registry.names() and [s.name for s in registry.SCORES if s.uncertain_when == registry.LOW] == ["margin"]
    np.testing.assert_allclose(registry.wanted("margin", uncertainty.margin(p)), 1 - uncertainty.margin(p))
    pool = base.Pool(ids=np.arange(len(p)).astype(str), probabilities=p)
    np.testing.assert_allclose(base.score_values(pool, "margin"), 1 - uncertainty.margin(p))
    np.testing.assert_array_equal(base.score_values(pool, "entropy"), uncertainty.entropy(p))
    with pytest.raises(ValueError, match="computed by a transform"):
        registry.compute("uniqueness", p)


def test_every_score_of_an_array_has_its_function():
    from_arrays = (registry.PROBABILITIES, registry.MC_SAMPLES, registry.ENSEMBLE)
    assert set(registry.FUNCTIONS) == {s.name for s in registry.SCORES if s.needs in from_arrays}


if __name__ == "__main__":
    harness.main(__file__)

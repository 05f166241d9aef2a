"""The active-learning benchmark's machinery: Beam selections equal the in-process picks, the
head-only MC dropout, and the figures (labels to target, AUC, paired comparison with random)."""
import json
import types

import numpy as np
import pytest

from benchmarks import active_learning as al
from tests import harness
from transforms.select.base import Pool


def _pool(n=900, seed=0, classes=10, passes=8):
    rng = np.random.default_rng(seed)
    samples = rng.dirichlet(np.ones(classes) * 0.3, size=(passes, n)).astype(np.float32)
    probs = samples.mean(axis=0)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    return Pool(ids=al.frame_ids(n, "fashion_mnist"), embeddings=emb, probabilities=probs,
                probability_samples=samples)


@pytest.mark.parametrize("name", ["margin", "bald+power", "entropy+softrank"])
def test_select_candidates_on_beam_equals_in_process_picks(name):
    """Through FrameRecords, per-shard preselection (shards of 300) and the merge: same frames, same ranks."""
    pool = _pool()
    args = types.SimpleNamespace(beta=1.0, clusters=5, margin_multiplier=3.0)
    strategy = al.strategy_for(name, seed=2, round_index=3, args=args)
    picks = pool.ids[strategy.select(pool, 60).indices]
    shard_size = 300 if "softrank" not in name else 2000  # softrank's per-shard ranks: one shard
    assert al.beam_selection_matches(pool, 60, strategy, picks, "fashion_mnist", shard_size) > 0
    with pytest.raises(Exception, match="Failed assert"):
        al.beam_selection_matches(pool, 60, strategy, picks[::-1], "fashion_mnist", shard_size)


def test_stochastic_strategies_get_a_seed_per_round():
    args = types.SimpleNamespace(beta=1.0)
    pool = _pool()
    a = al.strategy_for("bald+power", 0, 1, args).select(pool, 50).indices
    b = al.strategy_for("bald+power", 0, 2, args).select(pool, 50).indices
    assert np.array_equal(a, al.strategy_for("bald+power", 0, 1, args).select(pool, 50).indices)
    assert len(set(a.tolist()) & set(b.tolist())) < 45
    assert al.needs_samples("bald+power") and al.needs_samples("bald") and not al.needs_samples("margin")


def test_ensemble_strategies_take_their_samples_from_the_members():
    """``ens<M>:<name>``: the strategy of ``name``, with M models' pool probabilities as samples;
    member 0 is the round's own model, the others are trained from their own seeds."""
    args = types.SimpleNamespace(beta=1.0, epochs=1, min_steps=4)
    assert al.ensemble_size("ens3:bald+power") == 3 and al.base_name("ens3:bald+power") == "bald+power"
    assert al.ensemble_size("bald") == 0 and al.base_name("bald") == "bald"
    assert al.needs_samples("ens3:bald+power") and not al.needs_samples("ens3:margin")
    pool = _pool()
    assert np.array_equal(al.strategy_for("ens3:bald+power", 0, 1, args).select(pool, 20).indices,
                          al.strategy_for("bald+power", 0, 1, args).select(pool, 20).indices)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(40, 28, 28, 1)).astype(np.uint8)
    y = rng.integers(0, 10, size=40)
    model = al.train(x, y, x[:8], y[:8], 10, seed=0, epochs=1, min_steps=4)[0]
    round_probabilities = al.pool_outputs(model, x[8:], 0)[0]
    samples = al.ensemble_samples(round_probabilities, x, y, x[:8], y[:8], x[8:], 10, 0, 3, args)
    assert samples.shape == (3, 32, 10) and np.allclose(samples.sum(axis=2), 1, atol=1e-5)
    assert np.array_equal(samples[0], round_probabilities)  # the round's model
    assert not np.allclose(samples[1], samples[2]) and not np.allclose(samples[0], samples[1])


def test_head_only_mc_dropout_is_consistent_and_samples_the_model():
    import keras
    keras.utils.set_random_seed(0)
    model = al.build_model((28, 28, 1), 10)
    x = np.random.default_rng(0).integers(0, 255, size=(64, 28, 28, 1)).astype(np.uint8)
    x[1] = x[0]  # the same image twice
    probs, emb, samples = al.pool_outputs(model, x, mc_samples=6, seed=3)
    assert np.allclose(probs, model.predict(x.astype("float32"), verbose=0), atol=1e-5)
    assert emb.shape == (64, 64) and samples.shape == (6, 64, 10)
    assert np.allclose(samples.sum(axis=2), 1, atol=1e-5)
    assert not np.allclose(samples[0], samples[1])  # fresh dropout masks per pass
    # Consistent MC dropout: within a pass every frame goes through the same sampled network.
    assert np.array_equal(samples[:, 0], samples[:, 1])
    assert np.array_equal(samples, al.pool_outputs(model, x, 6, seed=3)[2])  # seeded
    assert not np.allclose(samples, al.pool_outputs(model, x, 6, seed=4)[2])
    # Pass 0 equals Keras's own layers applied with that pass's masks (drawn as pool_outputs draws them).
    names = [layer.name for layer in model.layers]
    drop1, dense1, drop2, dense2 = model.layers[names.index("embedding") - 1:names.index("embedding") + 3]
    features = keras.Model(model.input, drop1.input).predict(x.astype("float32"), verbose=0)
    rng = np.random.default_rng([3, 7])
    keep1 = (rng.random(features.shape[1]) >= drop1.rate) / (1 - drop1.rate)
    keep2 = (rng.random(dense1.units) >= drop2.rate) / (1 - drop2.rate)
    expected = np.asarray(dense2(np.asarray(dense1(features * keep1.astype("float32"))) * keep2.astype("float32")))
    assert np.allclose(samples[0], expected, atol=1e-5)
    assert al.pool_outputs(model, x, 0)[2] is None
    assert al.mc_topk_overlap(samples, samples, 10) == 1.0
    assert 0 <= al.mc_topk_overlap(samples, al.pool_outputs(model, x, 6, seed=5)[2], 10) <= 1


def test_figures_labels_to_target_auc_and_paired_comparison():
    assert al.labels_to_reach([(100, 0.5), (300, 0.7), (500, 0.9)], 0.8) == pytest.approx(400)
    assert al.labels_to_reach([(100, 0.5), (300, 0.7)], 0.8) is None
    assert al.area_under_curve([(100, 0.5), (300, 0.7), (500, 0.9), (700, 0.1)], 500) == pytest.approx(0.7)
    assert al.sign_test_p(5, 5) == pytest.approx(1 / 32) and al.sign_test_p(0, 5) == 1.0

    def run(accs, start=100, step=200):
        return [{"labels": start + i * step, "accuracy": a, "ece": 0.1} for i, a in enumerate(accs)]
    curves = {"random": [run([0.5, 0.6, 0.7, 0.8]), run([0.5, 0.6, 0.7, 0.75])],
              "margin": [run([0.5, 0.8]), run([0.5, 0.7, 0.8])],
              "bald": [run([0.5, 0.6, 0.7, 0.8]), run([0.5, 0.8])]}
    out = al.summarise(curves, 0.8, types.SimpleNamespace(auc_labels=300))
    assert out["labels_to_target_per_seed"] == {"random": [700.0, None], "margin": [300.0, 500.0],
                                                "bald": [700.0, 300.0]}
    assert out["strategies_beating_random"] == ["margin"]  # bald ties random in seed 0
    assert out["vs_random"]["margin"]["wins"] == "2/2" and out["vs_random"]["bald"]["wins"] == "1/2"
    assert out["labels_to_target"]["random"]["mean"] is None and out["best_vs_random"] is None
    assert out["auc"]["margin"]["mean"] > out["auc"]["random"]["mean"]


def test_reuse_keeps_an_earlier_runs_curves_only_for_the_same_protocol(tmp_path):
    args = al.parse_args(["--quick", "--reuse", str(tmp_path / "results.json")])
    earlier = {key: getattr(args, key) for key in al.REUSE_KEYS}
    earlier.update(full_pool_accuracy=0.83, full_pool_accuracy_exact=0.8291, curves={"random": [[]]})
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    assert al.reused_run(args) == (0.8291, {"random": [[]]})
    other = al.parse_args(["--quick", "--batch", "400", "--reuse", str(tmp_path / "results.json")])
    with pytest.raises(ValueError, match="batch was 300, this run has 400"):
        al.reused_run(other)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=20000)
    conf = rng.uniform(0.5, 1.0, size=20000)
    correct = rng.uniform(size=20000) < conf
    predicted = np.where(correct, labels, 1 - labels)
    probs = np.zeros((20000, 2))
    probs[np.arange(20000), predicted] = conf
    probs[np.arange(20000), 1 - predicted] = 1 - conf
    assert al.expected_calibration_error(probs, labels) < 0.02
    sharp = np.where(probs > 0.5, 0.999, 0.001)
    assert al.expected_calibration_error(sharp, labels) > 0.2


if __name__ == "__main__":
    harness.main(__file__)

"""Selection strategies: a conformance suite every strategy passes, then each strategy's maths."""
import dataclasses
import numpy as np
import pytest

from tests import harness
from transforms.select import base, kcenter, stochastic, strategies
from transforms.select.base import Pool
from transforms.select.factory import make_strategy
from transforms.select.strategies import (Balanced, ClusterMargin, Combined, Excluding, KCenterGreedy,
                                          RandomSampling, TopK, allocate_quotas, round_robin_by_cluster)
from transforms.select.batchbald import BatchBALD, batch_bald
from transforms.select.stochastic import StochasticBatch
from transforms.select.redundancy import redundancy_figures
from transforms.select.uncertainty_kcenter import FARTHEST, MOST_UNCERTAIN, UncertaintyKCenter
from transforms.select.cost import CostBudget, CostModel, checked_cost_model, fit_cost_model, selection_cost


def _pool(n=400, seed=0, classes=5, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim)) * 4
    emb = (centres[rng.integers(6, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)
    probs = rng.dirichlet(np.ones(classes) * 0.5, size=n)
    samples = rng.dirichlet(np.ones(classes), size=(6, n))
    return Pool(ids=np.array([f"frame-{i:05d}" for i in range(n)], dtype=object), embeddings=emb,
                probabilities=probs, probability_samples=samples,
                metadata={"camera": np.array([f"cam{i % 3}" for i in range(n)], dtype=object),
                          "predicted_class": probs.argmax(axis=1), "boxes": rng.integers(0, 9, size=n)})


ALL = [
    TopK("entropy"), TopK("margin"), TopK("least_confidence"), TopK("bald"), TopK("variation_ratios"),
    RandomSampling(seed=3), KCenterGreedy(seed=1), ClusterMargin(n_clusters=6, margin_multiplier=4),
    Combined({"entropy": 1.0, "bald": 0.5}),
    Balanced(TopK("margin"), key="camera"),
    Balanced(KCenterGreedy(), key="predicted_class"),
    Excluding(TopK("entropy"), exclude_ids=["frame-00001", "frame-00002"], near_duplicate_distance=0.5),
    Excluding(ClusterMargin(n_clusters=4), near_duplicate_distance=1.0),
    StochasticBatch("bald", "power", seed=2), StochasticBatch("margin", "softmax", beta=4.0),
    StochasticBatch("entropy", "softrank"),
    Balanced(StochasticBatch("variation_ratios", "power"), key="camera"),
    BatchBALD(num_configs=64),
    UncertaintyKCenter("entropy", pool_multiplier=2), UncertaintyKCenter("margin", pool_multiplier=1),
    CostBudget(UncertaintyKCenter("entropy"), "frames"), CostBudget(TopK("margin"), "seconds"),
    CostBudget(KCenterGreedy(), "boxes", CostModel(5.0, 35.0)),
]


def _cost_budget(strategy):
    return isinstance(strategy, CostBudget) and strategy.unit != "frames"
# Strategies whose result depends only on the ids and values, not on the pool's order.
ORDER_FREE = [s for s in ALL if not isinstance(s, (KCenterGreedy, ClusterMargin, Excluding, BatchBALD,
                                                    UncertaintyKCenter))
              and not (isinstance(s, Balanced) and isinstance(s.inner, KCenterGreedy))
              and not (isinstance(s, CostBudget) and not isinstance(s.inner, TopK))]


@pytest.mark.parametrize("strategy", ALL, ids=repr)
def test_conformance(strategy):
    pool = _pool()
    for budget in (0, 1, 37, len(pool) + 5):
        sel = strategy.select(pool, budget)
        k = len(sel.indices)
        assert sel.indices.dtype == np.int64 and len(set(sel.indices.tolist())) == k
        if _cost_budget(strategy):  # a budget of boxes or seconds, not frames
            costs = strategy.cost_model.costs(pool.metadata["boxes"], strategy.unit)
            assert costs[sel.indices].sum() <= budget + 1e-9
        else:
            assert k <= min(budget, len(pool))
        assert np.all((0 <= sel.indices) & (sel.indices < len(pool)))
        assert sel.scores.shape == (k,) and np.all(np.isfinite(sel.scores))
        assert all(v.shape == (k,) for v in sel.components.values())
        if not isinstance(strategy, (Excluding, UncertaintyKCenter, CostBudget)):  # rules and costs: fewer
            assert k == min(budget, len(pool))
        if k:
            assert sel.components, "a selection must explain its rank"
    again = strategy.select(pool, 37)
    assert np.array_equal(strategy.select(pool, 37).indices, again.indices)
    assert strategy.select(pool.take(np.arange(0)), 10).indices.size == 0
    with pytest.raises(ValueError, match="budget"):
        strategy.select(pool, -1)
    # preselection keeps what the final selection needs, and is a subset of the shard
    pre = strategy.preselect(pool, 20)
    assert len(set(pre.tolist())) == len(pre) and np.all(pre < len(pool))
    assert repr(strategy).startswith(type(strategy).__name__)


@pytest.mark.parametrize("strategy", ORDER_FREE, ids=repr)
def test_order_free_strategies_ignore_pool_order(strategy):
    pool = _pool()
    perm = np.random.default_rng(9).permutation(len(pool))
    a = pool.ids[strategy.select(pool, 30).indices]
    b = pool.take(perm).ids[strategy.select(pool.take(perm), 30).indices]
    assert sorted(a) == sorted(b)


def test_top_k_matches_brute_force_and_orients_margin():
    pool = _pool()
    sel = TopK("margin").select(pool, 10)
    raw_margin = np.sort(np.abs(np.diff(np.sort(pool.probabilities, axis=1)[:, -2:], axis=1))[:, 0])
    assert np.allclose(np.sort(1 - sel.scores), raw_margin[:10])
    ent = base.score_values(pool, "entropy")
    assert set(TopK("entropy").select(pool, 15).indices) == set(np.argsort(-ent)[:15])


def test_random_differs_by_seed_and_is_uniform_over_groups():
    pool = _pool(n=3000)
    a, b = RandomSampling(0).select(pool, 300), RandomSampling(1).select(pool, 300)
    assert len(set(a.indices) & set(b.indices)) < 100
    counts = np.bincount(a.indices % 3, minlength=3)
    assert counts.min() > 70  # 100 expected per third


def test_k_center_matches_scikit_activeml_coreset():
    """Same farthest-first picks as skactiveml's CoreSet when labelled points seed both; ours is in
    cosine distance, which is CoreSet's Euclidean farthest-first on L2-normalised embeddings."""
    from skactiveml.pool import CoreSet
    pool = _pool(n=600)
    x = base.unit_rows(pool.embeddings)
    labelled = np.arange(5)
    y = np.full(len(x), np.nan)
    y[labelled] = 0
    theirs = CoreSet(random_state=0).query(x, y, batch_size=25)
    ours = KCenterGreedy().select(pool.take(np.arange(5, 600)), 25, labelled=pool.take(labelled))
    assert list(ours.indices + 5) == list(theirs)
    assert np.all(np.diff(ours.scores) <= 1e-6)  # farthest-first gains never grow


def test_lazy_k_center_equals_naive_and_reports_radius():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(50, 16)) * 5
    x = (centres[rng.integers(50, size=60_000)] + rng.normal(size=(60_000, 16))).astype(np.float32)
    naive = kcenter.k_center_greedy(x, 300, method="naive", seed=4)
    pruned = kcenter.k_center_greedy(x, 300, seed=4, n_candidates=512)  # forces many rebuilds
    assert np.mean(naive.indices == pruned.indices) > 0.98
    assert pruned.radius == pytest.approx(kcenter.coverage_radius(x, x[pruned.indices]), rel=1e-4)
    assert naive.radius == pytest.approx(pruned.radius, rel=1e-3)
    labelled = x[:50]
    a = kcenter.k_center_greedy(x, 200, labelled=labelled, method="naive")
    b = kcenter.k_center_greedy(x, 200, labelled=labelled, n_candidates=256)
    assert np.mean(a.indices == b.indices) > 0.98 and b.radius == pytest.approx(a.radius, rel=1e-3)
    with pytest.raises(ValueError, match="shape"):
        kcenter.k_center_greedy(x[0], 3)
    with pytest.raises(ValueError, match="method"):
        kcenter.k_center_greedy(x, 3, method="fast")


def test_round_robin_takes_smallest_clusters_first():
    clusters = np.array([7, 7, 7, 3, 3, 9])  # sizes: 7 -> 3, 3 -> 2, 9 -> 1
    assert list(round_robin_by_cluster(clusters, 6)) == [5, 3, 0, 4, 1, 2]
    assert list(round_robin_by_cluster(clusters, 2)) == [5, 3]


def test_cluster_margin_chooses_among_lowest_margins_across_clusters():
    pool = _pool(n=1000)
    strategy = ClusterMargin(n_clusters=6, margin_multiplier=5)
    sel = strategy.select(pool, 30)
    margin = 1 - base.score_values(pool, "margin")
    lowest = set(np.argsort(margin)[:150].tolist())
    assert set(sel.indices.tolist()) <= lowest
    clusters = strategies.kmeans_labels(pool.embeddings[np.sort(list(lowest))], 6)
    assert len(set(clusters.tolist())) > 1
    sizes = sel.components["cluster_size"]
    assert sizes[0] == sizes[: len(set(sizes))].min()  # the first pick comes from the smallest cluster
    with pytest.raises(ValueError, match="margin_multiplier"):
        ClusterMargin(margin_multiplier=0.5)


def test_combined_objective_is_the_product_of_normalised_scores_with_thresholds():
    pool = _pool()
    strategy = Combined({"entropy": 2.0, "least_confidence": 0.5}, thresholds={"bald": 0.05})
    sel = strategy.select(pool, 20)
    ent, lc, bald = (base.score_values(pool, n) for n in ("entropy", "least_confidence", "bald"))
    keep = bald >= 0.05
    expected = np.zeros(len(pool))
    expected[keep] = strategies.normalise(ent[keep]) ** 2.0 * strategies.normalise(lc[keep]) ** 0.5
    assert set(sel.indices.tolist()) == set(np.argsort(-expected)[:20].tolist())
    assert np.allclose(sel.scores, expected[sel.indices])
    assert np.all(sel.components["bald"] >= 0.05)
    with pytest.raises(ValueError, match="strengths"):
        Combined({"entropy": 0})


def test_balanced_quotas_and_redistribution():
    pool = _pool(n=300)
    sel = Balanced(TopK("entropy"), key="camera", quotas={"cam0": 0.5, "cam1": 0.3, "cam2": 0.2}).select(pool, 50)
    cams = pool.metadata["camera"][sel.indices]
    assert [int(np.sum(cams == c)) for c in ("cam0", "cam1", "cam2")] == [25, 15, 10]
    assert allocate_quotas({"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 100, "c": 100}, 30) == {"a": 2, "b": 14, "c": 14}
    assert sum(allocate_quotas({"a": 1, "b": 3}, {"a": 5, "b": 5}, 30).values()) == 10
    with pytest.raises(ValueError, match="metadata"):
        Balanced(TopK(), key="site").select(pool, 5)


def test_exclusions_of_labelled_ids_and_near_duplicates():
    pool = _pool(n=500)
    labelled = pool.take(np.arange(20))
    strategy = Excluding(TopK("entropy"), exclude_ids=["frame-00100"], near_duplicate_distance=0.05)
    sel = strategy.select(pool, 40, labelled=labelled)
    chosen = sel.indices
    assert not set(chosen.tolist()) & (set(range(20)) | {100})
    x = base.unit_rows(pool.embeddings[chosen])  # cosine distance, the one distance of selection
    d = 1 - x @ x.T + np.eye(len(x)) * 99
    assert d.min() > 0.05
    dl = 1 - x @ base.unit_rows(labelled.embeddings).T
    assert dl.min() > 0.05
    assert len(chosen) == 40
    plain = TopK("entropy").select(pool, 40).indices
    y = base.unit_rows(pool.embeddings[plain])
    assert (1 - y @ y.T + np.eye(len(y)) * 99).min() < 0.05  # the exclusion had something to remove


def test_make_strategy_builds_and_validates():
    assert isinstance(make_strategy("cluster_margin", {"n_clusters": 4}), ClusterMargin)
    wrapped = make_strategy("margin", {"balance_key": "camera", "near_duplicate_distance": 0.1})
    assert isinstance(wrapped, Excluding) and isinstance(wrapped.inner, Balanced)
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("vibes")
    with pytest.raises(ValueError, match="bad parameters"):
        make_strategy("coreset", {"n_clusters": 3})
    a = base.selection_id(make_strategy("coreset").describe(), "v1", ["x"])
    assert a == base.selection_id(make_strategy("coreset").describe(), "v1", ["x"])
    assert a != base.selection_id(make_strategy("coreset", {"seed": 2}).describe(), "v1", ["x"])


# --- stochastic batch acquisition (Kirsch et al. 2023) -----------------------------------------

def test_stochastic_power_samples_in_proportion_to_the_score():
    """Gumbel-top-1 of beta*log(s) + g draws frame i with probability s_i**beta / sum(s**beta)."""
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    ids = np.array(["a", "b", "c", "d"])
    for beta, expected in ((1.0, scores / scores.sum()), (2.0, scores**2 / (scores**2).sum())):
        firsts = np.array([np.argmax(stochastic.stochastic_keys(scores, ids, "power", beta, seed))
                           for seed in range(3000)])
        freq = np.bincount(firsts, minlength=4) / len(firsts)
        assert np.allclose(freq, expected, atol=0.03), (beta, freq)
    # softrank depends on the order only; softmax on differences
    assert np.array_equal(stochastic.stochastic_keys(scores, ids, "softrank", 1.0, 5),
                          stochastic.stochastic_keys(scores * 10, ids, "softrank", 1.0, 5))
    assert np.allclose(stochastic.stochastic_keys(scores + 3, ids, "softmax", 1.0, 5),
                       stochastic.stochastic_keys(scores, ids, "softmax", 1.0, 5) + 3)


def test_stochastic_batch_spans_top_k_and_random_and_its_seed():
    pool = _pool(n=2000)
    bald = base.score_values(pool, "bald")
    cold = StochasticBatch("bald", "power", beta=1e4).select(pool, 50)
    assert set(cold.indices.tolist()) == set(TopK("bald").select(pool, 50).indices.tolist())
    warm = StochasticBatch("bald", "power", beta=1.0).select(pool, 200)
    top = set(TopK("bald").select(pool, 200).indices.tolist())
    assert len(top & set(warm.indices.tolist())) < 150  # not the top-k: a sample
    assert bald[warm.indices].mean() > bald.mean()  # but tilted to high scores
    assert np.allclose(warm.components["bald"], bald[warm.indices])
    assert np.all(np.diff(warm.scores) <= 0)  # ranked by the perturbed key
    other = StochasticBatch("bald", "power", beta=1.0, seed=1).select(pool, 200)
    assert len(set(other.indices.tolist()) & set(warm.indices.tolist())) < 180
    assert np.array_equal(StochasticBatch("bald", "power", beta=1.0).select(pool, 200).indices, warm.indices)


@pytest.mark.parametrize("mode", ["power", "softmax"])
def test_stochastic_preselection_per_shard_is_exact(mode):
    pool = _pool(n=1500)
    strategy = StochasticBatch("entropy", mode, beta=2.0, seed=11)
    shards = np.array_split(np.random.default_rng(0).permutation(len(pool)), 5)
    kept = np.concatenate([s[strategy.preselect(pool.take(s), 40)] for s in shards])
    merged = kept[strategy.select(pool.take(kept), 40).indices]
    assert sorted(pool.ids[merged]) == sorted(pool.ids[strategy.select(pool, 40).indices])


def test_stochastic_through_make_strategy_and_validation():
    built = make_strategy("margin", {"stochastic": "softrank", "beta": 2, "seed": 4,
                                     "balance_key": "camera"})
    assert isinstance(built, Balanced) and isinstance(built.inner, StochasticBatch)
    assert built.inner.params() == {"score": "margin", "stochastic": "softrank", "beta": 2.0, "seed": 4}
    assert make_strategy("bald", {"stochastic": "power"}).name == "bald+power"
    with pytest.raises(ValueError, match="score strategy"):
        make_strategy("coreset", {"stochastic": "power"})
    with pytest.raises(ValueError, match="stochastic mode"):
        make_strategy("bald", {"stochastic": "boltzmann"})
    with pytest.raises(ValueError, match="beta"):
        StochasticBatch("bald", beta=-1)
    with pytest.raises(ValueError, match="finite"):
        stochastic.stochastic_keys(np.array([np.nan]), np.array(["a"]))


def test_batchbald_takes_one_of_many_copies_where_top_k_bald_takes_them_all():
    """Kirsch et al. 2019's motivating case: a highly informative frame repeated 20 times."""
    rng = np.random.default_rng(0)
    copies = np.repeat(rng.dirichlet(np.ones(4) * 0.2, size=(10, 1)), 20, axis=1)
    samples = np.concatenate([copies, rng.dirichlet(np.ones(4) * 0.6, size=(10, 60))], axis=1)
    pool = Pool(ids=np.array([f"f{i:03d}" for i in range(80)], dtype=object), probability_samples=samples)
    top_k = TopK("bald").select(pool, 10).indices
    chosen = BatchBALD(num_configs=1000, shortlist_multiplier=8).select(pool, 10)
    assert np.sum(top_k < 20) >= 5 and np.sum(chosen.indices < 20) == 1
    # while configurations are enumerated exactly, the gains are exact conditional informations
    indices, gains = batch_bald(samples, 3, num_configs=10**6)
    bald = base.score_values(pool, "bald")
    assert gains[0] == pytest.approx(bald.max()) and np.all(np.diff(gains) <= 1e-9)
    with pytest.raises(ValueError, match="probability_samples"):
        BatchBALD().select(Pool(ids=pool.ids, probabilities=samples[0]), 3)
    with pytest.raises(ValueError, match="num_configs"):
        BatchBALD(num_configs=0)


if __name__ == "__main__":
    harness.main(__file__)


def _camera_pool(seed=0):
    """A fixed camera's 120 consecutive 1-fps frames (a slow random walk of embeddings, all very
    uncertain) beside four other sources of 20 frames each (far apart, less uncertain)."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(scale=0.02, size=(120, 64)), axis=0) + rng.normal(size=64) * 3
    others = np.concatenate([rng.normal(size=64) * 3 + rng.normal(scale=0.3, size=(20, 64)) for _ in range(4)])
    source = np.array(["cam.avi"] * 120 + [f"clip{i}.mp4" for i in range(4) for _ in range(20)], dtype=object)
    times = np.concatenate([np.arange(120.0), np.tile(np.arange(20.0), 4)])
    uncertainty = np.concatenate([0.9 + 0.05 * rng.random(120), 0.5 + 0.3 * rng.random(80)])
    return Pool(ids=np.array([f"f{i:04d}" for i in range(200)], dtype=object),
                embeddings=np.concatenate([walk, others]).astype(np.float32),
                scores={"detection_max": uncertainty}, metadata={"source": source, "timestamp": times})


def test_uncertainty_kcenter_spans_sources_and_keeps_consecutive_frames_out():
    pool = _camera_pool()
    top = TopK("detection_max").select(pool, 20)
    picked = UncertaintyKCenter("detection_max", pool_multiplier=3).select(pool, 20)
    top_figures = redundancy_figures(pool, top.indices, "detection_max")
    figures = redundancy_figures(pool, picked.indices, "detection_max")
    assert top_figures["top_source_share"] == 1.0 and top_figures["sources"] == 1
    assert figures["sources"] == 5 and figures["top_source_share"] <= 0.5
    assert figures["coverage_radius"] < top_figures["coverage_radius"]
    assert figures["mean_score_ratio"] >= 0.7
    # No two frames of a source within 2 s unless their embeddings are 0.1 apart.
    x = base.unit_rows(pool.embeddings[picked.indices])
    src, t = pool.metadata["source"][picked.indices], pool.metadata["timestamp"][picked.indices]
    for i in range(len(x)):
        for j in range(i):
            if src[i] == src[j] and abs(t[i] - t[j]) < 2:
                assert 1 - x[i] @ x[j] >= 0.1
    # Each pick explains itself: the first is the most uncertain, then each is the farthest, at
    # its recorded distance from the earlier picks.
    assert picked.indices[0] == top.indices[0]
    assert picked.components["rule"][0] == MOST_UNCERTAIN and set(picked.components["rule"][1:]) == {FARTHEST}
    for k in range(1, len(x)):
        assert picked.components["distance_to_selected"][k] == pytest.approx((1 - x[:k] @ x[k]).min(), abs=1e-9)
    # pool_multiplier 1: the budget's worth of admitted frames, still one per stretch of the camera.
    narrow = UncertaintyKCenter("detection_max", pool_multiplier=1).select(pool, 20)
    assert len(narrow.indices) == 20 and redundancy_figures(pool, narrow.indices)["sources"] >= 2


def test_uncertainty_kcenter_min_distance_stops_and_preselection_is_exact():
    pool = _camera_pool(seed=1)
    strategy = UncertaintyKCenter("detection_max", pool_multiplier=2, min_distance=1.5)
    assert len(strategy.select(pool, 50).indices) < 50  # nothing that far is left: it stops short
    # Per shard, each keeps its own thinned pool; the union gives a batch as spread as the whole's.
    strategy = UncertaintyKCenter("detection_max", pool_multiplier=2)
    shards = [np.arange(0, 200, 2), np.arange(1, 200, 2)]
    kept = np.concatenate([s[strategy.preselect(pool.take(s), 15)] for s in shards])
    merged = kept[strategy.select(pool.take(kept), 15).indices]
    whole = strategy.select(pool, 15).indices
    assert len(merged) == 15
    assert redundancy_figures(pool, merged)["sources"] == redundancy_figures(pool, whole)["sources"] == 5
    for bad in ({"pool_multiplier": 0.5}, {"min_distance": -1}, {"temporal_distance": 3}, {"min_seconds_apart": "2"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            UncertaintyKCenter("detection_max", **bad)
    assert isinstance(make_strategy("uncertainty_kcenter", {"score": "entropy"}), UncertaintyKCenter)


def test_uncertainty_kcenter_leaves_frames_without_uncertainty_out_while_others_fill_the_budget():
    """8 frames with a box to learn from (one scene) and 52 with none (detection_max 0), among them
    black and washed-out frames far from everything: farthest-first would pick those outliers
    from a pool padded with zero-score frames; they enter only to fill the budget."""
    rng = np.random.default_rng(3)
    scene = rng.normal(size=32) * 3
    informative = scene + rng.normal(scale=0.5, size=(8, 32))
    empty = np.concatenate([-scene + rng.normal(scale=0.5, size=(44, 32)), rng.normal(scale=20, size=(8, 32))])
    pool = Pool(ids=np.array([f"f{i:02d}" for i in range(60)], dtype=object),
                embeddings=np.concatenate([informative, empty]).astype(np.float32),
                scores={"detection_max": np.concatenate([0.2 + 0.7 * rng.random(8), np.zeros(52)])})
    picked = UncertaintyKCenter("detection_max", pool_multiplier=3).select(pool, 5)
    assert len(picked.indices) == 5 and set(picked.indices) <= set(range(8))
    filled = UncertaintyKCenter("detection_max", pool_multiplier=3).select(pool, 10)
    assert len(filled.indices) == 10 and set(range(8)) <= set(filled.indices)
    # A user's own stored score has no known floor: its zeros are ranked like any value.
    own = pool.replace(scores={"my_score": pool.scores["detection_max"]})
    assert not set(UncertaintyKCenter("my_score", pool_multiplier=3).select(own, 5).indices) <= set(range(8))


def test_pool_replace_keeps_the_other_fields():
    """``Pool`` is a frozen dataclass: ``replace`` works whatever the frame count (``NamedTuple``'s
    ``_replace`` raised ``TypeError`` because ``len`` is the frame count)."""
    pool = _pool(30)
    other = pool.replace(scores={"margin": np.zeros(30)})
    assert len(other) == 30 and other.ids is pool.ids and other.embeddings is pool.embeddings
    assert other.scores["margin"].shape == (30,) and pool.scores is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.ids = None


# --- annotation cost as the budget --------------------------------------------------------------

def test_cost_budget_fills_seconds_greedily_in_the_inner_ranking():
    pool = _pool()
    model = CostModel(seconds_per_frame=5.0, seconds_per_box=7.0)
    sel = CostBudget(TopK("entropy"), "seconds", model).select(pool, 300)
    seconds = model.seconds(pool.metadata["boxes"])
    # brute force: entropy order, each frame taken if it still fits
    expected, left = [], 300.0
    for i in TopK("entropy").select(pool, len(pool)).indices:
        if seconds[i] <= left:
            expected.append(i)
            left -= seconds[i]
    assert sel.indices.tolist() == expected
    assert left < seconds.min()  # nothing left out could still be paid for
    assert np.allclose(sel.components["label_seconds"], seconds[sel.indices])
    assert np.array_equal(sel.components["predicted_boxes"], pool.metadata["boxes"][sel.indices])
    # frames that are cheap to label go further: more frames than a frame budget of 300 / mean cost
    assert len(sel.indices) > 300 / seconds.mean() * 0.8


def test_a_boxes_budget_is_a_seconds_budget_divided_by_seconds_per_box():
    pool = _pool()
    model = CostModel(4.0, 8.0)
    inner = UncertaintyKCenter("entropy", pool_multiplier=3)
    boxes = CostBudget(inner, "boxes", model).select(pool, 40)
    seconds = CostBudget(inner, "seconds", model).select(pool, 40 * 8)
    assert boxes.indices.tolist() == seconds.indices.tolist()
    # an empty frame still costs the time to open it: 0.5 box here
    assert np.allclose(model.costs([0, 2], "boxes"), [0.5, 2.5])


def test_a_frames_budget_selects_and_identifies_as_the_inner_strategy():
    pool = _pool()
    inner = UncertaintyKCenter("entropy")
    wrapped = make_strategy("uncertainty_kcenter", {"score": "entropy", "budget_unit": "frames",
                                                    "cost_model": {"seconds_per_box": 35.0}})
    assert isinstance(wrapped, CostBudget) and wrapped.cost_model.seconds_per_box == 35.0
    assert wrapped.describe() == inner.describe()  # the same selection id as without a cost model
    assert wrapped.select(pool, 20).indices.tolist() == inner.select(pool, 20).indices.tolist()
    cost = selection_cost([0, 3, 1], CostModel(5.0, 7.0))
    assert cost == {"frames": 3, "predicted_boxes": 4, "estimated_label_seconds": 43.0}
    with pytest.raises(ValueError, match="budget unit"):
        make_strategy("entropy", {"budget_unit": "hours"})
    with pytest.raises(ValueError, match="cost_model"):
        make_strategy("entropy", {"cost_model": {"per_frame": 1}})
    seconds_budget = make_strategy("uncertainty_kcenter", {"budget_unit": "seconds"})
    assert seconds_budget.describe()["params"]["budget_unit"] == "seconds"


def test_cost_model_fitted_to_lead_times_recovers_frame_and_box_seconds():
    rng = np.random.default_rng(7)
    boxes = rng.integers(0, 12, size=200)
    lead = 4.0 + 6.0 * boxes + rng.normal(0, 1.0, size=200).clip(-3, 3)
    lead[:6] *= 40  # annotators who left the task open
    model = fit_cost_model(lead.tolist() + [None, float("nan"), 0.0], boxes.tolist() + [1, 1, 1])
    assert model.source == "calibrated" and model.annotations == 190
    assert abs(model.seconds_per_frame - 4.0) < 1.0 and abs(model.seconds_per_box - 6.0) < 0.3
    assert fit_cost_model(lead[:29], boxes[:29]) is None  # too few: the published defaults stay
    classification = fit_cost_model([3.0, 5.0] * 20, [0] * 40)
    assert classification.seconds_per_frame == pytest.approx(4.0) and classification.seconds_per_box == 7.0
    assert fit_cost_model([10.0] * 40, [2] * 40) is None  # frame and box time cannot be told apart
    # the user's numbers win over a fit; a fit over the published defaults
    assert checked_cost_model(seconds_per_box=35.0, calibrated=model) == CostModel(model.seconds_per_frame, 35.0,
                                                                                   "given", 0)
    assert checked_cost_model(calibrated=model) == model
    assert checked_cost_model() == CostModel(5.0, 7.0, "published", 0)
    with pytest.raises(ValueError, match="seconds_per_box"):
        checked_cost_model(seconds_per_box=-1.0)


class _FrameByFrameUncertaintyKCenter(UncertaintyKCenter):
    """The reference: the thinned pool formed one frame at a time, one ``(D,) x (n, D)`` product
    per frame looked at (the implementation before blocks)."""

    def _thinned_pool(self, pool, budget, labelled):
        from transforms.select.uncertainty_kcenter import SOURCE_KEY, TIME_KEY, ThinnedPool
        size = self._pool_size(len(pool), budget)
        values = base.score_values(pool, self.score)
        order = base.rank_by(values, pool.ids, len(pool))
        embeddings = np.asarray(pool.embeddings)
        meta = pool.metadata or {}
        sources = np.asarray(meta[SOURCE_KEY]) if SOURCE_KEY in meta else None
        times = (np.asarray(meta[TIME_KEY], dtype=np.float64) if TIME_KEY in meta
                 else np.full(len(pool), np.nan))
        known = None
        if labelled is not None and labelled.embeddings is not None and len(labelled):
            known = base.unit_rows(labelled.embeddings)
        admitted, nearest_known = [], []
        kept = np.empty((size, embeddings.shape[1]))
        for i in order:
            if len(admitted) == size:
                break
            row = base.unit_rows(embeddings[i:i + 1])[0]
            to_known = float((1.0 - known @ row).min()) if known is not None else np.inf
            if to_known < self.min_distance:
                continue
            if admitted:
                to_kept = 1.0 - kept[:len(admitted)] @ row
                if to_kept.min() < self.min_distance:
                    continue
                if sources is not None and self.min_seconds_apart > 0 and np.isfinite(times[i]):
                    rows = np.asarray(admitted)
                    neighbours = (sources[rows] == sources[i]) & (np.abs(times[rows] - times[i]) < self.min_seconds_apart)
                    if np.any(neighbours & (to_kept < self.temporal_distance)):
                        continue
            kept[len(admitted)] = row
            admitted.append(i)
            nearest_known.append(to_known)
        admitted = np.asarray(admitted, dtype=np.int64)
        return ThinnedPool(admitted, kept[:len(admitted)], np.asarray(nearest_known, dtype=np.float64),
                           values[admitted])


def _clips_pool(rng, n, dim, sources):
    """Clips of near-copies (AR walks around random centres), exact copies, timestamps with
    NaNs (still images) and tied uncertainties: every rule of the thinned pool has work."""
    clip = rng.integers(sources, size=n)
    centres = rng.normal(size=(sources, dim))
    x = centres[clip] + np.cumsum(rng.normal(scale=0.05, size=(n, dim)), axis=0) * 0.2
    copies = rng.choice(n, size=n // 10, replace=False)
    x[copies] = x[rng.choice(n, size=len(copies))]  # exact copies: distance 0
    times = np.round(rng.uniform(0, n / 4, size=n), 1)
    times[rng.random(n) < 0.05] = np.nan
    uncertainty = np.round(rng.random(n), 2)  # many ties, broken by id
    return Pool(ids=np.array([f"f{i:05d}" for i in rng.permutation(n)], dtype=object),
                embeddings=x.astype(np.float32), scores={"entropy": uncertainty},
                metadata={"source": np.array([f"cam{c}.mp4" for c in clip], dtype=object), "timestamp": times})


@pytest.mark.parametrize("seed", range(6))
def test_uncertainty_kcenter_blocks_equal_the_frame_by_frame_pass(seed, monkeypatch):
    """The block-screened thinned pool gives the frame-by-frame pass's selection to the last bit:
    the same indices in the same order, the same scores and components, the same preselection;
    with labelled frames, several sources and the temporal rule, blocks smaller and larger than
    the pool, and thresholds set exactly to distances that occur (the decisions re-checked
    frame by frame)."""
    from transforms.select import uncertainty_kcenter
    rng = np.random.default_rng(seed)
    n, dim = int(rng.integers(300, 1500)), int(rng.choice([16, 64, 200]))
    pool = _clips_pool(rng, n, dim, sources=int(rng.integers(1, 12)))
    labelled = Pool(ids=np.array([f"l{i}" for i in range(40)], dtype=object),
                    embeddings=np.concatenate([pool.embeddings[rng.choice(n, 20)],
                                               rng.normal(size=(20, dim)).astype(np.float32)]))
    unit = base.unit_rows(pool.embeddings)
    a, b = rng.choice(n, 2, replace=False)
    tied = float(1.0 - unit[a] @ unit[b])  # a distance that occurs: a threshold exactly on it
    settings = [{}, {"min_distance": 0.02, "temporal_distance": 0.3, "min_seconds_apart": 5.0},
                {"min_distance": min(tied, 1.99), "temporal_distance": min(tied + 0.01, 2.0), "pool_multiplier": 5},
                {"min_seconds_apart": 0.0, "pool_multiplier": 1.5}]
    budget = int(rng.integers(5, 120))
    compared = 0
    for block in (7, 256):
        monkeypatch.setattr(uncertainty_kcenter, "BLOCK", block)
        for params in settings:
            for known in (None, labelled):
                blocked = UncertaintyKCenter("entropy", **params)
                reference = _FrameByFrameUncertaintyKCenter("entropy", **params)
                got, want = blocked.select(pool, budget, known), reference.select(pool, budget, known)
                assert got.indices.tolist() == want.indices.tolist()
                assert np.array_equal(got.scores, want.scores)
                assert sorted(got.components) == sorted(want.components)
                for name in want.components:
                    assert np.array_equal(got.components[name], want.components[name]), name
                assert blocked.preselect(pool, budget, known).tolist() == reference.preselect(pool, budget, known).tolist()
                compared += len(want.indices)
    assert compared > 0

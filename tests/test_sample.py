"""SelectCandidates: distributed top-k by uncertainty, identical frames collapsed."""
import apache_beam as beam
import numpy as np
import pytest

from tests import harness
from tests.records_factory import clustered_records, frame_record
from transforms.select.kcenter import coverage_radius, k_center_greedy
from transforms.select.ptransforms import SelectCandidates, strategy_score
from transforms.select.factory import make_strategy


def _select(records, budget, strategy="entropy"):
    return harness.run_collect(lambda p: {
        "candidates": p | beam.Create(records) | SelectCandidates(budget, strategy)})["candidates"]


def _random_records(n, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=n)
    return [frame_record(f"file:///cam/{i:04d}.png", probabilities=p) for i, p in enumerate(probs)]


@pytest.mark.parametrize("strategy", ["entropy", "margin", "least_confidence"])
def test_top_k_matches_brute_force(strategy):
    records = _random_records(300)
    candidates = sorted(_select(records, 25, strategy), key=lambda c: c.rank)
    expected = sorted(records, key=lambda r: (strategy_score(r, strategy), r.frame.frame_id), reverse=True)[:25]
    assert [c.frame_id for c in candidates] == [r.frame.frame_id for r in expected]
    assert [c.rank for c in candidates] == list(range(1, 26))
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(c.strategy == strategy and c.duplicates == 1 for c in candidates)


def test_margin_score_is_one_minus_margin():
    [c] = _select([frame_record("file:///a.png", probabilities=(0.6, 0.3, 0.1))], 1, "margin")
    assert c.score == pytest.approx(0.7)
    assert dict(c.scores)["margin"] == pytest.approx(0.3)


def test_identical_frames_are_selected_once():
    uncertain = (0.34, 0.33, 0.33)
    records = [
        frame_record("file:///cam/b.png", probabilities=uncertain, pixel_hash="same"),
        frame_record("file:///cam/a.png", probabilities=uncertain, pixel_hash="same"),
        frame_record("file:///cam/video.mp4", frame_index=30, timestamp_s=1.0,
                     probabilities=uncertain, pixel_hash="same"),
        frame_record("file:///cam/c.png", probabilities=(0.9, 0.05, 0.05)),
        frame_record("file:///cam/d.png", probabilities=(0.98, 0.01, 0.01)),
    ]
    candidates = sorted(_select(records, 10), key=lambda c: c.rank)
    assert len(candidates) == 3
    first = candidates[0]
    assert first.source_uri == "file:///cam/a.png" and first.duplicates == 3
    assert [c.source_uri for c in candidates[1:]] == ["file:///cam/c.png", "file:///cam/d.png"]


def test_budget_zero_and_validation():
    assert _select(_random_records(5), 0) == []
    with pytest.raises(ValueError, match="budget"):
        SelectCandidates(-1)
    with pytest.raises(ValueError, match="strategy must be one of"):
        SelectCandidates(5, "most_beautiful")
    with pytest.raises(ValueError, match="shard_size"):
        SelectCandidates(100, "entropy", shard_size=100)


def test_rerun_selects_the_same_frames():
    records = _random_records(200, seed=3)
    first = sorted((c.rank, c.frame_id) for c in _select(records, 20))
    second = sorted((c.rank, c.frame_id) for c in _select(list(reversed(records)), 20))
    assert first == second


if __name__ == "__main__":
    harness.main(__file__)


# --- any strategy in Beam: bounded memory, same result as in one process ------------------------

def _pool_of(records):
    from transforms.select.ptransforms import to_scored, to_pool
    return to_pool([to_scored(r)[1] for r in records])


@pytest.mark.parametrize("strategy,params", [
    ("entropy", None), ("random", {"seed": 5}),
    ("cluster_margin", {"n_clusters": 4, "cluster_key": "predicted_class"}),
    ("margin", {"balance_key": "predicted_class"})])
def test_sharded_selection_equals_single_process(strategy, params):
    """With accumulators of 120 frames (1500 frames in), preselection loses nothing."""
    records = clustered_records(1500)
    got = harness.run_collect(lambda p: {"c": p | beam.Create(records, reshuffle=True)
                                         | SelectCandidates(20, strategy, params, shard_size=120)})["c"]
    pool = _pool_of(sorted(records, key=lambda r: r.frame.frame_id))
    expected = make_strategy(strategy, params).select(pool, 20)
    assert sorted(c.frame_id for c in got) == sorted(pool.ids[expected.indices])
    assert sorted(c.rank for c in got) == list(range(1, 21))


def test_sharded_coreset_radius_close_to_single_process():
    records = clustered_records(3000, seed=1)
    got = harness.run_collect(lambda p: {"c": p | beam.Create(records, reshuffle=True)
                                         | SelectCandidates(40, "coreset", shard_size=400)})["c"]
    x = np.stack([r.embedding for r in records])
    ids = {r.frame.frame_id: i for i, r in enumerate(records)}
    sharded = coverage_radius(x, x[[ids[c.frame_id] for c in got]])
    single = k_center_greedy(x, 40).radius
    assert len(got) == 40 and sharded <= 2.0 * single
    assert all(c.strategy == "coreset" and "kcenter_distance" in dict(c.components) for c in got)


def test_candidates_explain_themselves_and_rerun_keeps_selection_id():
    records = clustered_records(200)

    def select(params):
        return harness.run_collect(lambda p: {"c": p | beam.Create(records)
                                              | SelectCandidates(10, "cluster_margin", params,
                                                                 inputs=["gs://b/cam/*"])})["c"]
    first, again, other = select({"n_clusters": 3}), select({"n_clusters": 3}), select({"n_clusters": 4})
    assert len({c.selection_id for c in first}) == 1 and len(first[0].selection_id) == 24
    assert {c.selection_id for c in first} == {c.selection_id for c in again}
    assert {c.selection_id for c in first} != {c.selection_id for c in other}
    c = min(first, key=lambda c: c.rank)
    d = c.to_json_dict()
    assert d["parameters"]["strategy"] == "cluster_margin" and d["parameters"]["params"]["n_clusters"] == 3
    assert set(d["components"]) == {"margin", "cluster_size"}
    assert d["score"] == pytest.approx(1 - dict(c.scores)["margin"]) == pytest.approx(d["components"]["margin"])
    assert d["window_start"] is None and d["model"]["version"] == c.model.version


def test_excluded_ids_side_input_are_never_selected():
    records = _random_records(100)
    best = sorted(records, key=lambda r: -r.entropy)[:5]
    got = harness.run_collect(lambda p: {"c": p | beam.Create(records) | SelectCandidates(
        5, "entropy", exclude_ids=p | "Labelled" >> beam.Create([r.frame.frame_id for r in best]))})["c"]
    assert len(got) == 5 and not {c.frame_id for c in got} & {r.frame.frame_id for r in best}


class _MostConfident:
    """A user's strategy that reads ``Pool.probabilities`` itself (top-k by the largest class
    probability)."""

    @staticmethod
    def make():
        from transforms.select.base import Selection, Strategy, rank_by

        class MostConfident(Strategy):
            name = "most_confident"
            reads_probabilities = True

            def _select(self, pool, budget, labelled):
                p = np.asarray(pool.probabilities).max(axis=1)
                order = rank_by(p, pool.ids, budget)
                return Selection(order, p[order], {})
        return MostConfident()


def test_probabilities_travel_only_to_strategies_that_read_them():
    """Selection carries no class probabilities for the built-in strategies (their scores are
    stored on the records); a strategy that reads ``Pool.probabilities``, or a wrapper of one,
    gets them through ``SelectCandidates``."""
    from transforms.select.ptransforms import to_pool, to_scored
    from transforms.select.strategies import Balanced
    records = _random_records(60, seed=3)
    assert to_pool([to_scored(r, probabilities=False)[1] for r in records]).probabilities is None
    assert not any(make_strategy(name).needs_probabilities for name in ("entropy", "uncertainty_kcenter", "coreset"))
    strategy = _MostConfident.make()
    assert Balanced(strategy, key="predicted_class").needs_probabilities
    got = _select(records, 5, strategy)
    confidence = {r.frame.frame_id: float(np.max(r.probabilities)) for r in records}
    assert sorted(c.frame_id for c in got) == sorted(sorted(confidence, key=lambda i: (-confidence[i], i))[:5])
    assert sorted(c.score for c in got) == pytest.approx(sorted(confidence.values())[-5:])

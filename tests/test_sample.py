"""SelectCandidates: distributed top-k by uncertainty, identical frames collapsed."""
import apache_beam as beam
import numpy as np
import pytest

from tests import harness
from tests.records_factory import frame_record
from transforms.sample import SelectCandidates, strategy_score


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

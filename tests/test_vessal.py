"""VeSSAL's core (transforms/select/vessal.py) against independent computations, and its Beam
transform (transforms/select/per_frame.py) on a real pipeline.

The core's updates are checked against the quantities they stand for, computed from scratch
with numpy: A^-1 against the inverse of lambda I + the sum of the picks' u u^T, zeta against
ideal_rate / trace(Sigma A^-1) with a matrix product, the uncertainty factor against the norm
of BADGE's outer-product gradient embedding.
"""
import json

import numpy as np
import pytest

from transforms.select import vessal
from transforms.select.vessal import Embedder, VeSSAL, badge_scale, frame_draw


def _stream(n, d=16, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.dirichlet(np.full(classes, 0.3), size=n)


def test_a_inv_is_the_inverse_of_the_picks_second_moment():
    x, p = _stream(3000)
    embed, sampler = Embedder(16), VeSSAL(0.05, 16, cov_inv_scaling=50.0)
    picked = []
    for i in range(len(x)):
        u = embed(x[i], p[i])
        if sampler.decide(u, frame_draw(str(i))).picked:
            picked.append(u)
    assert len(picked) > 50
    a = np.eye(16) / 50.0 + sum(np.outer(u, u) for u in picked)
    np.testing.assert_allclose(sampler.a_inv, np.linalg.inv(a), rtol=1e-8, atol=1e-10)


def _short_cameras_rate(length, known_length, cameras=20, label_rate=0.04, payback=vessal.AT_ONCE):
    """Realised rate / label_rate of one state per camera over ``cameras`` streams of ``length``
    frames whose scene changes every 60 frames (a new direction of u, which VeSSAL picks in a
    burst), the first frame of each camera picked (new_camera_pick)."""
    rng = np.random.default_rng(length)
    picks = 0
    for camera in range(cameras):
        sampler, scene = VeSSAL(label_rate, 32, payback=payback), rng.normal(size=32)
        for t in range(length):
            u = (scene + 0.3 * rng.normal(size=32)) * rng.uniform(0.2, 1.0)
            sampler.decide(u, frame_draw(f"{camera}-{t}"), camera=str(camera),
                           remaining=length - t if known_length else None)
            if t % 60 == 59:
                scene = rng.normal(size=32)
        picks += sampler.picks
    return picks / (cameras * length) / label_rate


def test_a_stream_of_known_length_meets_the_rate_at_its_end():
    """A batch pass knows each state's frames: the rate then meets label_rate at the last frame
    (the reference's (k - picks) / (N - i)). Without it, short cameras end well above the rate:
    their burst of picks at a scene change and their first frame's pick are paid back over the
    horizon (250 frames at R = 0.04), which they do not have."""
    for length in (100, 300):
        assert abs(_short_cameras_rate(length, known_length=True) - 1) <= 0.02
        assert _short_cameras_rate(length, known_length=False, payback=vessal.HORIZON) > 1.15


@pytest.mark.parametrize("length", [40, 100, 300])
def test_a_stream_that_pays_back_picks_ahead_of_the_rate_at_once_meets_it_on_short_cameras(length):
    """Streaming (no known length), payback at_once: no pick while the state is ahead of R x the
    frames seen, so a camera's forced first pick and its bursts at scene changes do not put a
    short camera above the rate; with the excess spread over the horizon they do."""
    assert abs(_short_cameras_rate(length, known_length=False) - 1) <= 0.1
    assert _short_cameras_rate(length, known_length=False, payback=vessal.HORIZON) > 1.2
    sampler = VeSSAL(0.1, 4)
    sampler.seen, sampler.picks = 9, 1  # 1 >= 0.1 x 10: ahead
    assert sampler.ideal_rate() == 0.0 and sampler.ideal_rate(remaining=20) == pytest.approx((0.1 * 29 - 1) / 20)
    assert sampler.horizon == 20  # 2 / R
    sampler.seen = 15  # 1 < 0.1 x 16: the deficit is spread over min(H, 16) frames (a young state)
    assert sampler.ideal_rate() == pytest.approx((0.1 * 31 - 1) / 16)
    sampler.seen, sampler.picks = 100, 9
    assert sampler.ideal_rate() == pytest.approx((0.1 * 120 - 9) / 20)
    assert VeSSAL(0.1, 4, payback=vessal.HORIZON).describe()["payback"] == "horizon"
    assert VeSSAL(0.1, 4, payback=vessal.HORIZON).horizon == 100  # max(100, 10 / R)
    sampler = VeSSAL(0.1, 4)
    assert sampler.ideal_rate(remaining=10) == pytest.approx(0.1)  # (0.1 x 10 - 0) / 10
    sampler.picks = 1
    assert sampler.ideal_rate(remaining=10) == 0.0 and sampler.ideal_rate(remaining=20) == pytest.approx(0.05)
    assert sampler.ideal_rate(remaining=1) == 0.0 and sampler.ideal_rate() == 0.0  # ahead: paid back at once
    assert VeSSAL(0.1, 4, payback=vessal.HORIZON).ideal_rate() == pytest.approx(0.1)  # H = 100


def test_zeta_and_probability_follow_the_paper():
    x, p = _stream(400, seed=1)
    embed, sampler = Embedder(16), VeSSAL(0.1, 16, memory=50)
    moments = []
    for i in range(len(x)):
        u = embed(x[i], p[i])
        a_inv = sampler.a_inv.copy() if sampler.a_inv is not None else 100.0 * np.eye(16)
        ideal = sampler.ideal_rate()
        decision = sampler.decide(u, frame_draw(str(i)))
        moments.append(np.outer(u, u))
        # Sigma: the mean of the first `memory` frames, then an exponential moving average.
        sigma = np.mean(moments, axis=0) if len(moments) <= 50 else None
        if sigma is not None:
            np.testing.assert_allclose(sampler.sigma, sigma, rtol=1e-9, atol=1e-12)
        zeta = ideal / np.trace(sampler.sigma @ a_inv)
        assert decision.zeta == pytest.approx(zeta, rel=1e-9)
        assert decision.q == pytest.approx(u @ a_inv @ u, rel=1e-9)
        assert decision.probability == pytest.approx(min(1.0, zeta * (u @ a_inv @ u)), rel=1e-9)
        assert decision.picked == (frame_draw(str(i)) < decision.probability)


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_the_realised_rate_is_within_ten_percent(rate):
    n = int(400 / rate)
    x, p = _stream(n, d=32, seed=2)
    # A correlated stream: clips of 40 near-identical frames.
    x = np.repeat(x[::40], 40, axis=0)[:n] + 0.05 * np.random.default_rng(3).normal(size=(n, 32))
    embed, sampler = Embedder(32), VeSSAL(rate, 32)
    for i in range(n):
        sampler.decide(embed(x[i], p[i]), frame_draw(str(i)))
    assert abs(sampler.picks / n / rate - 1) <= 0.10, sampler.picks / n


def test_a_pick_lowers_the_probability_of_the_next_identical_frame():
    sampler = VeSSAL(0.5, 8)
    u = np.ones(8) * 0.3
    for i in range(20):  # a varied history for Sigma
        sampler.decide(np.random.default_rng(i).normal(size=8) * 0.3, 1.0)
    before = sampler.decide(u, 0.0)  # draw 0: picked
    assert before.picked
    after = sampler.decide(u, 0.0, keys=("other-frame",))
    assert after.q == pytest.approx(before.q / (1 + before.q))  # Sherman-Morrison on the same u


def test_frames_picked_or_labelled_are_not_picked_again_and_the_hour_cap_holds():
    sampler = VeSSAL(1.0, 4, max_per_hour=3)
    u = np.array([1.0, 0.0, 0.0, 0.0])
    assert sampler.decide(u, 0.0, keys=("f1", "hash1"), event_time=0.0).picked
    assert sampler.decide(u, 0.0, keys=("f2", "hash1"), event_time=1.0).outcome == vessal.ALREADY_PICKED
    assert sampler.decide(u, 0.0, keys=("f1",), event_time=2.0).outcome == vessal.ALREADY_PICKED
    assert sampler.decide(u, 0.0, keys=("f3",), labelled=True, event_time=3.0).outcome == vessal.LABELLED
    outcomes = [sampler.decide(np.eye(4)[i % 4], 0.0, keys=(f"g{i}",), event_time=10.0 + i).outcome
                for i in range(5)]
    assert outcomes.count(vessal.PICKED) == 2 and outcomes.count(vessal.CAPPED) == 3  # 3 per hour
    assert sampler.decide(np.eye(4)[1], 0.0, keys=("next-hour",), event_time=3600.0).picked


def test_state_round_trip_continues_exactly():
    x, p = _stream(600, seed=4)
    embed = Embedder(16)
    u = [embed(x[i], p[i]) for i in range(len(x))]
    whole = VeSSAL(0.05, 16, max_per_hour=100)
    first = [whole.decide(u[i], frame_draw(str(i)), event_time=i).outcome for i in range(600)]
    part = VeSSAL(0.05, 16, max_per_hour=100)
    second = [part.decide(u[i], frame_draw(str(i)), event_time=i).outcome for i in range(300)]
    resumed = VeSSAL.from_state(part.to_state())
    second += [resumed.decide(u[i], frame_draw(str(i)), event_time=i).outcome for i in range(300, 600)]
    assert first == second
    np.testing.assert_array_equal(whole.a_inv, resumed.a_inv)


def test_decided_frames_are_exactly_the_frames_added_in_any_order_and_sampling():
    import pickle
    from transforms.select.vessal import DecidedFrames
    rng = np.random.default_rng(3)
    decided = DecidedFrames(max_sources=3)
    sampled = [int(round(i * 12.5)) for i in range(80)]  # a 25 fps video read at 2 fps
    for index in sampled:
        decided.add("a.mp4", index)
    assert decided.indices("a.mp4") == sampled and ("a.mp4", 13) not in decided
    truth = sorted(set(int(i) for i in rng.permutation(400)[:60]))
    for index in rng.permutation(truth):  # chunks of a split video, decided out of order
        decided.add("b.mp4", int(index))
    assert decided.indices("b.mp4") == truth
    assert all((("b.mp4", i) in decided) == (i in truth) for i in range(-1, 401))
    handed_out = decided.to_state()
    kept = pickle.dumps(handed_out)
    restored = DecidedFrames(pickle.loads(kept), max_sources=3)  # what a restarted job loads
    assert restored.indices("b.mp4") == truth and restored.indices("a.mp4") == sampled
    decided.detach()  # the state handed out stays as it was
    decided.add("b.mp4", 401)
    decided.add("c.png", 0)
    decided.add("d.png", 0)  # the fourth source: the least recently decided ("a.mp4") goes
    assert pickle.dumps(handed_out) == kept
    assert len(decided) == 3 and ("a.mp4", 0) not in decided and decided.indices("a.mp4") == []
    assert ("b.mp4", 401) in decided and ("c.png", 0) in decided and ("c.png", 1) not in decided
    assert ("a.mp4", 0) in restored
    small = DecidedFrames(max_bits=1000)  # the bit budget drops the oldest sources too
    small.add("long.mp4", 900)
    small.add("long.mp4", 0)
    small.add("next.mp4", 200)
    small.add("next.mp4", 0)
    assert len(small) == 1 and ("next.mp4", 200) in small and ("long.mp4", 0) not in small


def test_a_file_read_again_after_a_restart_is_not_decided_twice():
    """A restarted stream reads its unfinished file again: the frames the saved state had decided
    change nothing (``decided_before``), and the stream goes on exactly as without the restart."""
    x, p = _stream(300, seed=6)
    embed = Embedder(16)
    u = [embed(x[i], p[i]) for i in range(len(x))]

    def decide(sampler, i):
        return sampler.decide(u[i], frame_draw(str(i)), keys=(str(i),), frame=("cam/a.mp4", i))

    whole = VeSSAL(0.1, 16)
    expected = [decide(whole, i) for i in range(300)]
    part = VeSSAL(0.1, 16)
    for i in range(180):
        decide(part, i)
    resumed = VeSSAL.from_state(part.to_state())  # the snapshot; the file is read from its start
    again = [decide(resumed, i) for i in range(300)]
    assert {d.outcome for d in again[:180]} == {vessal.DECIDED_BEFORE}
    assert again[179].seen == 180 and again[179].picks == expected[179].picks
    assert again[180:] == expected[180:]
    np.testing.assert_array_equal(resumed.a_inv, whole.a_inv)
    assert decide(resumed, 5).outcome == vessal.DECIDED_BEFORE and resumed.seen == 300


def test_embedder_projects_with_a_fixed_seed_and_scales_by_badge_norm():
    rng = np.random.default_rng(5)
    h, p = rng.normal(size=1280), rng.dirichlet(np.ones(10))
    one, two = Embedder(64, seed=7), Embedder(64, seed=7)
    np.testing.assert_array_equal(one(h, p), two(h, p))
    assert one(h, p).shape == (64,)
    # ||p - e_yhat|| is BADGE's last-layer gradient embedding's norm over ||h||.
    gradient = np.outer(p - np.eye(10)[np.argmax(p)], h)
    assert badge_scale(p) == pytest.approx(np.linalg.norm(gradient) / np.linalg.norm(h))
    # Narrow embeddings are used as they are (unit length, times the scale).
    np.testing.assert_allclose(Embedder(64)(h[:32], p), h[:32] / np.linalg.norm(h[:32]) * badge_scale(p))
    with pytest.raises(ValueError, match="embedding width"):
        one(h[:100], p)


def test_embedder_scale_multiplies_the_projected_unit_embedding():
    """Embedder(h, scale=s) is P (h / ||h||) * s with scikit-learn's projection of the same seed;
    Embedder(h, p) is the same with s = ||p - e_yhat||, bit for bit (the benchmark's call)."""
    from sklearn.random_projection import GaussianRandomProjection
    rng = np.random.default_rng(11)
    h, p = rng.normal(size=1280), rng.dirichlet(np.ones(10))
    projection = GaussianRandomProjection(n_components=64, random_state=7).fit(np.zeros((1, 1280))).components_
    unit = projection @ (h / np.linalg.norm(h))
    embed = Embedder(64, seed=7)
    np.testing.assert_allclose(embed(h, scale=0.37), unit * 0.37, rtol=1e-12)
    np.testing.assert_array_equal(embed(h, scale=0.0), np.zeros(64))
    np.testing.assert_array_equal(embed(h, p), embed(h, scale=badge_scale(p)))
    np.testing.assert_allclose(embed(h, p), unit * np.linalg.norm(p - np.eye(10)[np.argmax(p)]), rtol=1e-12)
    np.testing.assert_array_equal(embed(h, p, scale=0.5), embed(h, scale=0.5))  # scale wins
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
            embed(h, scale=bad)
    with pytest.raises(ValueError, match="probabilities or its uncertainty"):
        embed(h)


def test_frame_uncertainty_is_badge_or_the_named_detection_score():
    from transforms.score.detection import aggregate_detection_scores
    p = np.array([0.7, 0.2, 0.1])
    scores = aggregate_detection_scores([0.9, 0.45, 0.2])  # per box 1 - |2c - 1|: 0.2, 0.9, 0.4
    assert vessal.frame_uncertainty(p, scores, "badge") == badge_scale(p)
    assert vessal.frame_uncertainty(p, scores, "detection_max") == pytest.approx(0.9)
    assert vessal.frame_uncertainty(p, scores, "detection_mean") == pytest.approx(0.5)
    assert vessal.frame_uncertainty(p, {}, "detection_max") is None  # not scored by a detector
    for value in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
            vessal.frame_uncertainty(p, {"detection_max": value}, "detection_max")


def test_the_accepted_detection_uncertainties_are_registered_high_and_in_the_unit_interval():
    """Each accepted name is a registered detection score where high means uncertain, in [0, 1]
    over random frames with up to 30 boxes; the sums and counts are not in [0, 1] and refused."""
    from schemas import scores
    from transforms.score.detection import aggregate_detection_scores
    for name in vessal.DETECTION_UNCERTAINTIES:
        assert scores.get(name).needs == scores.DETECTIONS and scores.get(name).uncertain_when == scores.HIGH
    rng = np.random.default_rng(12)
    frames = [aggregate_detection_scores(rng.uniform(size=rng.integers(0, 30))) for _ in range(200)]
    for name in vessal.DETECTION_UNCERTAINTIES:
        assert all(0.0 <= f[name] <= 1.0 for f in frames)
    for name in ("detection_sum", "detection_count", "detection_uncertain_count"):
        assert max(f[name] for f in frames) > 1.0
        with pytest.raises(ValueError, match="^uncertainty must be one of badge, detection_max, detection_mean, got"):
            VeSSAL(0.1, uncertainty=name)


@pytest.mark.parametrize("bad", ["entropy", "detection_localisation", "detection_rare_class", "", "BADGE", 3, None])
def test_an_unknown_uncertainty_is_refused_in_one_line(bad):
    with pytest.raises(ValueError) as raised:
        VeSSAL(0.1, uncertainty=bad)
    assert str(raised.value) == f"uncertainty must be one of badge, detection_max, detection_mean, got {bad!r}"


def test_uncertainty_is_a_parameter_of_the_selection_and_of_its_state():
    sampler = VeSSAL(0.1, 8, uncertainty="detection_mean")
    assert sampler.describe()["uncertainty"] == "detection_mean"
    assert VeSSAL(0.1, 8).describe()["uncertainty"] == "badge"
    sampler.decide(np.ones(8), 0.5)
    assert VeSSAL.from_state(sampler.to_state()).uncertainty == "detection_mean"


def test_a_frame_with_uncertainty_zero_is_never_picked():
    """u = h * 0: probability 0 whatever the state (rate 1, a fresh A^-1), never picked, still counted."""
    x, _ = _stream(2000, d=16, seed=13)
    detection = np.random.default_rng(14).uniform(size=len(x))
    embed, sampler = Embedder(16), VeSSAL(0.3, 16)
    for i in range(len(x)):
        zero = i % 3 == 0
        decision = sampler.decide(embed(x[i], scale=0.0 if zero else detection[i]), frame_draw(str(i)))
        if zero:
            assert decision.probability == 0.0 and not decision.picked
    assert sampler.seen == 2000 and abs(sampler.picks / 2000 / 0.3 - 1) <= 0.10  # the rate, over every frame
    fresh = VeSSAL(1.0, 16)
    assert fresh.decide(np.zeros(16), 0.0).outcome == vessal.SKIPPED


def test_the_first_frame_of_a_camera_not_covered_is_picked_and_the_rate_takes_it_back():
    """new_camera_pick: a camera's first frame with u != 0 is picked with probability 1 even with
    the rate used up (ideal_rate 0), once per camera; a frame with u = 0, None as the camera or a
    pick refused by the hour's cap covers nothing; a labelled frame covers its camera; the state
    keeps the cameras; off, the same frame is skipped; over 20 interleaved cameras the rate holds."""
    u = np.eye(8)[0] * 0.5
    sampler = VeSSAL(0.01, 8)
    for i in range(30):  # draws of 0 pick camera a's frames until the rate is used up
        sampler.decide(np.eye(8)[i % 8] * 0.5, 0.0, keys=(f"a{i}",), camera="a")
    never = 0.999999  # a draw that only a probability of 1 picks
    assert sampler.ideal_rate() == 0.0 and sampler.picks >= 1
    assert sampler.decide(u, never, keys=("a-next",), camera="a").outcome == vessal.SKIPPED
    blank = sampler.decide(np.zeros(8), never, keys=("b0",), camera="b")
    assert (blank.outcome, blank.probability, blank.new_camera) == (vessal.SKIPPED, 0.0, False)
    assert sampler.decide(u, never, keys=("x0",), camera=None).outcome == vessal.SKIPPED
    first = sampler.decide(u, never, keys=("b1",), camera="b")
    assert first.picked and first.new_camera and first.probability == 1.0 and first.ideal_rate == 0.0
    assert not sampler.decide(u, never, keys=("b2",), camera="b").picked
    assert sampler.decide(u, 0.0, keys=("c0",), camera="c", labelled=True).outcome == vessal.LABELLED
    assert sampler.decide(u, never, keys=("c1",), camera="c").outcome == vessal.SKIPPED
    resumed = VeSSAL.from_state(sampler.to_state())
    assert resumed.cameras == {"a", "b", "c"}
    assert resumed.decide(u, never, keys=("c2",), camera="c").outcome == vessal.SKIPPED
    capped = VeSSAL(0.5, 8, max_per_hour=1)
    assert capped.decide(u, never, keys=("p0",), camera="p", event_time=0.0).new_camera
    assert capped.decide(u, never, keys=("q0",), camera="q", event_time=1.0).outcome == vessal.CAPPED
    late = capped.decide(u, never, keys=("q1",), camera="q", event_time=3600.0)  # the next hour: still q's first
    assert late.picked and late.new_camera
    off = VeSSAL(0.01, 8, new_camera_pick=False)
    assert off.decide(u, never, camera="e").outcome == vessal.SKIPPED and "new_camera_pick" in off.describe()

    x, p = _stream(8000, d=16, seed=22)
    embed, stream = Embedder(16), VeSSAL(0.05, 16)
    firsts = [stream.decide(embed(x[i], p[i]), frame_draw(str(i)), camera=f"cam{i % 20}").new_camera
              for i in range(len(x))]
    assert sum(firsts) == 20 and all(firsts[:20])
    assert abs(stream.picks / len(x) / 0.05 - 1) <= 0.10, stream.picks


@pytest.mark.parametrize("kwargs, message", [
    ({"label_rate": 0}, "label_rate"), ({"label_rate": 1.5}, "label_rate"),
    ({"label_rate": 0.1, "dim": 512}, "dim"), ({"label_rate": 0.1, "max_per_hour": -1}, "max_per_hour"),
    ({"label_rate": 0.1, "horizon": 0}, "horizon"), ({"label_rate": 0.1, "cov_inv_scaling": 0}, "cov_inv_scaling"),
    ({"label_rate": 0.1, "new_camera_pick": "yes"}, "new_camera_pick"),
])
def test_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VeSSAL(**kwargs)


def test_select_per_frame_keeps_one_state_per_camera():
    """SelectPerFrame on a real (batch) pipeline: each camera's state sees only its frames, and
    picks are deterministic for the same input."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion
    from transforms.select.per_frame import PerFrameSpec, SelectPerFrame

    x, p = _stream(400, d=24, seed=6)
    model = ModelVersion("m", "0" * 16, "embedding")

    def record(i):
        cam = "cam-a" if i % 4 else "cam-b"  # 300 and 100 frames
        frame = FrameMetadata(f"id{i}", f"/data/{cam}/f{i}.png", 0, None, 28, 28, "image", f"h{i}",
                              event_time=1000.0 + i)
        return FrameRecord(frame, x[i].astype(np.float32), p[i].astype(np.float32), int(np.argmax(p[i])),
                           0.0, 0.0, 0.0, model)

    def check(picks):
        by_camera = {}
        for pick in picks:
            by_camera.setdefault(pick.candidate.source_uri.split("/")[2], []).append(pick.candidate.rank)
        assert set(by_camera) == {"cam-a", "cam-b"}
        for ranks in by_camera.values():  # ranks count each camera's own picks
            assert sorted(ranks) == list(range(1, len(ranks) + 1))
        assert 0.5 * 0.1 * 400 <= len(picks) <= 2 * 0.1 * 400

    with beam.Pipeline("FnApiRunner") as pipeline:
        records = [record(i) for i in range(400)]
        broken = records[7]._replace(embedding=np.full(24, np.nan, dtype=np.float32))
        out = (pipeline | beam.Create(records[:7] + [broken] + records[8:])
               | SelectPerFrame(PerFrameSpec(0.1, state_key="camera", params=(("dim", 24),))))
        assert_that(out.picks, check)
        assert_that(out.dead_letters | beam.Map(lambda d: (d.frame_id, d.stage, "not finite" in d.error)),
                    equal_to([("id7", "candidates", True)]), label="dead_letters")


def _detection_records(n, d=40, seed=15, missing=lambda i: i % 7 == 3):
    """``n`` records of one camera whose ``extra_scores`` carry ``detection_max`` and
    ``detection_mean`` (uniform in [0, 1]), except the ``missing`` ones (not scored by a detector)."""
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion
    x, p = _stream(n, d=d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    high, mean = rng.uniform(size=n), rng.uniform(size=n)
    model = ModelVersion("m", "0" * 16, "embedding")
    records = []
    for i in range(n):
        extra = () if missing(i) else (("detection_max", float(high[i])), ("detection_mean", float(mean[i] * high[i])))
        frame = FrameMetadata(f"id{i}", f"/data/cam/f{i:04d}.png", 0, None, 28, 28, "image", f"h{i}",
                              event_time=1000.0 + i)
        records.append(FrameRecord(frame, x[i].astype(np.float32), p[i].astype(np.float32), int(np.argmax(p[i])),
                                   0.0, 0.0, 0.0, model, extra_scores=extra))
    return records


def _pure_detection_pass(records, label_rate, dim, known_length=False):
    """The pure VeSSAL over ``records`` in order, ``u = Embedder(h, scale=detection_max or 0)``,
    cameras the folders of the files, with ``known_length`` the frames left as ``remaining`` (a
    batch pass): ``{frame_id: (rank, probability, uncertainty, new_camera)}`` of its picks."""
    import os
    embed, sampler = Embedder(dim, 0), VeSSAL(label_rate, dim, uncertainty="detection_max")
    picks = {}
    for i, record in enumerate(records):
        scale = dict(record.extra_scores).get("detection_max", 0.0)
        frame = record.frame
        decision = sampler.decide(embed(record.embedding, scale=scale), frame_draw(frame.frame_id, 0),
                                  event_time=frame.event_time, keys=(frame.frame_id, frame.pixel_hash),
                                  camera=os.path.dirname(frame.source_uri),
                                  remaining=len(records) - i if known_length else None)
        if decision.picked:
            picks[frame.frame_id] = (decision.picks, decision.probability, scale, decision.new_camera)
    return picks


def _counter(result, name):
    from apache_beam.metrics.metric import MetricsFilter
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in counters)


@pytest.mark.parametrize("transform", ["SelectPerFrame", "SelectPerFrameInOrder"])
def test_per_frame_selection_scales_u_by_the_detectors_uncertainty(transform):
    """With uncertainty detection_max, both Beam paths pick what the pure VeSSAL fed
    Embedder(h, scale=detection_max) picks, with the same ranks and probabilities, and record
    detection_max as the candidate's uncertainty; frames without the score are counted in
    vessal_no_uncertainty and never picked; a score outside [0, 1] is a dead letter."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    from transforms.select import per_frame

    records = _detection_records(600)
    lacking = {r.frame.frame_id for r in records if not r.extra_scores}
    broken = records[5]._replace(extra_scores=(("detection_max", 1.5), ("detection_mean", 0.5)))
    records[5] = broken
    expected = _pure_detection_pass(records[:5] + records[6:], 0.1, 16,
                                    known_length=transform == "SelectPerFrameInOrder")
    assert len(expected) >= 30 and len(lacking) > 80
    assert len(expected) != len(_pure_detection_pass([r._replace(extra_scores=()) for r in records], 0.1, 16))
    spec = per_frame.PerFrameSpec(0.1, state_key="camera", params=(("dim", 16), ("uncertainty", "detection_max")))
    pipeline = beam.Pipeline("FnApiRunner")
    # One bundle in event-time order: the streaming transform decides in arrival order.
    created = pipeline | beam.Create(records, reshuffle=False)
    if transform == "SelectPerFrame":
        out = created | per_frame.SelectPerFrame(spec)
        candidates, dead = out.picks | beam.Map(lambda pick: pick.candidate), out.dead_letters
    else:
        out = created | per_frame.SelectPerFrameInOrder(spec)
        candidates, dead = out.candidates, out.dead_letters

    def check(got):
        picks = {c.frame_id: c for c in got}
        assert set(picks) == set(expected) and not lacking & set(picks)
        for frame_id, (rank, probability, uncertainty, new_camera) in expected.items():
            candidate = picks[frame_id]
            assert (candidate.rank, candidate.score) == (rank, pytest.approx(probability, rel=1e-9))
            assert dict(candidate.components)["uncertainty"] == uncertainty
            assert dict(candidate.components)["new_camera"] == float(new_camera) == float(rank == 1)
            assert json.loads(candidate.parameters)["uncertainty"] == "detection_max"

    assert_that(candidates, check)
    assert_that(dead | beam.Map(lambda d: (d.frame_id, d.stage, "detection_max is 1.5" in d.error)),
                equal_to([("id5", "candidates", True)]), label="dead_letters")
    result = pipeline.run()
    result.wait_until_finish()
    assert _counter(result, per_frame.NO_UNCERTAINTY) == len(lacking)


@pytest.fixture(scope="module")
def mongo():
    from tests import harness
    with harness.mongod() as server:
        yield server


def test_select_per_frame_refuses_labelled_frames_and_resumes_from_its_snapshot(mongo):
    """Against a real mongod: frames sent for labelling and their near-duplicate group are never
    picked; a second pipeline (a restarted job, no Beam state) goes on from the saved state."""
    import apache_beam as beam
    import pymongo
    from tests import harness
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion
    from transforms.select.per_frame import PerFrameSpec, SelectPerFrame

    db = pymongo.MongoClient(mongo.uri)["vessal"]
    db.frames.insert_many([{"_id": "id5", "duplicate_group": "id5"}, {"_id": "id6", "duplicate_group": "id5"}])
    db.label_tasks.insert_one({"_id": "t1", "frame_id": "id5"})
    x, p = _stream(400, d=24, seed=8)
    model = ModelVersion("m", "0" * 16, "embedding")

    def run(indices):
        records = [FrameRecord(FrameMetadata(f"id{i}", f"/cam/f{i}.png", 0, None, 28, 28, "image", f"h{i}",
                                             event_time=float(i)),
                               x[i].astype(np.float32), p[i].astype(np.float32), int(np.argmax(p[i])),
                               0.0, 0.0, 0.0, model) for i in indices]
        spec = PerFrameSpec(0.5, state_key="global", params=(("dim", 24),))
        picks = harness.run_collect(lambda pipeline: {"picks": (pipeline | beam.Create(records) | SelectPerFrame(
            spec, mongo_uri=mongo.uri, database="vessal")).picks})["picks"]
        return {pick.candidate.frame_id: pick.candidate.rank for pick in picks}

    first = run(range(0, 200))
    assert "id5" not in first and "id6" not in first and len(first) > 40
    assert db.selection_state.find_one({"key": "global"})["seen"] == 200
    second = run(range(200, 400))
    state = db.selection_state.find_one({"key": "global"})
    assert state["seen"] == 400
    ranks = sorted(list(first.values()) + list(second.values()))
    assert ranks == list(range(1, len(ranks) + 1)) and state["picks"] == len(ranks)  # numbering went on
    assert 0.5 * 400 * 0.6 <= len(ranks) <= 0.5 * 400 * 1.4


def test_a_pick_saved_but_not_written_before_a_crash_is_written_when_its_frame_comes_again(mongo):
    """The state snapshot is saved at each pick, before the pick is written: a job killed in
    between restarts with the pick in its state. When the frame comes again (the file is read
    again) it is refused as already picked and its candidate, not in MongoDB, is emitted again,
    identical; once MongoDB has the candidate, a frame coming again emits nothing."""
    import apache_beam as beam
    import pymongo
    from tests import harness
    from schemas.candidates import candidate_document_id
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion
    from transforms.select.per_frame import PerFrameSpec, SelectPerFrame

    x, p = _stream(120, d=24, seed=9)
    model = ModelVersion("m", "0" * 16, "embedding")
    records = [FrameRecord(FrameMetadata(f"id{i}", f"/cam/f{i}.png", 0, None, 28, 28, "image", f"h{i}",
                                         event_time=float(i)),
                           x[i].astype(np.float32), p[i].astype(np.float32), int(np.argmax(p[i])),
                           0.0, 0.0, 0.0, model) for i in range(120)]
    spec = PerFrameSpec(0.2, state_key="global", params=(("dim", 24),))

    def run(indices):
        picks = harness.run_collect(lambda pipeline: {"picks": (
            pipeline | beam.Create([records[i] for i in indices], reshuffle=False)
            | SelectPerFrame(spec, mongo_uri=mongo.uri, database="crash")).picks})["picks"]
        return {pick.candidate.frame_id: pick.candidate for pick in picks}

    first = run(range(60))  # picked and saved in the snapshot; the candidates never written
    assert len(first) >= 5
    again = run(range(60))  # the file read again after the restart
    for frame_id, candidate in first.items():
        restored = again[frame_id]
        assert (restored.rank, restored.score, restored.components, restored.selection_id) == (
            candidate.rank, candidate.score, candidate.components, candidate.selection_id)
    db = pymongo.MongoClient(mongo.uri)["crash"]
    written = {candidate_document_id(c.selection_id, c.frame_id) for c in list(first.values()) + list(again.values())}
    db.candidates.insert_many([{"_id": candidate_id} for candidate_id in sorted(written)])
    assert db.selection_state.find_one({})["seen"] == 60  # the frames read again were not counted twice
    third = run(range(60))
    assert not set(third) & (set(first) | set(again))  # written: not emitted again


def test_a_detached_state_stays_as_it_was_and_the_trace_stays_exact():
    """decide() updates A^-1 and Sigma in place: a state handed out before detach() is left alone;
    the trace followed in O(1) per frame equals the Frobenius product recomputed from scratch."""
    x, p = _stream(500, seed=9)
    embed, sampler = Embedder(16), VeSSAL(0.2, 16)
    for i in range(250):
        sampler.decide(embed(x[i], p[i]), frame_draw(str(i)))
    state = sampler.to_state()
    kept = {name: state[name].copy() for name in ("a_inv", "sigma")}
    sampler.detach()
    for i in range(250, 500):
        sampler.decide(embed(x[i], p[i]), frame_draw(str(i)))
        assert sampler.to_state()["trace"] == pytest.approx(float(np.trace(sampler.sigma @ sampler.a_inv)), rel=1e-9)
    for name, value in kept.items():
        np.testing.assert_array_equal(state[name], value)
    assert not np.array_equal(sampler.sigma, kept["sigma"])


def test_event_order_puts_capture_time_first_then_file_time_and_id():
    from schemas.records import FrameMetadata
    from transforms.select.per_frame import event_order

    def frame(frame_id, uri, index=0, t=None, capture=None, event=None):
        return FrameMetadata(frame_id, uri, index, t, 8, 8, "video" if t is not None else "image", "h",
                             capture_time=capture, event_time=event)

    frames = [frame("z", "/cam/b.jpg"), frame("y", "/cam/a.mp4", 1, 0.5), frame("x", "/cam/a.mp4", 0, 0.0),
              frame("w", "/cam/c.jpg", capture="2024-05-01T12:00:00"),
              frame("v", "/cam/d.jpg", capture="2024-05-01T11:00:00"),
              frame("u", "/cam/e.jpg", capture="1970-01-01T00:00:00"),  # an unset camera clock: unknown
              frame("t", "/cam/f.jpg", event=1714560000.0)]  # 2024-05-01T10:40Z, set by the intake
    assert [f.frame_id for f in sorted(frames, key=event_order)] == ["t", "v", "w", "x", "y", "z", "u"]

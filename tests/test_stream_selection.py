"""The streaming-selection benchmark's detection stream (benchmarks/stream_selection.py): cameras
side by side in event-time order, split by camera, the labelled initial clip left out of the
stream, and a drift camera of an unseen photo that joins at the stream's median event time with a
second camera of it in the test set; the learner's curve point, the mean mAP of ``--learner_seeds``
detectors (a few Adam steps each). The benchmark itself is run by hand."""
import argparse

import numpy as np
import pytest

from benchmarks import detection_data as dd
from benchmarks import stream_selection as ss

OPTIONS = dd.GeneratorOptions(cameras=7, long_frames=40, min_frames=25, max_frames=30)


@pytest.fixture(scope="module")
def stream():
    return ss.make_detection_stream(OPTIONS, test_cameras=2, seed=3)


def test_the_stream_is_the_pool_cameras_in_event_time_order_without_the_initial_clip(stream):
    pool, test = dd.split_cameras(dd.generate(OPTIONS._replace(seed=3)), 2, 3)
    assert np.all(np.diff(stream.event_time) >= 0)
    own = ~stream.drift
    # Every pool frame but the initial clip's, once; each camera's frames in their own order.
    assert own.sum() == sum(len(c.frames) for c in pool) - ss.INITIAL_FRAMES
    initial_camera = next(c for c in pool if np.array_equal(c.frames[:ss.INITIAL_FRAMES], stream.initial.frames))
    assert initial_camera.camera != pool[0].camera and len(stream.initial.boxes) == ss.INITIAL_FRAMES
    for clip in pool:
        rows = [i for i in np.flatnonzero(own) if stream.camera[i] == clip.camera]
        first = ss.INITIAL_FRAMES if clip.camera == initial_camera.camera else 0
        assert len(rows) == len(clip.frames) - first
        assert all(np.array_equal(stream.frames[i], clip.frames[first + k]) for k, i in enumerate(rows))
        assert all(np.array_equal(stream.boxes[i], clip.boxes[first + k]) for k, i in enumerate(rows))
    # The long camera runs from 0 to the end; the others end by its end (side by side).
    assert stream.event_time[0] == 0 and stream.event_time[own].max() == OPTIONS.long_frames - 1
    # Split by camera: no test camera is in the stream.
    assert not {c.camera for c in test} & set(stream.camera)


def test_the_drift_camera_joins_at_the_median_event_time_and_its_site_is_in_the_test(stream):
    own = ~stream.drift
    drift_rows = np.flatnonzero(stream.drift)
    assert len(drift_rows) == ss.DRIFT_FRAMES
    assert stream.event_time[drift_rows[0]] == pytest.approx(np.median(stream.event_time[own]))
    assert np.diff(stream.event_time[drift_rows]) == pytest.approx(np.full(len(drift_rows) - 1, 1.0 / OPTIONS.fps))
    assert [c.camera for c in stream.test][-1] == "drift1" and len(stream.test) == 3
    # An unseen photo: the drift camera's frames are far from every pool camera's.
    def thumbnail(frames):
        return frames.reshape(len(frames), -1).astype(np.float32).mean(axis=0)
    drift_mean = thumbnail(stream.frames[drift_rows])
    gaps = [np.abs(drift_mean - thumbnail(stream.frames[[i for i in np.flatnonzero(own) if stream.camera[i] == c]])).mean()
            for c in set(np.array(stream.camera)[own])]
    assert min(gaps) > 10  # grey levels
    again = ss.make_detection_stream(OPTIONS, test_cameras=2, seed=3)  # deterministic in its seed
    assert np.array_equal(again.frames, stream.frames) and again.camera == stream.camera


def test_a_curve_point_is_the_mean_map_of_the_learner_seeds_and_the_first_scores(stream, tmp_path):
    """``--learner_seeds 2``: the point is the mean mAP of the detectors trained with seeds ``s``
    and ``s + 1000``, ``spread`` their std, and the stream is scored by the first, the one a run
    with one learner seed trains."""
    def learner(seeds, seed):
        args = argparse.Namespace(steps=60, learner_seeds=seeds)
        fitted = ss.DetectionLearner(stream, OPTIONS.class_names, args, seed, str(tmp_path / f"{seeds}-{seed}"))
        fitted.fit([0, 5, 9], "fit")
        return fitted
    both, first, second = learner(2, 3), learner(1, 3), learner(1, 1003)
    (labels, mean_map), = both.curve
    assert first.curve[0][1] != second.curve[0][1]  # the training seed alone moves mAP
    assert labels == 3
    assert mean_map == pytest.approx((first.curve[0][1] + second.curve[0][1]) / 2)
    assert both.spread[0] == pytest.approx(abs(first.curve[0][1] - second.curve[0][1]) / 2)
    assert first.spread == [0.0]
    frames = range(0, len(stream.frames), 7)
    assert np.array_equal(both.uncertainty(frames), first.uncertainty(frames))

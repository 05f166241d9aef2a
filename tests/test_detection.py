"""Detection uncertainty: the aggregation maths, and the background-difference detector on the
real sample video (pedestrians seen by a fixed camera), through ScoreFrames."""
import os

import apache_beam as beam
import numpy as np
import pytest

from schemas import frames as frames_schema
from tests import harness
from transforms.decode.ptransforms import DecodeMedia
from transforms.score.detection import aggregate_detection_scores, best_rejected, box_uncertainty, estimate_background
from transforms.score.detectors import BackgroundDifferenceDetector, DetectorHandler
from transforms.score.ptransforms import ScoreFrames, load_model_spec


def test_box_uncertainty_and_aggregates():
    np.testing.assert_allclose(box_uncertainty([0.0, 0.25, 0.5, 0.9, 1.0]), [0.0, 0.5, 1.0, 0.2, 0.0])
    scores = aggregate_detection_scores([0.5, 0.9, 0.35, 0.75], band=(0.3, 0.7))
    assert scores["detection_max"] == pytest.approx(1.0)
    assert scores["detection_sum"] == pytest.approx(1.0 + 0.2 + 0.7 + 0.5)
    assert scores["detection_mean"] == pytest.approx(2.4 / 4)
    assert scores["detection_uncertain_count"] == 2 and scores["detection_count"] == 4
    assert set(scores) <= set(frames_schema.EXTRA_SCORE_NAMES)
    empty = aggregate_detection_scores([])
    assert empty == {"detection_max": 0.0, "detection_mean": 0.0, "detection_sum": 0.0,
                     "detection_uncertain_count": 0.0, "detection_count": 0.0}


def test_the_best_rejected_box_scores_detection_max_and_a_frame_without_boxes():
    # A kept box at 0.9 (u 0.2) and a rejected 0.25 (u 0.5): the max is the rejected box's; mean
    # and sum stay those of the kept boxes, and so do the counts.
    scores = aggregate_detection_scores([0.9], rejected=0.25)
    assert scores["detection_max"] == pytest.approx(0.5)
    assert scores["detection_mean"] == pytest.approx(0.2) and scores["detection_sum"] == pytest.approx(0.2)
    assert scores["detection_count"] == 1 and scores["detection_uncertain_count"] == 0
    assert aggregate_detection_scores([0.5], rejected=0.25)["detection_max"] == pytest.approx(1.0)
    # Nothing kept: the rejected box scores the frame in all three; without it, 0.
    alone = aggregate_detection_scores([], rejected=0.2)
    assert alone["detection_max"] == alone["detection_mean"] == alone["detection_sum"] == pytest.approx(0.4)
    assert alone["detection_count"] == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aggregate_detection_scores([], rejected=1.5)


def test_best_rejected_skips_the_duplicates_of_kept_boxes():
    kept = np.array([[0, 0, 10, 10]], float)
    candidates = np.array([[1, 0, 11, 10],     # 0.28, class 0: the kept box one pixel over (IoU 0.82)
                           [1, 0, 11, 10],     # 0.26, class 1: same place, another class
                           [50, 50, 60, 60]],  # 0.2, class 0: elsewhere
                          float)
    scores, classes = np.array([0.28, 0.26, 0.2]), np.array([0, 1, 0])
    assert best_rejected(kept, [0], candidates, scores, classes, iou_threshold=0.6) == 1
    assert best_rejected(kept, [0], candidates, scores, classes, iou_threshold=0.6, class_agnostic=True) == 2
    assert best_rejected(kept, [0], candidates, scores, classes, iou_threshold=0.9) == 0
    assert best_rejected(np.zeros((0, 4)), [], candidates, scores, classes, iou_threshold=0.6) == 0
    assert best_rejected(kept, [0], candidates[:1], scores[:1], classes[:1], iou_threshold=0.6) == -1
    assert best_rejected(kept, [0], np.zeros((0, 4)), [], [], iou_threshold=0.6) == -1


def test_describe_objects_counts_labels_and_uncertain_boxes():
    from transforms.score.detection import describe_objects
    boxes = [{"label": "person", "score": s} for s in (0.9, 0.3, 0.45, 0.8)] + [
        {"label": "car", "score": 0.7}, {"label": "bus", "score": 0.2}, {"label": "car", "score": 0.5}]
    assert describe_objects(boxes) == "person 4 (2 below 0.5), car 2, bus 1 (1 below 0.5)"
    assert describe_objects(boxes, confident=0.8) == "person 4 (2 below 0.8), car 2 (2 below 0.8), bus 1 (1 below 0.8)"
    assert describe_objects([]) == ""


def test_invalid_confidences_and_band():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        box_uncertainty([1.2])
    with pytest.raises(ValueError, match="band"):
        aggregate_detection_scores([0.5], band=(0.8, 0.2))
    with pytest.raises(ValueError, match="band"):
        DetectorHandler(BackgroundDifferenceDetector("x.npy"), band=(-0.1, 0.5))


@pytest.fixture(scope="module")
def background_file():
    path = os.path.join(harness.tmpdir(), "vtest_background.npy")
    np.save(path, estimate_background(harness.media("vtest.avi")))
    return path


def _video_frames(every=80):
    import av
    with av.open(harness.media("vtest.avi")) as container:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % every == 0]


def test_detector_finds_pedestrians_in_vtest(background_file):
    detector = BackgroundDifferenceDetector(background_file).load()
    background = np.load(background_file)
    assert len(detector.detect(background).boxes) == 0  # the empty scene has nothing
    found = [detector.detect(frame) for frame in _video_frames()]
    assert all(len(d.boxes) >= 2 for d in found), [len(d.boxes) for d in found]
    boxes = np.concatenate([d.boxes for d in found])
    confidences = np.concatenate([d.confidences for d in found])
    assert np.all((confidences >= 0.5) & (confidences <= 1.0))  # above threshold: c >= 0.5
    # Pedestrians: most boxes are taller than wide, tens of pixels high, inside the frame.
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.median(height / width) > 1.3
    assert np.all(boxes[:, 2] <= 768) and np.all(boxes[:, 3] <= 576)
    with pytest.raises(ValueError, match="does not match the background"):
        detector.detect(np.zeros((28, 28, 3), np.uint8))


def test_score_frames_with_detector(background_file):
    spec = load_model_spec()
    handler = DetectorHandler(BackgroundDifferenceDetector(background_file))

    def build(p):
        decoded = p | beam.Create([harness.media("vtest.avi"),
                                   harness.media("fashion-mnist", "t10k-0000[0-4].png")]) | DecodeMedia(video_fps=0.25)
        scored = decoded.frames | ScoreFrames(spec, detector=handler)
        return {"records": scored.records, "dead": scored.dead_letters, "frames": decoded.frames}
    out = harness.run_collect(build)
    assert out["dead"] == [] and len(out["records"]) == 20 + 5
    detector = BackgroundDifferenceDetector(background_file).load()
    expected = {f.frame_id: aggregate_detection_scores(detector.detect(f.pixels).confidences)
                for f in out["frames"] if f.media_type == "video"}
    for record in out["records"]:
        scores = dict(record.extra_scores)
        if record.frame.media_type == "video":
            for name, value in expected[record.frame.frame_id].items():
                assert scores[name] == pytest.approx(value, abs=1e-6), name
            assert "entropy_normalised" in scores  # the classifier's scores are still there
        else:  # another camera: classified, no detection scores
            assert not any(name.startswith("detection_") for name in scores)
    counts = [dict(r.extra_scores)["detection_count"] for r in out["records"] if r.frame.media_type == "video"]
    assert sum(c > 0 for c in counts) >= 18


if __name__ == "__main__":
    harness.main(__file__)

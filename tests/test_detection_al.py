"""The detection active-learning benchmark's parts, small: the detector it trains exports to a
TFLite model that ScoreFrames runs as `mine --detector` would, its selections equal
SelectCandidates' on the FnApiRunner, mAP comes from pycocotools, and the figures of the result."""
import numpy as np
import pytest

from benchmarks import detection_al as al
from benchmarks import detection_data as dd
from benchmarks import small_detector
from transforms.select.factory import make_strategy


@pytest.fixture(scope="module")
def split():
    options = dd.GeneratorOptions(cameras=4, long_frames=16, min_frames=8, max_frames=10, seed=1)
    return al.Split(dd.generate(options), options, test_cameras=1, seed=1)


def test_trained_detector_through_score_frames_selection_and_map(split, tmp_path):
    labelled = split.initial(8, seed=1)
    assert len(labelled) == 8 and len({split.sources[i] for i in labelled}) == 1  # one clip
    trained, map50 = al._train_and_export(split, labelled, str(tmp_path), seed=0,
                                          args=type("Args", (), {"steps": 20, "learning_rate": 2e-3,
                                                                 "backbone": small_detector.SCRATCH,
                                                                 "head_dropout": None,
                                                                 "embedding_model": "detector"})())
    assert 0.0 <= map50 <= 1.0
    frames = split.frame_records()[:12]
    records = al.score_pool(frames, trained)
    assert sorted(r.frame.frame_id for r in records) == sorted(f.frame_id for f in frames)
    for record in records:
        scores = dict(record.extra_scores)
        assert record.detector.name == "detector.tflite" and len(record.embedding) == 64
        assert {"detection_max", "detection_sum", "detection_localisation"} <= set(scores)
        assert scores["detection_count"] == len(record.detections)
        assert all(d.label in split.options.class_names for d in record.detections)
    picks = al.select(records, make_strategy("uncertainty_kcenter", {"score": "detection_max"}), 4, beam_check=True)
    assert 1 <= len(picks) <= 4 and set(picks) <= {r.frame.frame_id for r in records}
    assert al.coco_map50(trained.detector, split.test_clips, split.options.class_names) == pytest.approx(map50)
    # The diagnostics' weights: return on investment from the true boxes; class need, largest
    # for the classes the labelled clip lacks.
    position = {f.frame_id: i for i, f in enumerate(split.frame_records())}
    costs = type("Args", (), {"seconds_per_frame": 3.0, "seconds_per_box": 7.0})()
    roi = al.diagnostic_weights("roi_oracle", split, records, labelled, position, costs)
    assert roi == {fid: pytest.approx(1 / (3 + 7 * len(split.boxes[position[fid]]))) for fid in roi} and len(roi) == 12
    need = al.diagnostic_weights("class_need_oracle", split, records, labelled, position, costs)
    labelled_classes = set(np.concatenate([split.classes[i] for i in labelled]).tolist())
    assert len(labelled_classes) < len(split.options.classes)  # so an unlabelled class has need 1
    for fid, weight in need.items():
        classes = set(split.classes[position[fid]].tolist())
        assert weight == 1.0 if classes - labelled_classes else 0.25 <= weight < 1.0
    predicted = al.diagnostic_weights("class_need_predicted", split, records, labelled, position, costs)
    assert all(0.25 <= w <= 1.0 for w in predicted.values())
    picks = al.select(records, al.Reweighted(roi), 4, beam_check=False)
    assert 1 <= len(picks) <= 4 and set(picks) <= set(roi)


def test_the_imagenet_backbone_is_frozen_and_the_head_sees_its_stride_8_grid(split):
    """--backbone efficientnet_lite0: EfficientNet-Lite0's ImageNet layers from set-up's pinned
    checkpoint, frozen (only the head's weights train), their stride-16 maps brought up to the
    head's stride-8 grid; a few training steps leave the backbone's weights as they were."""
    import keras
    height, width = split.frames.shape[1:3]
    model = small_detector._build(height, width, len(split.options.classes), small_detector.EFFICIENTNET)
    cls, box, features = model(np.zeros((1, height, width, 3), np.float32))
    grid = (height // small_detector.STRIDE, width // small_detector.STRIDE)
    assert cls.shape[1:] == grid + (len(split.options.classes),) and box.shape[1:] == grid + (4,)
    backbone = [layer for layer in model.layers if isinstance(layer, keras.Model)][0]
    assert not backbone.trainable_weights and backbone.non_trainable_weights
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"features", "cls", "box"}
    labelled = split.initial(8, seed=1)
    trained = small_detector.train(split.frames[labelled], [split.boxes[i] for i in labelled],
                                   [split.classes[i] for i in labelled], len(split.options.classes),
                                   steps=3, backbone=small_detector.EFFICIENTNET)
    before = [np.asarray(w) for w in backbone.non_trainable_weights]
    after = [layer for layer in trained.layers if isinstance(layer, keras.Model)][0].non_trainable_weights
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after))


def test_map50_of_the_ground_truth_is_one_and_of_shifted_boxes_zero(split):
    def answers(shift):
        truth = iter([(b + shift, np.ones(len(b)), c) for clip in split.test_clips
                      for b, c in zip(clip.boxes, clip.classes)])
        return lambda frame: next(truth)
    assert al.map50(split.test_clips, split.options.class_names, answers(0.0)) == pytest.approx(1.0)
    assert al.map50(split.test_clips, split.options.class_names, answers(1000.0)) == 0.0


def test_summary_ratios_and_wins():
    def curve(points):
        return [{"frames": f, "boxes": b, "seconds": 3 * f + 7 * b, "map50": m} for f, b, m in points]
    random = [curve([(10, 20, 0.1), (20, 60, 0.2), (30, 100, 0.3)])] * 2
    default = [curve([(10, 20, 0.1), (20, 40, 0.3), (30, 60, 0.4)]),
               curve([(10, 20, 0.1), (20, 40, 0.25), (30, 60, 0.28)])]
    out = al.summarise({"random": random, al.DEFAULT: default, al.TOPK: random}, seeds=2)
    assert out["vs_random"][al.DEFAULT]["boxes_ratio_per_seed"] == [0.4, None]  # 40 boxes vs 100; never
    assert out["boxes_vs_random"] is None and out["boxes_vs_random_goal_met"] is False
    assert out["default_beats_random_seeds"] == 2 and out["default_beats_topk_seeds"] == 2
    assert out["default_beats_random_sign_test_p"] == 0.25
    one = al.summarise({"random": random[:1], al.DEFAULT: default[:1]}, seeds=1)
    seconds = (3 * 20 + 7 * 40) / (3 * 30 + 7 * 100)
    assert one["boxes_vs_random"] == 0.4 and one["seconds_vs_random"] == pytest.approx(seconds, abs=1e-3)
    assert one["boxes_vs_random_goal_met"] and one["seconds_vs_random_goal_met"]


def test_moving_the_bank_maps_in_tensorflow_moves_them_as_the_pixels_move():
    """The frozen backbone's training moves its bank's maps by whole grid cells in the graph
    (small_detector._shifted_tf); it must move them as the pixel augmentation does, filling
    what moves in."""
    a = np.random.default_rng(0).random((2, 5, 7, 3)).astype(np.float32)
    fill = np.full((5, 7, 3), -1.0, np.float32)
    for rows, cols in [(0, 0), (2, -1), (-2, 2), (1, 0)]:
        expected = small_detector._shifted(a, rows, cols, -1.0)
        got = np.asarray(small_detector._shifted_tf(a, np.int32(rows), np.int32(cols), fill))
        assert np.array_equal(got, expected)


def test_the_benchmark_defaults_hold_out_ten_cameras_and_pool_eight():
    """The benchmark's own generator defaults (a long crowded camera, 10 held-out cameras for a
    test set that can tell strategies apart) and a pool of the other 8, split by camera."""
    args = al.parse_args(["--quick"])
    assert (args.cameras, args.long_frames, args.test_cameras) == (18, 120, 10)
    assert args.embedding_model == "pretrained"
    options = dd.options_from(args).validate()
    split = al.Split(dd.generate(options), options, args.test_cameras, seed=0)
    assert len(split.pool_clips) == 8 and len(split.test_clips) == 10
    assert split.pool_clips[0].camera == "camera00" and len(split.pool_clips[0].frames) == 120
    assert not {c.camera for c in split.pool_clips} & {c.camera for c in split.test_clips}


def test_the_learner_curve_trains_on_nested_random_frames_up_to_the_whole_pool(split, tmp_path):
    """--learner_curve: random frames of the pool, nested, up to every frame ('all'); the
    summary's whole-pool mAP and random's final mAP over it."""
    args = type("Args", (), {"steps": 5, "learning_rate": 2e-3, "backbone": small_detector.SCRATCH,
                             "head_dropout": None, "embedding_model": "pretrained",
                             "seconds_per_frame": 3.0, "seconds_per_box": 7.0})()
    rows = []
    points = al.learner_curve(1, split, ["3", al.WHOLE_POOL], args, str(tmp_path), rows.append)
    n = len(split.frames)
    assert [p["frames"] for p in points] == [3, n] and all(p["pool_frames"] == n for p in points)
    assert points[-1]["boxes"] == sum(len(b) for b in split.boxes) and rows[-1]["frames"] == n
    random = [[{"frames": 8, "boxes": 20, "seconds": 164.0, "map50": 0.1}]]
    learner = [[dict(points[0], map50=0.05), dict(points[1], map50=0.2)]]
    out = al.summarise_learner({"random": random}, learner)
    assert out["whole_pool_map50"] == 0.2 and out["random_final_vs_whole_pool"] == 0.5
    assert out["learner_curve"][0] == {"frames_per_seed": [3], "map50_per_seed": [0.05], "map50_mean": 0.05}
    # a curve that stops short of the pool has no whole-pool figure
    assert "whole_pool_map50" not in al.summarise_learner({"random": random}, [[dict(points[0], map50=0.05)]])
    with pytest.raises(SystemExit):
        al.parse_args(["--learner_curve", "10,none"])
    assert al.parse_args(["--learner_curve", "20, all"]).learner_curve == ["20", al.WHOLE_POOL]
    assert al.parse_args(["--learner_curve", ""]).learner_curve == []
    assert al.parse_args(["--head_dropout", "0.1"]).head_dropout == 0.1
    with pytest.raises(SystemExit):
        al.parse_args(["--head_dropout", "1"])
    assert al.parse_args([]).learner_curve == [al.WHOLE_POOL] and al.parse_args(["--quick"]).learner_curve == []

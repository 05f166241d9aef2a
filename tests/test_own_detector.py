"""Bring your own detector: a tiny detector this file builds and exports to ONNX (tf2onnx), TFLite
and a SavedModel, declared by its JSON sidecar, run through ScoreFrames and the whole `mine` job;
and the decoding of each declared output layout on hand-made outputs."""
import json
import os
import shutil

import apache_beam as beam
import cv2
import numpy as np
import pymongo
import pytest

from schemas.records import box_corners
from tests import harness
from transforms.annotate import label_studio as ls
from transforms.score.detector_spec import decode_outputs, parse_detector_spec, read_detector_spec
from transforms.score.detectors import DetectorOutputError, ExportedDetector, detector_handler

GRID, SIZE = 8, 64  # the tiny detector: 64 x 64 input, one box per cell of an 8 x 8 grid
CLASSES = ["red", "blue"]


def _export_tiny_detector(directory):
    """A colour detector as a TensorFlow function: each of the 8 x 8 cells of the 64 x 64 input
    scores ``sigmoid(12 * (channel - mean of the other two) - 6)`` for red and blue (pixels in
    [0, 1]) and boxes the cell (pixels of the input). Saved as a SavedModel, converted to TFLite
    (TensorFlow's converter) and to ONNX (tf2onnx); returns {format: path}."""
    import tensorflow as tf
    import tf2onnx

    weights = np.array([[1, -.5, -.5], [-.5, -.5, 1]], np.float32).T * 12.0
    cell = SIZE // GRID
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    cells = np.stack([cols * cell, rows * cell, (cols + 1) * cell, (rows + 1) * cell], axis=1)[None].astype(np.float32)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")])
        def __call__(self, image):
            pooled = tf.nn.avg_pool2d(image, SIZE // GRID, SIZE // GRID, "VALID")
            logits = tf.reshape(pooled, [1, GRID * GRID, 3]) @ tf.constant(weights) - 6.0
            return {"boxes": tf.constant(cells), "scores": tf.sigmoid(logits)}

    model = Tiny()
    paths = {"saved_model": os.path.join(directory, "tiny_sm"), "tflite": os.path.join(directory, "tiny.tflite"),
             "onnx": os.path.join(directory, "tiny.onnx")}
    tf.saved_model.save(model, paths["saved_model"], signatures={"serving_default": model.__call__})
    with open(paths["tflite"], "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_saved_model(paths["saved_model"]).convert())
    tf2onnx.convert.from_function(model.__call__, input_signature=model.__call__.input_signature, opset=17,
                                  output_path=paths["onnx"])
    sidecar = {"class_names": CLASSES, "scale": 1 / 255, "output_layout": "boxes_scores",
               "outputs": {"boxes": "boxes", "scores": "scores"}, "box_format": "xyxy", "box_units": "pixels",
               "score_threshold": 0.3, "iou_threshold": 0.5, "nms": "per_class"}
    for path in paths.values():
        with open(path + ".json", "w") as f:
            json.dump(sidecar, f)
    return paths


@pytest.fixture(scope="module")
def detectors():
    return _export_tiny_detector(harness.tmpdir("own-detector-"))


def _painted(name, colour, rows, cols):
    """A packaged photo (RGB) with a saturated square over grid cells ``rows`` x ``cols`` (ranges
    of the 8 x 8 grid), and that square's box in pixels."""
    rgb = cv2.cvtColor(cv2.imread(harness.media(name)), cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    box = (cols[0] * width / GRID, rows[0] * height / GRID, cols[1] * width / GRID, rows[1] * height / GRID)
    x1, y1, x2, y2 = int(np.ceil(box[0])), int(np.ceil(box[1])), int(box[2]), int(box[3])
    rgb[y1:y2, x1:x2] = colour
    return rgb, np.array(box, np.float32)


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "saved_model"])
def test_exported_detector_finds_the_painted_square_in_each_format(detectors, fmt):
    frame, square = _painted("china.jpg", (255, 0, 0), rows=(3, 5), cols=(2, 4))
    found = ExportedDetector(detectors[fmt]).load().detect(frame)
    # The four cells under the square, each a box of the frame's grid, all "red", confident.
    assert len(found.boxes) == 4 and set(found.labels) == {"red"}, (found.labels, found.confidences)
    assert np.all(found.confidences > 0.99)
    np.testing.assert_allclose([found.boxes[:, 0].min(), found.boxes[:, 1].min(), found.boxes[:, 2].max(),
                                found.boxes[:, 3].max()], square, atol=0.01)
    # The flipped pass finds the mirrored cells, mapped back onto the same boxes: stable.
    np.testing.assert_allclose(found.localisation, 0.0, atol=1e-5)
    # The photo itself holds no saturated square.
    bare = cv2.cvtColor(cv2.imread(harness.media("china.jpg")), cv2.COLOR_BGR2RGB)
    assert len(ExportedDetector(detectors[fmt]).load().detect(bare).boxes) == 0


def test_formats_agree_and_half_covered_cells_are_uncertain(detectors):
    """A square over half of a cell column gives mid-range scores (uncertain boxes); all three
    exports give the same boxes and scores."""
    frame, _ = _painted("china.jpg", (0, 0, 255), rows=(2, 4), cols=(5, 6.5))
    results = {fmt: ExportedDetector(path, flip=False).load().detect(frame) for fmt, path in detectors.items()}
    onnx = results["onnx"]
    assert set(onnx.labels) == {"blue"} and np.any((onnx.confidences > 0.3) & (onnx.confidences < 0.7))
    for other in results.values():
        np.testing.assert_allclose(other.boxes, onnx.boxes, atol=1e-3)
        np.testing.assert_allclose(other.confidences, onnx.confidences, atol=1e-4)


def test_score_frames_gives_detections_and_scores(detectors):
    from transforms.decode.ptransforms import DecodeMedia
    from transforms.score.ptransforms import ScoreFrames, load_model_spec
    frame, _ = _painted("china.jpg", (255, 0, 0), rows=(3, 5), cols=(2, 4))
    path = os.path.join(harness.tmpdir(), "red.png")
    cv2.imwrite(path, frame[..., ::-1])
    handler = detector_handler(detectors["tflite"])
    assert handler.version.name == "tiny.tflite" and len(handler.version.version) == 16

    def build(p):
        decoded = p | beam.Create([path]) | DecodeMedia()
        scored = decoded.frames | ScoreFrames(load_model_spec(), detector=handler)
        return {"records": scored.records, "dead": scored.dead_letters}
    out = harness.run_collect(build)
    (record,) = out["records"]
    assert out["dead"] == [] and [d.label for d in record.detections] == ["red"] * 4
    scores = dict(record.extra_scores)
    assert scores["detection_count"] == 4 and scores["detection_localisation"] == pytest.approx(0, abs=1e-5)
    assert record.detector.name == "tiny.tflite"


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


def test_mine_with_an_onnx_detector(detectors, mongo, tmp_path):
    """`mine --detector tiny.onnx`: every frame document carries the detector's boxes, its
    detection scores and version; object crops feed the selection; Label Studio pre-annotations
    come from its boxes; a rerun writes nothing twice."""
    from beam_pipelines import mine
    media = tmp_path / "media"
    media.mkdir()
    red, red_square = _painted("china.jpg", (255, 0, 0), rows=(3, 5), cols=(2, 4))
    blue, _ = _painted("china.jpg", (0, 0, 255), rows=(1, 2), cols=(5, 7))
    cv2.imwrite(str(media / "red.png"), red[..., ::-1])
    cv2.imwrite(str(media / "blue.png"), blue[..., ::-1])
    shutil.copy(harness.media("china.jpg"), media / "bare.jpg")
    argv = [f"--input={media}/*", f"--output_dir={tmp_path / 'out'}", f"--mongo_uri={mongo.uri}",
            "--mongo_database=own_detector", f"--detector={detectors['onnx']}", "--selection_embedding=objects",
            "--budget=3", "--detector_flip=on", "--quiet"]  # flip-TTA as for NanoDet-g
    summary = mine.run(argv)
    with pymongo.MongoClient(mongo.uri) as client:
        docs = {d["source_uri"].rsplit("/", 1)[-1]: d for d in client.own_detector.frames.find()}
    assert summary["detector"]["name"] == "tiny.onnx" and summary["strategy_params"]["score"] == "detection_max"
    assert set(docs) == {"red.png", "blue.png", "bare.jpg"}
    assert [d["label"] for d in docs["red.png"]["detections"]] == ["red"] * 4
    assert [d["label"] for d in docs["blue.png"]["detections"]] == ["blue"] * 2
    assert docs["bare.jpg"]["detections"] == []
    boxes = np.array([box_corners(d["box"]) for d in docs["red.png"]["detections"]])
    np.testing.assert_allclose([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()],
                               red_square, atol=0.01)
    for doc in docs.values():
        assert doc["model"]["detector_name"] == "tiny.onnx"
        assert {"detection_max", "detection_sum", "detection_localisation", "detection_rare_class"} <= set(doc["scores"])
    assert docs["red.png"]["scores"]["detection_count"] == 4
    # The pre-annotation a Label Studio task gets: the detector's boxes, in percent of the frame.
    prediction = ls.prediction(docs["red.png"], ls.DETECTION, CLASSES)
    assert len(prediction["result"]) == 4
    assert {r["value"]["rectanglelabels"][0] for r in prediction["result"]} == {"red"}
    assert min(r["value"]["x"] for r in prediction["result"]) == pytest.approx(100 * red_square[0] / red.shape[1], abs=0.01)
    assert ls.prediction(docs["bare.jpg"], ls.DETECTION, CLASSES) is None
    mine.run(argv)  # a rerun replaces, never adds
    with pymongo.MongoClient(mongo.uri) as client:
        assert client.own_detector.frames.count_documents({}) == 3


def test_detector_options_and_sidecar_errors(detectors, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines.mine.options import check_options

    def job(*argv):
        return check_options(PipelineOptions([f"--output_dir={tmp_path / 'out'}", *argv]))
    for path in detectors.values():
        assert job(f"--detector={path}").detector == path
    bare = tmp_path / "bare.onnx"
    shutil.copy(detectors["onnx"], bare)
    with pytest.raises(ValueError, match="needs a sidecar"):
        job(f"--detector={bare}")
    with open(f"{bare}.json", "w") as f:
        json.dump({"class_names": CLASSES, "output_layout": "ssd"}, f)
    with pytest.raises(ValueError, match=r"output_layout must be one of \['yolo', 'boxes_scores', 'detections'\]"):
        job(f"--detector={bare}")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_detector_spec({"class_names": ["a"], "threshold": 0.5})
    with pytest.raises(ValueError, match="class_names"):
        parse_detector_spec({"output_layout": "yolo"})
    # A sidecar that does not describe the model: the frame is dead-lettered, not skipped.
    with open(f"{bare}.json", "w") as f:
        json.dump({"class_names": ["only one"], "output_layout": "boxes_scores", "scale": 1 / 255}, f)
    frame, _ = _painted("china.jpg", (255, 0, 0), rows=(3, 5), cols=(2, 4))
    with pytest.raises(DetectorOutputError, match="scores 2 classes, the sidecar names 1"):
        ExportedDetector(str(bare)).load().detect(frame)
    from transforms.decode.ptransforms import DecodeMedia
    from transforms.score.ptransforms import ScoreFrames, load_model_spec
    path = str(tmp_path / "red.png")
    cv2.imwrite(path, frame[..., ::-1])

    def build(p):
        decoded = p | beam.Create([path]) | DecodeMedia()
        scored = decoded.frames | ScoreFrames(load_model_spec(), detector=detector_handler(str(bare)))
        return {"records": scored.records, "dead": scored.dead_letters}
    out = harness.run_collect(build)
    (dead,) = out["dead"]
    assert out["records"] == [] and dead.stage == "inference" and "scores 2 classes" in dead.error
    assert read_detector_spec(str(tmp_path / "nothing.onnx")) is None


def test_a_changed_sidecar_is_a_new_detector_version(detectors, tmp_path):
    """The version of a model with a sidecar covers the sidecar: another score threshold or class
    list changes what the records say. Without a sidecar it is the file's digest."""
    from transforms.score.handlers import file_digest
    from transforms.score.detectors import detector_version
    model = tmp_path / "det.onnx"
    shutil.copy(detectors["onnx"], model)
    with open(f"{detectors['onnx']}.json") as f:
        sidecar = json.load(f)
    with open(f"{model}.json", "w") as f:
        json.dump(sidecar, f)
    first = detector_version(str(model)).version
    with open(f"{model}.json", "w") as f:
        json.dump(dict(sidecar, score_threshold=0.6), f)
    second = detector_version(str(model)).version
    assert len({first, second, file_digest(str(model))}) == 3
    assert detector_handler(str(model)).version.version == second
    os.remove(f"{model}.json")
    assert detector_version(str(model)).version == file_digest(str(model))


def _spec(**declared):
    return parse_detector_spec(dict({"class_names": ["a", "b"]}, **declared))


def test_decode_yolo_rows_transposed_and_with_objectness():
    # Two candidates in a 100 x 100 input, frame 200 x 100: (cx, cy, w, h, score a, score b).
    rows = np.array([[50, 50, 20, 20, 0.9, 0.1], [52, 50, 20, 20, 0.8, 0.2], [10, 10, 4, 4, 0.1, 0.6]], np.float32)
    spec = _spec(output_layout="yolo", box_format="cxcywh", iou_threshold=0.5)
    for layout in (rows[None], rows.T[None]):  # (1, N, 6) and YOLOv8's (1, 6, N)
        boxes, scores, ids, rejected = decode_outputs({"out": layout}, spec, (100, 100), 200, 100)
        np.testing.assert_allclose(boxes, [[80, 40, 120, 60], [16, 8, 24, 12]])
        np.testing.assert_allclose(scores, [0.9, 0.6], rtol=1e-6)
        assert ids.tolist() == [0, 1]
        assert rejected == 0.0  # the 0.8 of class a beside the 0.9 is suppressed, not rejected
    with_objectness = np.insert(rows, 4, [1.0, 0.2, 0.5], axis=1)  # YOLOv5: objectness x class score
    boxes, scores, ids, rejected = decode_outputs({"out": with_objectness[None]}, _spec(
        output_layout="yolo", box_format="cxcywh", objectness=True), (100, 100), 100, 100)
    np.testing.assert_allclose(scores, [0.9, 0.3], rtol=1e-6)
    # 0.8 x 0.2 = 0.16 (class a) is rejected by the 0.3 threshold, and it overlaps the kept 0.9 box
    # of its class (IoU 0.82 > 0.6): suppressed; the 0.5 x 0.6 = 0.3 box is kept.
    assert rejected == 0.0
    with pytest.raises(ValueError, match=r"yolo output must be \(N, 6\)"):
        decode_outputs({"out": np.zeros((1, 3, 9))}, spec, (100, 100), 100, 100)


def test_decode_boxes_scores_normalised_yxyx_with_softmax_and_background():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]], np.float32)  # y1, x1, y2, x2
    logits = np.array([[[0.0, 4.0, 0.0], [5.0, 0.0, 0.0]]], np.float32)  # class 0 = background
    spec = _spec(output_layout="boxes_scores", box_format="yxyx", box_units="normalised",
                 score_activation="softmax", background_class=0, outputs={"boxes": "b", "scores": "s"})
    out_boxes, scores, ids, rejected = decode_outputs({"s": logits, "b": boxes}, spec, (300, 300), 200, 100)
    np.testing.assert_allclose(out_boxes, [[40, 10, 120, 50]], rtol=1e-6)
    np.testing.assert_allclose(scores, [np.exp(4) / (np.exp(4) + 2)], rtol=1e-6)
    assert ids.tolist() == [0]
    assert rejected == 0.0  # the background box's best class scores 1 / (e^5 + 2) = 0.007, below the floor
    with pytest.raises(ValueError, match="score_activation"):
        decode_outputs({"b": boxes, "s": logits}, _spec(output_layout="boxes_scores", background_class=0,
                                                        outputs={"boxes": "b", "scores": "s"}), (300, 300), 200, 100)


def test_decode_tf_object_detection_api_outputs():
    outputs = {"detection_boxes": np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0, 0, 1, 1]]]),
               "detection_scores": np.array([[0.9, 0.4, 0.2]]), "detection_classes": np.array([[2.0, 1.0, 1.0]]),
               "num_detections": np.array([2.0])}
    spec = _spec(output_layout="detections", box_format="yxyx", box_units="normalised", class_offset=1,
                 outputs={"boxes": "detection_boxes", "scores": "detection_scores",
                          "classes": "detection_classes", "count": "num_detections"}, nms="none")
    boxes, scores, ids, rejected = decode_outputs(outputs, spec, (320, 320), 640, 480)
    np.testing.assert_allclose(boxes, [[0, 0, 320, 240], [320, 240, 640, 480]])
    assert ids.tolist() == [1, 0] and scores.tolist() == pytest.approx([0.9, 0.4])
    assert rejected == 0.0  # the third detection is past num_detections
    # Counted, the whole-frame 0.2 of class 0 is below the threshold; its IoU with the kept box of
    # its class is 0.25: the best rejected box.
    found = decode_outputs(dict(outputs, num_detections=np.array([3.0])), spec, (320, 320), 640, 480)
    assert found.class_ids.tolist() == [1, 0] and found.rejected == pytest.approx(0.2)
    assert decode_outputs(dict(outputs, num_detections=np.array([3.0])), spec._replace(uncertainty_floor=0.3),
                          (320, 320), 640, 480).rejected == 0.0


if __name__ == "__main__":
    harness.main(__file__)

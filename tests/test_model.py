"""The default model and ScoreFrames on real data."""
import csv
import os

import apache_beam as beam
import numpy as np
import pytest

from models.train_fashion_mnist import load_split
from tests import harness
from transforms.score.model_base import DEFAULT_MODEL_CLASS_NAMES
from transforms.decode.ptransforms import DecodeMedia
from transforms.score.ptransforms import (default_model_path, load_embedding_classifier, load_model_spec,
                              prepare_input)


@pytest.fixture(scope="module")
def spec():
    return load_model_spec()


def test_default_model_is_meaningful_on_fashion_mnist_test_set():
    model, layer, base = load_embedding_classifier(default_model_path())
    images, labels = load_split("t10k")
    embeddings, probabilities = model.predict(images[..., None].astype("float32"), batch_size=512, verbose=0)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    assert accuracy >= 0.87, accuracy
    assert layer == "embedding" and embeddings.shape == (10000, 128)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_model_spec(spec):
    assert spec.input_shape == (28, 28, 1)
    assert spec.num_classes == 10
    assert spec.version.name == "fashion_mnist_cnn" and spec.version.embedding_layer == "embedding"
    assert len(spec.version.version) == 16
    assert load_model_spec().version == spec.version  # the digest is stable


def test_model_spec_errors():
    with pytest.raises(FileNotFoundError):
        load_model_spec("/nonexistent/model.keras")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        load_model_spec(embedding_layer="nope")
    with pytest.raises(ValueError, match="model_output"):
        load_model_spec(model_output="scores")


def test_prepare_input_grey_and_resize():
    rgb = np.zeros((576, 768, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: BT.601 luma 0.299 * 255
    x = prepare_input(rgb, (28, 28, 1))
    assert x.shape == (28, 28, 1) and x.dtype == np.float32
    assert np.allclose(x, 76, atol=1)


def test_score_frames_through_run_inference(spec):
    from transforms.score.ptransforms import ScoreFrames
    with open(harness.media("fashion-mnist", "labels.csv")) as f:
        labels = {row["file"]: int(row["label"]) for row in csv.DictReader(f)}

    def build(p):
        decoded = p | beam.Create([harness.media("fashion-mnist", "t10k-000[0-9][0-9].png"),
                                   harness.media("vtest.avi")]) | DecodeMedia(video_fps=0.25)
        scored = decoded.frames | ScoreFrames(spec)
        return {"records": scored.records, "dead": scored.dead_letters}
    out = harness.run_collect(build)
    records = out["records"]
    assert out["dead"] == []
    assert len(records) == 100 + 20  # 100 PNGs + vtest.avi (79.5 s) at one frame per 4 s
    for r in records:
        assert r.embedding.shape == (128,) and r.embedding.dtype == np.float32
        assert r.probabilities.shape == (10,)
        assert r.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert 0 <= r.entropy <= np.log(10) + 1e-9
        assert r.model == spec.version
    pngs = [r for r in records if r.frame.source_uri.endswith(".png")]
    correct = sum(r.predicted_class == labels[os.path.basename(r.frame.source_uri)] for r in pngs)
    assert correct >= 85, f"{correct}/100 PNG frames classified as labelled"
    # Every record names its class (the bundled model's Fashion-MNIST names).
    assert all(r.predicted_label == DEFAULT_MODEL_CLASS_NAMES[r.predicted_class] for r in records)
    # Camera frames are far from Fashion-MNIST: the model is less sure about them.
    video = [r.entropy for r in records if r.frame.media_type == "video"]
    assert np.median(video) > np.median([r.entropy for r in pngs])


def test_inference_failure_sends_every_frame_to_dead_letter(spec):
    from transforms.score.ptransforms import ScoreFrames
    wrong = spec._replace(input_shape=(32, 32, 1))  # the model takes 28x28: inference fails
    globs = [harness.media("fashion-mnist", "t10k-0000[0-9].png"), harness.media("china.jpg")]

    def build(p):
        decoded = p | beam.Create(globs) | DecodeMedia()
        scored = decoded.frames | ScoreFrames(wrong, min_batch_size=4, max_batch_size=4)
        return {"records": scored.records, "dead": scored.dead_letters, "frames": decoded.frames}
    out = harness.run_collect(build)
    assert out["records"] == []
    assert sorted(d.frame_id for d in out["dead"]) == sorted(f.frame_id for f in out["frames"])
    assert len(out["dead"]) == 11
    assert all(d.stage == "inference" and "model inference failed" in d.error for d in out["dead"])


def test_extra_scores_are_stored_as_nullable_columns_and_mongo_scores():
    from schemas import frames as frames_schema
    from tests.records_factory import frame_record
    record = frame_record("/data/a.png")._replace(extra_scores=(("bald", 0.25), ("ratio", 0.5)))
    doc = frames_schema.to_mongo_document(record)
    assert doc["scores"]["bald"] == 0.25 and doc["scores"]["ratio"] == 0.5
    assert "uniqueness" not in doc["scores"] and doc["scores"]["entropy"] == record.entropy
    row = frames_schema.to_bigquery_row(record)
    assert set(row) <= set(frames_schema.field_names())
    # Absent scores are NULL in BigQuery and never $set to null in MongoDB (that would erase a
    # score an earlier run stored).
    assert row["bald"] == 0.25 and "uniqueness" not in row
    modes = {f.name: f.mode for f in frames_schema.FRAME_FIELDS}
    assert all(modes[name] == "NULLABLE" for name in frames_schema.EXTRA_SCORE_NAMES)
    assert "bald" not in frames_schema.to_bigquery_row(frame_record("/data/b.png"))


if __name__ == "__main__":
    harness.main(__file__)

"""`python -m beam_pipelines.stats` gives the same counts from MongoDB and from BigQuery."""
import datetime
import json

import apache_beam as beam
import pytest

from beam_pipelines import stats
from schemas import tables
from schemas.annotations import make_annotation_id
from schemas.records import Detection, ModelVersion
from tests import harness
from tests.records_factory import TEST_MODEL, frame_record
from transforms.index.bigquery_client import ensure_table
from transforms.index import WriteFramesToBigQuery, WriteFramesToMongoDB, upsert_documents

RECORDS = ([frame_record("gs://b/cam1/a.mp4", i, timestamp_s=float(i)) for i in range(5)]
           + [frame_record("gs://b/cam1/b.png"), frame_record("gs://b/cam2/c.png")])
# Frames 1 and 2 of a.mp4 and c.png are near-duplicates; frame 1 represents them.
GROUP = RECORDS[1].frame.frame_id
RECORDS = [r._replace(duplicate_group=GROUP) if i in (1, 2, 6) else r for i, r in enumerate(RECORDS)]
# Every frame names its class; a detector found two people in frame 0 of a.mp4 and a car in b.png.
DETECTOR = ModelVersion("nanodet_g.tflite", "fedcba9876543210", "")
BOXES = {0: (Detection("person", 0, 0.75, (2.0, 4.0, 12.0, 24.0)), Detection("person", 0, 0.25, (0.0, 0.0, 10.0, 10.0))),
         5: (Detection("car", 2, 0.4, (1.0, 1.0, 5.0, 3.0)),)}
RECORDS = [r._replace(predicted_label="coat", detections=BOXES.get(i, ()), detector=DETECTOR if i in BOXES else None)
           for i, r in enumerate(RECORDS)]
SELECTIONS = {"sel-1": RECORDS[:3], "sel-2": RECORDS[4:6]}
LABELS = [(RECORDS[0], "coat", "ann"), (RECORDS[1], "coat", "ann"), (RECORDS[0], "coat", "bob"),
          (RECORDS[5], "bag", "ann")]
NOW = datetime.datetime(2026, 11, 22, 6, 0, tzinfo=datetime.timezone.utc)


def candidate_rows():
    return [{"selection_id": selection, "rank": rank, "frame_id": r.frame.frame_id,
             "source_uri": r.frame.source_uri, "frame_index": r.frame.frame_index,
             "timestamp_s": r.frame.timestamp_s, "score": 1.0 / rank, "strategy": "entropy",
             "predicted_class": r.predicted_class, "duplicates": 1, "model_name": TEST_MODEL.name,
             "model_version": TEST_MODEL.version, "parameters": "{}", "components": "{}",
             "scores": "{}"}
            for selection, chosen in SELECTIONS.items() for rank, r in enumerate(chosen, 1)]


def annotation_rows(as_text=False):
    return [{"annotation_id": make_annotation_id(r.frame.frame_id, "classification", who),
             "frame_id": r.frame.frame_id, "source_uri": r.frame.source_uri,
             "frame_index": r.frame.frame_index, "task": "classification", "label": label,
             "label_index": None, "annotator": who, "selection_id": None,
             "annotated_at": NOW.isoformat() if as_text else NOW}
            for r, label, who in LABELS]


def expected(today):
    return {
        "overview": [{"sources": 3, "frames": 7, "model_versions": 1}],
        "frames_per_source_day": [{"source_uri": "gs://b/cam1/a.mp4", "day": today, "frames": 5},
                                  {"source_uri": "gs://b/cam1/b.png", "day": today, "frames": 1},
                                  {"source_uri": "gs://b/cam2/c.png", "day": today, "frames": 1}],
        "candidates_per_selection": [
            {"selection_id": "sel-1", "strategy": "entropy", "model_version": TEST_MODEL.version,
             "candidates": 3, "best_score": 1.0},
            {"selection_id": "sel-2", "strategy": "entropy", "model_version": TEST_MODEL.version,
             "candidates": 2, "best_score": 1.0}],
        "annotations_per_label": [
            {"task": "classification", "label": "coat", "annotations": 3, "frames": 2},
            {"task": "classification", "label": "bag", "annotations": 1, "frames": 1}],
        "labelling_funnel": [],  # nothing sent to annotators (tests/test_annotate.py fills them)
        "qc_per_annotator": [],
        "near_duplicates": [{"duplicate_group": GROUP, "frames": 3, "sources": 2}],
        # From the detections' STRUCTs: UNNEST on BigQuery, $unwind on MongoDB.
        "detections_per_label": [
            {"label": "person", "boxes": 2, "frames": 1, "mean_score": 0.5, "uncertain_boxes": 1,
             "mean_area_px": (10 * 20 + 10 * 10) / 2},
            {"label": "car", "boxes": 1, "frames": 1, "mean_score": 0.4, "uncertain_boxes": 1, "mean_area_px": 8.0}],
        "frames_per_predicted_label": [
            {"model_version": TEST_MODEL.version, "predicted_class": 0, "predicted_label": "coat", "frames": 7}],
    }


def _today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def test_stats_from_mongodb(capsys):
    with harness.mongod() as server:
        assert stats.mongo_stats(server.uri, "stats")["overview"] == [{"sources": 0, "frames": 0, "model_versions": 0}]
        harness.run_collect(lambda p: dict(zip(("ids", "dead"), p | beam.Create(RECORDS)
                                               | WriteFramesToMongoDB(server.uri, "stats"))))
        candidates = [tables.to_mongo_document(tables.candidates_table(), row) for row in candidate_rows()]
        assert upsert_documents(server.uri, "stats", tables.candidates_table(), candidates) == []
        annotations = [tables.to_mongo_document(tables.annotations_table(), row) for row in annotation_rows()]
        assert upsert_documents(server.uri, "stats", tables.annotations_table(), annotations) == []
        today = _today()
        assert stats.mongo_stats(server.uri, "stats") == expected(today)
        assert stats.main(["--mongo_uri", server.uri, "--mongo_database", "stats", "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == expected(today)
        assert stats.main(["--mongo_uri", server.uri, "--mongo_database", "stats"]) == 0
        text = capsys.readouterr().out
        assert "== annotations_per_label (2 rows)" in text and "gs://b/cam2/c.png" in text


def test_stats_from_bigquery():
    with harness.bigquery_emulator() as endpoint:
        from transforms.common import gcp_emulators
        gcp_emulators.use_emulators_if_configured()
        client = harness.bigquery_client(endpoint)
        client.create_dataset("stats")
        dataset = f"{harness.BIGQUERY_PROJECT}.stats"
        out = harness.run_collect(lambda p: {"dead": p | beam.Create(RECORDS) | WriteFramesToBigQuery(
            f"{harness.BIGQUERY_PROJECT}:stats.frames", "STREAMING_INSERTS")})
        assert out["dead"] == []
        for spec, rows in ((tables.candidates_table(), candidate_rows()),
                           (tables.annotations_table(), annotation_rows(as_text=True))):
            ensure_table(client, f"{dataset}.{spec.name}", spec)
            assert client.insert_rows_json(f"{dataset}.{spec.name}", rows) == []
        reports = stats.bigquery_stats(dataset, client=client)
        assert reports == expected(_today())
        # The shipped SQL also works as views in the dataset.
        assert stats.bigquery_stats(dataset, client=client, create_views=True) == reports
        view = client.get_table(f"{dataset}.annotations_per_label")
        assert view.table_type == "VIEW"
        rows = [dict(r.items()) for r in client.query(f"SELECT * FROM `{dataset}.annotations_per_label` "
                                                      "ORDER BY annotations DESC").result()]
        assert rows == reports["annotations_per_label"]


def test_unreachable_store_is_one_clear_line(capsys):
    uri = f"mongodb://user:pw-123@127.0.0.1:{harness.free_port()}/?serverSelectionTimeoutMS=300"
    assert stats.main(["--mongo_uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stats: cannot read mongodb://user:***@127.0.0.1:") and "pw-123" not in err
    assert "ServerSelectionTimeoutError" in err


def test_unknown_report_is_an_error():
    with pytest.raises(ValueError, match="unknown report"):
        stats.view_sql("nope", "p.d")


if __name__ == "__main__":
    harness.main(__file__)

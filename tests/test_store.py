"""MongoDB and BigQuery writers against real servers on 127.0.0.1."""
import math

import apache_beam as beam
import pymongo
import pytest

from schemas import frames as frames_schema
from tests import harness
from tests.records_factory import frame_record
from transforms.decode.ptransforms import DecodeMedia
from transforms.score.ptransforms import ScoreFrames, load_model_spec
from transforms.common.redact import redact_uri
from transforms.index import WriteFramesToBigQuery, WriteFramesToMongoDB


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


@pytest.fixture(scope="module")
def bigquery():
    """One BigQuery emulator for the module's tests (each uses its own dataset); its endpoint."""
    with harness.bigquery_emulator() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def real_records():
    """FrameRecords of 12 real Fashion-MNIST PNGs and the sample video, from the real model."""
    globs = [harness.media("fashion-mnist", "t10k-0000*.png"), harness.media("fashion-mnist", "t10k-0001[01].png"),
             harness.media("cup.mp4")]
    spec = load_model_spec()
    def build(p):
        decoded = p | beam.Create(globs) | DecodeMedia(video_fps=1.0)
        return {"records": (decoded.frames | ScoreFrames(spec)).records}
    return harness.run_collect(build)["records"]


def _write(records, uri, **kwargs):
    return harness.run_collect(lambda p: dict(zip(
        ("frame_ids", "dead_letters"),
        p | beam.Create(records) | WriteFramesToMongoDB(uri, "store_test", **kwargs))))


def test_mongo_documents_indexes_and_idempotent_rerun(mongo, real_records):
    assert len(real_records) == 12 + 9  # 12 images + cup.mp4 (8.07 s) at 1 fps
    first = _write(real_records, mongo.uri)
    assert sorted(first["frame_ids"]) == sorted(r.frame.frame_id for r in real_records)
    assert first["dead_letters"] == []
    collection = pymongo.MongoClient(mongo.uri)["store_test"]["frames"]
    assert collection.count_documents({}) == len(real_records)

    record = real_records[0]
    doc = collection.find_one({"_id": record.frame.frame_id})
    assert doc["source_uri"] == record.frame.source_uri
    assert doc["frame_index"] == record.frame.frame_index
    assert len(doc["embedding"]) == 128
    assert math.isclose(sum(doc["probabilities"]), 1.0, rel_tol=1e-5)
    assert {"entropy", "margin", "least_confidence"} <= set(doc["scores"])
    assert doc["scores"]["entropy"] == pytest.approx(record.entropy)
    assert doc["model"]["name"] == "fashion_mnist_cnn"

    indexes = collection.index_information()
    assert indexes["source_uri_frame_index"]["unique"] is True
    assert indexes["source_uri_frame_index"]["key"] == [("source_uri", 1), ("frame_index", 1)]
    for score in ("entropy", "margin", "least_confidence"):
        assert indexes[f"scores_{score}"]["key"] == [(f"scores.{score}", -1)]

    # A field added by another stage survives a rerun: the writer only $sets its own fields.
    collection.update_one({"_id": record.frame.frame_id}, {"$set": {"label": "coat"}})
    second = _write(real_records, mongo.uri)
    assert sorted(second["frame_ids"]) == sorted(first["frame_ids"])
    assert collection.count_documents({}) == len(real_records)
    assert collection.find_one({"_id": record.frame.frame_id})["label"] == "coat"


def test_mongo_rejected_document_goes_to_dead_letter(mongo):
    good = frame_record("file:///cam/a.png")
    # Same (source_uri, frame_index) as `good` under another _id: the unique index rejects it.
    clash = frame_record("file:///cam/a.png", frame_id="f" * 32)
    other = frame_record("file:///cam/b.png")
    out = _write([good, other], mongo.uri)
    assert len(out["frame_ids"]) == 2
    out = _write([clash], mongo.uri)
    assert out["frame_ids"] == []
    [dead] = out["dead_letters"]
    assert dead.stage == "mongodb" and dead.frame_id == "f" * 32
    assert dead.source_uri == "file:///cam/a.png"
    assert "duplicate key" in dead.error


def test_pipelined_writes_keep_each_batchs_window_and_lose_nothing(mongo):
    """Batches of 7 in flight on the writer thread (at most 2 waiting): every acknowledged id and
    every dead letter comes out once, in the window of the document it belongs to."""
    from apache_beam.transforms import window
    records = [frame_record(f"file:///cam/w{i}.png") for i in range(60)]
    clash = frame_record("file:///cam/w5.png", frame_id="e" * 32)  # the unique index rejects it
    stamped = [(r, 10.0 * (i % 3) + 1) for i, r in enumerate(records)] + [(clash, 21.0)]
    expected_window = {r.frame.frame_id: t // 10 * 10 for r, t in stamped}

    def build(p):
        written = (p | beam.Create(stamped) | beam.MapTuple(window.TimestampedValue)
                   | beam.WindowInto(window.FixedWindows(10))
                   | WriteFramesToMongoDB(mongo.uri, "store_pipelined", batch_size=7))
        def with_window(value, w=beam.DoFn.WindowParam):
            return value, float(w.start)
        return {"ids": (written.frame_ids | "IdWindow" >> beam.Map(with_window)
                        | "IdsGlobal" >> beam.WindowInto(window.GlobalWindows())),
                "dead": (written.dead_letters | "DeadWindow" >> beam.Map(with_window)
                         | "DeadGlobal" >> beam.WindowInto(window.GlobalWindows()))}
    # The clash is written after w5 in most orders, but either may lose: one of the two is dead.
    out = harness.run_collect(build)
    [(dead, dead_window)] = out["dead"]
    assert dead.stage == "mongodb" and "duplicate key" in dead.error
    ids = [frame_id for frame_id, _ in out["ids"]]
    assert len(ids) == len(set(ids)) == 60 and dead.frame_id not in ids
    assert sorted(ids + [dead.frame_id]) == sorted(expected_window)
    assert all(start == expected_window[frame_id] for frame_id, start in out["ids"])
    assert dead_window == expected_window[dead.frame_id]
    assert pymongo.MongoClient(mongo.uri)["store_pipelined"]["frames"].count_documents({}) == 60


def test_generic_writer_on_annotations_validates_and_names_the_id(mongo):
    """The same writer serves every collection: annotations, with their validator and indexes."""
    import datetime
    from schemas import tables
    from schemas.annotations import make_annotation_id
    from transforms.index import WriteDocumentsToMongoDB
    spec = tables.annotations_table()
    now = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)
    rows = [{"annotation_id": make_annotation_id(f"f{i}", "classification", "ann"), "frame_id": f"f{i}",
             "source_uri": f"file:///cam/{i}.png", "frame_index": 0, "task": "classification",
             "label": "coat", "annotator": "ann", "annotated_at": now} for i in range(3)]
    bad = dict(rows[0], annotation_id="bad-one", frame_id="f9", label=None)  # REQUIRED label missing
    docs = [tables.to_mongo_document(spec, row) for row in rows + [bad]]
    out = harness.run_collect(lambda p: dict(zip(("ids", "dead_letters"), p | beam.Create(docs)
                                                 | WriteDocumentsToMongoDB(mongo.uri, "store_test", spec))))
    assert sorted(out["ids"]) == sorted(r["annotation_id"] for r in rows)
    [dead] = out["dead_letters"]
    assert dead.stage == "mongodb" and dead.frame_id == "f9"
    assert dead.error.startswith("annotations _id=bad-one:") and "validation" in dead.error
    collection = pymongo.MongoClient(mongo.uri)["store_test"]["annotations"]
    assert collection.count_documents({}) == 3
    assert collection.index_information()["frame_id_task_annotator"]["unique"] is True
    options = collection.options()
    assert options["validator"] == tables.mongo_validator(spec)


def test_mongo_unreachable_sends_every_document_to_dead_letter():
    uri = f"mongodb://127.0.0.1:{harness.free_port()}/?serverSelectionTimeoutMS=300"
    records = [frame_record(f"file:///cam/{i}.png") for i in range(3)]
    out = _write(records, uri, max_attempts=2)
    assert out["frame_ids"] == []
    assert sorted(d.frame_id for d in out["dead_letters"]) == sorted(r.frame.frame_id for r in records)
    assert all(d.stage == "mongodb" and "after 2 attempts" in d.error for d in out["dead_letters"])


def test_redact_uri():
    assert redact_uri("mongodb://user:s3cret@db.example:27017/x") == "mongodb://user:***@db.example:27017/x"
    assert redact_uri("mongodb+srv://u:p%40ss@cluster/") == "mongodb+srv://u:***@cluster/"
    assert redact_uri("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"
    assert redact_uri(None) is None


def test_bigquery_rows_read_back(real_records, bigquery):
    from transforms.common import gcp_emulators
    assert gcp_emulators.use_emulators_if_configured()
    client = harness.bigquery_client(bigquery)
    client.create_dataset("activebeam")
    table = f"{harness.BIGQUERY_PROJECT}:activebeam.frames"
    out = harness.run_collect(lambda p: {
        "dead_letters": p | beam.Create(real_records) | WriteFramesToBigQuery(table, "STREAMING_INSERTS")})
    assert out["dead_letters"] == []
    rows = list(client.query(
        "SELECT frame_id, source_uri, frame_index, timestamp_s, entropy, model_name, embedding "
        "FROM `activebeam.frames`").result())
    assert len(rows) == len(real_records)
    by_id = {r.frame.frame_id: r for r in real_records}
    assert {row["frame_id"] for row in rows} == set(by_id)
    for row in rows:
        record = by_id[row["frame_id"]]
        assert row["source_uri"] == record.frame.source_uri
        assert row["frame_index"] == record.frame.frame_index
        assert row["timestamp_s"] == (None if record.frame.timestamp_s is None
                                      else pytest.approx(record.frame.timestamp_s))
        assert row["entropy"] == pytest.approx(record.entropy, rel=1e-6)
        assert row["model_name"] == "fashion_mnist_cnn"
        assert len(row["embedding"]) == 128
    # A rerun appends nothing; the same frames scored by another model version are new rows.
    out = harness.run_collect(lambda p: {
        "dead_letters": p | beam.Create(real_records) | WriteFramesToBigQuery(table, "STREAMING_INSERTS")})
    assert out["dead_letters"] == []
    count = "SELECT COUNT(*) AS n FROM `activebeam.frames`"
    assert list(client.query(count).result())[0]["n"] == len(real_records)
    retrained = [r._replace(model=r.model._replace(version="fedcba9876543210")) for r in real_records[:3]]
    harness.run_collect(lambda p: {
        "dead_letters": p | beam.Create(retrained) | WriteFramesToBigQuery(table, "STREAMING_INSERTS")})
    assert list(client.query(count).result())[0]["n"] == len(real_records) + 3
    schema = {f.name: (f.field_type, f.mode) for f in client.get_table("activebeam.frames").schema}
    assert schema["embedding"] == ("FLOAT", "REPEATED") or schema["embedding"] == ("FLOAT64", "REPEATED")
    assert set(schema) == set(frames_schema.field_names()) | {"indexed_at"}
    # Created partitioned and clustered before the first row (a load-created table is neither).
    created = client.get_table("activebeam.frames")
    assert (created.time_partitioning.type_, created.time_partitioning.field) == ("DAY", "indexed_at")
    assert created.clustering_fields == ["source_uri", "model_version"]
    stamped = list(client.query("SELECT COUNT(*) AS n FROM `activebeam.frames` "
                                "WHERE indexed_at IS NOT NULL").result())
    assert stamped[0]["n"] == len(real_records) + 3

    # Rows that do not fit the schema are dead letters at once; the good rows are written.
    good = frame_record("file:///cam/good.png")
    bad = frame_record("file:///cam/nan.png")._replace(entropy=float("nan"))
    out = harness.run_collect(lambda p: {
        "dead_letters": p | beam.Create([good, bad]) | WriteFramesToBigQuery(table, "STREAMING_INSERTS")})
    [dead] = out["dead_letters"]
    assert (dead.stage, dead.frame_id, dead.source_uri) == ("bigquery", bad.frame.frame_id, "file:///cam/nan.png")
    assert "entropy: expected FLOAT64" in dead.error
    assert list(client.query(count).result())[0]["n"] == len(real_records) + 3 + 1


def test_bigquery_rows_bigquery_rejects_are_dead_letters(bigquery):
    """A row that fits the schema check but that BigQuery refuses (a TIMESTAMP that is no time) is
    a dead letter in the format of the writer's stage; the good row of the same request is written."""
    import datetime
    from schemas import tables
    from transforms.common import gcp_emulators
    from transforms.index import WriteRowsToBigQuery
    assert gcp_emulators.use_emulators_if_configured()
    client = harness.bigquery_client(bigquery)
    client.create_dataset("rejects")
    now = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)
    good = {"annotation_id": "a1", "frame_id": "f1", "source_uri": "file:///cam/1.png", "frame_index": 0,
            "task": "classification", "label": "coat", "annotator": "ann", "annotated_at": now}
    bad = dict(good, annotation_id="a2", frame_id="f2", source_uri="file:///cam/2.png",
               annotated_at="not a time")
    out = harness.run_collect(lambda p: {"dead_letters": p | beam.Create([good, bad]) | WriteRowsToBigQuery(
        f"{harness.BIGQUERY_PROJECT}:rejects.annotations", tables.annotations_table(), dict,
        ("annotation_id",), "task", "annotations", "STREAMING_INSERTS")})
    [dead] = out["dead_letters"]
    assert (dead.stage, dead.frame_id, dead.source_uri) == ("annotations", "f2", "file:///cam/2.png")
    assert dead.error.startswith("BigQuery rejected the row: [{") and "'reason': 'invalid'" in dead.error
    rows = list(client.query("SELECT annotation_id, annotated_at FROM `rejects.annotations`").result())
    assert [(r["annotation_id"], r["annotated_at"]) for r in rows] == [("a1", now)]


@pytest.fixture
def no_environment_project():
    """``GOOGLE_CLOUD_PROJECT`` unset and anonymous credentials without a project, as on a machine
    whose only project is the job's ``--project``."""
    import os
    from transforms.common import gcp_emulators
    saved = os.environ.pop("GOOGLE_CLOUD_PROJECT", None)
    gcp_emulators.use_emulators_if_configured()
    try:
        yield
    finally:
        if saved is not None:
            os.environ["GOOGLE_CLOUD_PROJECT"] = saved
        gcp_emulators.use_emulators_if_configured()


def test_bigquery_clients_use_the_jobs_project(bigquery, no_environment_project):
    """Every client the writer makes has a project: the table's, else the job's ``--project``
    (``project=``), never one guessed from an environment that has none."""
    from google.cloud import bigquery as bq
    with pytest.raises(OSError, match="Project was not passed"):
        bq.Client()  # the environment names no project
    client = harness.bigquery_client(bigquery)
    client.create_dataset("jobproject")
    records = [frame_record(f"file:///cam/project{i}.png") for i in range(4)]
    # --bigquery_table P:jobproject.frames (the project in the table id is enough)
    out = harness.run_collect(lambda p: {"dead_letters": p | beam.Create(records[:2]) | WriteFramesToBigQuery(
        f"{harness.BIGQUERY_PROJECT}:jobproject.frames", "STREAMING_INSERTS")})
    assert out["dead_letters"] == []
    # --bigquery_table jobproject.frames --project P
    out = harness.run_collect(lambda p: {"dead_letters": p | beam.Create(records[2:]) | WriteFramesToBigQuery(
        "jobproject.frames", "STREAMING_INSERTS", project=harness.BIGQUERY_PROJECT)})
    assert out["dead_letters"] == []
    rows = client.query("SELECT frame_id FROM `jobproject.frames`").result()
    assert sorted(r["frame_id"] for r in rows) == sorted(r.frame.frame_id for r in records)


def test_bigquery_table_name_validated():
    with pytest.raises(ValueError, match="PROJECT:DATASET.TABLE"):
        WriteFramesToBigQuery("not a table")



class _RecordingProxy:
    """A pass-through HTTP proxy in front of the BigQuery emulator that keeps request bodies."""

    def __init__(self, upstream):
        import http.server
        import threading
        import urllib.request
        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                bodies.append((self.command, self.path, body))
                request = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                                 headers={k: v for k, v in self.headers.items()
                                                          if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, headers, payload = response.status, response.headers, response.read()
                except urllib.error.HTTPError as e:
                    status, headers, payload = e.code, e.headers, e.read()
                self.send_response(status)
                self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self):
        self._server.shutdown()


def test_bigquery_streaming_insert_ids_are_deterministic(bigquery):
    import json
    from transforms.common import gcp_emulators
    from transforms.index import frame_insert_id
    records = [frame_record(f"file:///cam/ids{i}.png") for i in range(4)]
    proxy = _RecordingProxy(bigquery)
    try:
        with harness.environment(BIGQUERY_EMULATOR_HOST=proxy.endpoint):
            assert gcp_emulators.use_emulators_if_configured()
            harness.bigquery_client(bigquery).create_dataset("ids")
            out = harness.run_collect(lambda p: {"dead_letters": p | beam.Create(records)
                                                 | WriteFramesToBigQuery(f"{harness.BIGQUERY_PROJECT}:ids.frames",
                                                                         "STREAMING_INSERTS")})
    finally:
        proxy.close()
        gcp_emulators.use_emulators_if_configured()
    assert out["dead_letters"] == []
    sent = [row["insertId"] for method, path, body in proxy.bodies if "/insertAll" in path
            for row in json.loads(body)["rows"]]
    expected = sorted(f"{r.frame.frame_id}:{r.model.version}" for r in records)
    assert sorted(sent) == expected
    assert frame_insert_id({"frame_id": "f", "model_version": "v"}) == "f:v"


if __name__ == "__main__":
    harness.main(__file__)

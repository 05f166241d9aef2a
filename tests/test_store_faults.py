"""Faults on real servers: mongod stopped or killed in the middle of a write, BigQuery unreachable."""
import threading
import time

import apache_beam as beam
import pymongo
import pytest

from tests import harness
from tests.records_factory import frame_record
from transforms.index import WriteFramesToBigQuery, WriteFramesToMongoDB

N_FRAMES = 30000


@pytest.fixture(scope="module")
def records():
    return [frame_record(f"file:///cam/{i // 100}.mp4", frame_index=i % 100, timestamp_s=(i % 100) / 10)
            for i in range(N_FRAMES)]


def _write_in_background(records, uri, database):
    """Runs the writer in a thread; returns (thread, result dict filled when it ends)."""
    result = {}

    def run():
        try:
            result.update(harness.run_collect(lambda p: dict(zip(
                ("frame_ids", "dead_letters"),
                p | beam.Create(records, reshuffle=False)
                | WriteFramesToMongoDB(uri, database, batch_size=50, max_attempts=8, base_delay_s=0.2)))))
        except Exception as e:  # noqa: BLE001 - reported by the test
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait_for_documents(collection, at_least, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while collection.estimated_document_count() < at_least:
        assert time.monotonic() < deadline, "the writer never got going"
        time.sleep(0.05)
    return collection.estimated_document_count()


def _assert_exactly(collection, records):
    expected = sorted(r.frame.frame_id for r in records)
    assert collection.count_documents({}) == len(expected)
    assert sorted(d["_id"] for d in collection.find({}, {"_id": 1})) == expected
    # Complete documents: every one has its scores and model (validator-enforced fields).
    assert collection.count_documents({"scores.entropy": {"$exists": True}, "model.version": {"$exists": True}}) == len(expected)
    per_frame = collection.aggregate([{"$group": {"_id": {"s": "$source_uri", "i": "$frame_index"}, "n": {"$sum": 1}}},
                                      {"$match": {"n": {"$gt": 1}}}])
    assert list(per_frame) == []


def test_mongod_stopped_mid_write_and_restarted_loses_nothing(records):
    with harness.mongod() as server:
        collection = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=60000)["faults"]["frames"]
        thread, result = _write_in_background(records, server.uri, "faults")
        before = _wait_for_documents(collection, N_FRAMES // 10)
        server.stop()  # clean shutdown (SIGTERM) in the middle of the bulk writes
        time.sleep(2.0)
        server.start()
        thread.join(timeout=600)
        assert "error" not in result, result.get("error")
        assert before < N_FRAMES, "the write finished before the fault: nothing was tested"
        assert result["dead_letters"] == []
        assert sorted(result["frame_ids"]) == sorted(r.frame.frame_id for r in records)
        _assert_exactly(collection, records)


def test_mongod_killed_mid_write_then_rerun_holds_exactly_the_documents(records):
    with harness.mongod() as server:
        collection = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=60000)["faults"]["frames"]
        thread, result = _write_in_background(records, server.uri, "faults")
        before = _wait_for_documents(collection, N_FRAMES // 10)
        harness.kill_mongod(server)  # SIGKILL: acknowledged but unjournaled writes may be lost
        time.sleep(1.0)
        server.start()
        thread.join(timeout=600)
        assert "error" not in result, result.get("error")
        assert before < N_FRAMES
        assert len(result["frame_ids"]) + len(result["dead_letters"]) == N_FRAMES
        # The rerun repairs whatever the crash lost, and duplicates nothing.
        thread, result = _write_in_background(records, server.uri, "faults")
        thread.join(timeout=600)
        assert "error" not in result, result.get("error")
        assert result["dead_letters"] == [] and len(result["frame_ids"]) == N_FRAMES
        _assert_exactly(collection, records)


def test_mongod_dead_costs_one_batch_of_retries_then_writes_fail_at_once_until_it_is_back():
    from schemas import tables
    from schemas.frames import to_mongo_document
    from transforms.index.mongodb_client import MongoUpserter
    docs = [to_mongo_document(frame_record(f"file:///cam/dead/{i}.png")) for i in range(30)]
    with harness.mongod() as server, MongoUpserter(
            server.uri, "breaker", tables.frames_table(), max_attempts=3, base_delay_s=0.05,
            server_selection_timeout_ms=300, unreachable_cooldown_s=2.0) as upserter:
        assert upserter.upsert(docs[:10]).failures == []
        server.stop()
        started = time.monotonic()
        first = upserter.upsert(docs[10:20])  # every attempt waits for a server
        retried_s = time.monotonic() - started
        assert [f.document["_id"] for f in first.failures] == [d["_id"] for d in docs[10:20]]
        assert first.retries == 2 and retried_s >= 0.9
        started = time.monotonic()
        second = upserter.upsert(docs[20:])  # the breaker is open: no attempt
        assert time.monotonic() - started < 0.2
        assert len(second.failures) == 10 and second.written_ids == []
        assert "MongoDB unreachable since" in second.failures[0].reason
        server.start()
        time.sleep(2.1)  # past the cool-down: one probe, which succeeds and closes the breaker
        assert upserter.upsert(docs[10:]).failures == []
        assert upserter.upsert(docs[:1]).failures == []
        collection = pymongo.MongoClient(server.uri)["breaker"]["frames"]
        assert sorted(collection.distinct("_id")) == sorted(d["_id"] for d in docs)


def test_bigquery_unreachable_fails_the_job_clearly():
    records = [frame_record(f"file:///cam/{i}.png") for i in range(3)]
    port = harness.free_port()
    with harness.environment(BIGQUERY_EMULATOR_HOST=f"http://127.0.0.1:{port}",
                             GOOGLE_CLOUD_PROJECT=harness.BIGQUERY_PROJECT):
        from transforms.common import gcp_emulators
        gcp_emulators.use_emulators_if_configured()
        started = time.monotonic()
        with pytest.raises(Exception, match=r"BigQuery .*unreachable|BigQuery request failed") as raised:
            harness.run_collect(lambda p: {"dead_letters": p | beam.Create(records) | WriteFramesToBigQuery(
                f"{harness.BIGQUERY_PROJECT}:faults.frames", "STREAMING_INSERTS", timeout_s=5)})
        assert f"faults.frames" in str(raised.value)
        assert time.monotonic() - started < 120


if __name__ == "__main__":
    harness.main(__file__)


def test_an_arrival_whose_frames_mongodb_could_not_take_is_not_marked_done():
    """Streaming: a file whose scored frames are not all in MongoDB when it is acknowledged
    (MongoDB was down while they were written) stays claimed (not done, not acknowledged), so
    the next run claims it again and indexes it; a file whose frames are all there is done."""
    from schemas import arrivals as arrivals_schema
    from schemas import records
    from schemas.records import Arrival, DeadLetter
    from transforms.index.mongodb_client import is_unavailable
    from transforms.intake.ledger import ArrivalLedger
    from transforms.intake.streaming import ArrivalResult, LedgerConfig, _AcknowledgeFn

    def dead(uri, reason):
        return DeadLetter(uri, records.STAGE_MONGODB, f"frames _id=f1: {reason}", 0, "f1")
    outage = "MongoDB unreachable since 2026-12-06T19:00:00Z (an earlier batch failed all 5 attempts: ...)"
    retries = "MongoDB write failed after 5 attempts: connection closed"
    assert is_unavailable(dead("a", outage)) and is_unavailable(dead("a", retries))
    assert not is_unavailable(dead("a", "Document failed validation"))
    assert not is_unavailable(DeadLetter("a", records.STAGE_DECODE, f"frames _id=f1: {outage}", 0, "f1"))
    with harness.mongod() as server:
        frames = pymongo.MongoClient(server.uri)["ack"]["frames"]
        # (file, frames of it in the store, an outage dead letter in the group)
        cases = (("partial", 2, False), ("lost", 0, False), ("reported", 3, True), ("clean", 3, False))
        frames.insert_many([{"_id": f"{name}-{i}", "source_uri": f"/cams/{name}.mp4", "frame_index": i}
                            for name, stored, _ in cases for i in range(stored)])
        ledger = ArrivalLedger(server.uri, "ack", "/cams/*", "run-1").open()
        fn = _AcknowledgeFn(LedgerConfig(server.uri, "ack", "/cams/*", "run-1"), None)
        fn.setup()
        fn.start_bundle()
        statuses = {}
        for name, _, reported in cases:
            arrival = Arrival(f"/cams/{name}.mp4#1:1", f"/cams/{name}.mp4", 0.0, "mtime")
            ledger.claim(arrival)
            late = [(dead(arrival.uri, outage), 0.0)] if reported else []
            fn._file({"results": [ArrivalResult(arrival, 3, (0.0, 1.0, 2.0), ())], "index_dead_letters": late})
            statuses[name] = ledger.statuses([arrival.key])[arrival.key]
        fn.teardown()
        assert statuses == {"partial": arrivals_schema.CLAIMED, "lost": arrivals_schema.CLAIMED,
                            "reported": arrivals_schema.CLAIMED, "clean": arrivals_schema.DONE}
        assert fn._keys == ["/cams/clean.mp4#1:1"]  # the only one acknowledged
        # The next run takes the claimed files over; a done one stays done.
        next_run = ArrivalLedger(server.uri, "ack", "/cams/*", "run-2").open()
        for name, claim in (("lost", "TAKEN_OVER"), ("clean", "DUPLICATE")):
            again = Arrival(f"/cams/{name}.mp4#1:1", f"/cams/{name}.mp4", 0.0, "mtime")
            assert next_run.claim(again).claim.name == claim
        ledger.close()
        next_run.close()


def test_a_dead_server_is_given_up_on_within_the_uris_server_selection_timeout():
    """Every reader and writer honours ``serverSelectionTimeoutMS`` written in the URI (pymongo's
    keywords would win over it): a stopped mongod costs the URI's 400 ms, not the default 30 s."""
    from transforms.index.mongodb_client import labelled_frame_ids, mongo_client, uri_options
    from transforms.select.per_frame import _StateSnapshots
    assert uri_options("mongodb://h:1/db?serverSelectionTimeoutMS=5&retryWrites=false") == {
        "serverselectiontimeoutms", "retrywrites"}
    assert mongo_client("mongodb://h:1/").options.server_selection_timeout == 30
    with harness.mongod() as server:
        uri = server.uri + ("&" if "?" in server.uri else "/?") + "serverSelectionTimeoutMS=400"
        assert labelled_frame_ids(uri, "dead") == (set(), set())
        server.stop()
        for read in (lambda: labelled_frame_ids(uri, "dead"), lambda: _StateSnapshots(uri, "dead").load("k")):
            started = time.monotonic()
            with pytest.raises(pymongo.errors.ServerSelectionTimeoutError):
                read()
            assert time.monotonic() - started < 5

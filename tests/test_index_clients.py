"""The Index stage's pure clients: MongoUpserter on a real mongod, table ids, RowInserter retries,
and no reaching into Beam's private attributes."""
import datetime
import os
import re
import time

import pymongo
import pytest

from schemas import frames as frames_schema
from schemas import tables
from tests import harness
from tests.records_factory import frame_record
from transforms.index.bigquery_client import (RowInserter, TableRef, parse_dataset_id, parse_table_id,
                                              sibling_table)
from transforms.index.mongodb_client import MongoUpserter, upsert_documents


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


def _frames(n, prefix="up"):
    return [frames_schema.to_mongo_document(frame_record(f"file:///cam/{prefix}{i}.png")) for i in range(n)]


def test_upserter_writes_then_reruns_idempotently(mongo):
    docs = _frames(5)
    with MongoUpserter(mongo.uri, "clients", tables.frames_table()) as upserter:
        first = upserter.upsert(docs)
    assert first.written_ids == [d["_id"] for d in docs] and first.failures == [] and first.retries == 0
    collection = pymongo.MongoClient(mongo.uri)["clients"]["frames"]
    assert collection.count_documents({}) == 5
    indexed_at = {d["_id"]: d["indexed_at"] for d in collection.find()}
    assert collection.options()["validator"] == tables.mongo_validator(tables.frames_table())
    assert collection.index_information()["source_uri_frame_index"]["unique"] is True

    # A rerun (new upserter, as a new worker) rewrites the same documents: same ids, no new ones,
    # the first write's ingest time kept, fields added by others kept.
    collection.update_one({"_id": docs[0]["_id"]}, {"$set": {"label": "coat"}})
    upserter = MongoUpserter(mongo.uri, "clients", tables.frames_table()).open()
    try:
        again = upserter.upsert(docs)
    finally:
        upserter.close()
    assert again.written_ids == first.written_ids and again.failures == []
    assert collection.count_documents({}) == 5
    assert {d["_id"]: d["indexed_at"] for d in collection.find()} == indexed_at
    assert collection.find_one({"_id": docs[0]["_id"]})["label"] == "coat"


def test_upserter_validator_rejection_is_a_failure_not_a_retry(mongo):
    spec = tables.annotations_table()
    now = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)
    good = {"annotation_id": "good", "frame_id": "f1", "source_uri": "file:///cam/1.png", "frame_index": 0,
            "task": "classification", "label": "coat", "annotator": "ann", "annotated_at": now}
    bad = dict(good, annotation_id="bad", frame_id="f2", label=None)  # REQUIRED label missing
    docs = [tables.to_mongo_document(spec, row) for row in (good, bad)]
    started = time.monotonic()
    with MongoUpserter(mongo.uri, "clients", spec, base_delay_s=30.0) as upserter:
        result = upserter.upsert(docs)
        [failure] = result.failures
        dead = upserter.dead_letter(failure)
    assert time.monotonic() - started < 10  # a retry would have slept 30 s or more
    assert result.written_ids == ["good"] and result.retries == 0
    assert failure.document["_id"] == "bad" and "validation" in failure.reason
    assert (dead.stage, dead.frame_id, dead.source_uri) == ("mongodb", "f2", "file:///cam/1.png")
    assert dead.error.startswith("annotations _id=bad:")
    # The driver's one-call form returns the same dead letters.
    [again] = upsert_documents(mongo.uri, "clients", spec, docs)
    assert again == dead


def test_upserter_unreachable_server_is_retried_then_a_failure():
    uri = f"mongodb://127.0.0.1:{harness.free_port()}/?serverSelectionTimeoutMS=200"
    docs = _frames(2, "down")
    with MongoUpserter(uri, "clients", tables.frames_table(), max_attempts=2, base_delay_s=0.01) as upserter:
        result = upserter.upsert(docs)
    assert result.written_ids == [] and result.retries == 1
    assert [f.document["_id"] for f in result.failures] == [d["_id"] for d in docs]
    assert all("after 2 attempts" in f.reason for f in result.failures)


def test_upserter_arguments_checked():
    with pytest.raises(ValueError, match="max_attempts"):
        MongoUpserter("mongodb://127.0.0.1:1", "db", tables.frames_table(), max_attempts=0)
    with pytest.raises(RuntimeError, match="not open"):
        MongoUpserter("mongodb://127.0.0.1:1", "db", tables.frames_table()).upsert([])


@pytest.mark.parametrize("table, expected", [
    ("p:d.t", TableRef("p", "d", "t")),
    ("my-proj.d_1.t-2", TableRef("my-proj", "d_1", "t-2")),
    ("d.t", TableRef("job", "d", "t")),
    ("example.com:p:d.t", TableRef("example.com:p", "d", "t")),
    ("example.com:p.d.t", TableRef("example.com:p", "d", "t")),
])
def test_parse_table_id(table, expected):
    assert parse_table_id(table, default_project="job") == expected


def test_table_id_forms():
    assert parse_table_id("d.t") == TableRef(None, "d", "t")
    assert parse_table_id("p:d.t").table_id == "p.d.t" and parse_table_id("p.d.t").legacy_id == "p:d.t"
    assert parse_table_id("d.t").legacy_id == "d.t"
    assert [sibling_table(t, "runs") for t in ("p:d.frames", "p.d.frames", "d.frames")] == [
        "p:d.runs", "p.d.runs", "d.runs"]
    assert parse_dataset_id("p:d") == parse_dataset_id("p.d") == ("p", "d")
    assert parse_dataset_id("d", "job") == ("job", "d")
    for bad in ("not a table", "d", "p:d", "", None):
        with pytest.raises(ValueError, match="PROJECT:DATASET.TABLE"):
            parse_table_id(bad)


class _FlakyInsertClient:
    """``insert_rows_json`` answering with ``answers`` in turn (per-row errors by position)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def insert_rows_json(self, table, rows, row_ids, **kwargs):
        self.calls.append(list(row_ids))
        return self.answers.pop(0)


def test_row_inserter_retries_transient_row_errors_only():
    transient = [{"reason": "backendError", "message": "try again"}]
    invalid = [{"reason": "invalid", "location": "x", "message": "no"}]
    client = _FlakyInsertClient([{"index": 0, "errors": transient}, {"index": 2, "errors": invalid}], [])
    rows = [{"k": "a", "at": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)}, {"k": "b"}, {"k": "c"}]
    result = RowInserter(client, "p.d.t", base_delay_s=0.01).insert(rows, ["a", "b", "c"])
    assert client.calls == [["a", "b", "c"], ["a"]]  # only the transient row again, same insert id
    assert result.written == [0, 1] and result.retries == 1
    assert [(f.index, f.errors) for f in result.failures] == [(2, invalid)]


def test_row_inserter_gives_up_after_max_attempts():
    transient = [{"reason": "timeout", "message": "slow"}]
    client = _FlakyInsertClient([{"index": 0, "errors": transient}], [{"index": 0, "errors": transient}])
    result = RowInserter(client, "p.d.t", max_attempts=2, base_delay_s=0.01).insert([{"k": "a"}], ["a"])
    assert result.written == [] and result.retries == 1 and result.failures[0].errors == transient


def test_no_private_beam_internals_in_transforms():
    """The library uses Beam's public API; what that cannot do is a small DoFn on an official client."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "transforms")
    private = re.compile(r"\b(_cached_fn|_signature|_current_transform)\b")
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found += [f"{path}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if private.search(line)]
    assert found == []


if __name__ == "__main__":
    harness.main(__file__)

"""Every first-run "ensure" is safe under concurrency: worker processes racing on a new database.

Four processes start together (a barrier) on a database or dataset that does not exist yet, each
creating the collection (validator, indexes) or the dataset and table and writing its own
documents or rows; ten rounds, each on a new database. Before the fix, the loser of the
``create`` race took ``NamespaceExists`` (code 48) as a permanent error and lost its batch.
"""
import multiprocessing
import os

import pytest

from schemas import frames, tables
from tests import harness, records_factory

WORKERS = 4
ROUNDS = 10
DOCS_PER_WORKER = 25
_barrier = None


def _init(barrier):
    global _barrier
    _barrier = barrier


def _documents(worker):
    return [frames.to_mongo_document(records_factory.frame_record(f"file:///race/w{worker}/f{i}.png"))
            for i in range(DOCS_PER_WORKER)]


def _mongo_race(args):
    """In a worker process: wait for the others, then upsert this worker's frames."""
    uri, database, worker = args
    from transforms.index.mongodb_client import MongoUpserter
    documents = _documents(worker)
    with MongoUpserter(uri, database, tables.frames_table(), max_attempts=2) as upserter:
        _barrier.wait(timeout=60)
        result = upserter.upsert(documents)
    return len(result.written_ids), [f.reason for f in result.failures]


def _bigquery_race(args):
    """In a worker process: wait for the others, then ensure dataset and table and insert rows."""
    endpoint, project, dataset, worker = args
    from transforms.index.bigquery_client import ensure_table
    client = harness.bigquery_client(endpoint, project)
    table_id = f"{project}.{dataset}.runs"
    _barrier.wait(timeout=60)
    ensure_table(client, table_id, tables.runs_table())
    errors = client.insert_rows_json(table_id, [{"run_id": f"w{worker}", "job": "mine", "status": "running",
                                                 "started_at": "2026-11-29T00:00:00+00:00",
                                                 "code_version": "x", "options": "{}"}])
    return errors


@pytest.fixture(scope="module")
def pool():
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    with context.Pool(WORKERS, initializer=_init, initargs=(barrier,)) as workers:
        yield workers


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


def test_workers_creating_the_same_new_collection_lose_nothing(pool, mongo):
    import pymongo
    client = pymongo.MongoClient(mongo.uri)
    for round_ in range(ROUNDS):
        database = f"race{round_}"
        outcomes = pool.map(_mongo_race, [(mongo.uri, database, w) for w in range(WORKERS)], chunksize=1)
        assert [failures for _, failures in outcomes] == [[]] * WORKERS, outcomes
        assert [written for written, _ in outcomes] == [DOCS_PER_WORKER] * WORKERS
        collection = client[database]["frames"]
        assert collection.count_documents({}) == WORKERS * DOCS_PER_WORKER
        options = collection.options()
        assert "$jsonSchema" in options.get("validator", {})
        assert {spec.name for spec in tables.frames_table().mongo_indexes} <= set(collection.index_information())
    client.close()


def test_workers_creating_the_same_new_dataset_and_table_lose_nothing(pool):
    project = harness.BIGQUERY_PROJECT
    with harness.bigquery_emulator(project) as endpoint:
        client = harness.bigquery_client(endpoint, project)
        for round_ in range(ROUNDS):
            dataset = f"race{round_}"
            outcomes = pool.map(_bigquery_race, [(endpoint, project, dataset, w) for w in range(WORKERS)],
                                chunksize=1)
            assert outcomes == [[]] * WORKERS
            rows = list(client.query(f"SELECT run_id FROM `{project}.{dataset}.runs`").result())
            assert sorted(r.run_id for r in rows) == [f"w{w}" for w in range(WORKERS)]
            table = client.get_table(f"{project}.{dataset}.runs")
            assert table.time_partitioning is not None or tables.runs_table().partition_field is None


if __name__ == "__main__":
    harness.main(__file__)

"""Candidates indexed in a real MongoDB and the BigQuery emulator: fields, and reruns are idempotent."""
import json

import apache_beam as beam
import pymongo

from schemas import candidates as candidates_schema
from tests import harness
from tests.records_factory import clustered_records
from transforms.index.candidates import WriteCandidatesToBigQuery, WriteCandidatesToMongoDB
from transforms.select.ptransforms import SelectCandidates


def _select_and_write(records, mongo_uri, table):
    def build(p):
        candidates = p | beam.Create(records) | SelectCandidates(
            12, "cluster_margin", {"n_clusters": 3}, inputs=["file:///cam/*"])
        written = candidates | WriteCandidatesToMongoDB(mongo_uri)
        dead = candidates | WriteCandidatesToBigQuery(table)
        return {"candidates": candidates, "ids": written.frame_ids,
                "dead": (written.dead_letters, dead) | beam.Flatten()}
    return harness.run_collect(build)


def test_candidates_in_mongodb_and_bigquery_with_explanations_and_idempotent_rerun():
    records = clustered_records(300, seed=4)
    with harness.mongod() as mongo, harness.bigquery_emulator() as endpoint:
        from transforms.common import gcp_emulators
        assert gcp_emulators.use_emulators_if_configured()
        client = harness.bigquery_client(endpoint)
        client.create_dataset("activebeam")
        table = f"{harness.BIGQUERY_PROJECT}:activebeam.test_candidates"
        first = _select_and_write(records, mongo.uri, table)
        assert first["dead"] == [] and len(first["ids"]) == 12
        collection = pymongo.MongoClient(mongo.uri)["activebeam"]["candidates"]
        docs = list(collection.find().sort("rank", 1))
        [sid] = {c.selection_id for c in first["candidates"]}
        assert len(docs) == 12 and [d["rank"] for d in docs] == list(range(1, 13))
        top = docs[0]
        assert top["_id"] == f"{sid}:{top['frame_id']}" and top["selection_id"] == sid
        assert top["strategy"] == "cluster_margin" and top["parameters"]["params"]["n_clusters"] == 3
        assert set(top["components"]) == {"margin", "cluster_size"} and top["model"]["version"]
        assert "selection_id_rank" in collection.index_information()

        rows = list(client.query(
            "SELECT selection_id, frame_id, `rank`, strategy, parameters, components, model_version "
            "FROM `activebeam.test_candidates` ORDER BY `rank`").result())
        assert [r["rank"] for r in rows] == list(range(1, 13)) and {r["selection_id"] for r in rows} == {sid}
        assert [r["frame_id"] for r in rows] == [d["frame_id"] for d in docs]
        assert json.loads(rows[0]["components"]) == top["components"]
        assert json.loads(rows[0]["parameters"])["strategy"] == "cluster_margin"
        assert rows[0]["model_version"] == top["model"]["version"]
        assert set(candidates_schema.field_names()) <= set(docs[0]) | {"model_name", "model_version"}

        again = _select_and_write(records, mongo.uri, table)
        assert {c.selection_id for c in again["candidates"]} == {sid}
        assert collection.count_documents({}) == 12
        n = list(client.query("SELECT COUNT(*) AS n FROM `activebeam.test_candidates`").result())[0]["n"]
        assert n == 12


if __name__ == "__main__":
    harness.main(__file__)

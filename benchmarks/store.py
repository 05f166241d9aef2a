"""MongoDB writer throughput: activebeam's writer vs plain pymongo vs Beam's ``WriteToMongoDB``.

    python -m benchmarks.store [--documents 20000] [--repeats 3] [--batch_size 500]

One real ``mongod`` (MongoDB 6.0, started here on 127.0.0.1), the same frame documents (128-d
embedding, 10 probabilities, scores, model: what the ``mine`` job writes) for every side; each
side writes them into a freshly dropped collection (the Beam sides read them from an in-process
cache through a ``FlatMap``), sides interleaved per round, medians of the
rounds:

* ``activebeam``: ``WriteDocumentsToMongoDB`` (validator, indexes, ``$set`` upserts, retries) in a
  Beam pipeline on the in-process ``FnApiRunner``, pipeline start-up included;
* ``pymongo``: ``bulk_write`` of the same ``UpdateOne($set, upsert=True)`` operations, in batches
  of ``--batch_size``, ``ordered=False``, from one client (no Beam, no indexes: the floor);
* ``pymongo_same_indexes``: the same into a collection with our validator and 7 indexes;
* ``beam``: Beam's ``WriteToMongoDB`` (whole-document replace upserts) in the same kind of pipeline;
* ``beam_same_indexes``: the same into a collection with our 7 indexes (no validator: Beam's
  replaces carry no ingest time).

Last stdout line: ``{"mongo_vs_pymongo": ours/pymongo (goal >= 0.7), "mongo_vs_beam": ours/beam
(goal >= 1.5), "mongo_vs_pymongo_same_indexes", "docs_per_s": {...}, ...}``.
"""
import argparse
import functools
import os
import shutil
import statistics
import tempfile

import apache_beam as beam
import numpy as np
import pymongo
from apache_beam.io.mongodbio import WriteToMongoDB
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks.common import PeakRss, interleaved_rates, print_result
from beam_pipelines.local.mongod import LocalMongoD
from schemas import frames, tables
from schemas.records import FrameMetadata, FrameRecord, ModelVersion, make_frame_id
from transforms.score import uncertainty
from transforms.index import WriteDocumentsToMongoDB

DATABASE = "benchmark"


def frame_documents(n: int, seed: int = 0):
    """``n`` MongoDB frame documents as the ``mine`` job writes them (random model outputs)."""
    rng = np.random.default_rng(seed)
    model = ModelVersion("fashion_mnist_cnn", "0123456789abcdef", "embedding")
    docs = []
    for i in range(n):
        source, index = f"gs://bench/cam{i % 50}/clip{i // 500}.mp4", i % 500
        p = rng.dirichlet(np.ones(10)).astype(np.float32)
        metadata = FrameMetadata(make_frame_id(source, index), source, index, index / 10.0, 768, 576,
                                 "video", f"{rng.integers(2**63):032x}")
        record = FrameRecord(metadata, rng.standard_normal(128).astype(np.float32), p, int(p.argmax()),
                             uncertainty.entropy(p), uncertainty.margin(p), uncertainty.least_confidence(p),
                             model)
        docs.append(frames.to_mongo_document(record))
    return docs


@functools.lru_cache(maxsize=2)
def cached_documents(n: int):
    """The same documents, built once per process (Beam's ``Create`` would spend longer pickling
    20,000 documents into the pipeline than MongoDB spends writing them: the source is not what
    is measured)."""
    return frame_documents(n)


def _documents_source(p, n):
    return (p | "Seed" >> beam.Create([n], reshuffle=False)
            | "Documents" >> beam.FlatMap(lambda count: iter(cached_documents(count))))


def _pipeline_options():
    return PipelineOptions(runner="FnApiRunner")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    docs = cached_documents(args.documents)
    dbpath = tempfile.mkdtemp(prefix="bench-store-", dir=os.environ.get("TEST_TMPDIR"))
    spec = tables.frames_table()
    try:
        with LocalMongoD(os.path.join(dbpath, "db")) as server, PeakRss() as rss:
            client = pymongo.MongoClient(server.uri)
            database = client[DATABASE]

            def fresh(name):
                database.drop_collection(name)
                return name

            def ours():
                name = fresh("ours")
                with beam.Pipeline(options=_pipeline_options()) as p:
                    _ = (_documents_source(p, len(docs)) | WriteDocumentsToMongoDB(
                        server.uri, DATABASE, spec._replace(name=name), batch_size=args.batch_size))
                assert database[name].count_documents({}) == len(docs)
                return len(docs)

            def _bulk_upserts(collection):
                for start in range(0, len(docs), args.batch_size):
                    collection.bulk_write([
                        pymongo.UpdateOne({"_id": d["_id"]}, {"$set": {k: v for k, v in d.items() if k != "_id"}},
                                          upsert=True) for d in docs[start:start + args.batch_size]],
                        ordered=False)
                assert collection.count_documents({}) == len(docs)
                return len(docs)

            def plain_pymongo():
                return _bulk_upserts(database[fresh("pymongo")])

            def indexed(name, validator=True):
                """A fresh collection with our indexes (and validator): what our writer makes."""
                name = fresh(name)
                database.create_collection(
                    name, **({"validator": tables.mongo_validator(spec)} if validator else {}))
                for index in spec.mongo_indexes:
                    database[name].create_index(list(index.keys), name=index.name, unique=index.unique)
                return name

            def pymongo_same_indexes():
                """The floor with the collection our writer makes: validator and indexes."""
                return _bulk_upserts(database[indexed("pymongo_indexed")])

            def beam_write(name):
                with beam.Pipeline(options=_pipeline_options()) as p:
                    _ = (_documents_source(p, len(docs))
                         | WriteToMongoDB(server.uri, DATABASE, name))
                assert database[name].count_documents({}) == len(docs)
                return len(docs)

            rates = interleaved_rates({
                "activebeam": ours, "pymongo": plain_pymongo,
                "pymongo_same_indexes": pymongo_same_indexes,
                "beam": lambda: beam_write(fresh("beam")),
                # Beam's whole-document replaces carry no ingest time, which the validator
                # requires: same indexes, no validator.
                "beam_same_indexes": lambda: beam_write(indexed("beam_indexed", validator=False)),
            }, args.repeats)
            client.close()
    finally:
        shutil.rmtree(dbpath, ignore_errors=True)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"{name:>10}: median {medians[name]:8.0f} docs/s  rounds {[round(x) for x in r]}")
    print_result({
        "benchmark": "store",
        "documents": args.documents,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "docs_per_s": {k: round(v, 1) for k, v in medians.items()},
        "mongo_vs_pymongo": round(medians["activebeam"] / medians["pymongo"], 3),
        "mongo_vs_pymongo_same_indexes": round(medians["activebeam"] / medians["pymongo_same_indexes"], 3),
        "mongo_vs_beam": round(medians["activebeam"] / medians["beam"], 3),
        "mongo_vs_beam_same_indexes": round(medians["activebeam"] / medians["beam_same_indexes"], 3),
        "goals": {"mongo_vs_pymongo": 0.7, "mongo_vs_beam": 1.5},
        "peak_rss_mb": round(rss.peak_mb, 1),
    })


if __name__ == "__main__":
    main()

"""The ``mine`` job: from raw images and videos to ranked annotation candidates.

    python -m beam_pipelines.mine                     # bundled sample media, embedded MongoDB
    python -m beam_pipelines.mine --input 'gs://bucket/cam1/*.mp4' --input '/data/*.jpg' \\
        --mongo_uri mongodb://host:27017 --bigquery_table proj:ds.frames --budget 500 \\
        --runner DataflowRunner --project proj --region europe-west1 \\
        --temp_location gs://bucket/tmp --output_dir gs://bucket/out --setup_file ./setup.py

Stages (one ``PTransform`` each, see :class:`MineFrames`): decode files into frames, embed and
score them with a Keras model through ``RunInference``, index one document per frame in MongoDB
(and a row in BigQuery), select ``--budget`` distinct frames with ``--strategy`` (and
``--strategy_params``), write results and index the candidates in MongoDB's ``candidates``
collection (and the BigQuery candidates table).

Outputs in ``--output_dir``: ``candidates.jsonl`` (sorted by rank), ``dead_letter.jsonl`` (one
object per failed file or frame: ``source_uri``, ``stage``, ``error``) and ``summary.json``.
"""
import contextlib
import json
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipelines import sample_media
from beam_pipelines.local_mongo import LocalMongoD
from schemas.frames import DEFAULT_DATABASE
from transforms import gcp_emulators
from transforms.decode import DecodeMedia
from transforms.files import is_local
from transforms.model import DEFAULT_MODEL_NAME, LOGITS, PROBABILITIES, ModelSpec, ScoreFrames, load_model_spec
from transforms.outputs import (CANDIDATES_FILE, DEAD_LETTER_FILE, SUMMARY_FILE, WriteCandidates,
                                WriteDeadLetters, WriteSummary)
from transforms.candidate_index import WriteCandidatesToBigQuery, WriteCandidatesToMongoDB
from transforms.sample import STRATEGIES, SelectCandidates
from transforms.strategies import make_strategy
from transforms.store import WriteFramesToBigQuery, WriteFramesToMongoDB, redact_uri

_LOG = logging.getLogger(__name__)
DEFAULT_RUNNER = "FnApiRunner"  # Beam's DirectRunner would first try to download Prism.
LOCAL_RUNNERS = ("fnapirunner", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner")


class MineOptions(PipelineOptions):
    """Options of the ``mine`` job (plus all standard Beam options)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input", action="append", default=None,
            help="File glob of images and/or videos (local or gs://); repeat the flag or separate "
                 "globs with commas. Default: the bundled real sample media.")
        parser.add_argument("--output_dir", default="./activebeam-out",
                            help="Where candidates.jsonl, dead_letter.jsonl and summary.json go.")
        parser.add_argument(
            "--mongo_uri", default=None,
            help="MongoDB connection string. Default: an embedded mongod on 127.0.0.1 with its data "
                 "in <output_dir>/mongo-data, started and stopped by the job (local runners only).")
        parser.add_argument("--mongo_database", default=DEFAULT_DATABASE)
        parser.add_argument("--bigquery_table", default=None,
                            help="Optional PROJECT:DATASET.TABLE to append one row per frame to.")
        parser.add_argument("--bigquery_write_method", default="STREAMING_INSERTS",
                            choices=("STREAMING_INSERTS", "FILE_LOADS"))
        parser.add_argument("--budget", type=int, default=50, help="Number of candidates to select.")
        parser.add_argument("--strategy", default="entropy", choices=STRATEGIES,
                            help="Selection strategy: an uncertainty score (top-k), random, coreset "
                                 "(k-center greedy), cluster_margin or combined (docs/sampling.md).")
        parser.add_argument(
            "--strategy_params", default="{}",
            help='JSON object of the strategy\'s parameters, e.g. \'{"n_clusters": 20}\' for '
                 'cluster_margin, \'{"strengths": {"entropy": 1, "least_confidence": 0.5}}\' for '
                 'combined, \'{"balance_key": "camera"}\' (source, camera, predicted_class) for quotas, '
                 '\'{"near_duplicate_distance": 0.1}\'.')
        parser.add_argument("--bigquery_candidates_table", default=None,
                            help="PROJECT:DATASET.TABLE for candidates; default: table 'candidates' "
                                 "in --bigquery_table's dataset when that is given.")
        parser.add_argument("--video_fps", type=float, default=1.0,
                            help="Frames sampled per second of video; 0 keeps every frame.")
        parser.add_argument("--model", default=None,
                            help="Path or gs:// URI of a Keras model (.keras/.h5). Default: the "
                                 "bundled Fashion-MNIST CNN, models/" + DEFAULT_MODEL_NAME)
        parser.add_argument("--embedding_layer", default=None,
                            help="Layer whose output is the embedding (default: 'embedding' or the "
                                 "penultimate layer).")
        parser.add_argument("--model_output", default=PROBABILITIES, choices=(PROBABILITIES, LOGITS))


def _split_globs(values: Optional[List[str]]) -> List[str]:
    return [g.strip() for value in values or [] for g in value.split(",") if g.strip()]


class MineFrames(beam.PTransform):
    """The whole ``mine`` job as one composite: globs in, result files and indexes out.

    Input: ``PCollection[str]`` of file globs. Writes ``candidates.jsonl``, ``dead_letter.jsonl``
    and ``summary.json`` under ``output_dir`` and indexes frames in MongoDB (and BigQuery).
    Returns the ``PCollection[Candidate]``.
    """

    def __init__(self, *, model: ModelSpec, mongo_uri: str, output_dir: str, budget: int = 50,
                 strategy: str = "entropy", video_fps: float = 1.0,
                 mongo_database: str = DEFAULT_DATABASE, bigquery_table: Optional[str] = None,
                 bigquery_write_method: str = "STREAMING_INSERTS", run_info: Optional[dict] = None,
                 strategy_params: Optional[dict] = None, bigquery_candidates_table: Optional[str] = None,
                 inputs: Sequence[str] = ()):
        super().__init__()
        self._decode = DecodeMedia(video_fps)
        self._score = ScoreFrames(model)
        self._index_mongo = WriteFramesToMongoDB(mongo_uri, mongo_database)
        self._index_bigquery = (WriteFramesToBigQuery(bigquery_table, bigquery_write_method)
                                if bigquery_table else None)
        self._select = SelectCandidates(budget, strategy, strategy_params, inputs=inputs)
        self._candidates_mongo = WriteCandidatesToMongoDB(mongo_uri, mongo_database)
        self._candidates_bigquery = (WriteCandidatesToBigQuery(bigquery_candidates_table, bigquery_write_method)
                                     if bigquery_candidates_table else None)
        self._output_dir = output_dir
        self._run_info = run_info or {}

    def _path(self, name):
        return FileSystems.join(self._output_dir, name)

    def expand(self, globs):
        decoded = globs | "Decode" >> self._decode
        scored = decoded.frames | "EmbedAndScore" >> self._score
        indexed = scored.records | "IndexInMongoDB" >> self._index_mongo
        dead_letters = [decoded.dead_letters, scored.dead_letters, indexed.dead_letters]
        if self._index_bigquery:
            dead_letters.append(scored.records | "IndexInBigQuery" >> self._index_bigquery)
        candidates = scored.records | "SelectCandidates" >> self._select
        candidates_indexed = candidates | "CandidatesToMongoDB" >> self._candidates_mongo
        dead_letters.append(candidates_indexed.dead_letters)
        if self._candidates_bigquery:
            dead_letters.append(candidates | "CandidatesToBigQuery" >> self._candidates_bigquery)

        dead_letters = dead_letters | "AllDeadLetters" >> beam.Flatten()
        candidates | "WriteCandidates" >> WriteCandidates(self._path(CANDIDATES_FILE))
        dead_letters | "WriteDeadLetters" >> WriteDeadLetters(self._path(DEAD_LETTER_FILE))
        outcomes = decoded.outcomes
        {
            "files_matched": outcomes,
            "files_decoded": outcomes | "Decoded" >> beam.Filter(lambda o: not o.failed),
            "files_failed": outcomes | "Failed" >> beam.Filter(lambda o: o.failed),
            "frames_scored": scored.records,
            "frames_written": indexed.frame_ids,
            "dead_letters": dead_letters,
            "candidates": candidates,
            "candidates_written": candidates_indexed.frame_ids,
        } | "WriteSummary" >> WriteSummary(
            self._path(SUMMARY_FILE), static=self._run_info,
            sums={"frames_decoded": (outcomes, lambda o: o.frames)})
        return candidates


def _from_caller_dir(path: str) -> str:
    """Resolves a relative local path against the caller's directory (``bazel run`` runs from
    its runfiles tree and says where it was called in ``BUILD_WORKING_DIRECTORY``)."""
    caller = os.environ.get("BUILD_WORKING_DIRECTORY")
    if caller and is_local(path) and not os.path.isabs(path):
        return os.path.join(caller, path)
    return path


def run(argv: Optional[List[str]] = None) -> dict:
    """Runs the job and returns the contents of ``summary.json``.

    Raises
    ------
    ValueError
        For option values that cannot work (negative budget, embedded MongoDB with a remote runner
        or a remote output directory).
    """
    options = PipelineOptions(argv)
    mine = options.view_as(MineOptions)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    if mine.budget < 0:
        raise ValueError(f"--budget must be >= 0, got {mine.budget}")
    try:
        strategy_params = json.loads(mine.strategy_params)
    except json.JSONDecodeError as e:
        raise ValueError(f"--strategy_params must be a JSON object: {e}") from None
    if not isinstance(strategy_params, dict):
        raise ValueError(f"--strategy_params must be a JSON object, got {mine.strategy_params!r}")
    make_strategy(mine.strategy, strategy_params)  # fails now, naming the bad parameter
    candidates_table = mine.bigquery_candidates_table
    if not candidates_table and mine.bigquery_table:
        candidates_table = mine.bigquery_table.rsplit(".", 1)[0] + ".candidates"
    local_runner = standard.runner.lower() in LOCAL_RUNNERS
    globs = [_from_caller_dir(g) for g in _split_globs(mine.input)]
    if not globs:
        if not local_runner:
            raise ValueError("--input is required with a remote runner: the bundled sample media "
                             "are on this machine only")
        globs = sample_media.prepare()
    output_dir = _from_caller_dir(mine.output_dir)
    if is_local(output_dir):
        output_dir = os.path.abspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
    gcp_emulators.use_emulators_if_configured()
    model = load_model_spec(mine.model, mine.embedding_layer, mine.model_output)

    with contextlib.ExitStack() as stack:
        mongo_uri = mine.mongo_uri
        if not mongo_uri:
            if not local_runner or not is_local(output_dir):
                raise ValueError("--mongo_uri is required unless the runner and --output_dir are local: "
                                 "the embedded mongod lives on this machine")
            mongo = stack.enter_context(LocalMongoD(os.path.join(output_dir, "mongo-data")))
            mongo_uri = mongo.uri
            _LOG.info("started embedded mongod at %s (data in %s)", mongo_uri, mongo.dbpath)
        run_info = {
            "inputs": globs,
            "output_dir": output_dir,
            "mongo_uri": redact_uri(mongo_uri),
            "mongo_embedded": not mine.mongo_uri,
            "mongo_database": mine.mongo_database,
            "bigquery_table": mine.bigquery_table,
            "budget": mine.budget,
            "strategy": mine.strategy,
            "strategy_params": strategy_params,
            "bigquery_candidates_table": candidates_table,
            "video_fps": mine.video_fps,
            "model": model.version._asdict(),
            "runner": standard.runner,
        }
        started = time.monotonic()
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline
                 | "Globs" >> beam.Create(globs)
                 | "Mine" >> MineFrames(
                     model=model, mongo_uri=mongo_uri, output_dir=output_dir, budget=mine.budget,
                     strategy=mine.strategy, video_fps=mine.video_fps,
                     mongo_database=mine.mongo_database, bigquery_table=mine.bigquery_table,
                     bigquery_write_method=mine.bigquery_write_method, run_info=run_info,
                     strategy_params=strategy_params, bigquery_candidates_table=candidates_table,
                     inputs=globs))
        elapsed = time.monotonic() - started

    summary_path = FileSystems.join(output_dir, SUMMARY_FILE)
    try:
        with FileSystems.open(summary_path) as f:
            summary = json.loads(f.read().decode("utf-8"))
    except (OSError, IOError):  # e.g. a Dataflow job submitted without waiting
        return {}
    summary["wall_seconds"] = round(elapsed, 1)
    return summary


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ.setdefault("NO_GCE_CHECK", "true")  # never probe the cloud metadata server
    summary = run(argv if argv is not None else sys.argv[1:])
    if summary:
        out = summary["output_dir"]
        print(json.dumps({k: summary[k] for k in (
            "files_matched", "files_decoded", "files_failed", "frames_decoded", "frames_written",
            "dead_letters", "candidates", "wall_seconds")}, indent=2))
        print(f"candidates:   {FileSystems.join(out, CANDIDATES_FILE)}")
        print(f"dead letters: {FileSystems.join(out, DEAD_LETTER_FILE)}")
        print(f"summary:      {FileSystems.join(out, SUMMARY_FILE)}")
        if summary.get("mongo_embedded"):
            print(f"MongoDB data: {os.path.join(out, 'mongo-data')} (database "
                  f"{summary['mongo_database']!r}, collection 'frames'; start mongod with --dbpath there)")


if __name__ == "__main__":
    main()

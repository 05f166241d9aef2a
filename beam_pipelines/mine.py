"""The ``mine`` job: from raw images and videos to ranked annotation candidates.

    python -m beam_pipelines.mine                     # bundled sample media, embedded MongoDB
    python -m beam_pipelines.mine --input 'gs://bucket/cam1/*.mp4' --input '/data/*.jpg' \\
        --mongo_uri mongodb://host:27017 --bigquery_table proj:ds.frames --budget 500 \\
        --runner DataflowRunner --project proj --region europe-west1 \\
        --temp_location gs://bucket/tmp --output_dir gs://bucket/out --setup_file ./setup.py

Stages (one ``PTransform`` each, see :class:`MineFrames`): decode files into frames, embed and
score them with a model (Keras, SavedModel, TFLite or ONNX) through ``RunInference`` (plus
MC-dropout, detection and k-NN uniqueness scores when asked), index one document per frame in MongoDB
(and a row in BigQuery), select ``--budget`` distinct frames with ``--strategy`` (and
``--strategy_params``), write results and index the candidates in MongoDB's ``candidates``
collection (and the BigQuery candidates table).

Outputs in ``--output_dir``: ``candidates.jsonl`` (sorted by rank), ``dead_letter.jsonl`` (one
object per failed file or frame: ``source_uri``, ``stage``, ``error``) and ``summary.json``
(with the ``run_id``). The run's lineage (options with credentials redacted, code and model
versions, inputs, counts, status) is upserted into MongoDB ``<database>.runs``.
"""
import contextlib
import datetime
import json
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from beam_pipelines import sample_media
from beam_pipelines.local_mongo import LocalMongoD
from schemas import runs as runs_schema
from schemas import tables
from schemas.frames import DEFAULT_DATABASE
from transforms.common import gcp_emulators
from transforms.index.bigquery_client import append_rows, sibling_table
from transforms.decode.ptransforms import DEFAULT_SPLIT_SECONDS, DecodeMedia
from transforms.score import registry as score_registry
from transforms.score.detectors import BackgroundDifferenceDetector, DetectorHandler
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.decode.video import STRATEGIES as SAMPLING_STRATEGIES
from transforms.common.files import is_local
from transforms.score.ptransforms import DEFAULT_MODEL_NAME, LOGITS, PROBABILITIES, ModelSpec, ScoreFrames, load_model_spec
from transforms.common.outputs import (CANDIDATES_FILE, DEAD_LETTER_FILE, SUMMARY_FILE, WriteCandidates,
                                WriteDeadLetters, WriteSummary)
from transforms.index.candidates import WriteCandidatesToBigQuery, WriteCandidatesToMongoDB
from transforms.score.novelty import ScoreNovelty
from transforms.select.ptransforms import STRATEGIES, SelectCandidates
from transforms.select.strategies import make_strategy
from transforms.common.redact import redact_text, redact_uri
from transforms.index import WriteFramesToBigQuery, WriteFramesToMongoDB, upsert_documents

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
        parser.add_argument("--bigquery_write_method", default="AUTO",
                            choices=("AUTO", "STREAMING_INSERTS", "FILE_LOADS"),
                            help="AUTO: FILE_LOADS when --temp_location is on gs:// (load jobs are "
                                 "free and atomic), else STREAMING_INSERTS.")
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
        parser.add_argument(
            "--video_sampling", default="fps", choices=SAMPLING_STRATEGIES,
            help="Which video frames to keep: fps (--video_fps per second, the default), all, "
                 "every_n (--video_every_n), keyframes (nothing else is decoded), scene "
                 "(--scene_threshold). See docs/decoding.md.")
        parser.add_argument("--video_every_n", type=int, default=1,
                            help="Keep every Nth frame with --video_sampling=every_n.")
        parser.add_argument("--scene_threshold", type=float, default=0.3,
                            help="Mean absolute grey difference in (0, 1] between consecutive "
                                 "frames that starts a scene, with --video_sampling=scene.")
        parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                            help="Images whose header declares more pixels are dead-lettered "
                                 "without decoding (decompression-bomb guard); 0 disables.")
        parser.add_argument("--resize_longest_side", type=int, default=0,
                            help="Shrink images so that their longest side is at most this many "
                                 "pixels; 0 keeps the decoded size.")
        parser.add_argument("--video_split_seconds", type=float, default=DEFAULT_SPLIT_SECONDS,
                            help="Cut videos into ranges of at least this many seconds, starting "
                                 "on keyframes, decoded by different workers; 0 does not split.")
        parser.add_argument("--model", default=None,
                            help="Path or gs:// URI of a Keras model (.keras/.h5). Default: the "
                                 "bundled Fashion-MNIST CNN, models/" + DEFAULT_MODEL_NAME)
        parser.add_argument("--embedding_layer", default=None,
                            help="Layer whose output is the embedding (default: 'embedding' or the "
                                 "penultimate layer).")
        parser.add_argument("--model_output", default=None, choices=(PROBABILITIES, LOGITS),
                            help="What the model's class output holds (default: its sidecar's "
                                 "declaration, else probabilities).")
        parser.add_argument("--mc_passes", type=int, default=0,
                            help="MC-dropout passes T per frame for BALD, variation ratios and mean "
                                 "std (Keras models with dropout; 0 = off).")
        parser.add_argument("--detector_background", default=None,
                            help="Turns on detection scores: .npy RGB background of a fixed camera "
                                 "for the background-difference detector (see docs/models.md).")
        parser.add_argument("--uniqueness_k", type=int, default=3,
                            help="Neighbours for the k-NN uniqueness score (FiftyOne: 3); 0 = off.")


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
                 decode_options: Optional[dict] = None,
                 detector_background: Optional[str] = None, uniqueness_k: int = 0,
                 strategy_params: Optional[dict] = None, bigquery_candidates_table: Optional[str] = None,
                 inputs: Sequence[str] = (), project: Optional[str] = None):
        super().__init__()
        self._decode = DecodeMedia(video_fps, **(decode_options or {}))
        detector = (DetectorHandler(BackgroundDifferenceDetector(detector_background))
                    if detector_background else None)
        self._score = ScoreFrames(model, detector=detector)
        self._novelty = ScoreNovelty(k=uniqueness_k, duplicate_threshold=None) if uniqueness_k else None
        self._index_mongo = WriteFramesToMongoDB(mongo_uri, mongo_database)
        self._index_bigquery = (WriteFramesToBigQuery(bigquery_table, bigquery_write_method, project=project)
                                if bigquery_table else None)
        self._select = SelectCandidates(budget, strategy, strategy_params, inputs=inputs)
        self._candidates_mongo = WriteCandidatesToMongoDB(mongo_uri, mongo_database)
        self._candidates_bigquery = (WriteCandidatesToBigQuery(bigquery_candidates_table, bigquery_write_method,
                                                               project=project)
                                     if bigquery_candidates_table else None)
        self._output_dir = output_dir
        self._run_info = run_info or {}

    def _path(self, name):
        return FileSystems.join(self._output_dir, name)

    def expand(self, globs):
        decoded = globs | "Decode" >> self._decode
        scored = decoded.frames | "EmbedAndScore" >> self._score
        if self._novelty:
            scored = scored._replace(records=(scored.records | "Uniqueness" >> self._novelty).records)
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
            sums={"frames_decoded": (outcomes, lambda o: o.frames)},
            mappings={"videos": (outcomes, _video_entry)})
        return candidates


def _video_entry(outcome):
    """``summary.json``'s ``videos`` object: per video file, frames kept and what it holds."""
    if outcome.media_type != "video":
        return None
    return outcome.source_uri, dict(outcome.video_info or {}, frames=outcome.frames,
                                    failed=outcome.failed)


def _decode_options(mine) -> dict:
    """``DecodeMedia`` keyword arguments from the job's options (0 means "off")."""
    return {
        "sampling": mine.video_sampling,
        "every_n": mine.video_every_n,
        "scene_threshold": mine.scene_threshold,
        "max_pixels": mine.max_image_pixels or None,
        "max_side": mine.resize_longest_side or None,
        "split_seconds": mine.video_split_seconds or None,
    }


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
    needs = score_registry.get(mine.strategy).needs if mine.strategy in score_registry.names() else None
    if needs == score_registry.MC_SAMPLES and mine.mc_passes < 2:
        raise ValueError(f"--strategy={mine.strategy} needs MC-dropout samples: set --mc_passes >= 2")
    if needs == score_registry.EMBEDDINGS and mine.uniqueness_k < 1:
        raise ValueError("--strategy=uniqueness needs --uniqueness_k >= 1")
    candidates_table = mine.bigquery_candidates_table
    if not candidates_table and mine.bigquery_table:
        candidates_table = sibling_table(mine.bigquery_table, "candidates")
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
    if mine.bigquery_write_method == "AUTO":
        temp_location = options.view_as(GoogleCloudOptions).temp_location or ""
        mine.bigquery_write_method = ("FILE_LOADS" if temp_location.startswith("gs://")
                                      else "STREAMING_INSERTS")
    gcp_emulators.use_emulators_if_configured()
    model = load_model_spec(mine.model, mine.embedding_layer, mine.model_output, mine.mc_passes)
    if mine.uniqueness_k < 0:
        raise ValueError(f"--uniqueness_k must be >= 0, got {mine.uniqueness_k}")

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
            "bigquery_write_method": mine.bigquery_write_method if mine.bigquery_table else None,
            "budget": mine.budget,
            "strategy": mine.strategy,
            "strategy_params": strategy_params,
            "bigquery_candidates_table": candidates_table,
            "video_fps": mine.video_fps,
            "decode": _decode_options(mine),
            "model": model.version._asdict(),
            "model_runtime": model.runtime,
            "mc_passes": model.mc_passes,
            "detector_background": mine.detector_background,
            "uniqueness_k": mine.uniqueness_k,
            "runner": standard.runner,
        }
        run = _RunRecord(mongo_uri, mine.mongo_database, options, run_info)
        started = time.monotonic()
        run.record("running")
        try:
            with beam.Pipeline(options=options) as pipeline:
                _ = (pipeline
                     | "Globs" >> beam.Create(globs)
                     | "Mine" >> MineFrames(
                         model=model, mongo_uri=mongo_uri, output_dir=output_dir, budget=mine.budget,
                         strategy=mine.strategy, video_fps=mine.video_fps,
                         mongo_database=mine.mongo_database, bigquery_table=mine.bigquery_table,
                         bigquery_write_method=mine.bigquery_write_method, run_info=run_info,
                         decode_options=_decode_options(mine),
                         detector_background=(mine.detector_background
                                              and _from_caller_dir(mine.detector_background)),
                         uniqueness_k=mine.uniqueness_k,
                         strategy_params=strategy_params, bigquery_candidates_table=candidates_table,
                         inputs=globs, project=options.view_as(GoogleCloudOptions).project))
        except BaseException:
            run.record("failed")
            raise
        elapsed = time.monotonic() - started
        summary = _read_summary(output_dir)
        run.record("succeeded", {k: v for k, v in summary.items() if isinstance(v, int)
                                 and not isinstance(v, bool)} if summary else None)
    if summary:
        summary["wall_seconds"] = round(elapsed, 1)
    return summary


def _read_summary(output_dir: str) -> dict:
    try:
        with FileSystems.open(FileSystems.join(output_dir, SUMMARY_FILE)) as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, IOError):  # e.g. a Dataflow job submitted without waiting
        return {}


class _RunRecord:
    """The run's lineage entry in ``<database>.runs`` (:mod:`schemas.runs`), credentials redacted.

    Adds ``run_id`` and ``code_version`` to ``run_info`` (so ``summary.json`` carries them).
    A run entry that cannot be written is logged, not fatal: the frames are already indexed.
    """

    #: The driver may not reach a store only the workers can (e.g. Dataflow on a private
    #: network): lineage gives up after this long instead of holding the job for minutes.
    SERVER_SELECTION_TIMEOUT_MS = 5000

    def __init__(self, mongo_uri: str, database: str, options: PipelineOptions, run_info: dict):
        self._uri = mongo_uri
        self._database = database
        self._started_at = datetime.datetime.now(datetime.timezone.utc)
        explicit = options.get_all_options(drop_default=True, retain_unknown_options=True)
        self._options_json = redact_text(json.dumps(dict(explicit, **run_info), sort_keys=True, default=str))
        self._run_id = runs_schema.make_run_id("mine", self._started_at, json.loads(self._options_json))
        self._code = runs_schema.code_version()
        self._run_info = run_info
        self._project = options.view_as(GoogleCloudOptions).project
        run_info.update(run_id=self._run_id, code_version=self._code)

    def record(self, status: str, counts: Optional[dict] = None):
        finished = None if status == "running" else datetime.datetime.now(datetime.timezone.utc)
        document = runs_schema.run_document(
            self._run_id, "mine", self._started_at, status, self._code, self._options_json,
            self._run_info["inputs"], self._run_info["output_dir"], self._run_info["model"],
            finished_at=finished, counts=counts)
        try:
            failed = upsert_documents(self._uri, self._database, tables.runs_table(), [document],
                                      max_attempts=2,
                                      server_selection_timeout_ms=self.SERVER_SELECTION_TIMEOUT_MS)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a finished job
            failed = [str(e)]
        if failed:
            _LOG.error("run %s: could not record status %r in %s.runs: %s", self._run_id, status,
                       self._database, redact_text(str(failed[0])))
        if self._run_info.get("bigquery_table") and status != "running":
            self._append_to_bigquery(document, status)

    def _append_to_bigquery(self, document: dict, status: str):
        """One row per finished run in the ``runs`` table next to the frames table."""
        table_id = sibling_table(self._run_info["bigquery_table"], runs_schema.RUNS_COLLECTION)
        row = {k: (v.isoformat() if isinstance(v, datetime.datetime) else v)
               for k, v in document.items() if k != "_id"}
        row["run_id"] = document["_id"]
        try:
            problems = append_rows(table_id, tables.runs_table(), [row], [f"{self._run_id}:{status}"],
                                   project=self._project)
        except Exception as e:  # noqa: BLE001 - lineage must not fail a finished job
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            _LOG.error("run %s: could not append to %s: %s", self._run_id, table_id,
                       redact_text(problems[0])[:500])


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

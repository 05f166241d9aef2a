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
``--strategy_params``; with ``--strategy vessal --label_rate R``, about ``R`` of the frames, each
decided by VeSSAL in one pass in event-time order:
:class:`~transforms.select.per_frame.SelectPerFrameInOrder`), write results and index the
candidates in MongoDB's ``candidates`` collection (and the BigQuery candidates table).

Outputs in ``--output_dir``: ``candidates.jsonl`` (sorted by rank), ``dead_letter.jsonl`` (one
object per failed file or frame: ``source_uri``, ``stage``, ``error``) and ``summary.json``
(with the ``run_id``). The run's lineage (options with credentials redacted, code and model
versions, inputs, counts, status) is upserted into MongoDB ``<database>.runs``.

The driver goes one way: every option is checked (:func:`check_options`, a ``ValueError``
naming the option) before the model is loaded or a server started; the run's identity is
computed, then the pipeline runs inside its :class:`~beam_pipelines.cli.run_record.RunRecord`,
whose counts come from the pipeline's metrics (:data:`SUMMARY_COUNTERS`).
"""
import contextlib
import json
import logging
import os
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricResults, MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from beam_pipelines import report
from beam_pipelines.report import figures
from beam_pipelines.cli import metrics, preflight, progress, shutdown
from beam_pipelines.local import emulators, sample_media, worker as local_worker
from beam_pipelines.mine.job import embedded_mongod, load_model, make_detector, priced, run_facts
from beam_pipelines.mine.options import (DEFAULT_STRATEGY, MineOptions, check_options, dead_letter_fraction, decode_options,
                                         stage_models, two_stage_score)
from beam_pipelines.cli.run_record import RunRecord, describe_run
from schemas.frames import DEFAULT_DATABASE
from transforms.common import gcp_emulators
from transforms.common.files import is_local
from transforms.common.outputs import (CANDIDATES_FILE, DEAD_LETTER_FILE, SUMMARY_FILE, WriteCandidates,
                                       WriteDeadLetters, WriteSummary)
from transforms.common.outputs import DEAD_LETTERS_AT
from transforms.common.outputs import METRICS_NAMESPACE as OUTPUT_METRICS
from transforms.decode.ptransforms import DecodeMedia
from transforms.decode.ptransforms import METRICS_NAMESPACE as DECODE_METRICS
from transforms.index import METRICS_NAMESPACE as INDEX_METRICS
from transforms.index import WriteFramesToBigQuery, WriteFramesToMongoDB
from transforms.annotate.ptransforms import ReadLabelledFrameIds
from transforms.select.uncertainty_kcenter import UncertaintyKCenter
from transforms.index.candidates import WriteCandidatesToBigQuery, WriteCandidatesToMongoDB
from transforms.score.detectors import AddClassRarity, BackgroundDifferenceDetector, DetectorHandler
from transforms.score.model_base import METRICS_NAMESPACE as SCORE_METRICS
from transforms.score.threads import INFERENCE_THREADS_ENV, usable_cpus
from transforms.score.history import ModelVersionChanged, NoveltyHistory
from transforms.score.novelty import COSINE, ScoreNovelty
from transforms.score.ptransforms import ModelSpec, ScoreFrames
from transforms.score.detection import TWO_STAGE_MARGIN
from transforms.score.two_stage import RescoreUncertain
from transforms.select.ptransforms import METRICS_NAMESPACE as SELECT_METRICS
from transforms.select.ptransforms import SelectCandidates
from transforms.select.per_frame import PerFrameSpec, SelectPerFrameInOrder

_LOG = logging.getLogger(__name__)
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
                 inputs: Sequence[str] = (), project: Optional[str] = None,
                 progress_dir: Optional[str] = None, exclude_labelled: bool = True,
                 detector: Optional[DetectorHandler] = None, near_duplicate_similarity: float = 0.0,
                 selection_embedding: str = "frame", export_metrics: bool = False,
                 history: Optional[NoveltyHistory] = None, per_frame: Optional[PerFrameSpec] = None,
                 first_stage_detector: Optional[DetectorHandler] = None,
                 two_stage_margin: float = TWO_STAGE_MARGIN):
        super().__init__()
        self._progress_dir = progress_dir  # progress.CountProgress's directory (local runners)
        self._export_metrics = export_metrics  # Prometheus (--metrics_port, local runners)
        self._decode = DecodeMedia(video_fps, **(decode_options or {}))
        if detector_background:
            detector = DetectorHandler(BackgroundDifferenceDetector(detector_background))
        objects = selection_embedding == "objects"
        # Two-stage scoring: the cheap detector on every frame, ``detector`` again near the pool.
        self._two_stage = None  # RescoreUncertain's arguments but the floor
        if first_stage_detector is not None:
            score = two_stage_score(strategy, strategy_params or {})
            if per_frame is not None or detector is None or objects:
                raise ValueError("two-stage scoring serves a budget selection with a detector and frame embeddings")
            if score is None:
                raise ValueError(f"two-stage scoring does not serve strategy {strategy!r} with {strategy_params}")
            self._two_stage = dict(detector=detector, score=score, margin=two_stage_margin,
                                   max_pixels=(decode_options or {}).get("max_pixels"),
                                   max_side=(decode_options or {}).get("max_side"))
        self._score = ScoreFrames(model, detector=first_stage_detector or detector, objects=objects)
        self._rarity = AddClassRarity() if detector is not None else None
        # Cosine, the one distance of selection (transforms.select.base.unit_rows), not FiftyOne's
        # Euclidean default: uniqueness, near-duplicates and the selection's diversity agree.
        self._novelty = (ScoreNovelty(k=uniqueness_k, metric=COSINE,
                                      duplicate_threshold=near_duplicate_similarity or None,
                                      assign_duplicate_groups=True, history=history)
                         if uniqueness_k else None)
        self._index_mongo = WriteFramesToMongoDB(mongo_uri, mongo_database)
        self._index_bigquery = (WriteFramesToBigQuery(bigquery_table, bigquery_write_method, project=project)
                                if bigquery_table else None)
        # --strategy vessal: a rate, decided per frame in one pass in event-time order; else a budget.
        self._select = (SelectPerFrameInOrder(per_frame, inputs=inputs) if per_frame is not None else
                        SelectCandidates(budget, strategy, strategy_params, inputs=inputs,
                                         embedding=selection_embedding))
        # Selections remember: frames sent for labelling or labelled (and their near-duplicates) are skipped.
        self._labelled = ReadLabelledFrameIds(mongo_uri, mongo_database) if exclude_labelled else None
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
        model_outputs = scored.records  # before the steps that wait for every frame (progress)
        select = self._select
        if self._labelled:
            select = select.excluding(globs.pipeline | "LabelledFrames" >> self._labelled)
        if self._two_stage:
            floor = scored.records | "PoolFloor" >> select.pool_floor(self._two_stage["score"])
            second = scored.records | "RescoreNearThePool" >> RescoreUncertain(floor=floor, **self._two_stage)
            scored = scored._replace(records=second.records)
            rescored, not_rescored = second.rescored, second.not_rescored
        else:
            rescored = not_rescored = globs.pipeline | "OneStage" >> beam.Create([])
        if self._rarity:
            scored = scored._replace(records=scored.records | "RareClasses" >> self._rarity)
        if self._novelty:
            # with each record's near-duplicate group (assign_duplicate_groups) in the same join
            scored = scored._replace(records=(scored.records | "Uniqueness" >> self._novelty).records)
        indexed = scored.records | "IndexInMongoDB" >> self._index_mongo
        dead_letters = [decoded.dead_letters, scored.dead_letters, indexed.dead_letters]
        if self._index_bigquery:
            dead_letters.append(scored.records | "IndexInBigQuery" >> self._index_bigquery)
        if isinstance(select, SelectPerFrameInOrder):
            decided = scored.records | "SelectPerFrame" >> select
            candidates = decided.candidates
            dead_letters.append(decided.dead_letters)
        else:
            candidates = scored.records | "SelectCandidates" >> select
        candidates_indexed = candidates | "CandidatesToMongoDB" >> self._candidates_mongo
        dead_letters.append(candidates_indexed.dead_letters)
        if self._candidates_bigquery:
            dead_letters.append(candidates | "CandidatesToBigQuery" >> self._candidates_bigquery)

        dead_letters = dead_letters | "AllDeadLetters" >> beam.Flatten()
        if self._progress_dir:
            # Files counted as each step decodes them, not after the flatten of all outcomes.
            _ = {"files": decoded.outcome_steps, "frames_decoded": decoded.frames, "frames_scored": model_outputs,
                 "frames_indexed": indexed.frame_ids} | "Progress" >> progress.CountProgress(self._progress_dir)
        if self._export_metrics:
            _ = {"frames_decoded": decoded.frames, "frames_scored": model_outputs, "frames_indexed": indexed.frame_ids,
                 "dead_letters": dead_letters, "candidates": candidates} | "Metrics" >> metrics.ExportMetrics()
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
            "frames_rescored": rescored,  # --two_stage_scoring on: by the float detector again
            "frames_not_rescored": not_rescored,  # ... and those that kept their int8 scores
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


class SummaryCounter(NamedTuple):
    """A pipeline counter that counts what a ``summary.json`` count counts."""
    namespace: str
    name: str
    step: Optional[str] = None  # a step of MineFrames whose counter it is; None: every step


#: ``summary.json``'s counts and the counters of :class:`MineFrames`' stages that count the same
#: things: the run's entry in ``<database>.runs`` takes its counts from the pipeline's metrics.
SUMMARY_COUNTERS = {
    "files_matched": SummaryCounter(DECODE_METRICS, "files_matched"),
    "files_decoded": SummaryCounter(DECODE_METRICS, "files_decoded"),
    "files_failed": SummaryCounter(DECODE_METRICS, "files_failed"),
    "frames_decoded": SummaryCounter(DECODE_METRICS, "frames_decoded"),
    "frames_scored": SummaryCounter(SCORE_METRICS, "frames_scored"),
    "frames_written": SummaryCounter(INDEX_METRICS, "mongodb_documents_written", "IndexInMongoDB"),
    "dead_letters": SummaryCounter(OUTPUT_METRICS, "dead_letters_written"),
    "candidates": SummaryCounter(SELECT_METRICS, "candidates_selected"),
    "candidates_written": SummaryCounter(INDEX_METRICS, "mongodb_documents_written", "CandidatesToMongoDB"),
    "frames_rescored": SummaryCounter(SCORE_METRICS, "frames_rescored"),
    "frames_not_rescored": SummaryCounter(SCORE_METRICS, "frames_not_rescored"),
}


def summary_counts(metrics: MetricResults) -> Dict[str, int]:
    """The counts of :data:`SUMMARY_COUNTERS` from a finished pipeline's metrics (committed values,
    or attempted ones on runners that do not commit metrics)."""
    return {name: _counter_total(metrics, counter) for name, counter in SUMMARY_COUNTERS.items()}


def _counter_total(metrics: MetricResults, counter: SummaryCounter) -> int:
    query = MetricsFilter().with_namespace(counter.namespace).with_name(counter.name)
    if counter.step:
        query = query.with_step(counter.step)
    return sum(_committed(result) for result in metrics.query(query)[MetricResults.COUNTERS])


def model_loads(metrics: MetricResults) -> int:
    """How many times worker processes loaded the scoring model (``RunInference``'s
    ``load_model_latency_milli_secs`` samples): one per worker process when models are shared."""
    query = MetricsFilter().with_namespace(SCORE_METRICS).with_name("load_model_latency_milli_secs")
    return sum(_committed(result).count for result in metrics.query(query)[MetricResults.DISTRIBUTIONS]
               if _committed(result) is not None)


def _committed(result) -> int:
    committed = result.committed
    return result.attempted if committed is None else committed


#: Thread pools that a worker process sizes from its environment when it starts them:
#: TensorFlow's intra- and inter-op pools (Keras models) and OpenMP's (faiss's searches).
WORKER_THREAD_ENVS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def cpus_shared_between_workers(options: PipelineOptions):
    """For the run: a local multi-process run gives each worker process ``CPUs // workers``
    threads (inherited by the workers; a value already set wins): for its inference
    (``$ACTIVEBEAM_INFERENCE_THREADS``), TensorFlow and OpenMP (:data:`WORKER_THREAD_ENVS`,
    set to ``$ACTIVEBEAM_INFERENCE_THREADS`` when the user set that). N processes with one
    thread per CPU in each pool would oversubscribe the machine (docs/timings.md)."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return contextlib.nullcontext()
    cpus = usable_cpus()
    workers = direct.direct_num_workers or cpus  # 0: one per CPU
    threads = os.environ.get(INFERENCE_THREADS_ENV) or str(max(1, cpus // workers))
    return emulators.environment(**{name: threads for name in (INFERENCE_THREADS_ENV,) + WORKER_THREAD_ENVS
                                    if name not in os.environ})


def run(argv: Optional[List[str]] = None) -> dict:
    """Runs the batch job and returns the contents of ``summary.json`` plus ``wall_seconds``
    (:func:`beam_pipelines.mine.run` picks this or the streaming job from the options).

    Every option is checked (:func:`check_options`) before the model is loaded or a server
    started. The run's entry in ``<database>.runs`` (:class:`~beam_pipelines.cli.run_record.RunRecord`)
    takes its counts from the pipeline's metrics (:data:`SUMMARY_COUNTERS`).

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        (A ``ValueError``.) For option values that cannot work, naming the option (negative
        budget, a strategy without its score, embedded MongoDB with a remote runner or a remote
        output directory, a model that does not load...).
    beam_pipelines.cli.preflight.StoreUnavailable
        With a local runner, for a MongoDB or BigQuery dataset that does not answer within
        ``--store_check_timeout_s`` or refuses, before the model loads.
    beam_pipelines.local.mongod.MongoDStartError
        When the embedded mongod cannot start (e.g. its data directory in use by another run).
    """
    gcp_emulators.use_emulators_if_configured()
    argv = sys.argv[1:] if argv is None else argv
    options, job = preflight.check_job(argv, MineOptions, check_options)
    mine = options.view_as(MineOptions)
    if job.local_runner:  # a remote runner's workers may reach stores the driver cannot
        preflight.check_stores(mine.mongo_uri, [t for t in (mine.bigquery_table, job.candidates_table) if t],
                               options.view_as(GoogleCloudOptions).project, mine.store_check_timeout_s)
    job = stage_models(job)
    globs = list(job.globs) or sample_media.prepare()
    if is_local(job.output_dir):
        os.makedirs(job.output_dir, exist_ok=True)
    model = load_model(mine, job)
    detector = make_detector(mine, job)
    first_stage = make_detector(mine, job, first_stage=True) if job.first_stage_detector else None

    with contextlib.ExitStack() as stack:
        stack.enter_context(cpus_shared_between_workers(options))
        stack.enter_context(shutdown.removes_beam_temp(job.output_dir))
        stack.enter_context(metrics.serve(
            mine.metrics_port, mine.metrics_host,
            multiprocess=options.view_as(DirectOptions).direct_running_mode == "multi_processing"))
        mongo_uri = mine.mongo_uri or embedded_mongod(stack, job.output_dir)
        job = priced(mine, job, mongo_uri)
        facts = run_facts(mine, job, globs, mongo_uri, model)
        lineage = describe_run(
            "mine", options.get_all_options(drop_default=True, retain_unknown_options=True), facts,
            inputs=globs, output_dir=job.output_dir, model=facts["model"],
            bigquery_table=mine.bigquery_table, project=options.view_as(GoogleCloudOptions).project)
        run_info = dict(facts, run_id=lineage.run_id, code_version=lineage.code_version)
        started = time.monotonic()
        lines = (progress.ProgressLines(progress.count_files(globs)) if job.local_runner and not mine.quiet
                 else None)
        progress_dir = stack.enter_context(lines) if lines else None
        # the kept novelty index: refused here, before anything runs, if another model made it
        history = _history(mine, model)
        with RunRecord(lineage, mongo_uri, mine.mongo_database, local_driver=job.local_runner) as run_record:
            mine_frames = MineFrames(
                history=history,
                model=model, mongo_uri=mongo_uri, output_dir=job.output_dir, budget=mine.budget,
                strategy=mine.strategy, video_fps=mine.video_fps,
                mongo_database=mine.mongo_database, bigquery_table=mine.bigquery_table,
                bigquery_write_method=job.bigquery_write_method, run_info=run_info,
                decode_options=decode_options(mine), detector=detector, near_duplicate_similarity=mine.near_duplicate_similarity,
                selection_embedding=mine.selection_embedding,
                uniqueness_k=mine.uniqueness_k, strategy_params=job.strategy_params,
                bigquery_candidates_table=job.candidates_table, inputs=globs,
                project=options.view_as(GoogleCloudOptions).project, progress_dir=progress_dir,
                exclude_labelled=not mine.include_labelled, export_metrics=mine.metrics_port is not None,
                per_frame=job.per_frame, first_stage_detector=first_stage, two_stage_margin=mine.two_stage_margin)
            try:
                result = _run_pipeline(options, job.runner, globs, mine_frames)
            except Exception as e:
                cancelled = shutdown.cancelled_instead(e)
                if cancelled:
                    raise cancelled from e
                raise
            finally:
                if lines:
                    lines.stop()
            finished = PipelineState.is_terminal(result.state)
            # A Flex Template launch (--template_location): Beam wrote a job file, no job runs yet.
            finished = finished and getattr(result, "has_job", True)
            counts = summary_counts(result.metrics()) if finished else None
            if history is not None and finished and result.state == PipelineState.DONE:
                history.commit()  # the run's frames become part of the kept index only now
            loads = model_loads(result.metrics()) if finished else None
            run_record.set_counts(counts)
            if finished:  # selection figures, <output_dir>/report/index.html; failures are logged
                selection = figures.add_to_summary(job.output_dir, mongo_uri, mine.mongo_database)
                if selection and counts is not None:  # what the selection costs to label, in its entry
                    run_record.set_counts(dict(counts, **{k: selection.get(k) for k in figures.COST_KEYS}))
                report.write_run_report_safely(job.output_dir, mongo_uri, mine.mongo_database)
            if counts is not None:
                _warn_if_short_of_budget(facts, counts)
                _check_dead_letters(counts, dead_letters_by_stage(result.metrics()),
                                    mine.max_dead_letter_fraction, job.output_dir)
        elapsed = time.monotonic() - started
    summary = _written_summary(job.output_dir)
    return dict(summary, wall_seconds=round(elapsed, 1), model_loads=loads) if summary else summary


def _warn_if_short_of_budget(facts: dict, counts: Dict[str, int]) -> None:
    """One warning line when the default strategy stopped short of a frames budget while the run
    indexed more frames: its distance rules found no other frame distinct enough. Their defaults
    are distances of the default backbone's embedding; another model's may need others."""
    if facts.get("budget_unit") != "frames" or (facts.get("strategy") or DEFAULT_STRATEGY) != DEFAULT_STRATEGY:
        return
    selected, budget, indexed = counts.get("candidates", 0), facts.get("budget") or 0, counts.get("frames_written", 0)
    if selected >= min(budget, indexed):
        return
    rules = dict(UncertaintyKCenter().params(), **(facts.get("strategy_params") or {}))
    _LOG.warning(
        "selected %d frames of a budget of %d from %d indexed: %s admits no frame within cosine distance "
        "%g (min_distance) of another, nor one within %g s of a frame of its source unless %g apart "
        "(min_seconds_apart, temporal_distance), and no other frame passed. These defaults are distances "
        "of the default backbone's embedding; for another model's, set them with --strategy_params "
        "(docs/sampling.md)", selected, budget, indexed, DEFAULT_STRATEGY, rules["min_distance"],
        rules["min_seconds_apart"], rules["temporal_distance"])


class TooManyDeadLetters(shutdown.RunFailed):
    """The run lost more of its inputs than ``--max_dead_letter_fraction`` allows."""


def _history(mine, model: ModelSpec) -> Optional[NoveltyHistory]:
    """The kept novelty index of ``--index_dir`` (or ``None``); another model's index is an
    :class:`~beam_pipelines.cli.preflight.OptionError` (exit code 2) before anything runs."""
    if not (mine.index_dir and mine.uniqueness_k):
        return None
    try:
        return NoveltyHistory(mine.index_dir, model.version, renew=mine.renew_index)
    except ModelVersionChanged as e:
        raise preflight.OptionError(str(e)) from None


def dead_letters_by_stage(metrics: MetricResults) -> Dict[str, int]:
    """Written dead letters per stage (``match``, ``decode``, ``inference``, ...), from the metrics."""
    query = MetricsFilter().with_namespace(OUTPUT_METRICS)
    by_stage = {}
    for result in metrics.query(query)[MetricResults.COUNTERS]:
        name = result.key.metric.name
        if name.startswith(DEAD_LETTERS_AT):
            stage = name[len(DEAD_LETTERS_AT):]
            by_stage[stage] = by_stage.get(stage, 0) + _committed(result)
    return by_stage


def _check_dead_letters(counts: Dict[str, int], by_stage: Dict[str, int], max_fraction: float,
                        output_dir: str):
    """Raises :class:`TooManyDeadLetters` past ``max_fraction`` (see :func:`dead_letter_fraction`)."""
    fraction = dead_letter_fraction(counts, by_stage)
    if fraction > max_fraction:
        raise TooManyDeadLetters(
            f"{fraction:.0%} of the inputs failed ({counts.get('files_failed', 0)} of "
            f"{counts.get('files_matched', 0)} files, {counts.get('dead_letters', 0)} dead letters in "
            f"all), more than --max_dead_letter_fraction={max_fraction:g}: see "
            f"{FileSystems.join(output_dir, DEAD_LETTER_FILE)}")


def _run_pipeline(options: PipelineOptions, runner: str, globs: List[str],
                  mine_frames: MineFrames) -> PipelineResult:
    """Builds and runs the pipeline; waits for it unless ``--no_wait_until_finish``.

    A local multi-process run (``FnApiRunner`` with ``--direct_running_mode=multi_processing``)
    runs on :class:`~beam_pipelines.local.worker.LocalProcessesRunner`, whose workers exit as soon
    as their harness has finished."""
    if runner.lower() == "fnapirunner" and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        runner = local_worker.LocalProcessesRunner()
    pipeline = beam.Pipeline(runner=runner, options=options)
    _ = pipeline | "Globs" >> beam.Create(globs) | "Mine" >> mine_frames
    result = pipeline.run()
    if not options.view_as(StandardOptions).no_wait_until_finish:
        result.wait_until_finish()
    return result


def _written_summary(output_dir: str) -> dict:
    """The contents of the run's ``summary.json`` for the caller ({} if not written yet, e.g. a
    Dataflow job not waited for)."""
    if not FileSystems.exists(FileSystems.join(output_dir, SUMMARY_FILE)):
        return {}  # (opening a missing gs:// object raises google's NotFound, not an OSError)
    try:
        with FileSystems.open(FileSystems.join(output_dir, SUMMARY_FILE)) as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, IOError):
        return {}

"""What a ``mine`` run is made of, resolved from its checked options: one place for the batch job
(:mod:`beam_pipelines.mine.batch`) and the streaming job (:mod:`beam_pipelines.mine.stream`).

Each function takes ``mine`` (the parsed :class:`~beam_pipelines.mine.options.MineOptions`) and
``job`` (the :class:`~beam_pipelines.mine.options.MineJob` that
:func:`~beam_pipelines.mine.options.check_options` returned) and gives one part of the run: the
model's spec, the detector, the embedded ``mongod``, and the facts its lineage records. Neither
job builds these parts itself, so both run the same model and detector for the same options,
and each lineage says only what its run applied.
"""
import contextlib
import logging
import os
from typing import List, Optional

from beam_pipelines.cli import preflight
from beam_pipelines.local.mongod import LocalMongoD
from beam_pipelines.mine.options import BATCH_ONLY_OPTIONS, MineJob, decode_options
from transforms.common.redact import redact_uri
from transforms.index.mongodb_client import mongo_client
from transforms.score.detectors import (BackgroundDifferenceDetector, DetectorHandler, detector_handler,
                                        detector_version)
from transforms.score.ptransforms import ModelSpec, load_model_spec
from transforms.select.cost import CostModel, checked_cost_model, fit_to_annotations
from transforms.select.per_frame import EVENT_ORDER

_LOG = logging.getLogger(__name__)


def load_model(mine, job: MineJob) -> ModelSpec:
    """The model's spec (read once on the driver).

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        Naming ``--model`` when the model cannot be used.
    """
    try:
        return load_model_spec(job.model, mine.embedding_layer, mine.model_output, mine.mc_passes)
    except Exception as e:  # noqa: BLE001 - Keras, LiteRT and ONNX raise all sorts
        raise preflight.OptionError(
            f"--model {job.model or '(the bundled default)'} cannot be used: {type(e).__name__}: "
            f"{preflight.one_line(e, 300)}") from e


def make_detector(mine, job: MineJob, first_stage: bool = False) -> Optional[DetectorHandler]:
    """The detector the job runs, or ``None``: ``--detector_background``'s background-difference
    detector, else ``--detector`` (resolved in ``job.detector``: NanoDet-g, or a detector its
    sidecar declares, :func:`~transforms.score.detectors.detector_handler`) with ``--detector_flip``;
    with ``first_stage`` the cheap detector of ``--two_stage_scoring on`` (``job.first_stage_detector``).

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        Naming ``--detector`` when its file cannot be used.
    """
    if first_stage:
        path, flag = job.first_stage_detector, "two_stage_scoring"
    elif job.detector_background:
        return DetectorHandler(BackgroundDifferenceDetector(job.detector_background))
    else:
        path, flag = job.detector, "detector"
    if not path:
        return None
    try:
        return detector_handler(path, flip=job.detector_flip)
    except Exception as e:  # noqa: BLE001 - an unreadable file
        raise preflight.OptionError(f"--{flag} {path} cannot be used: {preflight.one_line(e, 300)}") from e


def calibrated_cost_model(mongo_uri: str, database: str, timeout_s: float = 10.0) -> Optional[CostModel]:
    """:func:`transforms.select.cost.fit_to_annotations` of the index's ``annotations``, or ``None``
    when MongoDB cannot be read (logged: the published defaults apply)."""
    import pymongo
    try:
        with mongo_client(mongo_uri, server_selection_timeout_ms=int(timeout_s * 1000)) as client:
            return fit_to_annotations(client[database])
    except pymongo.errors.PyMongoError as e:
        _LOG.warning("the cost model keeps its published defaults: annotations cannot be read (%s)",
                     preflight.one_line(e, 200))
        return None


def priced(mine, job: MineJob, mongo_uri: str) -> MineJob:
    """``job`` with the run's cost model in its strategy's parameters (``cost_model``): the
    ``--seconds_per_frame``/``--seconds_per_box`` given, else fitted to the index's annotations,
    else published (:mod:`transforms.select.cost`). ``vessal`` has no budget to price: the job
    as it is, without reading the annotations."""
    if job.per_frame is not None:
        return job
    calibrated = None
    if mine.seconds_per_frame is None or mine.seconds_per_box is None:
        calibrated = calibrated_cost_model(mongo_uri, mine.mongo_database)
    model = checked_cost_model(mine.seconds_per_frame, mine.seconds_per_box, calibrated)
    _LOG.info("cost model (%s): %.1f s per frame + %.1f s per box", model.source, model.seconds_per_frame,
              model.seconds_per_box)
    return job._replace(strategy_params=dict(job.strategy_params, cost_model=model._asdict()))


def embedded_mongod(stack: contextlib.ExitStack, output_dir: str) -> str:
    """Starts a mongod with its data under ``output_dir`` for the ``stack``'s life; its URI."""
    mongo = stack.enter_context(LocalMongoD(os.path.join(output_dir, "mongo-data")))
    _LOG.info("started embedded mongod at %s (data in %s)", mongo.uri, mongo.dbpath)
    return mongo.uri


def run_facts(mine, job: MineJob, globs: List[str], mongo_uri: str, model: ModelSpec,
              streaming: bool = False) -> dict:
    """What ``summary.json`` and the run's entry say about the run's settings (with ``--strategy
    vessal``: ``label_rate``, ``max_per_hour``, ``vessal_state_key``, no budget, and in batch the
    ``selection_order``); a streaming run's leave out the settings of
    :data:`~beam_pipelines.mine.options.BATCH_ONLY_OPTIONS`, which it
    does not apply (and refuses when given)."""
    facts = {
        "inputs": globs,
        "output_dir": job.output_dir,
        "mongo_uri": redact_uri(mongo_uri),
        "mongo_embedded": not mine.mongo_uri,
        "mongo_database": mine.mongo_database,
        "bigquery_table": mine.bigquery_table,
        "bigquery_write_method": job.bigquery_write_method if mine.bigquery_table else None,
        "budget": mine.budget,
        "budget_unit": mine.budget_unit,
        "cost_model": job.strategy_params.get("cost_model"),
        "strategy": mine.strategy,
        # the strategy's own parameters; the budget's unit and cost model are facts of their own
        "strategy_params": {k: v for k, v in job.strategy_params.items() if k not in ("budget_unit", "cost_model")},
        "bigquery_candidates_table": job.candidates_table,
        "video_fps": mine.video_fps,
        "detector": (dict(detector_version(job.detector)._asdict(), flip=job.detector_flip)
                     if job.detector and not job.detector_background else None),
        # --two_stage_scoring on: which detector scored every frame first, and the margin
        "two_stage": ({"first_stage": detector_version(job.first_stage_detector)._asdict(),
                       "margin": mine.two_stage_margin} if job.first_stage_detector else None),
        "near_duplicate_similarity": mine.near_duplicate_similarity if mine.uniqueness_k else None,
        "selection_embedding": mine.selection_embedding,
        "decode": decode_options(mine),
        "model": model.version._asdict(),
        "model_runtime": model.runtime,
        "mc_passes": model.mc_passes,
        "detector_background": mine.detector_background,
        "uniqueness_k": mine.uniqueness_k,
        "index_dir": mine.index_dir,
        "include_labelled": mine.include_labelled,
        "runner": job.runner,
    }
    if job.per_frame is not None:  # --strategy vessal: a rate, not a budget
        spec = job.per_frame
        facts.update(budget=None, budget_unit=None, label_rate=spec.label_rate, max_per_hour=spec.max_per_hour,
                     vessal_state_key=spec.state_key, strategy_params=dict(spec.params))  # uncertainty resolved
        if not streaming:
            facts["selection_order"] = EVENT_ORDER
    if streaming:
        for name in BATCH_ONLY_OPTIONS:
            facts.pop(name, None)
    return facts

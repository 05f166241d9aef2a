"""Options of the ``mine`` job and their checks, before anything starts.

:class:`MineOptions` is the job's ``PipelineOptions`` subclass (its flags and help);
:func:`check_options` validates every option at once, without loading a model or starting a
server, and returns the :class:`MineJob` the driver runs (a ``ValueError`` naming the option,
its value and what is allowed, otherwise).
"""
import argparse
import json
import os
import re
from typing import List, NamedTuple, Optional, Tuple

from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from beam_pipelines.cli import preflight
from beam_pipelines.cli.preflight import check_range
from schemas.frames import DEFAULT_DATABASE
from transforms.common.files import is_local
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.decode.ptransforms import DEFAULT_SPLIT_SECONDS
from transforms.decode.video import MODES
from transforms.index.bigquery_client import parse_table_id, sibling_table
from transforms.score import pretrained
from transforms.score import registry as score_registry
from transforms.score.detection import LOCALISATION_SCORE, TWO_STAGE_MARGIN, TWO_STAGE_SCORES
from transforms.score.detector_spec import missing_sidecar, read_detector_spec  # no TensorFlow import
from transforms.score.model_base import DEFAULT_MODEL_NAME, ONNX, SAVED_MODEL, TFLITE, runtime_of  # no TensorFlow import
from transforms.score.preprocessing import LOGITS, PROBABILITIES, SIDECAR_SUFFIX  # no TensorFlow import
from transforms.select.ptransforms import METADATA_COLUMNS, STRATEGIES
from transforms.select.cost import BOXES, BUDGET_UNITS, FRAMES
from transforms.select.factory import make_strategy
from transforms.select.per_frame import STATE_KEYS, PerFrameSpec
from transforms.select.vessal import BADGE, VESSAL

AUTO, NONE, NANODET, NANODET_INT8 = "auto", "none", "nanodet", "nanodet_int8"
#: Cosine similarity of embeddings from which two frames are near-duplicates (FiftyOne's
#: ``find_duplicates`` default threshold is a distance of 0.1 on normalised embeddings, i.e.
#: a cosine similarity of 0.995; see docs/sampling.md).
NEAR_DUPLICATE_SIMILARITY = 0.995
DEFAULT_RUNNER = "FnApiRunner"  # Beam's DirectRunner would first try to download Prism.
LOCAL_RUNNERS = ("fnapirunner", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner")


#: ``--max_dead_letter_fraction``'s default: a run that loses more than half its inputs failed.
DEFAULT_MAX_DEAD_LETTER_FRACTION = 0.5
PROG = "python -m beam_pipelines.mine"


class MineOptions(PipelineOptions):
    """Options of the ``mine`` job (plus all standard Beam options)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input", action="append", default=None,
            help="File glob of images and/or videos (local or gs://); repeat the flag or separate "
                 "globs with commas. Default: the bundled real sample media.")
        parser.add_argument("--output_dir", default="./activebeam-out",
                            help="Where candidates.jsonl, dead_letter.jsonl, summary.json and the "
                                 "report go (annotate: its exports and the embedded servers' data).")
        parser.add_argument(
            "--mongo_uri", default=None,
            help="MongoDB connection string. Default: an embedded mongod on 127.0.0.1 with its data "
                 "in <output_dir>/mongo-data, started and stopped by the job (local runners only).")
        parser.add_argument("--mongo_database", default=DEFAULT_DATABASE,
                            help="Database of the frames, candidates, annotations and runs collections.")
        parser.add_argument("--bigquery_table", default=None,
                            help="Optional PROJECT:DATASET.TABLE to append one row per frame to.")
        parser.add_argument("--bigquery_write_method", default="AUTO",
                            choices=("AUTO", "STREAMING_INSERTS", "FILE_LOADS"),
                            help="AUTO: FILE_LOADS when --temp_location is on gs:// (load jobs are "
                                 "free and atomic), else STREAMING_INSERTS.")
        parser.add_argument("--budget", type=int, default=50,
                            help="How much to select, in --budget_unit (per window in streaming). "
                                 "Refused with --strategy vessal, which picks --label_rate of the frames.")
        parser.add_argument("--budget_unit", default=FRAMES, choices=BUDGET_UNITS,
                            help="frames (the default: --budget candidates), boxes (predicted boxes, "
                                 "each frame's opening time counted in boxes) or seconds (estimated "
                                 "labelling time): seconds_per_frame + seconds_per_box x predicted "
                                 "boxes (docs/sampling.md).")
        for flag, what, published in (
                ("seconds_per_frame", "to open and check a frame",
                 "5.0 (Bearman et al. 2016: about 1 s per class, five classes)"),
                ("seconds_per_box", "per box",
                 "7.0 (extreme clicking, Papadopoulos et al. 2017; 35 for boxes drawn the usual way)")):
            parser.add_argument(f"--{flag}", type=float, default=None,
                                help=f"Labelling seconds {what}. Default: fitted to the lead times of "
                                     f"the index's annotations once there are 30, else {published}.")
        parser.add_argument("--strategy", default=None, choices=STRATEGIES + (VESSAL,),
                            help="Selection strategy: uncertainty_kcenter (the most uncertain frames, "
                                 "then k-centre over them, without near-identical consecutive frames), "
                                 "an uncertainty score (top-k), random, coreset (k-center greedy), "
                                 "cluster_margin or combined (docs/sampling.md); or vessal: each frame decided "
                                 "with VeSSAL, --label_rate of them, as it arrives in streaming, in one "
                                 "pass in event-time order in batch (no --budget). Default: "
                                 "uncertainty_kcenter with score detection_max when a detector runs, "
                                 "else entropy.")
        parser.add_argument("--label_rate", type=float, default=None,
                            help="With --strategy vessal: the share of frames to pick, in (0, 1] "
                                 "(e.g. 0.01); streaming: each frame decided as soon as it is scored; "
                                 "batch: one pass over the frames in event-time order "
                                 "(docs/sampling.md, 'Per-frame selection at a rate').")
        parser.add_argument("--max_per_hour", type=int, default=0,
                            help="With --strategy vessal: at most this many picks per event-time hour "
                                 "and state key (a burst beyond it is not picked); 0: no cap.")
        parser.add_argument("--vessal_state_key", default="camera", choices=STATE_KEYS,
                            help="With --strategy vessal: one selection state per camera (the folder "
                                 "of the file), per source file, or one global state.")
        parser.add_argument(
            "--strategy_params", default="{}",
            help='JSON object of the strategy\'s parameters, e.g. \'{"n_clusters": 20}\' for '
                 'cluster_margin, \'{"strengths": {"entropy": 1, "least_confidence": 0.5}}\' for '
                 'combined, \'{"balance_key": "camera"}\' (source, camera, predicted_class, '
                 'detected_class) for quotas, '
                 '\'{"near_duplicate_distance": 0.1}\'; for vessal: dim, horizon, memory, '
                 'cov_inv_scaling, seed, uncertainty (what scales each frame\'s embedding: badge, '
                 'detection_max or detection_mean; default detection_max when a detector runs, '
                 'else badge), new_camera_pick (default true: each camera\'s first frame is picked), '
                 'payback (at_once, the default: no pick while ahead of the rate; horizon: an excess '
                 'is spread over the horizon).')
        parser.add_argument("--bigquery_candidates_table", default=None,
                            help="PROJECT:DATASET.TABLE for candidates; default: table 'candidates' "
                                 "in --bigquery_table's dataset when that is given.")
        parser.add_argument("--video_fps", type=float, default=1.0,
                            help="Frames sampled per second of video; 0 keeps every frame.")
        parser.add_argument(
            "--video_sampling", default="fps", choices=MODES,
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
                            help="Path or gs:// URI of a model (.keras, .h5, SavedModel directory, "
                                 ".tflite, .onnx, with an optional <model>.json sidecar). Default: "
                                 "EfficientNet-Lite0 (ImageNet) converted by set-up under "
                                 "$ACTIVEBEAM_HOME/models, else the bundled Fashion-MNIST CNN "
                                 "transforms/score/models/" + DEFAULT_MODEL_NAME)
        parser.add_argument("--detector", default=AUTO,
                            help="Object detector whose boxes every frame gets (detections, "
                                 "detection_* scores): 'auto' (NanoDet-g, COCO's 80 classes, when "
                                 "--model is not given), 'nanodet' (the same with any --model), "
                                 "'nanodet_int8' (NanoDet-g with int8 weights: about 3x faster, the "
                                 "same boxes but at the score threshold, a different selection; "
                                 "docs/models.md), 'none', or a path or gs:// URI of a NanoDet "
                                 ".tflite or of your own detector (.onnx, .tflite or SavedModel "
                                 "directory) with a <detector>.json sidecar: class_names, input "
                                 "size and normalisation, output layout, score threshold, NMS "
                                 "(see docs/models.md).")
        parser.add_argument("--detector_flip", default=AUTO, choices=(AUTO, "on", "off"),
                            help="Also detect on the mirrored frame for detection_localisation "
                                 "(doubles the detector's cost). auto (the default): on when the "
                                 "strategy ranks by detection_localisation, else off: no other "
                                 "selection reads it.")
        parser.add_argument("--two_stage_scoring", default="off", choices=("on", "off"),
                            help="on: score every frame with NanoDet-g's int8 weights, then run the "
                                 "float32 NanoDet-g again only on the frames whose int8 score is within "
                                 "--two_stage_margin of the selection's uncertainty pool, decoded again "
                                 "(batch; the default NanoDet-g and a strategy ranking by detection_max "
                                 "or detection_mean). The same selection for less CPU when the pool is "
                                 "a small part of the run; frames outside it keep the int8 boxes "
                                 "(docs/models.md, Two-stage scoring).")
        parser.add_argument("--two_stage_margin", type=float, default=TWO_STAGE_MARGIN,
                            help="With --two_stage_scoring on: how far below the pool's lowest int8 "
                                 "score a frame is still scored again with the float32 detector, in "
                                 "the score's units (detection_max is in [0, 1]).")
        parser.add_argument("--selection_embedding", default="frame", choices=("frame", "objects"),
                            help="What coreset, cluster_margin and near_duplicate_distance see: the "
                                 "frame's embedding, or 'objects': the mean embedding of the crops of "
                                 "its detected objects (object-level diversity; needs a detector).")
        parser.add_argument("--near_duplicate_similarity", type=float, default=NEAR_DUPLICATE_SIMILARITY,
                            help="Frames whose embeddings have at least this cosine similarity are "
                                 "near-duplicates: grouped (duplicate_group), and only each group's "
                                 "representative can be a candidate (needs --uniqueness_k >= 1); "
                                 "0 turns grouping off.")
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
        parser.add_argument(
            "--include_labelled", action="store_true",
            help="Let the selection pick frames already sent for labelling or labelled (label_tasks, "
                 "annotations) and their near-duplicates; by default they are skipped.")
        parser.add_argument("--metrics_port", type=int, default=None,
                            help="Local runners: serve Prometheus metrics (frames decoded/scored/indexed, "
                                 "index lag, dead letters by stage, store write errors, candidates) on "
                                 "http://HOST:PORT/metrics while the job runs (docs/operations.md). On "
                                 "Dataflow the same figures are the job's metrics in Cloud Monitoring.")
        parser.add_argument("--metrics_host", default="127.0.0.1",
                            help="Address --metrics_port listens on (0.0.0.0: every interface, for a "
                                 "Prometheus server on another machine). Default: 127.0.0.1.")
        parser.add_argument("--quiet", action="store_true",
                            help="No progress lines while the job runs (local runners print one every few seconds).")
        parser.add_argument("--uniqueness_k", type=int, default=3,
                            help="Neighbours for the k-NN uniqueness score (FiftyOne: 3); 0 = off.")
        parser.add_argument("--index_dir", default=None,
                            help="Directory (local or gs://) that keeps the novelty index of earlier runs: "
                                 "this run's uniqueness and near-duplicates are computed against every "
                                 "frame indexed before, and its frames are added when it succeeds "
                                 "(transforms/score/history.py; needs --uniqueness_k >= 1).")
        parser.add_argument("--renew_index", action="store_true",
                            help="Start a new index in --index_dir when it holds another model's "
                                 "embeddings (by default such a run stops and says so).")
        parser.add_argument(
            "--max_dead_letter_fraction", type=float, default=DEFAULT_MAX_DEAD_LETTER_FRACTION,
            help="The run fails (exit 1, run record 'failed') when the larger of the share of matched "
                 "files that failed and the share of decoded frames dead-lettered later exceeds "
                 "this; every input is still accounted for. 1 never fails. Default: "
                 f"{DEFAULT_MAX_DEAD_LETTER_FRACTION}.")
        parser.add_argument(
            "--store_check_timeout_s", type=float, default=preflight.DEFAULT_STORE_CHECK_TIMEOUT_S,
            help="Before the pipeline starts (local runners), MongoDB and each BigQuery dataset "
                 "must answer within this many seconds, or the job stops (exit code 3); 0 skips "
                 "the checks.")


def _split_globs(values: Optional[List[str]]) -> List[str]:
    return [g.strip() for value in values or [] for g in value.split(",") if g.strip()]



def decode_options(mine) -> dict:
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



class MineJob(NamedTuple):
    """The ``mine`` job's options once checked, with what follows from them (nothing loaded)."""
    runner: str
    local_runner: bool
    globs: Tuple[str, ...]  # empty: the bundled sample media
    output_dir: str
    strategy_params: dict
    candidates_table: Optional[str]
    bigquery_write_method: str  # AUTO resolved
    detector_background: Optional[str]
    model: Optional[str] = None     # resolved --model; None: the bundled Fashion-MNIST CNN
    detector: Optional[str] = None  # detector the job runs (NanoDet .tflite, or one with a sidecar), or None
    # A remote runner's workers cannot read the driver's converted default models: they are
    # copied to this location (--staging_location, else --temp_location) by stage_models.
    stage_models_to: Optional[str] = None
    per_frame: Optional[PerFrameSpec] = None  # --strategy vessal: per-frame selection at a rate
    # --detector_flip resolved: the detector also runs on the mirrored frame (flip-TTA).
    detector_flip: bool = False
    # --two_stage_scoring on: the cheap detector that scores every frame first (NanoDet-g int8);
    # ``detector`` then scores again the frames near the uncertainty pool.
    first_stage_detector: Optional[str] = None


def _models(mine):
    """``(model, detector)`` the job runs, ``--model``/``--detector`` resolved (see their help).
    Without ``--model`` the converted default models, or an error that says how to get them."""
    model, default_detector = None, None
    if mine.model:
        model = _from_caller_dir(mine.model)
    else:
        try:
            model, default_detector = pretrained.default_models()
        except pretrained.DefaultModelsMissing as e:
            raise ValueError(str(e)) from None
    choice = mine.detector or AUTO
    if choice == NONE:
        detector = None
    elif choice == AUTO:
        detector = None if mine.model else default_detector
    elif choice in (NANODET, NANODET_INT8):
        detector = pretrained.detector_int8_path() if choice == NANODET_INT8 else pretrained.detector_path()
        if not os.path.isfile(detector):
            raise ValueError(f"--detector={choice}: {detector} does not exist; run scripts/setup.sh "
                             "(or python -m transforms.score.pretrained.convert)")
    else:
        detector = _from_caller_dir(choice)
        preflight.check_model_file("detector", detector)
        if runtime_of(detector) not in (TFLITE, ONNX, SAVED_MODEL):
            raise ValueError(f"--detector must be auto, nanodet, nanodet_int8, none, a NanoDet .tflite file, or a detector "
                             f".onnx, .tflite or SavedModel directory with a {SIDECAR_SUFFIX} sidecar, "
                             f"got {choice!r}")
        try:
            spec = read_detector_spec(detector)
        except ValueError as e:
            raise ValueError(f"--detector {choice}: {e}") from None
        if spec is None and runtime_of(detector) != TFLITE:
            raise ValueError(f"--detector {choice}: {missing_sidecar(detector)}")
    return model, detector


def check_options(options: PipelineOptions) -> MineJob:
    """Checks every option of the ``mine`` job, cheaply: nothing is loaded, started or written.
    A streaming job's (``--input_subscription``, ``--watch``, ``--streaming``) too: see
    :func:`check_streaming_options`; its local runner is then the ``BundleBasedDirectRunner``
    and its BigQuery writes are streaming inserts.

    Raises
    ------
    ValueError
        Naming the first option whose value cannot work, and why.
    """
    mine = options.view_as(MineOptions)
    streaming = streaming_requested(options)
    if streaming:
        check_streaming_options(options)
    runner = options.view_as(StandardOptions).runner or (STREAMING_RUNNER if streaming else DEFAULT_RUNNER)
    preflight.check_runner(runner)
    local_runner = runner.lower() in LOCAL_RUNNERS
    if streaming and local_runner:
        runner = STREAMING_RUNNER
    _check_ranges(mine)
    if mine.index_dir and mine.uniqueness_k < 1:
        raise ValueError("--index_dir keeps the novelty index: set --uniqueness_k >= 1")
    model, detector = _models(mine)
    stage_to = None
    if not local_runner:
        defaults = {path for path in (pretrained.backbone_path(), pretrained.detector_path(),
                                      pretrained.detector_int8_path())
                    if path in (model, detector) and not (path == model and mine.model)}
        if defaults:
            cloud = options.view_as(GoogleCloudOptions)
            stage_to = cloud.staging_location or cloud.temp_location
            if not stage_to:
                raise ValueError(f"the default models must be staged for the {runner} workers: set "
                                 f"--temp_location (or --staging_location), or pass --model on gs://")
        for flag, path in (("model", None if mine.model else model), ("detector", detector)):
            if path and path not in defaults and is_local(path):
                raise ValueError(f"--{flag}: {path} is on this machine only, the {runner} workers cannot "
                                 f"read it: copy it (and its .json sidecar) to gs:// and name it, or "
                                 f"--detector none")
    if mine.strategy is None:
        mine.strategy = DEFAULT_STRATEGY
    check_range("direct_num_workers", options.view_as(DirectOptions).direct_num_workers,
                options.view_as(DirectOptions).direct_num_workers >= 0, ">= 0 (0: one per CPU)")
    strategy_params = _checked_strategy(mine, detector)
    detections = bool(detector or mine.detector_background)  # the job runs a detector
    per_frame = per_frame_spec(options, detections)
    if mine.strategy == DEFAULT_STRATEGY and "score" not in strategy_params:
        strategy_params["score"] = default_score(detections)
    if mine.budget_unit == BOXES and not detections:
        raise ValueError("--budget_unit=boxes counts predicted boxes: it needs a detector (--detector)")
    if mine.seconds_per_frame == 0 and mine.seconds_per_box == 0:
        raise ValueError("--seconds_per_frame and --seconds_per_box cannot both be 0")
    if mine.strategy != VESSAL:  # a rate, not a budget
        strategy_params["budget_unit"] = mine.budget_unit
    if mine.metrics_port is not None:
        check_range("metrics_port", mine.metrics_port, 0 < mine.metrics_port < 65536, "a TCP port, 1-65535")
        if not local_runner:
            raise ValueError(f"--metrics_port serves the local runners' metrics; the {runner} job's are "
                             f"in its console and Cloud Monitoring (docs/operations.md)")
    if mine.selection_embedding == "objects" and not detections:
        raise ValueError("--selection_embedding=objects needs a detector: set --detector")
    _check_tables(mine)
    globs = tuple(_from_caller_dir(g) for g in _split_globs(mine.input))
    preflight.check_input_globs(mine.input, globs)
    if not globs and not local_runner and not streaming:
        raise ValueError("--input is required with a remote runner: the bundled sample media "
                         "are on this machine only")
    output_dir = _from_caller_dir(mine.output_dir)
    if is_local(output_dir):
        output_dir = os.path.abspath(output_dir)
    preflight.check_output_dir(output_dir)
    if mine.model:
        preflight.check_model_file("model", _from_caller_dir(mine.model))
    if mine.detector_background:
        preflight.check_npy_file("detector_background", _from_caller_dir(mine.detector_background))
    if mine.mongo_uri:
        preflight.check_mongo_uri(mine.mongo_uri)
    preflight.check_mongo_database(mine.mongo_database)
    if not mine.mongo_uri and (not local_runner or not is_local(output_dir)):
        raise ValueError("--mongo_uri is required unless the runner and --output_dir are local: "
                         "the embedded mongod lives on this machine")
    candidates_table = mine.bigquery_candidates_table
    if not candidates_table and mine.bigquery_table:
        candidates_table = sibling_table(mine.bigquery_table, "candidates")
    write_method = mine.bigquery_write_method
    temp_location = options.view_as(GoogleCloudOptions).temp_location or ""
    if write_method == "AUTO":
        write_method = ("FILE_LOADS" if temp_location.startswith("gs://") and not streaming
                        else "STREAMING_INSERTS")
    elif write_method == "FILE_LOADS" and mine.bigquery_table and not temp_location.startswith("gs://"):
        raise ValueError(f"--bigquery_write_method=FILE_LOADS needs --temp_location on gs:// (load "
                         f"jobs read files from Cloud Storage), got {temp_location or None!r}")
    flip = (mine.detector_flip == "on" if mine.detector_flip != AUTO else
            any(name == LOCALISATION_SCORE for name, _ in _scores_used(mine.strategy, strategy_params)))
    first_stage = _first_stage_detector(mine, streaming, detector, flip, strategy_params)
    return MineJob(runner, local_runner, globs, output_dir, strategy_params, candidates_table,
                   write_method, mine.detector_background and _from_caller_dir(mine.detector_background),
                   model, detector, stage_to, per_frame, detector_flip=bool(detector) and flip,
                   first_stage_detector=first_stage)


#: Strategy parameters that wrap the ranking (balance, exclusions, stochastic batches): two-stage
#: scoring knows the pool of a plain ranking only.
_WRAPPING_PARAMS = ("balance_key", "quotas", "exclude_ids", "near_duplicate_distance", "stochastic")


def two_stage_score(strategy: str, strategy_params: dict) -> Optional[str]:
    """The score whose uncertainty pool two-stage scoring can serve for this selection, or
    ``None``: ``uncertainty_kcenter`` or a top-k, on ``detection_max`` or ``detection_mean``,
    a budget in frames, no wrapping parameter."""
    if strategy_params.get("budget_unit", FRAMES) != FRAMES or any(k in strategy_params for k in _WRAPPING_PARAMS):
        return None
    score = strategy_params.get("score") if strategy == DEFAULT_STRATEGY else strategy
    return score if score in TWO_STAGE_SCORES else None


def _first_stage_detector(mine, streaming: bool, detector: Optional[str], flip: bool,
                          strategy_params: dict) -> Optional[str]:
    """The int8 NanoDet-g path for ``--two_stage_scoring on``, after checking that it applies."""
    check_range("two_stage_margin", mine.two_stage_margin, mine.two_stage_margin >= 0, ">= 0")
    if mine.two_stage_scoring != "on":
        return None
    why = None
    if streaming or mine.strategy == VESSAL:
        why = "it serves a budget selection's pool (not --strategy vessal)"
    elif detector != pretrained.detector_path() or mine.detector_background:
        why = "its stages are NanoDet-g's int8 and float32 weights: --detector auto or nanodet"
    elif flip:
        why = "the flip-TTA localisation score is not served: --detector_flip off"
    elif mine.selection_embedding != "frame":
        why = "object crops come from the boxes: --selection_embedding frame"
    elif two_stage_score(mine.strategy, strategy_params) is None:
        why = ("it serves uncertainty_kcenter or a top-k on detection_max or detection_mean, with "
               "--budget_unit frames and no balance_key, quotas, exclude_ids, near_duplicate_distance "
               "or stochastic parameter")
    if why:
        raise ValueError(f"--two_stage_scoring=on does not apply: {why}")
    first = pretrained.detector_int8_path()
    if not os.path.isfile(first):
        raise ValueError(f"--two_stage_scoring=on: {first} does not exist; run scripts/setup.sh "
                         "(or python -m transforms.score.pretrained.convert)")
    return first


def stage_models(job: MineJob) -> MineJob:
    """``job`` with its default models copied to ``job.stage_models_to`` and named there
    (:func:`transforms.score.model_staging.stage_default_models`); unchanged when nothing is to
    be staged. Writes to the staging location, so it runs after every option is checked.

    Raises
    ------
    beam_pipelines.cli.preflight.OptionError
        When the models cannot be copied there.
    """
    if not job.stage_models_to:
        return job
    from transforms.score.model_staging import stage_default_models
    try:
        staged = stage_default_models(job.stage_models_to)
    except (OSError, pretrained.DefaultModelsMissing) as e:
        raise preflight.OptionError(f"the default models cannot be staged to {job.stage_models_to}: "
                                    f"{preflight.one_line(e, 300)}") from e
    return job._replace(model=staged.get(job.model, job.model), detector=staged.get(job.detector, job.detector),
                        first_stage_detector=staged.get(job.first_stage_detector, job.first_stage_detector))


def _check_ranges(mine):
    """Each numeric option against its range (NaN and infinities are out of every range)."""
    for flag, value, valid, expected in (
            ("budget", mine.budget, mine.budget >= 0, ">= 0"),
            ("seconds_per_frame", mine.seconds_per_frame,
             mine.seconds_per_frame is None or mine.seconds_per_frame >= 0, ">= 0"),
            ("seconds_per_box", mine.seconds_per_box,
             mine.seconds_per_box is None or mine.seconds_per_box >= 0, ">= 0"),
            ("mc_passes", mine.mc_passes, mine.mc_passes == 0 or mine.mc_passes >= 2,
             "0 (off) or >= 2 (one pass has no spread to measure)"),
            ("uniqueness_k", mine.uniqueness_k, mine.uniqueness_k >= 0, ">= 0 (0: off)"),
            ("near_duplicate_similarity", mine.near_duplicate_similarity,
             0 <= mine.near_duplicate_similarity <= 1, "in [0, 1] (0: off)"),
            ("video_fps", mine.video_fps, mine.video_fps >= 0,
             "a number >= 0 (0: every frame)"),
            ("video_every_n", mine.video_every_n, mine.video_every_n >= 1, ">= 1"),
            ("scene_threshold", mine.scene_threshold, 0 < mine.scene_threshold <= 1, "in (0, 1]"),
            ("max_image_pixels", mine.max_image_pixels, mine.max_image_pixels >= 0,
             ">= 0 (0: no limit)"),
            ("resize_longest_side", mine.resize_longest_side, mine.resize_longest_side >= 0,
             ">= 0 (0: the decoded size)"),
            ("video_split_seconds", mine.video_split_seconds, mine.video_split_seconds >= 0,
             ">= 0 (0: not split)"),
            ("max_dead_letter_fraction", mine.max_dead_letter_fraction,
             0 <= mine.max_dead_letter_fraction <= 1, "in [0, 1]"),
            ("store_check_timeout_s", mine.store_check_timeout_s, mine.store_check_timeout_s >= 0,
             ">= 0 (0: no check)")):
        check_range(flag, value, valid, expected)


def _strategy_params(mine) -> dict:
    """``--strategy_params`` as a dict."""
    try:
        strategy_params = json.loads(mine.strategy_params)
    except json.JSONDecodeError as e:
        raise ValueError(f"--strategy_params must be a JSON object, got {mine.strategy_params!r} "
                         f"({e})") from None
    if not isinstance(strategy_params, dict):
        raise ValueError(f"--strategy_params must be a JSON object, got {mine.strategy_params!r}")
    for key, flags in (("budget_unit", "--budget_unit"), ("cost_model", "--seconds_per_frame and --seconds_per_box")):
        if key in strategy_params:
            raise ValueError(f"--strategy_params: {key} is set with {flags}")
    return strategy_params


def _checked_strategy(mine, detector: Optional[str] = None) -> dict:
    """The strategy's parameters, once the strategy accepts them and its score will be computed
    (``vessal``'s are checked with the streaming options: :func:`per_frame_spec`)."""
    strategy_params = _strategy_params(mine)
    if mine.strategy == VESSAL:
        return strategy_params
    try:
        make_strategy(mine.strategy, strategy_params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--strategy_params: {preflight.one_line(e)}") from None
    balance_key = strategy_params.get("balance_key")
    if balance_key is not None and balance_key not in METADATA_COLUMNS:
        raise ValueError(f"--strategy_params: balance_key must be one of {', '.join(METADATA_COLUMNS)}, "
                         f"got {balance_key!r}")
    for name, where in _scores_used(mine.strategy, strategy_params):
        if name not in score_registry.names():
            raise ValueError(f"{where} names an unknown score {name!r}; scores: "
                             f"{', '.join(score_registry.names())}")
        needs = score_registry.get(name).needs
        if needs == score_registry.MC_SAMPLES and mine.mc_passes < 2:
            raise ValueError(f"{where} needs MC-dropout samples: set --mc_passes >= 2")
        if needs == score_registry.EMBEDDINGS and mine.uniqueness_k < 1:
            raise ValueError(f"{where} needs k-NN neighbours: set --uniqueness_k >= 1")
        if needs == score_registry.DETECTIONS and not (mine.detector_background or detector):
            raise ValueError(f"{where} needs detections: set --detector (or --detector_background)")
        if needs == score_registry.ENSEMBLE:
            raise ValueError(f"{where} needs an ensemble of models, which the mine job does not run")
    return strategy_params


def per_frame_spec(options: PipelineOptions, detections: bool = False) -> Optional[PerFrameSpec]:
    """The per-frame selection of ``--strategy vessal`` (None for another strategy). ``detections``:
    the job runs a detector (``--detector`` or ``--detector_background``); then VeSSAL's
    ``uncertainty``, when ``--strategy_params`` does not set it, is :func:`default_vessal_uncertainty`'s.

    Raises
    ------
    ValueError
        ``vessal`` without ``--label_rate`` or with ``--budget``/``--budget_unit``; ``--label_rate``,
        ``--max_per_hour`` or ``--vessal_state_key`` without ``vessal``; a value or ``--strategy_params`` entry out of
        range (VeSSAL takes ``dim``, ``horizon``, ``memory``, ``cov_inv_scaling``, ``seed``, ``uncertainty``);
        a detection ``uncertainty`` without a detector.
    """
    mine = options.view_as(MineOptions)
    given = preflight.given_options(options)
    if mine.strategy != VESSAL:
        for flag in ("label_rate", "max_per_hour", "vessal_state_key"):
            if flag in given:
                raise ValueError(f"--{flag} applies to --strategy vessal only, got --strategy {mine.strategy}")
        return None
    for flag in ("budget", "budget_unit"):
        if flag in given:
            raise ValueError(f"--{flag} does not apply to --strategy vessal: it picks --label_rate of the "
                             f"frames (a rate, not a budget)")
    if mine.label_rate is None:
        raise ValueError("--strategy vessal needs --label_rate, the share of frames to pick (e.g. 0.01)")
    check_range("label_rate", mine.label_rate, 0 < mine.label_rate <= 1, "in (0, 1]")
    check_range("max_per_hour", mine.max_per_hour, mine.max_per_hour >= 0, ">= 0 (0: no cap)")
    params = _strategy_params(mine)
    params.setdefault("uncertainty", default_vessal_uncertainty(detections))
    try:
        spec = PerFrameSpec(mine.label_rate, mine.max_per_hour, mine.vessal_state_key,
                            tuple(sorted(params.items()))).validated()
    except (ValueError, TypeError) as e:
        raise ValueError(f"--strategy_params for vessal: {preflight.one_line(e)} (it takes dim, horizon, "
                         f"memory, cov_inv_scaling, seed, uncertainty, new_camera_pick, payback)") from None
    if params["uncertainty"] != BADGE and not detections:
        raise ValueError(f"--strategy_params uncertainty {params['uncertainty']} needs detections: set --detector "
                         f"(or --detector_background), or uncertainty badge")
    return spec


#: ``--strategy`` when not given: uncertain and diverse at once
#: (:class:`transforms.select.uncertainty_kcenter.UncertaintyKCenter`; docs/sampling.md).
DEFAULT_STRATEGY = "uncertainty_kcenter"


def default_score(detections: bool) -> str:
    """The uncertainty of the default strategy: ``detection_max`` when a detector runs (a frame is
    worth its most uncertain object; unlike ``detection_sum`` it does not grow with the number of
    boxes, so crowded frames of a fixed camera do not win for being crowded: Brust et al. 2019,
    "Active learning for deep object detection", max aggregation), else ``entropy``."""
    return "detection_max" if detections else "entropy"


def default_vessal_uncertainty(detections: bool) -> str:
    """VeSSAL's ``uncertainty`` when ``--strategy_params`` does not set it, on the condition of
    :func:`default_score`: ``detection_max`` when a detector runs (the detector's uncertainty scales
    ``u``: a team labelling boxes gets frames its detector is unsure of, not frames the backbone's
    ImageNet classifier is unsure of), else ``badge`` (``||p - e_yhat||``, BADGE)."""
    return "detection_max" if detections else BADGE


def _scores_used(strategy: str, params: dict):
    """``(score name, where it is named)`` for every score a strategy and its parameters use."""
    if strategy in score_registry.names():
        yield strategy, f"--strategy={strategy}"
    if strategy in ("cluster_margin", DEFAULT_STRATEGY) and "score" in params:
        yield params["score"], "--strategy_params score"
    if strategy == "combined":
        for key in ("strengths", "thresholds"):
            for name in params.get(key) or {}:
                yield name, f"--strategy_params {key}"


def _check_tables(mine):
    """BigQuery tables in the forms the index writers read."""
    for flag, table in (("bigquery_table", mine.bigquery_table),
                        ("bigquery_candidates_table", mine.bigquery_candidates_table)):
        if table:
            try:
                parse_table_id(table)
            except ValueError:
                raise ValueError(f"--{flag} must be PROJECT:DATASET.TABLE, PROJECT.DATASET.TABLE or "
                                 f"DATASET.TABLE, got {table!r}") from None


def dead_letter_fraction(counts, by_stage=None) -> float:
    """The share of inputs a run lost, in [0, 1]: the larger of the share of inputs lost whole
    (files that failed, plus what matching refused: globs matching nothing, dangling links,
    directories; ``by_stage["match"]``) and the share of decoded frames dead-lettered later
    (preprocess, inference, stores, candidates). Without ``by_stage``, every dead letter that is
    not a failed file counts as a lost frame.
    """
    files_failed = counts.get("files_failed", 0)
    if by_stage is None:
        refused, later = 0, max(0, counts.get("dead_letters", 0) - files_failed)
    else:
        refused = by_stage.get("match", 0)
        later = sum(n for stage, n in by_stage.items() if stage not in ("match", "read", "decode"))
    return max(min(1.0, (files_failed + refused) / max(1, counts.get("files_matched", 0) + refused)),
               min(1.0, later / max(1, counts.get("frames_decoded", 0))))


def help_text(beam: bool = False) -> str:
    """``--help``: the job's own options; ``--help_beam``: Beam's (runner, workers, Dataflow...)."""
    parser = argparse.ArgumentParser(
        prog=PROG, add_help=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=("Beam's standard pipeline options (every PipelineOptions subclass but the "
                     "job's own)." if beam else
                     "Decode images and videos, embed and score every frame, index them in "
                     "MongoDB (and BigQuery) and select the frames to label next."),
        epilog=None if beam else (f"Beam's own options (--runner, --direct_num_workers, --project, "
                                  f"--region, --temp_location, ...): {PROG} --help_beam. Exit codes "
                                  f"and what each bad input gets: docs/failures.md."))
    classes = ([c for c in PipelineOptions.__subclasses__() if c not in (MineOptions, StreamingOptions)]
               if beam else [MineOptions, StreamingOptions])
    for options_class in classes:
        group = parser.add_argument_group(options_class.__name__)
        options_class._add_argparse_args(group)
    return parser.format_help()


# --- the streaming job -----------------------------------------------------------------------

#: The local runner of a streaming job: the only one that fires event-time windows in real time.
STREAMING_RUNNER = "BundleBasedDirectRunner"
SUBSCRIPTION_PATTERN = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")


class StreamingOptions(PipelineOptions):
    """Options of the streaming ``mine`` job (:mod:`beam_pipelines.mine.stream`)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_subscription", default=None,
            help="projects/P/subscriptions/S receiving Cloud Storage notifications (JSON_API_V1): "
                 "each OBJECT_FINALIZE is a new file to mine. Makes the job a streaming job.")
        parser.add_argument(
            "--watch", default=None,
            help="Glob (local or gs://) listed every --watch_interval_seconds: each new or "
                 "replaced file is mined once. Makes the job a streaming job. Write files "
                 "atomically (write elsewhere, then rename into place).")
        parser.add_argument("--watch_interval_seconds", type=float, default=10.0,
                            help="Seconds between two listings of --watch (and of --model_watch).")
        parser.add_argument("--window_seconds", type=float, default=60.0,
                            help="Length of the event-time (capture-time) windows; --budget "
                                 "candidates are selected per window.")
        parser.add_argument("--window_period_seconds", type=float, default=None,
                            help="Sliding windows: a window of --window_seconds starts every this "
                                 "many seconds (default: fixed windows).")
        parser.add_argument("--allowed_lateness_seconds", type=float, default=600.0,
                            help="A frame read up to this long after its window ended still updates "
                                 "it (a late pane); later ones are dead letters of stage 'window'.")
        parser.add_argument("--max_runtime_seconds", type=float, default=0.0,
                            help="Local runners: stop reading after this long, write the open "
                                 "windows and exit 0 (as on SIGINT/SIGTERM); 0 runs until stopped.")
        parser.add_argument("--model_watch", default=None,
                            help="Glob of model files: the newest written after the job started "
                                 "replaces --model without a restart (same runtime, input and "
                                 "classes); records keep the version that scored them.")
        parser.add_argument("--ack_deadline_seconds", type=float, default=60.0,
                            help="Local runners: lease (10-600 s) kept on Pub/Sub messages until "
                                 "their frames are indexed; after a crash they come back this late.")
        parser.add_argument("--status_interval_seconds", type=float, default=10.0,
                            help="Seconds between updates of the run's counts in <database>.runs.")


def streaming_requested(options: PipelineOptions) -> bool:
    """Whether ``options`` ask for the streaming job."""
    stream = options.view_as(StreamingOptions)
    return bool(options.view_as(StandardOptions).streaming or stream.input_subscription or stream.watch)


#: Options of ``mine`` that the streaming job does not apply, and why: given with a streaming
#: source, they are refused rather than ignored.
BATCH_ONLY_OPTIONS = {
    "near_duplicate_similarity": "a streaming window is selected without near-duplicate groups",
    "selection_embedding": "a streaming window is selected on frame embeddings",
    "include_labelled": "a streaming window selects from frames that just arrived, none labelled yet",
    "index_dir": "a streaming window is scored against its own frames, not a kept index",
    "max_dead_letter_fraction": "a streaming job runs on; its dead letters are in dead_letters/ per window",
    "two_stage_scoring": "it needs the run's whole uncertainty pool before the second stage",
    "two_stage_margin": "it needs the run's whole uncertainty pool before the second stage",
}


def check_streaming_options(options: PipelineOptions):
    """The streaming job's own options (see :func:`check_options`).

    Raises
    ------
    ValueError
        No source or two, ``--input`` with a streaming source, a malformed subscription, a
        runner that cannot stream, numbers out of range, ``FILE_LOADS``, a local glob to watch
        with a remote runner, an option of :data:`BATCH_ONLY_OPTIONS`.
    """
    mine = options.view_as(MineOptions)
    stream = options.view_as(StreamingOptions)
    if stream.input_subscription and stream.watch:
        raise ValueError("--input_subscription and --watch are two sources: give one")
    if not stream.input_subscription and not stream.watch:
        raise ValueError("--streaming needs a source: --input_subscription projects/P/subscriptions/S "
                         "or --watch GLOB (--input is for batch runs)")
    if mine.input:
        raise ValueError("--input is for batch runs: a streaming job reads --input_subscription or --watch")
    if stream.input_subscription and not SUBSCRIPTION_PATTERN.match(stream.input_subscription):
        raise ValueError(f"--input_subscription must be projects/PROJECT/subscriptions/NAME, "
                         f"got {stream.input_subscription!r}")
    for flag, value, valid, expected in (
            ("window_seconds", stream.window_seconds, stream.window_seconds > 0, "> 0"),
            ("window_period_seconds", stream.window_period_seconds,
             stream.window_period_seconds is None or 0 < stream.window_period_seconds <= stream.window_seconds,
             "in (0, --window_seconds]"),
            ("allowed_lateness_seconds", stream.allowed_lateness_seconds, stream.allowed_lateness_seconds >= 0, ">= 0"),
            ("watch_interval_seconds", stream.watch_interval_seconds, stream.watch_interval_seconds > 0, "> 0"),
            ("max_runtime_seconds", stream.max_runtime_seconds, stream.max_runtime_seconds >= 0,
             ">= 0 (0: until stopped)"),
            ("ack_deadline_seconds", stream.ack_deadline_seconds, 10 <= stream.ack_deadline_seconds <= 600,
             "in [10, 600] (Pub/Sub's range)"),
            ("status_interval_seconds", stream.status_interval_seconds, stream.status_interval_seconds > 0, "> 0")):
        check_range(flag, value, valid, expected)
    if mine.bigquery_write_method == "FILE_LOADS":
        raise ValueError("--bigquery_write_method=FILE_LOADS needs a bounded input: a streaming job "
                         "uses STREAMING_INSERTS (or AUTO)")
    given = preflight.given_options(options)
    for flag, why in BATCH_ONLY_OPTIONS.items():
        if flag in given:
            raise ValueError(f"--{flag} applies to batch runs only: {why}")
    runner = options.view_as(StandardOptions).runner
    if runner and runner.lower() == "fnapirunner":
        raise ValueError("--runner=FnApiRunner cannot run a streaming job (it fires no window before "
                         "its source ends): use BundleBasedDirectRunner (the local default) or DataflowRunner")
    if runner and runner.lower() not in LOCAL_RUNNERS and stream.watch and is_local(stream.watch):
        raise ValueError(f"--watch must be a gs:// glob with a remote runner, got {stream.watch!r}")

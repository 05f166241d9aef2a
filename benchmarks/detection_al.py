"""Label savings for detection on video, in boxes and seconds, with a detector the loop trains.

    python -m benchmarks.detection_al --quick      # 3 seeds, 2 rounds (see docs/sampling.md for its run time)
    python -m benchmarks.detection_al              # the default preset: 5 seeds, 4 rounds
    python -m benchmarks.detection_al --cameras 12 --long_frames 240 --steps 600   # any generator option

**Data** (:mod:`benchmarks.detection_data`): multi-camera clips at 1 fps with exact boxes and
track ids, generated from packaged photos and Fashion-MNIST objects; every generator parameter
is an option here too (:data:`POOL_DEFAULTS`: 18 cameras, camera 0 a long crowded run of 120
frames). Per seed the cameras are generated with that seed and split **by camera**:
``--test_cameras`` (10) whole cameras are held out for the test (never camera 0), the other 8
are the pool. A large test set is what makes the curves readable: held out on 2 cameras (34
frames, the rare classes absent), one set of labels trained with 4 seeds scored mAP@0.5 0.19-0.38;
on 10 cameras (224 frames) 0.09-0.11. The initial labelled set is **one clip**: the first
``--initial_frames`` frames of a pool camera drawn with the seed (the same for every strategy of
a seed).

**Model** (:mod:`benchmarks.small_detector`): a small CenterNet-style detector trained each
round on the labelled frames (``--steps`` Adam steps of ``--learning_rate``): by default its head
on EfficientNet-Lite0's frozen ImageNet layers (``--backbone efficientnet_lite0``, set-up's
pinned checkpoint: a team fine-tunes a pretrained detector, and from scratch the detector did
not learn enough to rank anything, mAP@0.5 <= 0.12), or a 6-layer CNN from scratch
(``--backbone scratch``). It is exported to TFLite with its sidecar, and a TFLite backbone of the
same network (pooled features, class probabilities). The unlabelled pool is scored through the
job's own scoring path: Beam's FnApiRunner runs :class:`transforms.score.ptransforms.ScoreFrames`
with the exported detector as ``--detector`` would
(:func:`transforms.score.detectors.detector_handler`, flip TTA on) beside the ``mine`` job's
default backbone (EfficientNet-Lite0) as the model, as ``mine --detector`` runs
(``--embedding_model pretrained``, the default; ``detector``: the trained network's pooled
features), and the strategy chooses from the resulting ``FrameRecord``\\s
(:func:`transforms.select.ptransforms.to_pool`).

**Protocol.** Per seed and strategy: the initial clip, then ``--rounds`` rounds of
``--round_frames`` frames chosen by the strategy, whose ground truth the generator then
reveals (the annotator). After every training: mAP@0.5 on the held-out cameras, computed with
pycocotools (``COCOeval``, ``stats[1]``). Strategies (``--strategies``): ``random``,
``detection_sum`` (top-k), ``coreset``, ``cluster_margin`` and the default,
``uncertainty_kcenter`` with ``detection_max``. Every seed-0 selection also runs through
:class:`transforms.select.SelectCandidates` on the FnApiRunner over the same records, and the
run fails unless its ranked frame ids equal the in-process picks. Diagnostics, run when named
(:data:`DIAGNOSTICS`): the default's ranking weighted by annotation cost (return on investment)
or by the labelled set's class need, each from predicted or true boxes.

**Cost.** Each point of a curve carries the labelled frames, their ground-truth boxes and the
estimated annotation seconds ``frames x --seconds_per_frame + boxes x --seconds_per_box``
(defaults 3 s to open and check a frame, 7 s per box with extreme clicking; 35 s per box when
drawn conventionally: Papadopoulos, Uijlings, Keller & Ferrari 2017, Extreme Clicking for
Efficient Object Annotation, ICCV).

**Figures.** Per seed, random's final mAP is the target; a strategy's boxes (seconds) to reach it
are interpolated on its curve. ``boxes_vs_random`` (``seconds_vs_random``) = the default's mean
boxes (seconds) to the target / random's final boxes (seconds), ``null`` if the default misses the
target in a seed. ``default_beats_random_seeds`` / ``default_beats_topk_seeds``: seeds where the
default's mean mAP over the rounds after the initial set (equal frame counts) is higher, with
the one-sided paired sign test. Goals: both ratios <= 0.5 and wins in every seed.

**The learner's own curve** (``--learner_curve``; the default preset: the whole pool only,
``--quick``: none): per seed the detector
is also trained on random pool frames, nested sizes up to every frame of the pool, as every round
trains it. ``whole_pool_map50`` is its mAP with every pool frame labelled, and
``random_final_vs_whole_pool`` random's final mAP over it: near 1, random's last labels already
gave the learner what the whole pool would, and a strategy's savings are measured on a plateau.

Writes ``detection_al_curves.png`` (mAP against frames, boxes and seconds) and
``detection_al_results.json`` to ``--out_dir``; the last stdout line is the JSON result.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np

from benchmarks import detection_data as dd
from benchmarks import small_detector
from benchmarks.active_learning import labels_to_reach, sign_test_p
from benchmarks.common import keep, taken

DEFAULT = "uncertainty_kcenter"
TOPK = "detection_sum"
STRATEGIES = {
    "random": ("random", {}),
    TOPK: (TOPK, {}),
    "coreset": ("coreset", {}),
    "cluster_margin": ("cluster_margin", {"score": "detection_max", "n_clusters": 10}),
    DEFAULT: (DEFAULT, {"score": "detection_max"}),
}
#: Diagnostics, run only when named in ``--strategies``: the default's ranking (``detection_max``,
#: then k-centre over the uncertainty pool) with ``detection_max`` multiplied by a per-frame weight
#: (:func:`diagnostic_weights`), to see whether annotation cost or class need in the ranking cuts
#: the boxes to random's final mAP. ``roi_*``: return on investment, weight ``1 / (seconds_per_frame
#: + seconds_per_box x boxes)`` (Haertel, Seppi, Ringger & Carroll 2008, Return on Investment for
#: Active Learning, NIPS Workshop on Cost-Sensitive Learning; Settles, Craven & Friedland 2008,
#: Active Learning with Real Annotation Costs), boxes predicted (the sum of the detections'
#: confidences: the expected objects) or the ground truth's (an oracle). ``class_need_*``: weight
#: ``0.25 + 0.75 x need`` of the frame's classes, ``need_c`` proportional to ``1 / sqrt(1 + labelled
#: boxes of class c)`` (the labelled set's rare classes first, as Brust et al. 2019 weight by class
#: frequency), the frame's classes predicted (``max c need / max c`` over its detections) or the
#: ground truth's (an oracle: ``max need``).
DIAGNOSTICS = ("roi_predicted", "roi_oracle", "class_need_predicted", "class_need_oracle")
PRESETS = {
    "default": dict(seeds=5, rounds=4, round_frames=20, initial_frames=20, steps=800),
    "quick": dict(seeds=3, rounds=2, round_frames=20, initial_frames=20, steps=800),
}
GOALS = {"boxes_vs_random": 0.5, "seconds_vs_random": 0.5}
#: Generator defaults of this benchmark (``benchmarks.detection_data``'s own are smaller): a
#: fleet's pool, 8 cameras with one long crowded run of 120 frames (about 270 frames), once
#: ``--test_cameras`` 10 are held out.
POOL_DEFAULTS = dict(cameras=18, long_frames=120)


# --- data ------------------------------------------------------------------------------------

class Split:
    """One seed's pool and test cameras as flat arrays (frame i of the pool is row i)."""

    def __init__(self, clips: Sequence[dd.Clip], options: dd.GeneratorOptions, test_cameras: int, seed: int):
        self.pool_clips, self.test_clips = dd.split_cameras(clips, test_cameras, seed)
        self.options = options
        self.frames = np.concatenate([c.frames for c in self.pool_clips])
        self.boxes = [b for c in self.pool_clips for b in c.boxes]
        self.classes = [k for c in self.pool_clips for k in c.classes]
        self.sources = [f"synthetic://{c.camera}.avi" for c in self.pool_clips for _ in c.frames]
        self.indices = [t for c in self.pool_clips for t in range(len(c.frames))]

    def initial(self, n_frames: int, seed: int) -> np.ndarray:
        """The first ``n_frames`` of one pool camera other than camera 0 (a clip), drawn with ``seed``."""
        rng = np.random.default_rng(seed)
        starts = np.cumsum([0] + [len(c.frames) for c in self.pool_clips])
        camera = int(rng.integers(1, len(self.pool_clips)))
        return np.arange(starts[camera], starts[camera] + min(n_frames, len(self.pool_clips[camera].frames)))

    def frame_records(self):
        """The pool's frames as decoded ``Frame``\\s (ids as the ``mine`` job derives them from
        a video file's URI and frame index), in pool order."""
        from schemas.records import Frame, make_frame_id
        from transforms.decode.ptransforms import pixel_hash
        return [Frame(frame_id=make_frame_id(uri, t), source_uri=uri, frame_index=t, timestamp_s=t / self.options.fps,
                      width=f.shape[1], height=f.shape[0], media_type="video", pixel_hash=pixel_hash(f), pixels=f)
                for uri, t, f in zip(self.sources, self.indices, self.frames)]


# --- scoring through the job's path, selection, evaluation -------------------------------------

def score_pool(frames, trained: small_detector.TrainedDetector, embedding_model: str = "detector"):
    """``FrameRecord``\\s of ``frames`` from ``ScoreFrames`` (a model + the exported detector
    through :func:`~transforms.score.detectors.detector_handler`) on the FnApiRunner. The model,
    whose embedding the strategies see: ``"detector"``, the trained network's backbone;
    ``"pretrained"``, the ``mine`` job's default EfficientNet-Lite0
    (:func:`transforms.score.pretrained.backbone_path`); or a model path."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from transforms.score import pretrained
    from transforms.score.detectors import detector_handler
    from transforms.score.ptransforms import ScoreFrames, load_model_spec
    model = {"detector": trained.backbone, "pretrained": pretrained.backbone_path()}.get(embedding_model,
                                                                                        embedding_model)
    spec = load_model_spec(model)
    key = f"score{time.monotonic_ns()}"
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        scored = (p | beam.Create(frames) | ScoreFrames(spec, detector=detector_handler(trained.detector, flip=True)))
        keep(scored.records, key)
        keep(scored.dead_letters, key + "dead")
    dead = taken(key + "dead")
    if dead:
        raise RuntimeError(f"scoring dead-lettered {len(dead)} frames, e.g. {dead[0]}")
    records = taken(key)
    if len(records) != len(frames):
        raise RuntimeError(f"ScoreFrames returned {len(records)} records for {len(frames)} frames")
    return records


def select(records, strategy, budget: int, beam_check: bool) -> List[str]:
    """The strategy's picks (frame ids, in rank order) among ``records``; with ``beam_check``
    the same records also go through ``SelectCandidates`` on the FnApiRunner, which must rank
    the same frames (``BeamAssertException`` otherwise)."""
    from transforms.select.ptransforms import to_pool, to_scored
    # In frame-id order, as SelectCandidates orders its pool (ties, e.g. k-centre's, then agree).
    pool = to_pool(sorted((to_scored(r)[1] for r in records), key=lambda s: s.frame_id))
    picks = [str(i) for i in pool.ids[strategy.select(pool, budget).indices]]
    if beam_check:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.testing.util import assert_that, equal_to
        from transforms.select import SelectCandidates
        with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
            ranked = (p | beam.Create(records, reshuffle=True) | SelectCandidates(budget, strategy)
                      | beam.Map(lambda c: (c.rank, c.frame_id)))
            assert_that(ranked, equal_to(list(enumerate(picks, start=1))))
    return picks


def coco_map50(detector_path: str, clips: Sequence[dd.Clip], class_names: Sequence[str]) -> float:
    """mAP@0.5 of the exported detector on ``clips`` (:func:`map50`); the detector runs as
    ``mine`` runs it (:class:`~transforms.score.detectors.ExportedDetector`, without the flip)."""
    from transforms.score.detectors import ExportedDetector
    detector = ExportedDetector(detector_path, flip=False).load()

    def detect(frame):
        found = detector.detect(frame)
        return found.boxes, found.confidences, found.class_ids
    return map50(clips, class_names, detect)


def map50(clips: Sequence[dd.Clip], class_names: Sequence[str], detect) -> float:
    """mAP@0.5 (COCO's ``AP @ IoU=0.50``, all areas, 100 detections per image, mean over the
    classes present) of ``detect(frame) -> (boxes (K, 4) xyxy pixels, scores (K,), class indices
    (K,))`` against the clips' ground truth, by pycocotools' ``COCOeval`` (Lin et al. 2014,
    Microsoft COCO). 0 when nothing is detected."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, annotations, results = [], [], []
    for clip in clips:
        for frame, boxes, classes in zip(clip.frames, clip.boxes, clip.classes):
            image_id = len(images) + 1
            images.append({"id": image_id, "width": frame.shape[1], "height": frame.shape[0]})
            for (x1, y1, x2, y2), k in zip(boxes.tolist(), classes.tolist()):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            found_boxes, scores, found_classes = detect(frame)
            for (x1, y1, x2, y2), score, k in zip(np.asarray(found_boxes).tolist(), np.asarray(scores).tolist(),
                                                   np.asarray(found_classes).tolist()):
                results.append({"image_id": image_id, "category_id": int(k) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": float(score)})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(max(evaluation.stats[1], 0.0))


# --- the loop ----------------------------------------------------------------------------------

def _point(split: Split, labelled: np.ndarray, map50: float, args) -> dict:
    boxes = int(sum(len(split.boxes[i]) for i in labelled))
    return {"frames": int(len(labelled)), "boxes": boxes, "map50": round(map50, 4),
            "seconds": round(len(labelled) * args.seconds_per_frame + boxes * args.seconds_per_box, 1)}


def _train_and_export(split: Split, labelled: np.ndarray, directory: str, seed: int, args):
    model = small_detector.train(split.frames[labelled], [split.boxes[i] for i in labelled],
                                 [split.classes[i] for i in labelled], len(split.options.classes),
                                 seed=seed, steps=args.steps, learning_rate=args.learning_rate,
                                 backbone=args.backbone, head_dropout=args.head_dropout)
    # The trained network's own backbone export is only read with --embedding_model detector.
    trained = small_detector.export(model, split.options.class_names, directory,
                                    backbone_too=args.embedding_model == "detector")
    return trained, coco_map50(trained.detector, split.test_clips, split.options.class_names)


def seed_split(seed: int, args, options: dd.GeneratorOptions) -> Split:
    """The cameras generated with ``seed``, split into pool and test."""
    options = options._replace(seed=seed)
    return Split(dd.generate(options), options, args.test_cameras, seed)


def run_seed(seed: int, split: Split, args, work: str, log) -> Dict[str, list]:
    """Every strategy's curve for one seed's ``split`` (``{strategy: [point, ...]}``)."""
    from transforms.select.factory import make_strategy
    frames = split.frame_records()
    position = {f.frame_id: i for i, f in enumerate(frames)}
    initial = split.initial(args.initial_frames, seed)
    trained, map50 = _train_and_export(split, initial, os.path.join(work, f"s{seed}-initial"), seed, args)
    first = _point(split, initial, map50, args)
    log({"seed": seed, "strategy": "(initial)", **first})
    initial_records = None
    curves = {}
    for name in args.strategies:
        labelled, current, curve = initial.copy(), trained, [first]
        for round_index in range(1, args.rounds + 1):
            unlabelled = [frames[i] for i in range(len(frames)) if i not in set(labelled.tolist())]
            if round_index == 1 and initial_records is not None:
                records = [r for r in initial_records if position[r.frame.frame_id] not in set(labelled.tolist())]
            else:
                records = score_pool(unlabelled, current, args.embedding_model)
                if round_index == 1:
                    initial_records = records
            if name in DIAGNOSTICS:
                strategy = Reweighted(diagnostic_weights(name, split, records, labelled, position, args))
            else:
                base, params = STRATEGIES[name]
                params = dict(params, seed=seed * 1000 + round_index) if base == "random" else params
                strategy = make_strategy(base, params)
            picks = select(records, strategy, args.round_frames,
                           beam_check=seed == 0 and not args.no_beam_check and name not in DIAGNOSTICS)
            labelled = np.concatenate([labelled, [position[p] for p in picks]])
            current, map50 = _train_and_export(split, labelled, os.path.join(work, f"s{seed}-{name}-r{round_index}"),
                                               seed, args)
            point = _point(split, labelled, map50, args)
            curve.append(point)
            log({"seed": seed, "strategy": name, "round": round_index, **point})
        curves[name] = curve
    return curves


#: ``--learner_curve``'s word for every frame of the pool.
WHOLE_POOL = "all"


def learner_curve(seed: int, split: Split, sizes: Sequence, args, work: str, log) -> List[dict]:
    """The detector's mAP@0.5 on the held-out cameras when trained on random frames of the pool,
    ``sizes`` of them (:data:`WHOLE_POOL`: every frame), nested (the first ``k`` of one seeded
    permutation, its generator apart from the strategies'), trained as every round is. Where it
    stops rising, every strategy's curve stops too: the learner, not the picks, sets the mAP
    there, and labels to random's final mAP measure who gets to that plateau first."""
    order = np.random.default_rng([seed, 7919]).permutation(len(split.frames))
    points = []
    for size in sizes:
        k = len(order) if size == WHOLE_POOL else min(int(size), len(order))
        _, map50 = _train_and_export(split, order[:k], os.path.join(work, f"s{seed}-learner-{k}"), seed, args)
        point = dict(_point(split, order[:k], map50, args), pool_frames=len(order))
        log({"seed": seed, "strategy": "(learner, random frames)", **point})
        points.append(point)
    return points


def summarise_learner(curves: Dict[str, List[list]], learner: List[List[dict]]) -> dict:
    """``learner_curve`` (per size: frames and mAP@0.5 per seed, and their mean), and with the whole
    pool trained (the last size is :data:`WHOLE_POOL`) ``whole_pool_map50`` and
    ``random_final_vs_whole_pool`` (random's final mAP / the whole pool's, mean of the seeds)."""
    if not learner or not learner[0]:
        return {}
    out = {"learner_curve": [{"frames_per_seed": [run[i]["frames"] for run in learner],
                              "map50_per_seed": [run[i]["map50"] for run in learner],
                              "map50_mean": round(float(np.mean([run[i]["map50"] for run in learner])), 4)}
                             for i in range(len(learner[0]))]}
    if all(run[-1]["frames"] == run[-1]["pool_frames"] for run in learner):
        whole = [run[-1]["map50"] for run in learner]
        out["whole_pool_map50"] = round(float(np.mean(whole)), 4)
        if "random" in curves and all(w > 0 for w in whole):
            out["random_final_vs_whole_pool"] = round(float(np.mean(
                [run[-1]["map50"] / w for run, w in zip(curves["random"], whole)])), 3)
    return out


class Reweighted:
    """``uncertainty_kcenter`` on ``detection_max`` x ``weights[frame_id]`` (a diagnostic of
    :data:`DIAGNOSTICS`)."""

    def __init__(self, weights: Dict[str, float]):
        from transforms.select.uncertainty_kcenter import UncertaintyKCenter
        self.weights, self.inner = weights, UncertaintyKCenter(score="detection_max")

    def select(self, pool, budget):
        weight = np.array([self.weights[i] for i in pool.ids])
        scores = dict(pool.scores, detection_max=np.asarray(pool.scores["detection_max"]) * weight)
        return self.inner.select(pool.replace(scores=scores), budget)


def diagnostic_weights(kind: str, split: Split, records, labelled: np.ndarray, position, args) -> Dict[str, float]:
    """Per-frame weights of the diagnostic ``kind`` (:data:`DIAGNOSTICS`) for the ``records``
    of the unlabelled pool, ``labelled`` the pool rows already labelled."""
    detections = {r.frame.frame_id: [(d.class_id, d.score) for d in r.detections or ()] for r in records}
    oracle = kind.endswith("_oracle")
    if kind.startswith("roi_"):
        def boxes(fid):
            return len(split.boxes[position[fid]]) if oracle else sum(c for _, c in detections[fid])
        return {fid: 1.0 / (args.seconds_per_frame + args.seconds_per_box * boxes(fid)) for fid in detections}
    counts = np.zeros(len(split.options.classes))
    for row in labelled:
        np.add.at(counts, split.classes[row], 1)
    need = 1.0 / np.sqrt(counts + 1.0)
    need /= need.max()

    def frame_need(fid):
        if oracle:
            return float(need[split.classes[position[fid]]].max(initial=0.0))
        found = detections[fid]
        return max((c * need[k] for k, c in found), default=0.0) / max((c for _, c in found), default=1.0)
    return {fid: 0.25 + 0.75 * frame_need(fid) for fid in detections}


def _to_reach(curve, target, x_key):
    return labels_to_reach([(p[x_key], p["map50"]) for p in curve], target)


def summarise(curves: Dict[str, List[list]], seeds: int) -> dict:
    """The result's figures (see the module docstring) from ``{strategy: [curve per seed]}``."""
    out = {"map50_final": {}, "vs_random": {}}
    for name, runs in curves.items():
        out["map50_final"][name] = round(float(np.mean([run[-1]["map50"] for run in runs])), 4)
    if "random" not in curves:
        return out
    targets = [run[-1]["map50"] for run in curves["random"]]
    for name, runs in curves.items():
        if name == "random":
            continue
        row = {}
        for key in ("boxes", "seconds", "frames"):
            ratios = []
            for run, random_run, target in zip(runs, curves["random"], targets):
                reached = _to_reach(run, target, key)
                ratios.append(None if reached is None else round(reached / random_run[-1][key], 3))
            row[f"{key}_ratio_per_seed"] = ratios
            row[f"{key}_vs_random"] = (round(float(np.mean(ratios)), 3) if all(r is not None for r in ratios)
                                       else None)
        mean_map = [float(np.mean([p["map50"] for p in run[1:]])) for run in runs]
        random_map = [float(np.mean([p["map50"] for p in run[1:]])) for run in curves["random"]]
        wins = sum(a > b for a, b in zip(mean_map, random_map))
        row.update(wins=f"{wins}/{seeds}", sign_test_p=round(sign_test_p(wins, seeds), 4))
        out["vs_random"][name] = row
    if DEFAULT in curves:
        default = out["vs_random"][DEFAULT]
        out["boxes_vs_random"], out["seconds_vs_random"] = default["boxes_vs_random"], default["seconds_vs_random"]
        mean_map = {name: [float(np.mean([p["map50"] for p in run[1:]])) for run in runs]
                    for name, runs in curves.items()}
        for other, key in (("random", "default_beats_random_seeds"), (TOPK, "default_beats_topk_seeds")):
            if other in mean_map:
                wins = sum(a > b for a, b in zip(mean_map[DEFAULT], mean_map[other]))
                out[key] = wins
                out[key.replace("_seeds", "_sign_test_p")] = round(sign_test_p(wins, seeds), 4)
        for figure, goal in GOALS.items():
            out[f"{figure}_goal_met"] = out[figure] is not None and out[figure] <= goal
        out["default_beats_random_goal_met"] = out.get("default_beats_random_seeds") == seeds
        out["default_beats_topk_goal_met"] = out.get("default_beats_topk_seeds") == seeds
    return out


def plot(curves: Dict[str, List[list]], path: str):
    """mAP@0.5 against labelled frames, boxes and estimated seconds (mean over seeds, thick; each
    seed thin)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colours = dict(zip(curves, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, key, label in zip(axes, ("frames", "boxes", "seconds"),
                              ("labelled frames", "labelled boxes", "estimated annotation seconds")):
        for name, runs in curves.items():
            for run in runs:
                ax.plot([p[key] for p in run], [p["map50"] for p in run], color=colours[name], lw=0.5, alpha=0.4)
            ax.plot(np.mean([[p[key] for p in run] for run in runs], axis=0),
                    np.mean([[p["map50"] for p in run] for run in runs], axis=0),
                    color=colours[name], marker="o", ms=3, label=name)
        ax.set(xlabel=label, ylabel="mAP@0.5 (held-out cameras)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection_al", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small preset (3 seeds, 2 rounds)")
    for key in PRESETS["default"]:
        parser.add_argument(f"--{key}", type=int, default=None, help=f"default preset {PRESETS['default'][key]}, "
                                                                     f"--quick {PRESETS['quick'][key]}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, of {', '.join(STRATEGIES)}; diagnostics (the default's ranking "
                             f"weighted by cost or class need): {', '.join(DIAGNOSTICS)}")
    parser.add_argument("--test_cameras", type=int, default=10,
                        help="whole cameras held out for the test (default 10: with 2, mAP moved by 0.04-0.07 "
                             "between trainings of the same labels; with 10, by 0.01)")
    parser.add_argument("--seconds_per_frame", type=float, default=3.0)
    parser.add_argument("--seconds_per_box", type=float, default=7.0)
    parser.add_argument("--embedding_model", default="pretrained",
                        help="whose embedding the strategies see: 'pretrained' (mine's EfficientNet-Lite0, as "
                             "mine --detector runs; default), 'detector' (the trained network's pooled features) "
                             "or a model path")
    parser.add_argument("--backbone", default=small_detector.EFFICIENTNET, choices=small_detector.BACKBONES,
                        help="the detector's layers under its head: EfficientNet-Lite0's ImageNet layers, "
                             "frozen (set-up's pinned checkpoint; default), or a CNN trained from scratch")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="Adam's step size (default: 1e-3 on the ImageNet backbone, 2e-3 from scratch)")
    parser.add_argument("--head_dropout", type=float, default=small_detector.HEAD_DROPOUT,
                        help=f"dropout on the frozen backbone's map while the head trains (default "
                             f"{small_detector.HEAD_DROPOUT}; with --steps 3000, 0.1 fits the whole pool better)")
    parser.add_argument("--learner_curve", default=None,
                        help="per seed, also train on this many random pool frames (comma-separated, nested; "
                             f"'{WHOLE_POOL}': the whole pool) and report the held-out mAP@0.5: where the learner "
                             f"stops gaining from labels (default preset '{WHOLE_POOL}': the whole pool only, one "
                             "training a seed; --quick and '': none)")
    parser.add_argument("--no_beam_check", action="store_true", help="skip the SelectCandidates check of seed 0")
    parser.add_argument("--out_dir", default=".", help="where the PNG and the JSON go (default: here)")
    dd.add_generator_options(parser, **POOL_DEFAULTS)
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.backbone == small_detector.EFFICIENTNET else 2e-3
    args.strategies = [s for s in args.strategies.split(",") if s]
    if not 0 <= args.head_dropout < 1:
        parser.error(f"--head_dropout must be in [0, 1), got {args.head_dropout}")
    if args.learner_curve is None:
        args.learner_curve = "" if args.quick else WHOLE_POOL
    sizes = [v.strip() for v in args.learner_curve.split(",") if v.strip()]
    if any(v != WHOLE_POOL and not (v.isdigit() and int(v) > 0) for v in sizes):
        parser.error(f"--learner_curve: frame counts > 0 or '{WHOLE_POOL}', comma-separated; got {args.learner_curve!r}")
    args.learner_curve = sizes
    unknown = set(args.strategies) - set(STRATEGIES) - set(DIAGNOSTICS)
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {', '.join((*STRATEGIES, *DIAGNOSTICS))}")
    return args


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = parse_args(argv)
    options = dd.options_from(args).validate()
    started = time.monotonic()

    def log(row):
        print(json.dumps(dict(row, elapsed_s=round(time.monotonic() - started, 1))), flush=True)
    curves: Dict[str, List[list]] = {name: [] for name in args.strategies}
    learner: List[List[dict]] = []
    with tempfile.TemporaryDirectory(prefix="activebeam-detection-al-") as work:
        for seed in range(args.seeds):
            split = seed_split(seed, args, options)
            for name, curve in run_seed(seed, split, args, work, log).items():
                curves[name].append(curve)
            if args.learner_curve:
                learner.append(learner_curve(seed, split, args.learner_curve, args, work, log))
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "detection_al_curves.png")
    plot(curves, png)
    result = summarise(curves, args.seeds)
    result.update(summarise_learner(curves, learner))
    result.update(preset="quick" if args.quick else "default", seeds=args.seeds, rounds=args.rounds,
                  round_frames=args.round_frames, initial_frames=args.initial_frames, steps=args.steps,
                  generator=options._asdict(), wall_seconds=round(time.monotonic() - started, 1),
                  beam_selections_checked=not args.no_beam_check, embedding_model=args.embedding_model,
                  backbone=args.backbone, learning_rate=args.learning_rate, head_dropout=args.head_dropout,
                  curves_png=png)
    with open(os.path.join(args.out_dir, "detection_al_results.json"), "w") as f:
        json.dump(dict(result, curves=curves), f, indent=1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())

"""Multi-camera clips with exact boxes and track ids, from packaged photos and labelled objects.

    python -m benchmarks.detection_data --pools 12               # the coverage figures below, 12 pools
    python -m benchmarks.detection_data --cameras 8 --seed 3 --out_dir /tmp/clips   # + frames as PNG, boxes as COCO

No labelled detection dataset ships in a package this project can install offline, so the
detection benchmarks build one that is honest by construction, in the spirit of Moving MNIST
(Srivastava, Mansimov & Salakhutdinov 2015, Unsupervised Learning of Video Representations using
LSTMs) and SYNTHIA-AL (Bengar et al. 2019, Temporal Coherence for Active Learning in Videos):

* **Cameras.** ``--cameras`` fixed cameras at ``--fps`` frames per second. Each films a crop of a
  real photo (Debian ``opencv-doc``'s sample photos: :data:`BACKGROUNDS`) at
  ``--width`` x ``--height``, with sensor noise (``--noise``, grey levels) and a slow brightness
  drift, so consecutive frames of a camera are near-identical, as on a real fixed camera.
  Camera 0 is long (``--long_frames``) and crowded (``--crowded`` x the others' objects); the
  others have ``--min_frames`` to ``--max_frames`` frames (unequal lengths).
* **Objects.** Real labelled images: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Debian
  ``dataset-fashion-mnist``), the classes of ``--classes`` with the frequencies of
  ``--class_weights`` (the last ones rare). Each object is a track: born at a random frame
  (``--objects`` present on average), it lives about ``--track_frames`` frames, moves
  ``--speed`` pixels per frame in a fixed direction, grows or shrinks by ``--scale_rate`` per
  frame from a size in ``--size``, and is drawn in its own colour over the background (its
  pixels above grey level 40 form its mask); later objects occlude earlier ones.
* **Ground truth.** Per frame, the box ``[x1, y1, x2, y2]`` (pixels) of each object's mask
  clipped to the frame, its class and its track id (unique over all cameras), and its visible
  share (mask pixels not covered by later objects). An object less than ``--min_visible``
  visible, or with a box side under 4 pixels, is not in the ground truth (nobody could box it).

Everything is a function of :class:`GeneratorOptions` (every field a command-line option), so a
rerun with the same options gives the same pixels and boxes.

**Training-free figures** (:func:`coverage_figures`, what ``tests/test_detection_data.py``
checks on a small fixed pool): every selection strategy of the project chooses ``--budget``
frames from the pool, and each batch is measured by the share of the pool's ground-truth tracks
it shows at least once (``track_coverage``) and the share of rare-class tracks
(``rare_track_coverage``), with the share of its most-picked camera. The pool's scores come from
a *simulated* detector (:func:`simulated_detections`), no training: every ground-truth box,
with a confidence that falls with occlusion and small size and is lower for rare classes, so
crowded frames hold many uncertain boxes; the embedding is a colour thumbnail of the frame
(:func:`thumbnail_embeddings`), on which a fixed camera's frames are near-duplicates. This is the
case where top-k uncertainty spends its batch on one crowded camera.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

#: Background photos (Debian opencv-doc), one per camera (cycled).
OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
BACKGROUNDS = ("building.jpg", "home.jpg", "fruits.jpg", "baboon.jpg", "aero1.jpg", "board.jpg",
               "leuvenA.jpg", "messi5.jpg", "orange.jpg", "butterfly.jpg")
MASK_LEVEL = 40           # Fashion-MNIST pixels above this grey level are the object
MIN_BOX_SIDE = 4          # pixels


class GeneratorOptions(NamedTuple):
    """The generator's parameters (see the module docstring; each is a command-line option)."""
    cameras: int = 6
    long_frames: int = 60
    min_frames: int = 12
    max_frames: int = 30
    fps: float = 1.0
    width: int = 128
    height: int = 96
    objects: float = 2.0
    crowded: float = 3.0
    track_frames: float = 6.0
    speed: Tuple[float, float] = (1.0, 5.0)
    size: Tuple[int, int] = (18, 34)
    scale_rate: float = 0.04
    classes: Tuple[int, ...] = (0, 1, 7, 8, 5, 9)
    class_weights: Tuple[float, ...] = (0.34, 0.28, 0.2, 0.12, 0.04, 0.02)
    noise: float = 4.0
    min_visible: float = 0.3
    seed: int = 0

    def validate(self) -> "GeneratorOptions":
        """Returns ``self``; raises ``ValueError`` naming the option and its allowed values."""
        checks = (("cameras", self.cameras >= 2, ">= 2"), ("long_frames", self.long_frames >= 1, ">= 1"),
                  ("min_frames", 1 <= self.min_frames <= self.max_frames, "1 <= min_frames <= max_frames"),
                  ("fps", self.fps > 0, "> 0"), ("width", self.width >= 32, ">= 32"),
                  ("height", self.height >= 32, ">= 32"), ("objects", self.objects >= 0, ">= 0"),
                  ("crowded", self.crowded >= 1, ">= 1"), ("track_frames", self.track_frames >= 1, ">= 1"),
                  ("speed", 0 <= self.speed[0] <= self.speed[1], "0 <= low <= high"),
                  ("size", 8 <= self.size[0] <= self.size[1] <= min(self.width, self.height), "8 <= low <= high <= frame"),
                  ("classes", len(self.classes) >= 2 and all(0 <= c <= 9 for c in self.classes),
                   "two or more Fashion-MNIST classes 0-9"),
                  ("class_weights", len(self.class_weights) == len(self.classes) and min(self.class_weights) > 0,
                   "one weight > 0 per class"),
                  ("min_visible", 0 <= self.min_visible <= 1, "in [0, 1]"), ("noise", self.noise >= 0, ">= 0"))
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"--{name} must be {allowed}, got {getattr(self, name)}")
        return self

    @property
    def class_names(self) -> Tuple[str, ...]:
        from beam_pipelines.local.sample_media import CLASS_NAMES
        return tuple(CLASS_NAMES[c] for c in self.classes)

    @property
    def rare_classes(self) -> Tuple[int, ...]:
        """Indices (into ``classes``) of the classes with under 5 % of the weight."""
        w = np.asarray(self.class_weights, np.float64) / sum(self.class_weights)
        return tuple(int(i) for i in np.nonzero(w < 0.05)[0])


class Clip(NamedTuple):
    """One camera's frames and ground truth. ``frames`` uint8 ``(T, H, W, 3)`` RGB; per frame
    ``boxes`` float32 ``(K, 4)`` ``[x1, y1, x2, y2]`` pixels, ``classes`` int ``(K,)`` (index
    into the options' ``classes``), ``tracks`` int ``(K,)`` (unique over all clips),
    ``visible`` float ``(K,)`` in [0, 1]."""
    camera: str
    frames: np.ndarray
    boxes: List[np.ndarray]
    classes: List[np.ndarray]
    tracks: List[np.ndarray]
    visible: List[np.ndarray]

    @property
    def timestamps(self) -> np.ndarray:
        return np.arange(len(self.frames), dtype=np.float64)


def _background(name: str, rng, width: int, height: int) -> np.ndarray:
    import cv2
    path = os.path.join(OPENCV_DATA, name)
    image = cv2.imread(path)
    if image is None:
        raise FileNotFoundError(f"{path} is missing: install the Debian package opencv-doc (scripts/setup.sh does)")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    zoom = rng.uniform(0.5, 0.9)
    ch, cw = int(rgb.shape[0] * zoom), int(rgb.shape[1] * zoom)
    ch, cw = min(ch, int(cw * height / width)), min(cw, int(ch * width / height))
    y, x = rng.integers(0, rgb.shape[0] - ch + 1), rng.integers(0, rgb.shape[1] - cw + 1)
    return cv2.resize(rgb[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_AREA)


class _Track(NamedTuple):
    track_id: int
    cls: int
    sprite: np.ndarray       # uint8 (28, 28) Fashion-MNIST image
    colour: np.ndarray       # float (3,)
    start: int
    end: int                 # exclusive
    xy: np.ndarray           # centre at start
    velocity: np.ndarray
    size: float
    growth: float


def _objects_by_class(options: GeneratorOptions):
    from beam_pipelines.local.sample_media import load_split
    images, labels = load_split("train")
    return {c: images[labels == c] for c in options.classes}


def _tracks(options, rng, n_frames, mean_objects, sprites, first_id) -> List[_Track]:
    weights = np.asarray(options.class_weights, np.float64)
    weights /= weights.sum()
    birth_rate = mean_objects / options.track_frames
    tracks = []
    # Objects already in the scene at the first frame, then births at each frame.
    births = [0] * rng.poisson(mean_objects) + [t for t in range(n_frames) for _ in range(rng.poisson(birth_rate))]
    for start in births:
        k = int(rng.choice(len(weights), p=weights))
        pool = sprites[options.classes[k]]
        angle = rng.uniform(0, 2 * np.pi)
        tracks.append(_Track(
            track_id=first_id + len(tracks), cls=k, sprite=pool[rng.integers(len(pool))],
            colour=rng.uniform(0.35, 1.0, 3), start=start,
            end=min(n_frames, start + 1 + int(rng.exponential(options.track_frames))),
            xy=rng.uniform([0, 0], [options.width, options.height]),
            velocity=rng.uniform(*options.speed) * np.array([np.cos(angle), np.sin(angle)]),
            size=rng.uniform(*options.size), growth=rng.uniform(-options.scale_rate, options.scale_rate)))
    return tracks


def _render(options, background, tracks, t, rng):
    """One frame at time ``t``: pixels and the ground truth of the visible objects."""
    import cv2
    h, w = options.height, options.width
    drift = 1.0 + 0.06 * np.sin(2 * np.pi * t / 40.0)
    frame = background.astype(np.float32) * drift
    owner = np.full((h, w), -1, np.int32)
    placed = []
    for i, track in enumerate(tr for tr in tracks if tr.start <= t < tr.end):
        age = t - track.start
        side = max(4, int(round(track.size * (1 + track.growth) ** age)))
        cx, cy = track.xy + track.velocity * age
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        sprite = cv2.resize(track.sprite, (side, side), interpolation=cv2.INTER_AREA)
        mask = sprite > MASK_LEVEL
        ys, xs = np.nonzero(mask)
        if not len(ys):
            continue
        fx0, fy0 = max(x0, 0), max(y0, 0)
        fx1, fy1 = min(x0 + side, w), min(y0 + side, h)
        if fx1 <= fx0 or fy1 <= fy0:
            continue
        sub = mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
        shade = sprite[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None].astype(np.float32) / 255.0
        region = frame[fy0:fy1, fx0:fx1]
        region[sub] = (shade * track.colour * 255.0)[sub]
        owner[fy0:fy1, fx0:fx1][sub] = i
        in_frame = (xs + x0 >= 0) & (xs + x0 < w) & (ys + y0 >= 0) & (ys + y0 < h)
        if not in_frame.any():
            continue
        box = (xs[in_frame].min() + x0, ys[in_frame].min() + y0, xs[in_frame].max() + x0 + 1, ys[in_frame].max() + y0 + 1)
        placed.append((i, track, box, int(mask.sum())))
    boxes, classes, ids, visible = [], [], [], []
    for i, track, box, area in placed:
        share = float((owner == i).sum()) / area
        if share < options.min_visible or min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE:
            continue
        boxes.append(box)
        classes.append(track.cls)
        ids.append(track.track_id)
        visible.append(share)
    if options.noise:
        frame += rng.normal(0, options.noise, frame.shape).astype(np.float32)
    pixels = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return (pixels, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64),
            np.asarray(ids, np.int64), np.asarray(visible, np.float64))


def generate(options: GeneratorOptions = GeneratorOptions(), backgrounds: Sequence[str] = BACKGROUNDS) -> List[Clip]:
    """The cameras' clips (camera 0 the long, crowded one), deterministic in ``options``; camera
    ``i`` films a crop of ``backgrounds[i % len(backgrounds)]`` (photos of :data:`OPENCV_DATA`).

    Raises
    ------
    ValueError
        For an invalid option (naming it); FileNotFoundError when a packaged photo or
        Fashion-MNIST is missing.
    """
    options = options.validate()
    rng = np.random.default_rng(options.seed)
    sprites = _objects_by_class(options)
    lengths = [options.long_frames] + [int(n) for n in rng.integers(options.min_frames, options.max_frames + 1,
                                                                    options.cameras - 1)]
    clips, next_track = [], 0
    for camera, n_frames in enumerate(lengths):
        background = _background(backgrounds[camera % len(backgrounds)], rng, options.width, options.height)
        mean_objects = options.objects * (options.crowded if camera == 0 else 1.0)
        tracks = _tracks(options, rng, n_frames, mean_objects, sprites, next_track)
        next_track += len(tracks)
        rendered = [_render(options, background, tracks, t, rng) for t in range(n_frames)]
        clips.append(Clip(f"camera{camera:02d}", np.stack([r[0] for r in rendered]), *(
            [r[k] for r in rendered] for k in range(1, 5))))
    return clips


def split_cameras(clips: Sequence[Clip], test_cameras: int = 2, seed: int = 0) -> Tuple[List[Clip], List[Clip]]:
    """``(pool clips, test clips)``: ``test_cameras`` whole cameras drawn at random among all but
    camera 0 (the long one stays in the pool), never single frames."""
    if not 1 <= test_cameras <= len(clips) - 2:
        raise ValueError(f"test_cameras must be in [1, {len(clips) - 2}], got {test_cameras}")
    rng = np.random.default_rng(seed)
    test = set(rng.choice(np.arange(1, len(clips)), size=test_cameras, replace=False).tolist())
    return [c for i, c in enumerate(clips) if i not in test], [c for i, c in enumerate(clips) if i in test]


def frame_ids(clips: Sequence[Clip]) -> List[str]:
    """Deterministic frame ids ``<camera>/<index>``, clips in order."""
    return [f"{clip.camera}/{t:05d}" for clip in clips for t in range(len(clip.frames))]


def simulated_detections(clips: Sequence[Clip], options: GeneratorOptions, seed: int = 0) -> List[np.ndarray]:
    """Per frame, the confidences ``(K,)`` of a simulated detector that finds every ground-truth
    box: ``sigmoid(4 * visible + 3 * min(side / 32, 1) - 3.5 - 1.5 * rare + N(0, 0.5))``, lower
    for occluded, small and rare-class objects (no model, no training)."""
    rng = np.random.default_rng(seed)
    rare = set(options.rare_classes)
    out = []
    for clip in clips:
        for boxes, classes, visible in zip(clip.boxes, clip.classes, clip.visible):
            side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
            is_rare = np.array([c in rare for c in classes], np.float64)
            z = 4 * visible + 3 * np.minimum(side / 32.0, 1) - 3.5 - 1.5 * is_rare + rng.normal(0, 0.5, len(visible))
            out.append(1.0 / (1.0 + np.exp(-z)))
    return out


def thumbnail_embeddings(clips: Sequence[Clip], side: int = 8) -> np.ndarray:
    """float32 ``(N, side * side * 3)``: each frame shrunk to ``side`` x ``side`` (area
    interpolation), centred and unit-normalised; a fixed camera's frames are near each other."""
    import cv2
    rows = [cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
            for clip in clips for f in clip.frames]
    x = np.stack(rows)
    x -= x.mean(axis=1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def pool_of(clips: Sequence[Clip], confidences: Sequence[np.ndarray], embeddings: np.ndarray):
    """The :class:`~transforms.select.base.Pool` strategies choose from: ids, embeddings, the
    ``detection_*`` aggregates of each frame's confidences, and ``source`` (camera) metadata."""
    from transforms.score.detection import aggregate_detection_scores
    from transforms.select.base import Pool
    scores = [aggregate_detection_scores(c) for c in confidences]
    names = sorted(scores[0])
    sources = np.array([clip.camera for clip in clips for _ in clip.frames])
    timestamps = np.concatenate([clip.timestamps for clip in clips])
    return Pool(ids=np.array(frame_ids(clips)), embeddings=embeddings,
                scores={n: np.array([s[n] for s in scores]) for n in names},
                metadata={"source": sources, "timestamp": timestamps})


def strategies() -> Dict[str, Tuple[str, dict]]:
    """The strategies the detection figures compare: label -> (name, params) for
    :func:`transforms.select.factory.make_strategy`."""
    return {
        "random": ("random", {"seed": 0}),
        "detection_sum (top-k)": ("detection_sum", {}),
        "coreset": ("coreset", {}),
        "cluster_margin": ("cluster_margin", {"score": "detection_max", "n_clusters": 10}),
        "uncertainty_kcenter (default)": ("uncertainty_kcenter", {"score": "detection_max"}),
    }


def selection_coverage(clips: Sequence[Clip], indices, rare_classes: Sequence[int]) -> dict:
    """What a selection of frames (row indices over the clips' frames in order) shows of the
    ground truth: ``track_coverage`` (share of the pool's tracks seen in a picked frame),
    ``rare_track_coverage`` (the same for rare-class tracks), ``boxes`` (ground-truth boxes
    in the picks), ``top_camera_share`` (share of the picks from the most-picked camera)."""
    tracks = [t for clip in clips for t in clip.tracks]
    classes = [c for clip in clips for c in clip.classes]
    cameras = [clip.camera for clip in clips for _ in clip.frames]
    track_class = {int(t): int(c) for ts, cs in zip(tracks, classes) for t, c in zip(ts, cs)}
    rare_tracks = {t for t, c in track_class.items() if c in set(rare_classes)}
    picked = np.asarray(indices, np.int64)
    seen = {int(t) for i in picked for t in tracks[i]}
    counts = np.unique([cameras[i] for i in picked], return_counts=True)[1] if len(picked) else np.zeros(1)
    return {"track_coverage": len(seen) / max(len(track_class), 1),
            "rare_track_coverage": len(seen & rare_tracks) / max(len(rare_tracks), 1),
            "boxes": int(sum(len(tracks[i]) for i in picked)),
            "top_camera_share": float(counts.max() / max(len(picked), 1)),
            "picks": int(len(picked))}


def coverage_figures(clips: Sequence[Clip], options: GeneratorOptions, budget: int) -> Dict[str, dict]:
    """Per strategy of :func:`strategies`, the :func:`selection_coverage` of its ``budget``
    picks from the pool of ``clips`` (simulated detector, thumbnail embeddings; no training)."""
    from transforms.select.factory import make_strategy
    pool = pool_of(clips, simulated_detections(clips, options, options.seed), thumbnail_embeddings(clips))
    return {label: selection_coverage(clips, make_strategy(name, params).select(pool, budget).indices,
                                      options.rare_classes)
            for label, (name, params) in strategies().items()}


def write_coco(clips: Sequence[Clip], class_names: Sequence[str], directory: str) -> str:
    """Frames as PNG under ``directory/<camera>/`` and their ground truth as one COCO detection
    file (``annotations.json``, boxes ``[x, y, w, h]``, ``track_id`` per annotation); its path."""
    import cv2
    images, annotations = [], []
    for clip in clips:
        os.makedirs(os.path.join(directory, clip.camera), exist_ok=True)
        for t, frame in enumerate(clip.frames):
            name = f"{clip.camera}/{t:05d}.png"
            cv2.imwrite(os.path.join(directory, name), frame[..., ::-1])
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": frame.shape[1], "height": frame.shape[0]})
            for box, c, track in zip(clip.boxes[t], clip.classes[t], clip.tracks[t]):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": 0, "track_id": int(track)})
    path = os.path.join(directory, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}, f)
    return path


def add_generator_options(parser: argparse.ArgumentParser, **defaults):
    """One command-line option per :class:`GeneratorOptions` field (pairs and lists as
    comma-separated values); ``defaults`` replace some fields' defaults (a benchmark's own)."""
    unknown = set(defaults) - set(GeneratorOptions._fields)
    if unknown:
        raise ValueError(f"no generator options {sorted(unknown)}")
    for name, default in dict(GeneratorOptions._field_defaults, **defaults).items():
        if isinstance(default, tuple):
            kind = float if isinstance(default[0], float) else int
            parser.add_argument(f"--{name}", default=default,
                                type=lambda v, kind=kind: tuple(kind(x) for x in v.split(",")),
                                help=f"comma-separated (default {','.join(map(str, default))})")
        else:
            parser.add_argument(f"--{name}", type=type(default), default=default, help=f"(default {default})")


def options_from(args) -> GeneratorOptions:
    return GeneratorOptions(**{name: getattr(args, name) for name in GeneratorOptions._fields})


def mean_coverage(options: GeneratorOptions, budget: int, pools: int) -> Dict[str, dict]:
    """:func:`coverage_figures` averaged over ``pools`` generated pools (seeds ``options.seed``,
    ``+1``, ...): per strategy the mean of each figure."""
    rows: Dict[str, List[dict]] = {}
    for k in range(pools):
        seeded = options._replace(seed=options.seed + k)
        for label, row in coverage_figures(generate(seeded), seeded, budget).items():
            rows.setdefault(label, []).append(row)
    return {label: {key: round(float(np.mean([r[key] for r in runs])), 4) for key in runs[0]}
            for label, runs in rows.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection_data", description=__doc__.split("\n\n")[0])
    add_generator_options(parser)
    parser.add_argument("--budget", type=int, default=20, help="frames each strategy picks (default 20)")
    parser.add_argument("--pools", type=int, default=1, help="pools (seeds --seed, --seed + 1, ...) the figures "
                                                             "are averaged over (default 1)")
    parser.add_argument("--out_dir", help="also write the first pool's frames (PNG) and COCO ground truth here")
    args = parser.parse_args(argv)
    options = options_from(args).validate()
    if args.out_dir:
        write_coco(generate(options), options.class_names, args.out_dir)
    figures = mean_coverage(options, args.budget, args.pools)
    for label, row in figures.items():
        print(json.dumps(dict(row, strategy=label), sort_keys=True))
    default, topk = figures["uncertainty_kcenter (default)"], figures["detection_sum (top-k)"]
    summary = {"budget": args.budget, "pools": args.pools,
               "default_track_coverage": default["track_coverage"], "topk_track_coverage": topk["track_coverage"],
               "random_track_coverage": figures["random"]["track_coverage"],
               "default_rare_track_coverage": default["rare_track_coverage"],
               "topk_rare_track_coverage": topk["rare_track_coverage"],
               "random_rare_track_coverage": figures["random"]["rare_track_coverage"]}
    summary["track_coverage_goal_met"] = default["track_coverage"] > max(topk["track_coverage"],
                                                                         figures["random"]["track_coverage"])
    summary["rare_track_coverage_goal_met"] = default["rare_track_coverage"] >= 0.85 * max(
        topk["rare_track_coverage"], figures["random"]["rare_track_coverage"])
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())

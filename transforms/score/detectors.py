"""Detectors that ``ScoreFrames`` runs through ``RunInference`` next to the embedding model.

:class:`DetectorHandler` is the Beam ``ModelHandler`` around any detector object with ``load()``
and ``detect(pixels) -> Detections``. :class:`NanoDetDetector` is the default one (NanoDet-g,
COCO's 80 classes, converted at set-up by :mod:`transforms.score.pretrained.convert`, run by the
LiteRT interpreter without importing TensorFlow); :class:`ExportedDetector` is a team's own
detector in ONNX, TFLite or SavedModel form, declared by a JSON sidecar
(:mod:`transforms.score.detector_spec`), picked by :func:`detector_handler`;
:class:`BackgroundDifferenceDetector` is a
documented example of a detector without weights, for fixed cameras. The per-frame scores are
:func:`transforms.score.detection.aggregate_detection_scores`.
"""
import logging
import os
import threading
from typing import Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas.records import ModelVersion
from transforms.common.files import local_copy
from transforms.score.detection import (RARE_CLASS_SCORE, UNCERTAIN_BAND, UNCERTAINTY_FLOOR, Detections,
                                        aggregate_detection_scores, localisation_instability,
                                        rare_class_scores)
from transforms.score.detector_spec import DetectorSpec, decode_outputs, missing_sidecar, read_detector_spec
from transforms.score.handlers import model_version_id
from transforms.score.litert import load_interpreter
from transforms.score.model_base import ONNX, SAVED_MODEL, TFLITE, runtime_of
from transforms.score.preprocessing import prepare_input
from transforms.score.runtimes import NamedOutputsSession
from transforms.score.pretrained import nanodet
from transforms.score.threads import inference_threads

_LOG = logging.getLogger(__name__)


def detect_with_flip(run, pixels: np.ndarray, class_names: Sequence[str], flip: bool) -> Detections:
    """:class:`Detections` of one RGB ``uint8 (H, W, 3)`` frame from ``run(pixels) -> (boxes,
    scores, class_ids, rejected)`` (a :class:`~transforms.score.detection.Decoded`); with ``flip``, ``run`` also sees the mirrored frame and each box gets
    its :func:`~transforms.score.detection.localisation_instability` against the mirrored
    pass's boxes mapped back (Kao et al., 2018, with a horizontal flip as the perturbation)."""
    boxes, scores, classes, rejected = run(pixels)
    localisation = None
    if flip:
        width = pixels.shape[1]
        f_boxes, _, f_classes, _ = run(np.ascontiguousarray(pixels[:, ::-1]))
        f_boxes = np.stack([width - f_boxes[:, 2], f_boxes[:, 1], width - f_boxes[:, 0], f_boxes[:, 3]], axis=1)
        localisation = localisation_instability(boxes, classes, f_boxes, f_classes)
    return Detections(boxes, scores, classes, tuple(class_names[c] for c in classes), localisation, rejected)


class NanoDetDetector:
    """NanoDet-g (COCO 2017, 80 classes) in the LiteRT interpreter, with an optional
    horizontal-flip test-time augmentation for the localisation term.

    Parameters
    ----------
    model_uri : str
        The converted ``nanodet_g.tflite`` (any Beam filesystem; default location
        :func:`transforms.score.pretrained.detector_path`).
    score_threshold, iou_threshold : float
        Smallest class score of a kept box, and the overlap of per-class NMS
        (:func:`transforms.score.pretrained.nanodet.decode`).
    uncertainty_floor : float
        Smallest score of the best rejected box (``Detections.rejected``; see
        :mod:`transforms.score.detection`); >= ``score_threshold`` turns it off.
    flip : bool
        Also run the mirrored frame and give each box its :func:`localisation_instability`
        (``detection_localisation``); doubles the detector's cost.
    num_threads : int, optional
        Interpreter threads (default: :func:`~transforms.score.threads.inference_threads`).

    Raises
    ------
    ValueError
        For thresholds outside [0, 1].
    """

    def __init__(self, model_uri: str, score_threshold: float = nanodet.SCORE_THRESHOLD,
                 iou_threshold: float = nanodet.IOU_THRESHOLD, flip: bool = True,
                 num_threads: Optional[int] = None, uncertainty_floor: float = UNCERTAINTY_FLOOR):
        if not (0 <= score_threshold <= 1 and 0 <= iou_threshold <= 1 and 0 <= uncertainty_floor <= 1):
            raise ValueError(f"score_threshold, iou_threshold and uncertainty_floor must be in [0, 1], got "
                             f"{score_threshold}, {iou_threshold}, {uncertainty_floor}")
        self.model_uri = model_uri
        self.score_threshold, self.iou_threshold, self.flip = score_threshold, iou_threshold, flip
        self.uncertainty_floor = uncertainty_floor
        self.num_threads = num_threads
        self._interpreter = None
        self._lock = threading.Lock()  # one interpreter per process, shared by Beam's threads

    def load(self) -> "NanoDetDetector":
        with local_copy(self.model_uri) as local:
            self._interpreter = load_interpreter(local, self.num_threads or inference_threads())
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._outputs = [d["index"] for d in self._interpreter.get_output_details()]
        return self

    def _run(self, rgb: np.ndarray):
        with self._lock:
            self._interpreter.set_tensor(self._input, nanodet.prepare(rgb))
            self._interpreter.invoke()
            outputs = [self._interpreter.get_tensor(i).copy() for i in self._outputs]
        return nanodet.decode(outputs, rgb.shape[1], rgb.shape[0], self.score_threshold, self.iou_threshold,
                              uncertainty_floor=self.uncertainty_floor)

    def detect(self, pixels: np.ndarray) -> Detections:
        """Boxes of one RGB ``uint8 (H, W, 3)`` frame, best first (see :class:`Detections`)."""
        if self._interpreter is None:
            self.load()
        return detect_with_flip(self._run, pixels, nanodet.COCO_CLASSES, self.flip)


class DetectorOutputError(RuntimeError):
    """A detector's outputs do not match what its sidecar declares. Not a ``ValueError``: the
    frame is dead-lettered by ``ScoreFrames`` (stage ``inference``, error ``detector inference
    failed ...``) rather than skipped as a frame the detector does not take."""


class ExportedDetector:
    """A team's own detector exported to ONNX, TFLite or a TensorFlow SavedModel, read as its JSON
    sidecar declares (:mod:`transforms.score.detector_spec`), with the same optional
    horizontal-flip test-time augmentation as :class:`NanoDetDetector`.

    Parameters
    ----------
    model_uri : str
        ``.onnx`` or ``.tflite`` file, or SavedModel directory (any Beam filesystem; a SavedModel
        is read by TensorFlow, which reads ``gs://`` itself).
    spec : DetectorSpec, optional
        Default: the sidecar ``<model_uri>.json`` (:func:`~transforms.score.detector_spec.read_detector_spec`).
    flip : bool
        Also run the mirrored frame for ``detection_localisation``; doubles the cost.
    num_threads : int, optional
        Runtime threads (default: :func:`~transforms.score.threads.inference_threads`).

    Raises
    ------
    ValueError
        If the model has no sidecar, or the sidecar is invalid (naming its key); at ``load()``,
        if the model's input cannot take the declared image.
    DetectorOutputError
        From ``detect``, when the model's outputs do not have the declared layout.
    """

    def __init__(self, model_uri: str, spec: Optional[DetectorSpec] = None, flip: bool = True,
                 num_threads: Optional[int] = None):
        self.model_uri = model_uri
        self.spec = spec or read_detector_spec(model_uri)
        if self.spec is None:
            raise ValueError(f"{model_uri}: {missing_sidecar(model_uri)}")
        self.runtime = runtime_of(model_uri)
        if self.runtime not in (ONNX, TFLITE, SAVED_MODEL):
            raise ValueError(f"{model_uri}: a detector must be .onnx, .tflite or a SavedModel directory")
        self.flip, self.num_threads = flip, num_threads
        self._session = None

    def load(self) -> "ExportedDetector":
        if self.runtime == SAVED_MODEL:
            self._session = NamedOutputsSession(self.model_uri, self.runtime, self.num_threads)
        else:
            with local_copy(self.model_uri) as local:
                self._session = NamedOutputsSession(local, self.runtime, self.num_threads or inference_threads())
        shape = self._session.input_shape
        if len(shape) != 3:
            raise ValueError(f"{self.model_uri}: the detector's input must be an image batch (N, H, W, C) "
                             f"or (N, C, H, W), got {(None,) + shape}")
        size = shape[1:3] if self.spec.layout == "NCHW" else shape[0:2]
        self._prep = self.spec.preprocessing(None if None in size else tuple(size))
        channels = shape[0] if self.spec.layout == "NCHW" else shape[2]
        if channels is not None and channels != self._prep.channels:
            raise ValueError(f"{self.model_uri}: colour {self._prep.colour} gives {self._prep.channels} "
                             f"channels, the detector takes {channels} (layout {self.spec.layout})")
        return self

    def _run(self, rgb: np.ndarray):
        x = prepare_input(rgb, self._prep)[None]
        if self.spec.input_dtype == "uint8":
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        outputs = self._session.run(x)
        try:
            return decode_outputs(outputs, self.spec, self._prep.input_size, rgb.shape[1], rgb.shape[0])
        except ValueError as e:  # the sidecar does not describe the model: every frame would fail
            raise DetectorOutputError(f"{self.model_uri}: {e}") from e

    def detect(self, pixels: np.ndarray) -> Detections:
        """Boxes of one RGB ``uint8 (H, W, 3)`` frame, best first (see :class:`Detections`)."""
        if self._session is None:
            self.load()
        return detect_with_flip(self._run, pixels, self.spec.class_names, self.flip)


class BackgroundDifferenceDetector:
    """Moving-object detector for a fixed camera: regions that differ from a background image.

    Pixels whose grey-level difference to the background exceeds ``threshold`` are foreground;
    after a morphological closing, each connected region of at least ``min_area`` pixels is a
    box ``[x1, y1, x2, y2]`` (label ``"object"``, class 0). Its confidence is the mean of
    ``min(difference / (2 * threshold), 1)`` over the region: a region barely above the
    threshold is ~0.5 (uncertain), a strong contrast ~1.

    Parameters
    ----------
    background_uri : str
        ``.npy`` file (any Beam filesystem) with the RGB ``uint8 (H, W, 3)`` background, e.g.
        from :func:`estimate_background`.
    threshold : float
        Grey-level difference (0-255) above which a pixel is foreground.
    min_area : int
        Smallest region, in pixels, reported as a box.
    """

    def __init__(self, background_uri: str, threshold: float = 30.0, min_area: int = 150):
        if threshold <= 0 or min_area < 1:
            raise ValueError(f"threshold must be > 0 and min_area >= 1, got {threshold}, {min_area}")
        self.background_uri = background_uri
        self.threshold = threshold
        self.min_area = min_area
        self._background: Optional[np.ndarray] = None

    def load(self) -> "BackgroundDifferenceDetector":
        import cv2
        with local_copy(self.background_uri) as local:
            background = np.load(local)
        if background.ndim != 3 or background.shape[2] != 3 or background.dtype != np.uint8:
            raise ValueError(f"{self.background_uri}: the background must be uint8 (H, W, 3), "
                             f"got {background.dtype} {background.shape}")
        self._background = cv2.GaussianBlur(cv2.cvtColor(background, cv2.COLOR_RGB2GRAY), (5, 5), 0)
        return self

    def detect(self, pixels: np.ndarray) -> Detections:
        """Boxes of one RGB ``uint8 (H, W, 3)`` frame of the background's size.

        Raises
        ------
        ValueError
            If the frame's size differs from the background's.
        """
        import cv2
        if self._background is None:
            self.load()
        if pixels.shape[:2] != self._background.shape:
            raise ValueError(f"frame {pixels.shape[1]}x{pixels.shape[0]} does not match the background "
                             f"{self._background.shape[1]}x{self._background.shape[0]}")
        grey = cv2.GaussianBlur(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), (5, 5), 0)
        difference = cv2.absdiff(grey, self._background).astype(np.float32)
        mask = (difference > self.threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        strength = np.minimum(difference / (2.0 * self.threshold), 1.0)
        boxes, confidences = [], []
        for label in range(1, count):
            x, y, w, h, area = stats[label]
            if area < self.min_area:
                continue
            boxes.append((x, y, x + w, y + h))
            confidences.append(float(strength[labels == label].mean()))
        order = np.argsort(-np.asarray(confidences, np.float64), kind="stable")
        return Detections(np.asarray(boxes, np.float32).reshape(-1, 4)[order],
                          np.asarray(confidences, np.float32)[order], np.zeros(len(order), np.int32),
                          ("object",) * len(order))


class DetectorHandler(ModelHandler):
    """Beam ``ModelHandler`` around a detector object with ``load()`` and ``detect(pixels)``.

    Inference input: RGB ``uint8 (H, W, 3)`` frames; output ``PredictionResult(pixels,
    Detections)`` (``None`` for a frame whose ``detect`` raised ``ValueError``). The detector is
    loaded once per worker process (Beam's shared handle). ``version``: what frame records say
    ran (:class:`~schemas.records.ModelVersion`: name and weights digest), e.g. from
    :func:`detector_version`.
    """

    def __init__(self, detector, band: Tuple[float, float] = UNCERTAIN_BAND, max_batch_size: int = 8,
                 version=None):
        super().__init__()
        aggregate_detection_scores([], band)  # validates the band
        self._detector = detector
        self.band = band
        self.version = version
        self._max_batch_size = max_batch_size
        self._skipped = Metrics.counter("activebeam.detection", "frames_not_detected")

    def load_model(self):
        return self._detector.load()

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None):
        return [PredictionResult(pixels, self._detect(model, pixels)) for pixels in batch]

    def _detect(self, model, pixels) -> Optional[Detections]:
        """The frame's detections, or ``None`` for a frame this detector cannot take (e.g. from
        another camera): that frame is still classified, without ``detection_*`` scores, and
        counted in the ``frames_not_detected`` metric."""
        try:
            return model.detect(pixels)
        except ValueError as e:
            _LOG.debug("detector skipped a frame: %s", e)
            self._skipped.inc()
            return None

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def get_num_bytes(self, batch) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return "activebeam.detection"


def detector_version(uri: str):
    """The :class:`~schemas.records.ModelVersion` of a detector file: its name and the first 16
    hex digits of its sha256, or its conversion recipe's version for the default NanoDet-g (as
    models are versioned: :func:`~transforms.score.handlers.model_version_id`)."""
    return ModelVersion(os.path.basename(uri.rstrip("/")), model_version_id(uri), "")


def nanodet_handler(uri: str, flip: bool = True) -> DetectorHandler:
    """The ``DetectorHandler`` of a NanoDet TFLite model at ``uri``, versioned by its digest."""
    return DetectorHandler(NanoDetDetector(uri, flip=flip), version=detector_version(uri))


def detector_handler(uri: str, flip: bool = True) -> DetectorHandler:
    """The ``DetectorHandler`` of the detector at ``uri``, versioned by its digest: an
    :class:`ExportedDetector` when a sidecar ``<uri>.json`` declares it, else NanoDet-g's
    ``.tflite`` (:func:`nanodet_handler`).

    Raises
    ------
    ValueError
        For an invalid sidecar, or a model other than a ``.tflite`` without one.
    """
    spec = read_detector_spec(uri)
    if spec is None and uri.lower().endswith(".tflite"):
        return nanodet_handler(uri, flip)
    return DetectorHandler(ExportedDetector(uri, spec, flip=flip), version=detector_version(uri))


def _class_labels(record):
    return [d.label for d in record.detections]


def _with_rarity(record, counts):
    if record.detector is None:  # no detector ran on this frame
        return record
    (value,) = rare_class_scores([_class_labels(record)], counts)
    scores = dict(record.extra_scores, **{RARE_CLASS_SCORE: float(value)})
    return record._replace(extra_scores=tuple(sorted(scores.items())))


class AddClassRarity(beam.PTransform):
    """Adds ``detection_rare_class`` to every detected frame once all frames are scored: how
    rare its rarest detected class is among all boxes of the collection (per window, when
    windowed); see :func:`transforms.score.detection.rare_class_scores`.

    Input and output: ``PCollection[FrameRecord]``.
    """

    def expand(self, records):
        counts = (records
                  | "BoxLabels" >> beam.FlatMap(_class_labels)
                  | "CountLabels" >> beam.combiners.Count.PerElement())
        return records | "RareClass" >> beam.Map(_with_rarity, beam.pvalue.AsDict(counts))

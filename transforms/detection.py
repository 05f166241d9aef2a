"""Detection uncertainty: per-box confidences aggregated into per-frame scores.

A detector is a Beam ``ModelHandler`` whose inference maps an RGB frame ``uint8 (H, W, 3)`` to
:class:`Detections` (boxes and confidences in [0, 1]). :class:`~transforms.model.ScoreFrames`
runs it through ``RunInference`` next to the classifier (``ScoreFrames(spec, detector=...)``)
and stores the aggregates of :func:`aggregate_detection_scores` in ``FrameRecord.extra_scores``::

    background = estimate_background("/data/cam1.avi")          # the detector's "weights"
    np.save("/models/cam1_background.npy", background)
    scored = frames | ScoreFrames(spec, detector=DetectorHandler(BackgroundDifferenceDetector(
        "/models/cam1_background.npy")))

The bundled real detector, :class:`BackgroundDifferenceDetector`, finds moving objects (people,
vehicles) seen by a fixed camera as the regions that differ from an empty-scene background
image; it runs offline on the sample video ``vtest.avi``. (OpenCV 5, the installed version, no
longer has the HOG people detector, and no pretrained detector network is installable here.)
Any other detector (a TFLite/ONNX SSD, ...) plugs in as a ``ModelHandler`` with the same output.

Per-box uncertainty of a confidence ``c`` is ``1 - |2c - 1|`` (1 at c = 0.5, 0 at c in {0, 1});
the frame scores are its max, mean and sum over boxes and the count of boxes whose confidence
lies in the uncertain band ``[low, high]``.

References
----------
Brust, Käding & Denzler (2019), Active Learning for Deep Object Detection, VISAPP (per-box
margin ``1 - |2c - 1|`` aggregated by sum, average and max over boxes);
Haussmann et al. (2020), Scalable Active Learning for Object Detection, IEEE IV (max/sum/mean
aggregation of box scores); Zivkovic (2004), Improved adaptive Gaussian mixture model for
background subtraction (the background-difference idea, here with a fixed background).
"""
import logging
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.files import local_copy

_LOG = logging.getLogger(__name__)
UNCERTAIN_BAND = (0.3, 0.7)
DETECTION_SCORES = ("detection_max", "detection_mean", "detection_sum", "detection_uncertain_count",
                    "detection_count")


class Detections(NamedTuple):
    """Boxes found in one frame: ``boxes`` int32 ``(K, 4)`` as ``(x, y, width, height)`` in
    pixels of the frame, ``confidences`` float32 ``(K,)`` in [0, 1]."""
    boxes: np.ndarray
    confidences: np.ndarray


def box_uncertainty(confidences) -> np.ndarray:
    """Per-box uncertainty ``1 - |2c - 1|`` of detection confidences ``c`` in [0, 1].

    Parameters
    ----------
    confidences : array-like of float, shape (K,)

    Returns
    -------
    ndarray of float64, shape (K,), in [0, 1]; 1 for a box at ``c = 0.5``.

    Raises
    ------
    ValueError
        If a confidence is outside [0, 1] or not finite.

    References
    ----------
    Brust et al. (2019), Active Learning for Deep Object Detection (the binary margin "1-vs-2").
    """
    c = np.asarray(confidences, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(c)) or np.any((c < 0) | (c > 1)):
        raise ValueError("detection confidences must be finite and in [0, 1]")
    return 1.0 - np.abs(2.0 * c - 1.0)


def aggregate_detection_scores(confidences, band: Tuple[float, float] = UNCERTAIN_BAND) -> Dict[str, float]:
    """Per-frame detection scores from the confidences of the frame's boxes.

    Parameters
    ----------
    confidences : array-like of float, shape (K,), in [0, 1]; K may be 0.
    band : (low, high)
        Confidences in ``[low, high]`` count as uncertain boxes.

    Returns
    -------
    dict with ``detection_max``, ``detection_mean``, ``detection_sum`` (of
    :func:`box_uncertainty`; 0 without boxes), ``detection_uncertain_count`` and
    ``detection_count`` (as floats).

    Raises
    ------
    ValueError
        For confidences outside [0, 1], or a band that is not ``0 <= low <= high <= 1``.
    """
    low, high = band
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"band must satisfy 0 <= low <= high <= 1, got {band}")
    c = np.asarray(confidences, dtype=np.float64).reshape(-1)
    u = box_uncertainty(c)
    return {
        "detection_max": float(u.max()) if len(u) else 0.0,
        "detection_mean": float(u.mean()) if len(u) else 0.0,
        "detection_sum": float(u.sum()),
        "detection_uncertain_count": float(np.count_nonzero((c >= low) & (c <= high))),
        "detection_count": float(len(c)),
    }


def estimate_background(video_path: str, samples: int = 25) -> np.ndarray:
    """The empty scene of a fixed camera: the per-pixel median of ``samples`` evenly spaced frames.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3), RGB.

    Raises
    ------
    ValueError
        If the video yields no frame.
    """
    import av
    with av.open(video_path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{video_path}: no decodable frame")
    picks = np.linspace(0, len(frames) - 1, num=min(samples, len(frames))).round().astype(int)
    return np.median(np.stack([frames[i] for i in picks]), axis=0).astype(np.uint8)


class BackgroundDifferenceDetector:
    """Moving-object detector for a fixed camera: regions that differ from a background image.

    Pixels whose grey-level difference to the background exceeds ``threshold`` are foreground;
    after a morphological closing, each connected region of at least ``min_area`` pixels is a
    box. Its confidence is the mean of ``min(difference / (2 * threshold), 1)`` over the region:
    a region barely above the threshold is ~0.5 (uncertain), a strong contrast ~1.

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
            boxes.append((x, y, w, h))
            confidences.append(float(strength[labels == label].mean()))
        return Detections(np.asarray(boxes, np.int32).reshape(-1, 4), np.asarray(confidences, np.float32))


class DetectorHandler(ModelHandler):
    """Beam ``ModelHandler`` around a detector object with ``load()`` and ``detect(pixels)``.

    Inference input: RGB ``uint8 (H, W, 3)`` frames; output ``PredictionResult(pixels,
    Detections)`` (``None`` for a frame whose ``detect`` raised ``ValueError``). The detector is loaded once per worker process (Beam's shared handle).
    """

    def __init__(self, detector, band: Tuple[float, float] = UNCERTAIN_BAND, max_batch_size: int = 8):
        super().__init__()
        aggregate_detection_scores([], band)  # validates the band
        self._detector = detector
        self.band = band
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

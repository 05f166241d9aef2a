"""Detectors that ``ScoreFrames`` runs through ``RunInference`` next to the classifier.

:class:`DetectorHandler` is the Beam ``ModelHandler`` around any detector object with ``load()``
and ``detect(pixels) -> Detections``; :class:`BackgroundDifferenceDetector` is the bundled one
for fixed cameras. The per-frame scores are :func:`transforms.score.detection.aggregate_detection_scores`.
"""
import logging
from typing import Optional, Sequence, Tuple

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.common.files import local_copy
from transforms.score.detection import UNCERTAIN_BAND, Detections, aggregate_detection_scores

_LOG = logging.getLogger(__name__)


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

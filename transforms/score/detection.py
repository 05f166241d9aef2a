"""Detection uncertainty: per-box confidences aggregated into per-frame scores.

A detector is a Beam ``ModelHandler`` whose inference maps an RGB frame ``uint8 (H, W, 3)`` to
:class:`Detections` (boxes and confidences in [0, 1]). :class:`~transforms.score.ptransforms.ScoreFrames`
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
from typing import Dict, NamedTuple, Tuple

import numpy as np

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

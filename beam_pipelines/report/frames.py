"""The pictures of a report: candidate frames decoded again from their sources, boxes drawn.

Pure functions over files, no Beam::

    images = render_frames(requests, "/out/report")     # {frame_id: FrameImages}
    images["7d67..."].thumb                              # "thumbs/7d67....jpg" (relative path)

A frame is decoded again the way the ``mine`` job decoded it
(:func:`transforms.decode.redecode.map_frames`).

Detector boxes (``detections``: ``[{label, class_id, score, box: {x1, y1, x2, y2}}]`` in pixels
of the decoded frame, ``width`` x ``height``) are drawn into both pictures. Each frame gives a
small JPEG thumbnail (``thumbs/<frame_id>.jpg``) and a larger one (``frames/<frame_id>.jpg``)
that the thumbnail links to. A frame that cannot be decoded again gets an ``error`` instead.
"""
import os
from typing import Dict, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from schemas.records import box_corners
from transforms.decode.images import resize_longest_side
from transforms.decode.redecode import FrameRequest, map_frames  # noqa: F401  (FrameRequest: re-exported)

THUMB_SIDE = 224  # longest side of a thumbnail, pixels
FULL_SIDE = 1280  # longest side of the linked full frame, pixels
JPEG_QUALITY = 85
THUMBS_DIR, FRAMES_DIR = "thumbs", "frames"
BOX_COLOUR = (255, 64, 32)  # RGB


class FrameImages(NamedTuple):
    """Paths relative to the report directory, or the reason there are none."""
    thumb: Optional[str] = None
    full: Optional[str] = None
    error: Optional[str] = None


def render_frames(requests: Iterable[FrameRequest], report_dir: str, thumb_side: int = THUMB_SIDE,
                  full_side: int = FULL_SIDE, workers: int = 2) -> Dict[str, FrameImages]:
    """Decodes every requested frame again and writes its thumbnail and full-frame JPEGs.

    Parameters
    ----------
    requests : iterable of FrameRequest
    report_dir : str
        Local directory; pictures go to its ``thumbs/`` and ``frames/``.
    thumb_side, full_side : int
        Longest side in pixels of the thumbnail and of the full frame (never enlarged).
    workers : int
        Sources decoded in parallel (OpenCV and FFmpeg release the GIL).

    Returns
    -------
    dict
        ``frame_id -> FrameImages``, one per request.
    """
    for sub in (THUMBS_DIR, FRAMES_DIR):
        os.makedirs(os.path.join(report_dir, sub), exist_ok=True)
    return map_frames(requests, _Writer(report_dir, thumb_side, full_side).write,
                      lambda error: FrameImages(error=error), workers)


class _Writer:
    """Draws the boxes and writes the two JPEGs of one decoded frame."""

    def __init__(self, report_dir: str, thumb_side: int, full_side: int):
        self._dir, self._thumb_side, self._full_side = report_dir, thumb_side, full_side

    def write(self, request: FrameRequest, rgb: np.ndarray) -> FrameImages:
        import cv2
        full = resize_longest_side(rgb, self._full_side)
        if request.detections:
            full = draw_boxes(full, request.detections, _scale(request, rgb, full))
        thumb = resize_longest_side(full, self._thumb_side)
        paths = []
        for sub, pixels in ((THUMBS_DIR, thumb), (FRAMES_DIR, full)):
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                return FrameImages(error="OpenCV could not encode the JPEG")
            relative = f"{sub}/{request.frame_id}.jpg"
            with open(os.path.join(self._dir, relative), "wb") as f:
                f.write(jpeg.tobytes())
            paths.append(relative)
        return FrameImages(*paths)


def _scale(request: FrameRequest, decoded: np.ndarray, shown: np.ndarray) -> float:
    """Factor from the scored frame's pixels (where boxes live) to the shown picture's."""
    scored_width = request.width or decoded.shape[1]
    return shown.shape[1] / float(scored_width)


def draw_boxes(rgb: np.ndarray, detections: Sequence[dict], scale: float = 1.0) -> np.ndarray:
    """A copy of ``rgb`` with each detection's ``box`` ``{x1, y1, x2, y2}`` (times ``scale``)
    outlined and labelled ``label score``."""
    import cv2
    out = np.ascontiguousarray(rgb).copy()
    thickness = max(1, round(max(out.shape[:2]) / 300))
    for det in detections:
        try:
            box = box_corners(det.get("box"))
        except ValueError:
            continue
        x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        label = str(det.get("label", det.get("class_id", "")))
        if det.get("score") is not None:
            label = f"{label} {float(det['score']):.2f}".strip()
        if label:
            cv2.putText(out, label, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thickness, BOX_COLOUR, thickness)
    return out

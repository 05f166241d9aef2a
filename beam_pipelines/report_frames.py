"""The pictures of a report: candidate frames decoded again from their sources, boxes drawn.

Pure functions over files, no Beam::

    images = render_frames(requests, "/out/report")     # {frame_id: FrameImages}
    images["7d67..."].thumb                              # "thumbs/7d67....jpg" (relative path)

A frame is decoded the way the ``mine`` job decoded it: still images with
:func:`transforms.decode.images.decode_image` (EXIF orientation applied), video frames with
:func:`transforms.decode.video.plan_video` / :func:`~transforms.decode.video.decode_range`, by
``frame_index`` (the rank of the frame's presentation time, the same on every decoding). A
video is planned once and cut at its keyframes; only the keyframe intervals that hold a wanted
frame are decoded, and decoding of an interval stops at its last wanted frame.

Detector boxes (``detections``: ``[{label, class_id, score, box: [x1, y1, x2, y2]}]`` in pixels
of the decoded frame, ``width`` x ``height``) are drawn into both pictures. Each frame gives a
small JPEG thumbnail (``thumbs/<frame_id>.jpg``) and a larger one (``frames/<frame_id>.jpg``)
that the thumbnail links to. A frame that cannot be decoded again gets an ``error`` instead.
"""
import concurrent.futures
import os
import shutil
import tempfile
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

import numpy as np

from transforms.decode.images import decode_image, resize_longest_side
from transforms.decode.video import ALL, Sampling, VideoFrame, decode_range, plan_video, split_ranges

THUMB_SIDE = 224  # longest side of a thumbnail, pixels
FULL_SIDE = 1280  # longest side of the linked full frame, pixels
JPEG_QUALITY = 85
THUMBS_DIR, FRAMES_DIR = "thumbs", "frames"
BOX_COLOUR = (255, 64, 32)  # RGB


class FrameRequest(NamedTuple):
    """One frame to picture. ``timestamp_s`` None: a still image. ``detections``: boxes to draw;
    ``width``/``height``: the frame's size when it was scored (boxes are in those pixels)."""
    frame_id: str
    source_uri: str
    frame_index: int = 0
    timestamp_s: Optional[float] = None
    detections: Sequence[dict] = ()
    width: Optional[int] = None
    height: Optional[int] = None


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
    by_source: Dict[str, List[FrameRequest]] = {}
    for request in requests:
        by_source.setdefault(request.source_uri, []).append(request)
    out: Dict[str, FrameImages] = {}
    writer = _Writer(report_dir, thumb_side, full_side)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for result in pool.map(lambda item: _render_source(*item, writer), by_source.items()):
            out.update(result)
    return out


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
    """A copy of ``rgb`` with each detection's ``box`` ``[x1, y1, x2, y2]`` (times ``scale``)
    outlined and labelled ``label score``."""
    import cv2
    out = np.ascontiguousarray(rgb).copy()
    thickness = max(1, round(max(out.shape[:2]) / 300))
    for det in detections:
        box = det.get("box")
        if not box or len(box) != 4:
            continue
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        label = str(det.get("label", det.get("class_id", "")))
        if det.get("score") is not None:
            label = f"{label} {float(det['score']):.2f}".strip()
        if label:
            cv2.putText(out, label, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thickness, BOX_COLOUR, thickness)
    return out


def _render_source(source_uri: str, requests: List[FrameRequest], writer: _Writer) -> Dict[str, FrameImages]:
    """Pictures of the requested frames of one source file (any failure is per frame)."""
    try:
        with _local_copy(source_uri) as path:
            if all(r.timestamp_s is None for r in requests):
                with open(path, "rb") as f:
                    rgb = decode_image(f.read()).pixels
                return {r.frame_id: writer.write(r, rgb) for r in requests}
            return _render_video(path, requests, writer)
    except Exception as e:  # noqa: BLE001 - a missing or changed source spoils its own frames only
        error = f"{type(e).__name__}: {e}"[:300]
        return {r.frame_id: FrameImages(error=error) for r in requests}


def _render_video(path: str, requests: List[FrameRequest], writer: _Writer) -> Dict[str, FrameImages]:
    wanted = {}
    for r in requests:
        wanted.setdefault(int(r.frame_index), []).append(r)
    plan = plan_video(path)
    out: Dict[str, FrameImages] = {}
    # split_seconds ~0: one range per keyframe interval, so only the intervals holding a wanted
    # frame are decoded.
    for video_range in split_ranges(plan, path, 1e-9):
        first, last = video_range.first_index, video_range.first_index + len(video_range.pts) - 1
        todo = {i for i in wanted if first <= i <= last}
        for item in decode_range(path, video_range, Sampling(ALL)) if todo else ():
            if isinstance(item, VideoFrame) and item.frame_index in todo:
                for r in wanted[item.frame_index]:
                    out[r.frame_id] = writer.write(r, item.pixels)
                todo.discard(item.frame_index)
                if not todo:
                    break
    for r in requests:
        out.setdefault(r.frame_id, FrameImages(
            error=f"frame {r.frame_index} not found in the video ({plan.info.frame_count} frames)"))
    return out


class _local_copy:
    """The path of ``uri`` on this machine: itself if local, else a temporary copy (``gs://``)."""

    def __init__(self, uri: str):
        self._uri, self._tmp = uri, None

    def __enter__(self) -> str:
        from transforms.common.files import is_local
        if is_local(self._uri):
            return self._uri[len("file://"):] if self._uri.startswith("file://") else self._uri
        from apache_beam.io.filesystems import FileSystems
        fd, self._tmp = tempfile.mkstemp(suffix=os.path.splitext(self._uri)[1])
        with os.fdopen(fd, "wb") as out, FileSystems.open(self._uri) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return self._tmp

    def __exit__(self, *exc):
        if self._tmp:
            os.unlink(self._tmp)

"""Frames decoded again from their sources, by ``frame_index``, the way the ``mine`` job decoded them.

Reads its sources through Beam's filesystems (local paths or ``gs://``); the report's pictures and the
pictures annotators see come from here::

    map_frames([FrameRequest(frame_id, "/data/cam.mp4", frame_index=42, timestamp_s=1.4)],
               fn=lambda request, rgb: rgb.shape, on_error=lambda reason: None)

Still images with :func:`transforms.decode.images.decode_image` (EXIF orientation applied),
video frames with :func:`transforms.decode.video.plan_video` /
:func:`~transforms.decode.video.decode_range`, by ``frame_index`` (the rank of the frame's
presentation time, the same on every decoding). A video is planned once and cut at its
keyframes; only the keyframe intervals that hold a wanted frame are decoded, and decoding of an
interval stops at its last wanted frame. ``gs://`` sources are copied to a temporary file first.
"""
import concurrent.futures
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

import numpy as np

from transforms.common.files import local_copy
from transforms.decode.images import decode_image
from transforms.decode.video import ALL, Sampling, VideoFrame, decode_range, plan_video, split_ranges


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


def map_frames(requests: Iterable[FrameRequest], fn: Callable[[FrameRequest, np.ndarray], object],
               on_error: Callable[[str], object], workers: int = 2) -> Dict[str, object]:
    """``fn(request, rgb)`` for every requested frame, decoded again from its source as the job
    decoded it (RGB uint8, ``(H, W, 3)``, full resolution); ``on_error(reason)`` for a frame that
    cannot be. Each source is opened once; ``workers`` sources in parallel.

    Returns
    -------
    dict
        ``frame_id -> fn's (or on_error's) result``, one per request.
    """
    by_source: Dict[str, List[FrameRequest]] = {}
    for request in requests:
        by_source.setdefault(request.source_uri, []).append(request)
    out: Dict[str, object] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for result in pool.map(lambda item: _render_source(*item, fn, on_error), by_source.items()):
            out.update(result)
    return out


def _render_source(source_uri: str, requests: List[FrameRequest], fn, on_error) -> Dict[str, object]:
    """Pictures of the requested frames of one source file (any failure is per frame)."""
    try:
        with local_copy(source_uri) as path:
            if all(r.timestamp_s is None for r in requests):
                with open(path, "rb") as f:
                    rgb = decode_image(f.read()).pixels
                return {r.frame_id: fn(r, rgb) for r in requests}
            return _render_video(path, requests, fn, on_error)
    except Exception as e:  # noqa: BLE001 - a missing or changed source spoils its own frames only
        error = f"{type(e).__name__}: {e}"[:300]
        return {r.frame_id: on_error(error) for r in requests}


def _render_video(path: str, requests: List[FrameRequest], fn, on_error) -> Dict[str, object]:
    wanted = {}
    for r in requests:
        wanted.setdefault(int(r.frame_index), []).append(r)
    plan = plan_video(path)
    out: Dict[str, object] = {}
    # split_seconds ~0: one range per keyframe interval, so only the intervals holding a wanted
    # frame are decoded.
    for video_range in split_ranges(plan, path, 1e-9):
        first, last = video_range.first_index, video_range.first_index + len(video_range.pts) - 1
        todo = {i for i in wanted if first <= i <= last}
        for item in decode_range(path, video_range, Sampling(ALL)) if todo else ():
            if isinstance(item, VideoFrame) and item.frame_index in todo:
                for r in wanted[item.frame_index]:
                    out[r.frame_id] = fn(r, item.pixels)
                todo.discard(item.frame_index)
                if not todo:
                    break
    for r in requests:
        if r.frame_id not in out:
            out[r.frame_id] = on_error(f"frame {r.frame_index} not found in the video ({plan.info.frame_count} frames)")
    return out

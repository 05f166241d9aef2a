"""Frames decoded again from their sources, by ``frame_index``, the way the ``mine`` job decoded them.

Reads its sources through Beam's filesystems (local paths or ``gs://``); the report's pictures and the
pictures annotators see come from here::

    map_frames([FrameRequest(frame_id, "/data/cam.mp4", frame_index=42, timestamp_s=1.4)],
               fn=lambda request, rgb: rgb.shape, on_error=lambda reason: None)

Still images with :func:`transforms.decode.images.decode_image` (EXIF orientation applied),
video frames with :func:`transforms.decode.video.plan_video` /
:class:`~transforms.decode.video.RangeDecoder`, by ``frame_index`` (the rank of the frame's
presentation time, the same on every decoding): :func:`frames_again`, one pass per video that
decodes only the keyframe intervals holding a wanted frame and converts only the wanted frames.
``gs://`` sources are copied to a temporary file first.
"""
import concurrent.futures
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from transforms.common.files import local_copy
from transforms.decode.images import DEFAULT_MAX_PIXELS, decode_image
from transforms.decode.video import RangeDecoder, VideoFrame, VideoPlan, plan_video, split_ranges


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


def frames_again(path: str, frame_indices: Iterable[int], still: bool, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 max_side: Optional[int] = None, plan: Optional[VideoPlan] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """``(frame_index, rgb)`` for each of ``frame_indices`` found in the local file ``path``,
    decoded as the ``mine`` job decoded it: a still image (``still``: its one picture) with
    :func:`~transforms.decode.images.decode_image` and the job's ``max_pixels``/``max_side``, a
    video in one pass that feeds the decoder only the keyframe intervals holding a wanted frame and
    converts only the wanted frames (:class:`~transforms.decode.video.RangeDecoder` with
    ``wanted``), in presentation order; it stops after the last one. A frame the file does not
    hold is not yielded. RGB ``uint8`` ``(H, W, 3)``.

    Raises
    ------
    DecodeError, OSError
        When the file cannot be read or decoded at all.
    """
    indices = set(int(i) for i in frame_indices)
    if still:  # one picture, whatever index is asked for
        if indices:
            with open(path, "rb") as f:
                pixels = decode_image(f.read(), "image", max_pixels, max_side).pixels
            yield from ((i, pixels) for i in sorted(indices))
        return
    whole = split_ranges(plan or plan_video(path), path, None)[0]
    wanted = {whole.pts[i - whole.first_index] for i in indices if 0 <= i - whole.first_index < len(whole.pts)}
    left = len(wanted)
    for item in RangeDecoder(whole, wanted=wanted).decode(path) if left else ():
        if isinstance(item, VideoFrame):
            yield item.frame_index, item.pixels
            left -= 1
            if not left:
                return


def _render_source(source_uri: str, requests: List[FrameRequest], fn, on_error) -> Dict[str, object]:
    """Pictures of the requested frames of one source file (any failure is per frame)."""
    try:
        with local_copy(source_uri) as path:
            return _render(path, requests, fn, on_error)
    except Exception as e:  # noqa: BLE001 - a missing or changed source spoils its own frames only
        error = f"{type(e).__name__}: {e}"[:300]
        return {r.frame_id: on_error(error) for r in requests}


def _render(path: str, requests: List[FrameRequest], fn, on_error) -> Dict[str, object]:
    wanted: Dict[int, List[FrameRequest]] = {}
    for r in requests:
        wanted.setdefault(int(r.frame_index), []).append(r)
    still = all(r.timestamp_s is None for r in requests)
    plan = None if still else plan_video(path)
    out: Dict[str, object] = {}
    for index, rgb in frames_again(path, wanted, still, plan=plan):
        for r in wanted[index]:
            out[r.frame_id] = fn(r, rgb)
    for r in requests:
        if r.frame_id not in out:  # (a still image always has its picture)
            out[r.frame_id] = on_error(f"frame {r.frame_index} not found in the video ({plan.info.frame_count} frames)")
    return out

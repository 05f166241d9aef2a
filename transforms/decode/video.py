"""Video decoding with PyAV: a cheap demux-only plan, time ranges, sampled decoding.

Pure functions, no Beam::

    plan = plan_video(path)                       # demuxes packets only: no frame is decoded
    plan.info                                     # codec, fps, duration, frame count, resolution
    for video_range in split_ranges(plan, split_seconds=60):
        for item in decode_range(path, video_range, Sampling("fps", fps=1.0)):
            ...                                   # VideoFrame, then one RangeReport

Why PyAV rather than OpenCV's ``VideoCapture``: measured on this project's machines (see
``docs/decoding.md``) both decode and convert at the same speed single-threaded (PyAV's
``to_ndarray("rgb24")`` is the same swscale conversion as OpenCV's, pixel for pixel), but only
PyAV exposes the container's presentation timestamps, keyframe flags, seeking and per-packet
``skip_frame``, which sampling and range splitting need.

Planning reads every packet header of the video stream (no decoding; its cost is in
docs/timings.md) and records each coded frame's presentation time (pts). A frame's ``frame_index`` is
its rank among those pts: exact, independent of which worker decodes it, and unchanged by
decoding failures elsewhere. Ranges start on keyframes, so no frame is decoded by two ranges
(except the leading B-frames of an open GOP, see :func:`decode_range`).

Frames that are not sampled are never converted to RGB. Groups of pictures (keyframe to next
keyframe) holding no sampled frame are not decoded at all, and inside a decoded group, decoding
stops after the last sampled frame and non-reference frames that are not sampled are skipped
(``skip_frame = "NONREF"``): sampling 1 fps of a stream with 1-second keyframe intervals decodes
only the keyframes.
"""
import bisect
import math
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from transforms.decode.media_types import DecodeError

ALL, EVERY_N, FPS, KEYFRAMES, SCENE = "all", "every_n", "fps", "keyframes", "scene"
MODES = (ALL, EVERY_N, FPS, KEYFRAMES, SCENE)
SCENE_THUMBNAIL = (64, 36)  # width, height of the grey thumbnails compared for scene changes


class Sampling(NamedTuple):
    """Which frames of a video are kept.

    ``mode``: ``all`` (every frame); ``every_n`` (frames whose index is a multiple of
    ``every_n``); ``fps`` (the first frame of every ``1/fps`` second interval of presentation
    time; ``fps <= 0`` means every frame); ``keyframes`` (intra-coded frames only, nothing else is
    decoded); ``scene`` (the first frame, then each frame whose mean absolute difference from the
    previous frame, on 64x36 grey thumbnails scaled to [0, 1], is at least ``scene_threshold``;
    the content-change score of Lienhart, "Comparison of automatic shot boundary detection
    algorithms", SPIE 1999, also used by FFmpeg's ``select=gt(scene,T)`` filter).
    """
    mode: str = FPS
    every_n: int = 1
    fps: float = 1.0
    scene_threshold: float = 0.3

    def validated(self) -> "Sampling":
        if self.mode not in MODES:
            raise ValueError(f"sampling mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.every_n, int) or self.every_n < 1:
            raise ValueError(f"every_n must be an integer >= 1, got {self.every_n!r}")
        if not isinstance(self.fps, (int, float)) or math.isnan(self.fps):
            raise ValueError(f"video_fps must be a number (<= 0 for every frame), got {self.fps!r}")
        if not 0 < self.scene_threshold <= 1:
            raise ValueError(f"scene_threshold must be in (0, 1], got {self.scene_threshold!r}")
        return self


class VideoInfo(NamedTuple):
    """Facts about a video file, recorded once per file.

    ``frame_count`` is the number of coded frames found by demuxing; ``declared_frames`` what the
    container header states (0 if nothing); they differ for variable-frame-rate files (e.g. AVI
    with empty "drop" chunks) and for truncated files. Times in seconds.
    """
    codec: str
    width: int
    height: int
    fps: float  # the container's average frame rate
    duration_s: float  # presentation time span of the coded frames
    frame_count: int
    declared_frames: int
    declared_duration_s: Optional[float]
    keyframes: int
    creation_time: Optional[str] = None  # the container's creation_time tag, as written (UTC)

    def to_json_dict(self) -> dict:
        return self._asdict()


class VideoPlan(NamedTuple):
    """Result of :func:`plan_video`. ``pts``: sorted presentation times (stream time base) of the
    coded frames; ``keyframe_pts``: sorted pts of keyframes; ``truncated``: why the container
    ends before what its header declares, or None."""
    info: VideoInfo
    time_base: Tuple[int, int]
    pts: np.ndarray  # int64 (frame_count,)
    keyframe_pts: np.ndarray  # int64 (keyframes,)
    truncated: Optional[str]


class VideoRange(NamedTuple):
    """A time range ``[start_pts, end_pts)`` of one video, decoded by one worker.

    ``pts`` are the presentation times of the coded frames in the range (sorted) and
    ``first_index`` the frame index of the first one; ``keyframe_pts`` the keyframes in range.
    Timestamps are counted from ``origin_pts``, the first frame of the video (an MPEG-TS stream
    typically starts at 1.4 s).
    ``end_pts`` None means to the end of the stream.
    """
    source_uri: str
    range_index: int
    ranges: int
    start_pts: int
    end_pts: Optional[int]
    first_index: int
    time_base: Tuple[int, int]
    pts: Tuple[int, ...]
    keyframe_pts: Tuple[int, ...]
    previous_pts: Optional[int] = None  # pts of the last frame before the range
    origin_pts: int = 0  # pts of the video's first frame: timestamps count from it


class VideoFrame(NamedTuple):
    frame_index: int
    timestamp_s: float
    pixels: np.ndarray  # uint8 (height, width, 3) RGB


class RangeReport(NamedTuple):
    """What decoding one range achieved: yielded last by :func:`decode_range`.

    ``wanted``: frames the sampling selected; ``emitted``: frames yielded; ``missing``: selected
    frames that did not decode; ``first_missing_s``: presentation time of the first of them;
    ``error``: the first decoder error message, if any; ``decoded``: frames the codec decoded.
    """
    wanted: int
    emitted: int
    missing: int
    first_missing_s: Optional[float]
    error: Optional[str]
    decoded: int


def _seconds(pts: int, time_base: Tuple[int, int]) -> float:
    return round(pts * time_base[0] / time_base[1], 6)


def _open(source, threads: int = 1):
    import av
    try:
        container = av.open(source, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise DecodeError(f"FFmpeg could not open the container: {e}", "unreadable_container") from e
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        container.close()
        raise DecodeError(f"the file holds no video stream (streams: {kinds})", "no_video_stream")
    stream = container.streams.video[0]
    if threads == 1:
        stream.thread_type = "NONE"
    else:
        stream.thread_type = "AUTO"
        stream.thread_count = threads
    return container, stream


def _is_frame_packet(packet) -> bool:
    # Empty packets are AVI "drop" chunks (no new frame); discarded ones are cut by an edit list.
    return packet.size > 0 and packet.pts is not None and not packet.is_discard


def plan_video(source) -> VideoPlan:
    """Demuxes a video's packets (no decoding) to list its frames' presentation times.

    Parameters
    ----------
    source : str or file object
        Local path, or a seekable binary file object (e.g. from ``FileSystems.open``).

    Returns
    -------
    VideoPlan

    Raises
    ------
    DecodeError
        ``no_video_stream`` (e.g. an audio-only file), ``no_frames`` (a video stream without a
        single coded frame), ``unreadable_container``.
    """
    import av
    container, stream = _open(source)
    with container:
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                if _is_frame_packet(packet):
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
        except av.error.FFmpegError:
            pass  # a damaged tail: the frames before it are planned, the shortfall reported below
        time_base = (stream.time_base.numerator, stream.time_base.denominator)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        declared = int(stream.frames or 0)
        # What the header promises: the stream's duration, or its frame count at the average
        # rate (an AVI without its index reports the duration of the packets actually present).
        promised = [_seconds(stream.duration, time_base) if stream.duration else 0.0,
                    declared / fps if declared and fps else 0.0]
        declared_duration = max(promised) or None
        codec = stream.codec_context.name
        intra_only = stream.codec_context.codec.intra_only
        width, height = stream.codec_context.width, stream.codec_context.height
        creation_time = container.metadata.get("creation_time") or stream.metadata.get("creation_time")
    if not pts:
        raise DecodeError("the video stream holds no coded frame (zero-frame video)", "no_frames")
    pts_array = np.unique(np.asarray(pts, dtype=np.int64))
    if not keys or (len(keys) == len(pts) and len(pts) > 1 and not intra_only):
        # No keyframe flags, or every packet flagged (an AVI without its index): only the first
        # frame is known to be decodable on its own, so the video is not split.
        keys = [int(pts_array[0])]
    frame_s = 1.0 / fps if fps else 0.0
    first_s, last_s = _seconds(int(pts_array[0]), time_base), _seconds(int(pts_array[-1]), time_base)
    duration = round(last_s - first_s + frame_s, 6)
    truncated = None
    if declared_duration and last_s + frame_s < declared_duration - max(1.0, 3 * frame_s):
        truncated = (f"the container ends at {last_s + frame_s:.3f} s but declares "
                     f"{declared_duration:.3f} s ({declared or 'unknown'} frames): the file is "
                     f"truncated and {len(pts_array)} frames are present")
    info = VideoInfo(codec, int(width), int(height), round(fps, 6), duration, len(pts_array),
                     declared, declared_duration, len(set(keys)), creation_time)
    return VideoPlan(info, time_base, pts_array, np.unique(np.asarray(keys, dtype=np.int64)), truncated)


def split_ranges(plan: VideoPlan, source_uri: str, split_seconds: Optional[float]) -> List[VideoRange]:
    """Cuts a planned video into ranges of at least ``split_seconds`` that start on keyframes.

    Every frame belongs to exactly one range, by its pts: ``start_pts <= pts < end_pts``. A video
    whose keyframes are further apart than ``split_seconds`` gets fewer, longer ranges; ``None``
    or ``<= 0`` gives one range.
    """
    pts, keys = plan.pts, plan.keyframe_pts
    starts = [int(pts[0])]
    if split_seconds and split_seconds > 0:
        step = split_seconds * plan.time_base[1] / plan.time_base[0]
        for key in keys:
            if key - starts[-1] >= step:
                starts.append(int(key))
    ranges = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else None
        lo = int(np.searchsorted(pts, start, "left"))
        hi = len(pts) if end is None else int(np.searchsorted(pts, end, "left"))
        k_lo = int(np.searchsorted(keys, start, "left"))
        k_hi = len(keys) if end is None else int(np.searchsorted(keys, end, "left"))
        ranges.append(VideoRange(source_uri, i, len(starts), start, end, lo, plan.time_base,
                                 tuple(int(p) for p in pts[lo:hi]),
                                 tuple(int(k) for k in keys[k_lo:k_hi]),
                                 int(pts[lo - 1]) if lo > 0 else None, int(pts[0])))
    return ranges


def wanted_pts(video_range: VideoRange, sampling: Sampling) -> Optional[set]:
    """The pts of the range's frames that ``sampling`` keeps; None for ``scene`` (decided on
    the pixels). ``fps`` intervals and ``every_n`` indexes are absolute, so ranges agree."""
    pts = video_range.pts
    if sampling.mode == ALL or (sampling.mode == FPS and sampling.fps <= 0):
        return set(pts)
    if sampling.mode == KEYFRAMES:
        return set(video_range.keyframe_pts)
    if sampling.mode == EVERY_N:
        offset = (-video_range.first_index) % sampling.every_n
        return set(pts[offset::sampling.every_n])
    if sampling.mode == FPS:
        num, den = video_range.time_base
        # A frame is kept if it is the first of its interval: its bucket differs from that of
        # the frame before it (for the first frame of a range, the last frame of the previous one).
        before = [] if video_range.previous_pts is None else [video_range.previous_pts]
        relative = np.asarray(before + list(pts), dtype=np.float64) - video_range.origin_pts
        buckets = np.floor(relative * num / den * sampling.fps + 1e-6)
        wanted, last_bucket = set(), (buckets[0] if before else None)
        for p, bucket in zip(pts, buckets[len(before):]):
            if bucket != last_bucket:
                wanted.add(p)
                last_bucket = bucket
        return wanted
    return None


def _thumbnail(frame) -> np.ndarray:
    grey = frame.reformat(width=SCENE_THUMBNAIL[0], height=SCENE_THUMBNAIL[1], format="gray")
    return grey.to_ndarray().astype(np.float32) / 255.0


# Colour spaces whose YUV -> RGB matrix is BT.601, what OpenCV's I420 conversion implements:
# AVCOL_SPC_BT470BG, AVCOL_SPC_SMPTE170M and unspecified (which FFmpeg's swscale also reads as 601).
_BT601_COLORSPACES = (2, 5, 6)
_LIMITED_RANGE = (0, 1)  # AVCOL_RANGE_UNSPECIFIED, AVCOL_RANGE_MPEG


def to_rgb(frame, reformatter) -> np.ndarray:
    """A decoded frame as RGB ``uint8`` ``(height, width, 3)``.

    The common case, 4:2:0 planar BT.601 limited range (most camera H.264, MPEG-4), is converted
    by OpenCV's SIMD ``COLOR_YUV2RGB_I420`` (about three times faster than swscale through PyAV;
    timings in docs/timings.md; OpenCV replicates chroma where swscale interpolates it: mean
    difference 1 grey level, 99th percentile 2). Every other layout, matrix or range
    goes through FFmpeg's swscale via ``reformatter`` (a ``VideoReformatter`` kept per range).
    """
    import cv2
    if (frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0
            and frame.colorspace in _BT601_COLORSPACES and frame.color_range in _LIMITED_RANGE):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def upright(rgb: np.ndarray, rotation) -> np.ndarray:
    """Applies a frame's display rotation, as players (and ``ffmpeg``'s autorotate) do.

    Phone cameras store portrait video as landscape pictures plus a display matrix; PyAV
    exposes its angle as ``VideoFrame.rotation`` (degrees counter-clockwise, a multiple of 90).

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
    rotation : int or None
        Degrees counter-clockwise; 0 or None leaves the frame as it is.

    Returns
    -------
    ndarray of uint8, C-contiguous, shape (H, W, 3) or (W, H, 3) for quarter turns.
    """
    quarter_turns = (int(round((rotation or 0) / 90.0))) % 4
    if not quarter_turns:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns))


def _group_of(keys: Sequence[int], pts: int, default: int) -> int:
    """The keyframe that starts the decode group of a frame with presentation time ``pts``."""
    i = bisect.bisect_right(keys, pts) - 1
    return keys[i] if i >= 0 else default


def scene_score(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference of two grey thumbnails in [0, 1] (0 identical, 1 black/white)."""
    return float(np.mean(np.abs(current - previous)))


def decode_range(source, video_range: VideoRange, sampling: Sampling = Sampling(),
                 threads: int = 1) -> Iterator:
    """Decodes the sampled frames of one range of a video (see :class:`RangeDecoder`).

    Seeks to the range's first keyframe, feeds the decoder only the packets needed for the
    sampled frames, and converts only those to RGB. A frame belongs to the range by its pts.
    Leading B-frames of an open GOP that follow the next range's keyframe in decode order but
    precede it in presentation order are decoded here, which decodes that keyframe twice.

    Parameters
    ----------
    source : str or file object
        Local path or seekable binary file object of the video.
    video_range : VideoRange
        From :func:`split_ranges`.
    sampling : Sampling
    threads : int
        Decoder threads; 1 (default) is fastest per core when workers decode files in parallel.

    Yields
    ------
    VideoFrame
        Sampled frames in the decoder's output order (presentation order, except in files whose
        container pts disagree with it, like box.mp4): ``frame_index`` (rank of the pts),
        ``timestamp_s`` (container pts in seconds from the first frame), RGB ``uint8``
        ``(height, width, 3)``.
    RangeReport
        Once, last: how many sampled frames were expected, emitted and missing, and why.

    Raises
    ------
    DecodeError
        If the container cannot be opened or has no video stream.
    """
    yield from RangeDecoder(video_range, sampling).decode(source, threads)


class RangeDecoder:
    """The decoding of one :class:`VideoRange`: which packets to feed, which frames to keep.

    One instance per range and per decoding (it holds the range's progress). Wanted frames are
    tracked per decode group (keyframe interval, by pts): a group with none left to feed is not
    decoded at all, and one whose last wanted frame is in the decoder is drained at once.
    """

    def __init__(self, video_range: VideoRange, sampling: Sampling = Sampling(), wanted: Optional[set] = None):
        """``wanted``: the pts to decode, instead of those ``sampling`` keeps (frames decoded
        again by their ``frame_index``: :mod:`transforms.score.two_stage`)."""
        self._range = video_range
        self._sampling = sampling
        if wanted is not None:
            self._wanted = set(wanted) & set(video_range.pts)
        else:
            self._wanted = wanted_pts(video_range, sampling)  # None: decided on the pixels (scene)
        self._pending = {}  # group -> wanted pts not yet emitted
        for p in self._wanted or ():
            self._pending.setdefault(self._group_of(p), set()).add(p)
        self._unfed = {group: set(members) for group, members in self._pending.items()}
        self._skipping = (self._wanted is not None and (wanted is not None or sampling.mode != ALL)
                          and len(self._wanted) < len(video_range.pts))
        self._emitted, self._seen, self._decoded, self._first_error = [], set(), 0, None
        self._previous_thumb = None
        self._codec = self._reformatter = None

    def decode(self, source, threads: int = 1) -> Iterator:
        """Yields the range's sampled ``VideoFrame``\\ s, then its ``RangeReport``."""
        import av
        from av.video.reformatter import VideoReformatter
        self._reformatter = VideoReformatter()
        container, stream = _open(source, threads)
        with container:
            self._codec = stream.codec_context
            group = self._first_group(container, stream)
            try:
                yield from self._demux(container, stream, group)
            except av.error.FFmpegError as e:  # the demuxer itself failed: damaged container
                self._note_error(f"demuxing failed: {e}")
            self._codec.skip_frame = "DEFAULT"
            yield from self._feed(None)  # drain the decoder's delayed frames
        yield self._report()

    def _group_of(self, pts: int) -> int:
        return _group_of(self._range.keyframe_pts, pts, self._range.start_pts)

    def _first_group(self, container, stream) -> Optional[int]:
        """Positions the demuxer for the range; returns the decode group it starts in, or None
        until the range's first keyframe is read (range 0 decodes from the first packet:
        edit-list priming frames may precede its first keyframe)."""
        video_range = self._range
        if video_range.range_index == 0:
            return video_range.keyframe_pts[0] if video_range.keyframe_pts else video_range.start_pts
        container.seek(video_range.start_pts, stream=stream, backward=True, any_frame=False)
        # Containers without an index (MPEG program streams, raw elementary streams) seek by
        # estimated byte position and can land after the range's first keyframe: then every
        # frame of the range would be missed. Check the first packet; if it is past the start,
        # demux from the beginning of the file instead (slower, but no frame is lost).
        first = next((p for p in container.demux(stream) if p.pts is not None and _is_frame_packet(p)), None)
        if first is not None and first.pts <= video_range.start_pts:
            container.seek(video_range.start_pts, stream=stream, backward=True, any_frame=False)
        else:
            container.seek(0, backward=True, any_frame=False)
        return None

    def _demux(self, container, stream, group: Optional[int]) -> Iterator[VideoFrame]:
        """Feeds the packets of the range's groups, up to the next range's first keyframe."""
        video_range = self._range
        packets = iter(container.demux(stream))
        for packet in packets:
            p = packet.pts
            if p is None and packet.dts is None:
                continue  # the demuxer's end-of-stream marker
            if packet.is_keyframe and p is not None and _is_frame_packet(packet):
                if video_range.end_pts is not None and p >= video_range.end_pts:
                    yield from self._leading_frames(packets, boundary=packet)
                    return
                if p >= video_range.start_pts:
                    group = p
            if group is None:
                continue  # before the range's first keyframe (the seek landed earlier)
            if self._skipping:
                yield from self._feed_sampled(packet, group)
            else:
                yield from self._feed(packet)

    def _leading_frames(self, packets, boundary) -> Iterator[VideoFrame]:
        """After the next range's first keyframe (``boundary``, held back), only leading B-frames
        of an open GOP (pts before the boundary) still belong here: they need the keyframe."""
        boundary_fed = False
        for packet in packets:
            p = packet.pts
            if p is None and packet.dts is None:
                continue
            if p is None or p >= boundary.pts or self._nothing_pending():
                return
            if not boundary_fed:
                yield from self._feed(boundary)
                boundary_fed = True
            yield from self._feed(packet)

    def _feed_sampled(self, packet, group: int) -> Iterator[VideoFrame]:
        """Feeds a packet of a group that still holds wanted frames, skipping non-reference
        frames that are not wanted; drains the decoder once the group's last wanted frame is in."""
        unfed = self._unfed.get(group)
        if not unfed:
            return  # nothing (left) to sample in this group: not decoded at all
        self._codec.skip_frame = "DEFAULT" if packet.pts in self._wanted or packet.is_keyframe else "NONREF"
        unfed.discard(packet.pts)
        yield from self._feed(packet)
        if not unfed:
            # Every sampled frame of the group is in the decoder: drain it instead of decoding
            # later frames just to push the delayed ones out.
            self._codec.skip_frame = "DEFAULT"
            yield from self._feed(None)
            self._codec.flush_buffers()

    def _nothing_pending(self) -> bool:
        return self._wanted is not None and not any(self._pending.values())

    def _feed(self, packet) -> Iterator[VideoFrame]:
        """Sends one packet (None: end of stream) to the decoder; yields the frames kept."""
        import av
        try:
            frames = self._codec.decode(packet)
        except av.error.FFmpegError as e:
            where = ("at the end of the stream" if packet is None or packet.pts is None else
                     f"at {self._seconds(packet.pts):.3f} s")
            self._note_error(f"decoder error {where}: {e}")
            return
        for frame in frames:
            self._decoded += 1
            item = self._take(frame)
            if item is not None:
                yield item

    def _take(self, frame) -> Optional[VideoFrame]:
        """The decoded frame as a ``VideoFrame`` if it is in the range, new and sampled."""
        p = frame.pts
        end = self._range.end_pts
        if p is None or p in self._seen or p < self._range.start_pts or (end is not None and p >= end):
            return None
        self._seen.add(p)
        if not self._keep(frame, p):
            return None
        index = self._range.first_index + bisect.bisect_left(self._range.pts, p)
        self._emitted.append(p)
        rgb = upright(to_rgb(frame, self._reformatter), getattr(frame, "rotation", 0))
        return VideoFrame(index, self._seconds(p), rgb)

    def _keep(self, frame, p: int) -> bool:
        """Whether the sampling keeps a frame seen for the first time (scene: on its pixels)."""
        if self._wanted is None:  # scene change
            thumb = _thumbnail(frame)
            keep = (self._previous_thumb is None
                    or scene_score(self._previous_thumb, thumb) >= self._sampling.scene_threshold)
            self._previous_thumb = thumb
            return keep
        if p not in self._wanted:
            return False
        self._pending[self._group_of(p)].discard(p)
        return True

    def _note_error(self, message: str):
        self._first_error = self._first_error or message

    def _seconds(self, pts: int) -> float:
        """Presentation time from the video's first frame, in seconds."""
        return _seconds(pts - self._range.origin_pts, self._range.time_base)

    def _report(self) -> RangeReport:
        pts = self._range.pts
        if self._wanted is None:
            expected, missing = len(pts), sorted(set(pts) - self._seen)
        else:
            expected, missing = len(self._wanted), sorted(self._wanted - set(self._emitted))
        return RangeReport(expected, len(self._emitted), len(missing),
                           self._seconds(missing[0]) if missing else None, self._first_error,
                           self._decoded)


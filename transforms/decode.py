"""Decoding of image files and video streams into frames.

``DecodeMedia`` turns a PCollection of file globs (local paths or any Beam filesystem, e.g.
``gs://``) into decoded frames, one :class:`~schemas.records.FileOutcome` per matched file and
dead letters for everything that could not be decoded::

    decoded = patterns | DecodeMedia(video_fps=1.0)
    decoded.frames        # PCollection[Frame]: RGB uint8 pixels and metadata
    decoded.outcomes      # PCollection[FileOutcome]: one per matched file
    decoded.dead_letters  # PCollection[DeadLetter]: globs matching nothing, unreadable or
                          #   undecodable files, video streams that stop part-way

The media type is decided by the file's content (magic bytes), never by its extension. Still
images are decoded with OpenCV (``cv2.imdecode``, EXIF orientation applied); videos with OpenCV's
FFmpeg backend, sampling frames at ``video_fps`` with timestamps from the container's
presentation times. Frames that are not sampled are grabbed but not converted to RGB.

The pure functions (:func:`sniff_media_type`, :func:`decode_image`, :func:`iter_video_frames`)
do not depend on Beam.
"""
import hashlib
import logging
import math
import os
from typing import Iterator, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import records
from schemas.records import DeadLetter, FileOutcome, Frame
from transforms.files import is_local, local_copy

_LOG = logging.getLogger(__name__)
_NAMESPACE = "activebeam.decode"
DEAD_LETTER = "dead_letter"
OUTCOME = "outcome"

IMAGE = "image"
VIDEO = "video"
_HEAD_BYTES = 512  # MPEG-TS needs two 188-byte packets to be recognised

# Leading bytes of the containers we recognise: (offset, magic, media type, format name).
_SIGNATURES = (
    (0, b"\xff\xd8\xff", IMAGE, "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", IMAGE, "PNG"),
    (0, b"GIF87a", IMAGE, "GIF"),
    (0, b"GIF89a", IMAGE, "GIF"),
    (0, b"BM", IMAGE, "BMP"),
    (0, b"II*\x00", IMAGE, "TIFF"),
    (0, b"MM\x00*", IMAGE, "TIFF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", IMAGE, "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", IMAGE, "JPEG 2000"),
    (0, b"\x1aE\xdf\xa3", VIDEO, "Matroska/WebM"),
    (0, b"FLV", VIDEO, "FLV"),
    (0, b"\x00\x00\x01\xba", VIDEO, "MPEG-PS"),
    (0, b"0&\xb2u\x8e\x66\xcf\x11", VIDEO, "ASF/WMV"),
    (0, b"OggS", VIDEO, "Ogg"),
)
_IMAGE_FTYP_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


class DecodeError(ValueError):
    """A file or frame that cannot be decoded; the message says why, for a person to act on."""


def sniff_media_type(head: bytes) -> Optional[Tuple[str, str]]:
    """Identifies a media container from the first bytes of a file.

    Parameters
    ----------
    head : bytes
        The first bytes of the file: 16 suffice for most containers, MPEG-TS needs 189.

    Returns
    -------
    (media_type, format) or None
        ``media_type`` is ``"image"`` or ``"video"``; ``format`` a human-readable container name.
        ``None`` when the bytes match no known image or video container.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGE, "WebP"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return VIDEO, "AVI"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_FTYP_BRANDS:
            return IMAGE, "HEIF/AVIF"
        return VIDEO, "MP4/QuickTime"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return VIDEO, "MPEG-TS"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return IMAGE, "PNM"
    for offset, magic, media_type, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return media_type, name
    return None


def decode_image(data: bytes, format_name: str = "image") -> np.ndarray:
    """Decodes an encoded still image to RGB.

    EXIF orientation is applied; grey, 16-bit and alpha images are converted to 8-bit RGB.

    Parameters
    ----------
    data : bytes
        The encoded file content.
    format_name : str
        Container name used in error messages.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(height, width, 3)``, RGB order.

    Raises
    ------
    DecodeError
        If OpenCV cannot decode the bytes (truncated or corrupt file, unsupported codec).
    """
    import cv2
    buffer = np.frombuffer(data, dtype=np.uint8)
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    image = cv2.imdecode(buffer, flag if flag is not None else cv2.IMREAD_COLOR)
    if image is None:
        raise DecodeError(
            f"OpenCV could not decode this {format_name} file ({len(data)} bytes): it is "
            f"truncated or corrupt, or uses a codec this OpenCV build lacks")
    if flag is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


class VideoFrame(NamedTuple):
    frame_index: int
    timestamp_s: float
    pixels: np.ndarray  # uint8 (height, width, 3) RGB


class VideoStreamStopped(NamedTuple):
    """Reported by :func:`iter_video_frames` when a stream ends before its declared frame count."""
    frames_read: int
    frames_declared: int
    last_timestamp_s: Optional[float]


def _is_sampled(timestamp_s: float, video_fps: float, last_bucket: int) -> Tuple[bool, int]:
    if video_fps <= 0:
        return True, last_bucket
    bucket = int(math.floor(timestamp_s * video_fps + 1e-6))
    return bucket > last_bucket, max(bucket, last_bucket)


def iter_video_frames(path: str, video_fps: float = 1.0) -> Iterator:
    """Decodes a local video file, yielding the sampled frames.

    A frame is sampled when it is the first one whose presentation time falls in a new
    ``1 / video_fps`` second interval; ``video_fps <= 0`` samples every frame. Frames that are not
    sampled are grabbed (demuxed and decoded) but not converted to RGB.

    Parameters
    ----------
    path : str
        Local path of the video file.
    video_fps : float
        Sampling rate in frames per second of presentation time.

    Yields
    ------
    VideoFrame
        ``frame_index`` (0-based index in the stream), ``timestamp_s`` (presentation time, seconds)
        and RGB ``uint8`` pixels ``(height, width, 3)``.
    VideoStreamStopped
        Once, last, if the stream stopped decoding clearly before (more than 2 frames and 1%)
        the frame count its container declares.

    Raises
    ------
    DecodeError
        If the container cannot be opened or holds no decodable video frame.
    """
    import cv2
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise DecodeError("FFmpeg could not open the video container (corrupt file, "
                              "no video stream, or an unsupported codec)")
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        nominal_fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        frames_read = 0
        last_bucket = -1
        timestamp_s = None
        while capture.grab():
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            if position_ms is None or position_ms < 0 or (position_ms == 0 and frames_read > 0):
                # No usable presentation time: fall back to the nominal frame rate.
                position_ms = 1000.0 * frames_read / nominal_fps if nominal_fps else 0.0
            timestamp_s = round(position_ms / 1000.0, 6)
            sampled, last_bucket = _is_sampled(timestamp_s, video_fps, last_bucket)
            if sampled:
                ok, bgr = capture.retrieve()
                if ok and bgr is not None:
                    yield VideoFrame(frames_read, timestamp_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            frames_read += 1
        if frames_read == 0:
            raise DecodeError("the video stream holds no decodable frame")
        # Container frame counts can be off by a frame or two (edit lists, B-frame delay).
        if declared and declared - frames_read > max(2, 0.01 * declared):
            yield VideoStreamStopped(frames_read, declared, timestamp_s)
    finally:
        capture.release()


def pixel_hash(pixels: np.ndarray) -> str:
    """blake2b-128 (hex) of a frame's shape and pixel bytes: equal only for identical frames."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(pixels.shape).encode("ascii"))
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def _make_frame(source_uri, frame_index, timestamp_s, media_type, pixels) -> Frame:
    height, width = pixels.shape[:2]
    return Frame(
        frame_id=records.make_frame_id(source_uri, frame_index),
        source_uri=source_uri, frame_index=frame_index, timestamp_s=timestamp_s,
        width=int(width), height=int(height), media_type=media_type,
        pixel_hash=pixel_hash(pixels), pixels=pixels)


class _MatchFn(beam.DoFn):
    """Expands a glob to file paths; a glob that matches nothing becomes a dead letter."""

    def __init__(self):
        self._files = Metrics.counter(_NAMESPACE, "files_matched")
        self._empty = Metrics.counter(_NAMESPACE, "globs_without_match")

    def process(self, pattern: str):
        local = is_local(pattern)
        if local and os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**")  # a directory means everything below it
        try:
            results = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # pylint: disable=broad-except
            self._empty.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                pattern, records.STAGE_MATCH, f"cannot list files matching this glob: {e}"))
            return
        files = [m for m in results
                 if not m.path.endswith("/") and not (local and os.path.isdir(m.path))]
        if not files:
            self._empty.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                pattern, records.STAGE_MATCH, "no file matches this glob"))
        for metadata in files:
            self._files.inc()
            yield metadata.path


class _DecodeFileFn(beam.DoFn):
    """Decodes one file into frames, with a FileOutcome and dead letters on tagged outputs."""

    def __init__(self, video_fps: float):
        self._video_fps = video_fps
        self._frames = Metrics.counter(_NAMESPACE, "frames_decoded")
        self._failed = Metrics.counter(_NAMESPACE, "files_failed")
        self._partial = Metrics.counter(_NAMESPACE, "videos_stopped_early")
        self._frames_per_video = Metrics.distribution(_NAMESPACE, "frames_per_video")

    def process(self, path: str):
        media_type, frames = None, 0
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                head = f.read(_HEAD_BYTES)
                sniffed = sniff_media_type(head)
                # An image is read whole while the file is open; a video is streamed later.
                data = head + f.read() if sniffed and sniffed[0] == IMAGE else None
        except Exception as e:  # pylint: disable=broad-except
            yield from self._fail(path, None, records.STAGE_READ, f"cannot read the file: {e}")
            return
        if not head:
            yield from self._fail(path, None, records.STAGE_DECODE, "empty file (0 bytes)")
            return
        if sniffed is None:
            yield from self._fail(path, None, records.STAGE_DECODE,
                                  f"not an image or video: the content matches no known container "
                                  f"(first bytes {head[:8]!r})")
            return
        media_type, format_name = sniffed
        try:
            if media_type == IMAGE:
                yield _make_frame(path, 0, None, IMAGE, decode_image(data, format_name))
                frames = 1
            else:
                for item in self._decode_video(path):
                    if isinstance(item, VideoStreamStopped):
                        self._partial.inc()
                        at = ("" if item.last_timestamp_s is None
                              else f" (last good frame at {item.last_timestamp_s:.3f} s)")
                        yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                            path, records.STAGE_DECODE,
                            f"{format_name} video stream stopped decoding after {item.frames_read} "
                            f"of {item.frames_declared} declared frames{at}; the rest of the file "
                            f"is corrupt or truncated and its frames are missing"))
                        continue
                    yield _make_frame(path, item.frame_index, item.timestamp_s, VIDEO, item.pixels)
                    frames += 1
                self._frames_per_video.update(frames)
        except DecodeError as e:
            yield from self._fail(path, media_type, records.STAGE_DECODE, str(e), frames)
            return
        except Exception as e:  # pylint: disable=broad-except
            _LOG.exception("unexpected error decoding %s", path)
            yield from self._fail(path, media_type, records.STAGE_DECODE,
                                  f"unexpected {type(e).__name__} while decoding: {e}", frames)
            return
        self._frames.inc(frames)
        yield beam.pvalue.TaggedOutput(OUTCOME, FileOutcome(path, media_type, frames, False))

    def _decode_video(self, path: str):
        # OpenCV reads local files only: a remote video is staged to a temporary local copy.
        with local_copy(path) as local:
            yield from iter_video_frames(local, self._video_fps)

    def _fail(self, path, media_type, stage, error, frames=0):
        """A file that yielded no frame is failed; one that yielded some keeps them."""
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(path, stage, error))
        failed = frames == 0
        if failed:
            self._failed.inc()
        else:
            self._frames.inc(frames)
        yield beam.pvalue.TaggedOutput(OUTCOME, FileOutcome(path, media_type, frames, failed))


class DecodedMedia(NamedTuple):
    frames: beam.PCollection
    outcomes: beam.PCollection
    dead_letters: beam.PCollection


class DecodeMedia(beam.PTransform):
    """Matches file globs and decodes every matched image and video into frames.

    Input: ``PCollection[str]`` of globs (``**`` matches across directories; a local directory
    stands for everything below it). Output: :class:`DecodedMedia`. A file matched by several
    globs is decoded once. Every matched file gets exactly one ``FileOutcome``; every failure a
    ``DeadLetter`` with the stage (``match``, ``read``, ``decode``) and a reason.

    Parameters
    ----------
    video_fps : float
        Frames sampled per second of video (presentation time); ``<= 0`` keeps every frame.
    """

    def __init__(self, video_fps: float = 1.0):
        super().__init__()
        if not isinstance(video_fps, (int, float)) or math.isnan(video_fps):
            raise ValueError(f"video_fps must be a number (<= 0 for every frame), got {video_fps!r}")
        self._video_fps = float(video_fps)

    def expand(self, patterns):
        matched = patterns | "MatchGlobs" >> beam.ParDo(_MatchFn()).with_outputs(
            DEAD_LETTER, main="paths")
        decoded = (
            matched.paths
            | "DistinctPaths" >> beam.Distinct()  # also spreads files across workers
            | "DecodeFiles" >> beam.ParDo(_DecodeFileFn(self._video_fps)).with_outputs(
                DEAD_LETTER, OUTCOME, main="frames"))
        dead_letters = ((matched[DEAD_LETTER], decoded[DEAD_LETTER])
                        | "FlattenDeadLetters" >> beam.Flatten())
        return DecodedMedia(decoded.frames, decoded[OUTCOME], dead_letters)

"""Decoding of image files and video streams into frames, at scale.

``DecodeMedia`` turns a PCollection of file globs (local paths or any Beam filesystem, e.g.
``gs://``) into decoded frames, one :class:`~schemas.records.FileOutcome` per matched file and
dead letters for everything that could not be decoded::

    decoded = patterns | DecodeMedia(video_fps=1.0)                  # the default: 1 frame/s
    decoded = patterns | DecodeMedia(sampling="scene", scene_threshold=0.25,
                                     max_side=1024, split_seconds=120)
    decoded.frames        # PCollection[Frame]: RGB uint8 pixels and metadata
    decoded.outcomes      # PCollection[FileOutcome]: one per matched file (videos: + video_info)
    decoded.dead_letters  # PCollection[DeadLetter]: globs matching nothing, unreadable or
                          #   undecodable files, one per video whose frames are partly missing

No single file can stop or hang the job: only regular files are opened (a FIFO, socket or device
matched by a glob is refused without blocking, :func:`transforms.common.files.open_regular_file`);
dangling symbolic links, files deleted after matching, names that are not valid UTF-8 are failed
files with a dead letter; directories matched as a whole by a glob without ``**``, symbolic links
to directories and unlistable directories get a dead letter at stage ``match``
(:func:`transforms.common.files.match_local`; docs/failures.md lists every case).

The media type is decided by the file's content (magic bytes, :mod:`transforms.decode.media_types`),
never by its extension. Still images are decoded by :mod:`transforms.decode.images` (header checked
against a pixel limit before decoding, EXIF orientation, optional resize). Videos are planned
from their packet headers (:mod:`transforms.decode.video`: no decoding), cut into time ranges starting
on keyframes, and the ranges are redistributed (``Reshuffle``) so that different workers decode
different parts of a long video; each range's report is gathered per file into one outcome and
at most one dead letter.

Metrics (namespace ``activebeam.decode``, :data:`METRICS_NAMESPACE`): ``files_matched``
(distinct files), ``files_decoded`` and ``files_failed`` (one of the two per matched file, as
the outcomes), ``globs_without_match``, ``images_decoded``, ``videos_planned``,
``video_ranges``, ``frames_decoded``, ``frames_missing``, ``failed_<stage>_<reason>`` per failure
reason, ``videos_incomplete``, ``directories_skipped``, distributions ``frames_per_video`` and
``decode_ms_per_image``.
"""
import logging
import math
import os
import time
from typing import Any, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import records
from schemas.records import DeadLetter, FileOutcome, Frame
from transforms.decode import video
from transforms.common import files
from transforms.common.files import is_local, is_valid_utf8, open_binary, printable_path
from transforms.decode.images import DEFAULT_MAX_PIXELS, decode_image
from transforms.decode.media_types import HEAD_BYTES, IMAGE, VIDEO, DecodeError, sniff_media_type
from transforms.decode.video import RangeReport, Sampling, VideoRange

__all__ = ["DecodeMedia", "DecodedMedia", "DecodeError", "decode_image", "sniff_media_type",
           "pixel_hash", "DEFAULT_SPLIT_SECONDS", "MatchFn", "PlanFileFn", "DecodeTaskFn"]

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "activebeam.decode"
DEAD_LETTER = records.DEAD_LETTER_TAG
OUTCOME = "outcome"
REPORTS = "reports"
DEFAULT_SPLIT_SECONDS = 60.0


def pixel_hash(pixels: np.ndarray) -> str:
    """MurmurHash3 x64 128-bit (hex) of a frame's shape and pixel bytes: equal for identical frames.

    A non-cryptographic hash is enough to find exact duplicates among camera frames (accidental
    collisions of 128-bit hashes are negligible; nobody forges frames to collide) and it is what
    keeps hashing from dominating decoding: several times faster than sha256 or blake2b, and
    faster than decoding the frame (timings in docs/timings.md).
    Reference: Appleby, SMHasher/MurmurHash3 (``mmh3`` package, ``mmh3_x64_128``).
    """
    import mmh3
    digest = mmh3.mmh3_x64_128(str(pixels.shape).encode("ascii"))
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.digest().hex()


def _make_frame(source_uri, frame_index, timestamp_s, media_type, pixels, **metadata) -> Frame:
    height, width = pixels.shape[:2]
    return Frame(
        frame_id=records.make_frame_id(source_uri, frame_index),
        source_uri=source_uri, frame_index=frame_index, timestamp_s=timestamp_s,
        width=int(width), height=int(height), media_type=media_type,
        pixel_hash=pixel_hash(pixels), pixels=pixels, **metadata)


def _open_video(uri: str):
    """A local path as is; a remote file as a seekable stream (PyAV reads it through Python)."""
    if is_local(uri):
        return uri
    return open_binary(uri)


def _close(source):
    if not isinstance(source, str):
        source.close()


class _VideoTask(NamedTuple):
    """One range of a video to decode, with the file facts every range's frames carry."""
    range: VideoRange
    format: str
    file_size: Optional[int]
    info: dict
    truncated: Optional[str]


def expand_pattern(pattern: str) -> str:
    """The glob ``DecodeMedia`` matches for an ``--input`` entry: a local directory means
    everything below it (``<dir>/**``); anything else is unchanged."""
    if FileSystems.get_scheme(pattern) is None and os.path.isdir(pattern):
        return os.path.join(pattern, "**")
    return pattern


def match_pattern(pattern: str) -> list:
    """The entries (:class:`~transforms.common.files.LocalMatch`) that ``DecodeMedia`` matches for
    an expanded glob (:func:`expand_pattern`): local globs by
    :func:`~transforms.common.files.match_local`, with their kinds; remote ones by Beam's
    ``FileSystems.match``, directories left out. Raises what the listing raises."""
    if FileSystems.get_scheme(pattern) is None:
        return list(files.match_local(pattern))
    return [files.LocalMatch(m.path, files.FILE) for m in FileSystems.match([pattern])[0].metadata_list
            if not m.path.endswith("/") and not (is_local(m.path) and os.path.isdir(m.path))]


class MatchFn(beam.DoFn):
    """Expands a glob to file paths. Local globs are matched by
    :func:`~transforms.common.files.match_local`, which reports what Beam's matcher drops:
    a glob matching nothing, a directory matched as a whole (without ``**``), a symbolic link
    to a directory, an unlistable directory each get a dead letter; a file whose name is not
    valid UTF-8 (which no record can carry) gets a dead letter and a failed outcome. Everything
    else that is not a directory goes on, to be refused when read if it is not a regular file."""

    def __init__(self):
        self._empty = Metrics.counter(METRICS_NAMESPACE, "globs_without_match")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "directories_skipped")

    def process(self, pattern: str):
        pattern = expand_pattern(pattern)
        try:
            entries = match_pattern(pattern)
        except Exception as e:  # pylint: disable=broad-except
            self._empty.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                pattern, records.STAGE_MATCH, f"cannot list files matching this glob: {e}"))
            return
        if not entries:
            self._empty.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                pattern, records.STAGE_MATCH, "no file matches this glob"))
        for entry in entries:
            if not is_valid_utf8(entry.path):
                Metrics.counter(METRICS_NAMESPACE, "files_matched").inc()
                yield from _fail(printable_path(entry.path), None, records.STAGE_MATCH, "bad_name",
                                 "the file name is not valid UTF-8 (it cannot be stored as a source "
                                 "URI): rename the file")
            elif entry.kind == files.FILE:
                yield entry.path
            else:
                self._skipped.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                    printable_path(entry.path), records.STAGE_MATCH, _NOT_READ[entry.kind].format(
                        pattern=pattern, error=entry.error)))


#: Dead-letter messages of matched entries that are not read, by ``LocalMatch.kind``.
_NOT_READ = {
    files.DIRECTORY: "a directory matched by the glob {pattern!r}: its files are not read "
                     "(name the directory itself, or use a ** glob, to read everything below it)",
    files.DIRECTORY_LINK: "a symbolic link to a directory: never followed (name the directory it "
                          "points to in --input to read it)",
    files.UNLISTABLE: "cannot list this directory ({error}): files below it were not matched",
}


def _read_failure(path, media_type, error: Exception):
    """Dead letter and failed outcome of a file that could not be opened or read, by cause."""
    if isinstance(error, files.NotARegularFile):
        reason = "not_regular_file"
    elif isinstance(error, files.DanglingSymlink):
        reason = "dangling_symlink"
    elif isinstance(error, FileNotFoundError):
        reason = "missing"
        error = f"the file disappeared after it was matched (deleted or moved): {error}"
    else:
        reason = "unreadable"
    return _fail(path, media_type, records.STAGE_READ, reason, f"cannot read the file: {error}")


def _fail(path, media_type, stage, reason, error):
    """Dead letter and failed outcome of a file that yielded no frame; counted per reason."""
    Metrics.counter(METRICS_NAMESPACE, "files_failed").inc()
    Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}_{reason}").inc()
    yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(path, stage, error))
    yield beam.pvalue.TaggedOutput(OUTCOME, FileOutcome(path, media_type, 0, True))


#: Files up to this size are read whole when sniffed and their bytes travel with the task, so
#: small images (thumbnails, crops, 28x28 sets) are opened once; larger ones are read again
#: where they are decoded (encoded bytes of large files never cross the fan-out).
SMALL_FILE_BYTES = 64 << 10


class _BundleCounter:
    """Counters that go up by one per file, added up in the DoFn and given to Beam once per
    bundle (``flush`` from ``finish_bundle``): a Beam counter's ``inc`` costs about a tenth of
    the per-file work of a 28x28 PNG besides its decoding (docs/timings.md). A failed bundle's counts
    are dropped with it, as Beam drops the bundle's own metric updates."""

    def __init__(self, *names: str):
        self._counters = [Metrics.counter(METRICS_NAMESPACE, name) for name in names]
        self._pending = 0

    def add(self):
        self._pending += 1

    def flush(self):
        if self._pending:
            for counter in self._counters:
                counter.inc(self._pending)
            self._pending = 0


class _ImageTask(NamedTuple):
    """An image file to decode after the fan-out (pixels never cross it): its path, format and,
    for a file of at most :data:`SMALL_FILE_BYTES`, its bytes."""
    path: str
    format: str
    data: Optional[bytes] = None


class PlanFileFn(beam.DoFn):
    """Sniffs a file from its first bytes; emits one task per image and per video range.

    Decoding happens after a ``Reshuffle`` of these small tasks, in one stage, so frames (with
    pixels) come out of a single fused step and are never buffered between stages.
    """

    def __init__(self, split_seconds):
        self._split_seconds = split_seconds
        self._files = _BundleCounter("files_matched")  # distinct paths
        self._videos = Metrics.counter(METRICS_NAMESPACE, "videos_planned")
        self._ranges = Metrics.counter(METRICS_NAMESPACE, "video_ranges")

    def finish_bundle(self):
        self._files.flush()

    def process(self, path: str):
        self._files.add()
        try:
            head = files.read_head(path, SMALL_FILE_BYTES)
        except Exception as e:  # pylint: disable=broad-except
            yield from _read_failure(path, None, e)
            return
        sniffed = sniff_media_type(head[:HEAD_BYTES])
        if not head:
            yield from _fail(path, None, records.STAGE_DECODE, "empty", "empty file (0 bytes)")
            return
        if sniffed is None:
            yield from _fail(path, None, records.STAGE_DECODE, "not_media",
                             f"not an image or video: the content matches no known container "
                             f"(first bytes {head[:8]!r})")
            return
        media_type, format_name = sniffed
        if media_type == IMAGE:
            yield _ImageTask(path, format_name, head if len(head) < SMALL_FILE_BYTES else None)
            return
        try:
            yield from self._plan(path, format_name)
        except DecodeError as e:
            yield from _fail(path, media_type, records.STAGE_DECODE, e.reason, str(e))
        except Exception as e:  # pylint: disable=broad-except
            _LOG.exception("unexpected error planning %s", path)
            yield from _fail(path, media_type, records.STAGE_DECODE, "unexpected",
                             f"unexpected {type(e).__name__} while reading the video: {e}")

    def _plan(self, path, format_name):
        source = _open_video(path)
        try:
            plan = video.plan_video(source)
        finally:
            _close(source)
        size = (os.path.getsize(path) if is_local(path)
                else FileSystems.match([path])[0].metadata_list[0].size_in_bytes)
        self._videos.inc()
        info = dict(plan.info.to_json_dict(), format=format_name)
        for video_range in video.split_ranges(plan, path, self._split_seconds):
            self._ranges.inc()
            yield _VideoTask(video_range, f"{format_name}/{plan.info.codec}", size, info, plan.truncated)


class DecodeTaskFn(beam.DoFn):
    """Decodes an image task into its frame and outcome, or a video range into its sampled frames
    and a report keyed by file (``(uri, (task, RangeReport))`` on the ``reports`` output)."""

    def __init__(self, max_pixels, max_side, sampling: Sampling, threads: int):
        self._max_pixels = max_pixels
        self._max_side = max_side
        self._sampling = sampling
        self._threads = threads
        self._images = _BundleCounter("images_decoded", "files_decoded", "frames_decoded")
        self._frames = Metrics.counter(METRICS_NAMESPACE, "frames_decoded")
        self._image_ms = Metrics.distribution(METRICS_NAMESPACE, "decode_ms_per_image")

    def finish_bundle(self):
        self._images.flush()

    def process(self, task):
        if isinstance(task, _ImageTask):
            yield from self._image(task)
        else:
            yield from self._range(task)

    def _image(self, task: _ImageTask):
        path, data = task.path, task.data
        try:
            if data is None:
                with open_binary(path) as f:
                    data = f.read()
        except Exception as e:  # pylint: disable=broad-except
            yield from _read_failure(path, IMAGE, e)
            return
        started = time.perf_counter()
        try:
            image = decode_image(data, task.format, self._max_pixels, self._max_side)
        except DecodeError as e:
            yield from _fail(path, IMAGE, records.STAGE_DECODE, e.reason, str(e))
            return
        except Exception as e:  # pylint: disable=broad-except
            _LOG.exception("unexpected error decoding %s", path)
            yield from _fail(path, IMAGE, records.STAGE_DECODE, "unexpected",
                             f"unexpected {type(e).__name__} while decoding: {e}")
            return
        self._image_ms.update(int(1000 * (time.perf_counter() - started)))
        self._images.add()
        yield _make_frame(path, 0, None, IMAGE, image.pixels, channels=image.channels,
                          format=image.format, file_size=image.file_size,
                          content_sha256=image.content_sha256, capture_time=image.capture_time)
        yield beam.pvalue.TaggedOutput(OUTCOME, FileOutcome(path, IMAGE, 1, False))

    def _range(self, task: _VideoTask):
        video_range = task.range
        uri = video_range.source_uri
        report = None
        emitted = 0
        try:
            source = _open_video(uri)
            try:
                for item in video.decode_range(source, video_range, self._sampling, self._threads):
                    if isinstance(item, RangeReport):
                        report = item
                        continue
                    emitted += 1
                    yield _make_frame(uri, item.frame_index, item.timestamp_s, VIDEO, item.pixels,
                                      channels=3, format=task.format, file_size=task.file_size)
            finally:
                _close(source)
        except Exception as e:  # pylint: disable=broad-except  # keep what decoded, report the rest
            _LOG.warning("decoding range %d of %s failed: %s", video_range.range_index, uri, e)
            wanted = video.wanted_pts(video_range, self._sampling)
            expected = len(video_range.pts) if wanted is None else len(wanted)
            start_s = video_range.start_pts * video_range.time_base[0] / video_range.time_base[1]
            report = RangeReport(expected, emitted, max(0, expected - emitted), round(start_s, 6),
                                 f"{type(e).__name__}: {e}", 0)
        self._frames.inc(report.emitted)
        yield beam.pvalue.TaggedOutput(REPORTS, (uri, (task, report)))


def _describe_missing(task: _VideoTask, missing: int, wanted: int, first_missing_s, error) -> str:
    parts = []
    if task.truncated:
        parts.append(task.truncated)
    if missing:
        at = "" if first_missing_s is None else f", the first at {first_missing_s:.3f} s"
        why = f": {error}" if error else " (the decoder returned no picture for them)"
        parts.append(f"{missing} of {wanted} sampled frames did not decode{at}{why}")
    elif error:
        parts.append(f"the decoder reported an error but every sampled frame decoded: {error}")
    return f"{task.format} video: " + "; ".join(parts)


class _CloseVideoFn(beam.DoFn):
    """Gathers the range reports of one video into its outcome and at most one dead letter."""

    def __init__(self):
        self._incomplete = Metrics.counter(METRICS_NAMESPACE, "videos_incomplete")
        self._missing = Metrics.counter(METRICS_NAMESPACE, "frames_missing")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "files_failed")
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "files_decoded")
        self._frames_per_video = Metrics.distribution(METRICS_NAMESPACE, "frames_per_video")

    def process(self, element):
        uri, parts = element
        parts = sorted(parts, key=lambda p: p[0].range.range_index)
        task = parts[0][0]
        reports = [r for _, r in parts]
        emitted = sum(r.emitted for r in reports)
        wanted = sum(r.wanted for r in reports)
        missing = sum(r.missing for r in reports)
        first = next((r for r in reports if r.missing or r.error), None)
        ranges_seen = len({t.range.range_index for t, _ in parts})
        if ranges_seen != task.range.ranges:  # cannot happen unless a runner lost elements
            missing += 1
            first = first or RangeReport(0, 0, 1, None, f"only {ranges_seen} of {task.range.ranges} "
                                                        f"ranges reported", 0)
        info = dict(task.info, frames_sampled=emitted, ranges=task.range.ranges)
        self._frames_per_video.update(emitted)
        if emitted == 0:
            self._failed.inc()
            Metrics.counter(METRICS_NAMESPACE, "failed_decode_no_decodable_frame").inc()
        else:
            self._decoded.inc()
        if missing or task.truncated or (first and first.error):
            self._incomplete.inc()
            self._missing.inc(missing)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                uri, records.STAGE_DECODE, _describe_missing(
                    task, missing, wanted, first.first_missing_s if first else None,
                    first.error if first else None)))
        yield FileOutcome(uri, VIDEO, emitted, emitted == 0, info)


class DecodedMedia(NamedTuple):
    """``frames``; ``outcomes`` (one per matched file, flattened from every step);
    ``dead_letters``; ``outcome_steps``: the same outcomes as each step emits them, before they
    are flattened, for a consumer that must see them as they come (a progress count): Beam's
    ``FnApiRunner`` runs a ``Flatten`` of several stages' outputs after the last of them, so
    ``outcomes`` arrive only when every file is decoded."""
    frames: beam.PCollection
    outcomes: beam.PCollection
    dead_letters: beam.PCollection
    outcome_steps: Tuple[beam.PCollection, ...] = ()


def _positive_or_none(name, value, kind=int):
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    return kind(value)


class DecodeMedia(beam.PTransform):
    """Matches file globs and decodes every matched image and video into frames.

    Input: ``PCollection[str]`` of globs (``**`` matches across directories; a local directory
    stands for everything below it). Output: :class:`DecodedMedia`. A file matched by several
    globs is decoded once. Every matched file gets exactly one ``FileOutcome``; every failure a
    ``DeadLetter`` with the stage (``match``, ``read``, ``decode``) and a reason. A video whose
    sampled frames are partly missing (truncated or corrupt stream) keeps the frames that decoded
    and gets one dead letter saying where and why.

    Parameters
    ----------
    video_fps : float
        Frames sampled per second of presentation time with ``sampling="fps"``; ``<= 0`` keeps
        every frame.
    sampling : str
        ``fps`` (default), ``all``, ``every_n``, ``keyframes`` or ``scene``; see
        :class:`transforms.decode.video.Sampling`.
    every_n : int
        Keep frames whose index is a multiple of ``every_n`` (``sampling="every_n"``).
    scene_threshold : float
        In (0, 1]: mean absolute grey-level difference between consecutive frames that starts a
        new scene (``sampling="scene"``).
    max_pixels : int or None
        Images whose header declares more pixels are dead-lettered without being decoded.
    max_side : int or None
        Images are shrunk so that their longest side is at most this many pixels.
    split_seconds : float or None
        Videos are cut into ranges of at least this many seconds (starting on keyframes) that
        different workers decode; None decodes each video in one piece.
    video_threads : int
        Decoder threads per video range (1 is the most efficient when workers run in parallel).
    match_globs : bool
        False: the inputs are paths of files known to exist (e.g. notified uploads), read as
        they are, without listing them first.
    fan_out : bool
        Spread the work over workers (distinct paths, a reshuffle, videos cut into ranges). False
        decodes each file where it was read, a video in one piece, with no grouping: for inputs
        that are already distinct files, on a single-threaded runner (the streaming job on the
        local runner, whose per-key state would grow with every file).

    Raises
    ------
    ValueError
        For an unknown sampling mode or out-of-range numbers, naming the parameter.
    """

    def __init__(self, video_fps: float = 1.0, *, sampling: str = video.FPS, every_n: int = 1,
                 scene_threshold: float = 0.3, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 max_side: Optional[int] = None,
                 split_seconds: Optional[float] = DEFAULT_SPLIT_SECONDS, video_threads: int = 1,
                 fan_out: bool = True, match_globs: bool = True):
        super().__init__()
        if not isinstance(video_fps, (int, float)) or math.isnan(video_fps):
            raise ValueError(f"video_fps must be a number (<= 0 for every frame), got {video_fps!r}")
        self._sampling = Sampling(sampling, every_n, float(video_fps), scene_threshold).validated()
        self._max_pixels = _positive_or_none("max_pixels", max_pixels)
        self._max_side = _positive_or_none("max_side", max_side)
        self._split_seconds = _positive_or_none("split_seconds", split_seconds, float)
        if not isinstance(video_threads, int) or video_threads < 0:
            raise ValueError(f"video_threads must be an integer >= 0 (0: automatic), got {video_threads!r}")
        self._threads = video_threads
        self._fan_out = fan_out
        self._match_globs = match_globs
        if not fan_out:
            self._split_seconds = None

    def expand(self, patterns):
        if self._match_globs:
            matched = patterns | "MatchGlobs" >> beam.ParDo(MatchFn()).with_outputs(
                DEAD_LETTER, OUTCOME, main="paths")
            paths, unmatched, unmatched_dead = matched.paths, [matched[OUTCOME]], [matched[DEAD_LETTER]]
        else:  # paths of files already known to exist (a file gone since fails when read)
            paths, unmatched, unmatched_dead = patterns, [], []
        if self._fan_out:
            paths = paths | "DistinctPaths" >> beam.Distinct()
        planned = paths | "SniffAndPlan" >> beam.ParDo(PlanFileFn(self._split_seconds)).with_outputs(
            DEAD_LETTER, OUTCOME, main="tasks")
        tasks = planned.tasks
        if self._fan_out:
            tasks = tasks | "SpreadTasks" >> beam.Reshuffle()  # video ranges of one file go to several workers
        decoded = tasks | "DecodeFiles" >> beam.ParDo(DecodeTaskFn(
            self._max_pixels, self._max_side, self._sampling, self._threads)).with_outputs(
                DEAD_LETTER, OUTCOME, REPORTS, main="frames")
        if self._fan_out:
            reports = decoded[REPORTS] | "ReportsPerVideo" >> beam.GroupByKey()
        else:  # one range per video: its report is whole
            reports = decoded[REPORTS] | "OneReportPerVideo" >> beam.MapTuple(lambda uri, part: (uri, [part]))
        videos = (
            reports
            # Declared, not inferred: Beam's bytecode inference of this DoFn depends on the hash
            # seed and may give Union[TaggedOutput, FileOutcome], which it then fails to turn
            # into a schema (FileOutcome.video_info is a dict) when the pipeline is built.
            | "CloseVideos" >> beam.ParDo(_CloseVideoFn()).with_output_types(Any).with_outputs(
                DEAD_LETTER, main="outcomes"))
        outcome_steps = tuple(unmatched + [planned[OUTCOME], decoded[OUTCOME], videos.outcomes])
        outcomes = outcome_steps | "AllOutcomes" >> beam.Flatten()
        dead_letters = (unmatched_dead + [planned[DEAD_LETTER], decoded[DEAD_LETTER], videos[DEAD_LETTER]]
                        | "FlattenDeadLetters" >> beam.Flatten())
        return DecodedMedia(decoded.frames, outcomes, dead_letters, outcome_steps)

"""Progress of a job on a local runner: a line every few seconds while it runs.

    progress 0:35  files 120/305 (39%)  frames 300 decoded, 250 scored, 240 indexed  21.4 frames/s  ~0:52 left

Why a side channel rather than Beam's metrics: the local runners (``FnApiRunner``, the
``DirectRunner`` in-process or ``multi_processing``) hand metrics to the driver only in the
``PipelineResult``, when the pipeline has finished. So :class:`CountProgress` adds a counting step
to the PCollections to watch; each instance of its ``DoFn`` writes its running count to its own
small file in a progress directory (at most every :data:`WRITE_INTERVAL_S` and at the end of
each bundle, by atomic rename), and :class:`ProgressLines`, a thread of the driver, sums the files
and prints. Files work unchanged for in-process and multi-process workers on the same machine,
need no shared memory or server, and a reader never sees half a file. A retried bundle may count
twice here (the run's summary counts come from Beam's committed metrics, not from these).

Time left is shown when the total is known and the pace is measured on enough work: from the
files done while decoding (the number of matched files is counted before the run) once
:data:`MIN_DONE_FRACTION` of them are done; once every file is decoded (the frame total is then
known), from the frames left to index at the indexing rate, measured on indexing itself over
:data:`MIN_RATE_SPAN_S` or more. A batch job indexes after its selection, so the scoring rate says
nothing of what is left then, and no estimate is shown until indexing has a rate of its own.

On Dataflow (or any remote runner) no side channel is used: the same quantities are the job's
metrics (namespace/name), visible in the console's "Job metrics" tab and in ``result.metrics()``:

* ``activebeam.decode/files_matched``, ``files_decoded``, ``files_failed``: files;
* ``activebeam.decode/frames_decoded``: frames decoded;
* ``activebeam.model/frames_scored``: frames embedded and scored;
* ``activebeam.store/mongodb_documents_written`` of step ``IndexInMongoDB``: frames indexed;
* ``activebeam.sample/candidates_selected``: candidates;
* ``activebeam.outputs/dead_letters_written``: dead letters.
"""
import collections
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import Dict, Optional, TextIO

import apache_beam as beam

WRITE_INTERVAL_S = 0.5  # a counting DoFn rewrites its file at most this often
PRINT_INTERVAL_S = 5.0
RATE_WINDOW_S = 30.0  # frames/s is measured over this trailing window
STALLED_INTERVALS = 1.5  # no time left is estimated from files when none was done since the last line
# No time left is shown before it is measured on enough work to mean something: this share of
# the files done, and a frame rate measured over at least this many seconds.
MIN_DONE_FRACTION = 0.1
MIN_RATE_SPAN_S = 10.0
STAGES = ("files", "frames_decoded", "frames_scored", "frames_indexed")


class _Tally(beam.DoFn):
    """Counts the elements it sees into ``<progress_dir>/<name>.<unique>.count``; emits nothing."""

    def __init__(self, progress_dir: str, name: str):
        self._dir, self._name = progress_dir, name
        self._path = None
        self._count, self._written_at = 0, 0.0

    def setup(self):
        unique = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._path = os.path.join(self._dir, f"{self._name}.{unique}.count")

    def process(self, element):
        self._count += 1
        now = time.monotonic()
        if now - self._written_at >= WRITE_INTERVAL_S:
            self._write(now)
        return ()

    def finish_bundle(self):
        self._write(time.monotonic())

    def _write(self, now: float):
        self._written_at = now
        tmp = os.path.join(self._dir, f".tmp-{os.path.basename(self._path)}")
        try:
            with open(tmp, "w") as f:
                f.write(str(self._count))
            os.replace(tmp, self._path)
        except OSError:
            pass  # progress is best effort; the directory is gone once the driver is done


class CountProgress(beam.PTransform):
    """Counts the elements of named PCollections into ``progress_dir`` for :class:`ProgressLines`.

    Input: ``{name: PCollection or sequence of PCollections}`` (names from :data:`STAGES`; the
    elements of a sequence's PCollections are counted together). Output: ``PDone``; the counted
    PCollections are not changed.
    """

    def __init__(self, progress_dir: str):
        super().__init__()
        self._dir = progress_dir

    def expand(self, pcolls):
        return observe_each(pcolls, "Count", lambda name: _Tally(self._dir, name))


def observe_each(pcolls: dict, prefix: str, make_fn) -> beam.pvalue.PDone:
    """Applies ``ParDo(make_fn(name))`` (a DoFn that emits nothing) to each PCollection of
    ``{name: PCollection or sequence of PCollections}``, labelled ``PREFIX_name[_i]``; the
    observed PCollections are not changed. What :class:`CountProgress` and
    :class:`beam_pipelines.cli.metrics.ExportMetrics` share."""
    pipeline = None
    for name, value in pcolls.items():
        parts = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, pcoll in enumerate(parts):
            label = f"{prefix}_{name}" if len(parts) == 1 else f"{prefix}_{name}_{i}"
            _ = pcoll | label >> beam.ParDo(make_fn(name))
            pipeline = pcoll.pipeline
    return beam.pvalue.PDone(pipeline)


def read_counts(progress_dir: str) -> Dict[str, int]:
    """Sums of the counting files in ``progress_dir``, by name."""
    counts = collections.Counter()
    try:
        names = os.listdir(progress_dir)
    except OSError:
        return dict(counts)
    for name in names:
        if name.startswith(".") or not name.endswith(".count"):
            continue
        try:
            with open(os.path.join(progress_dir, name)) as f:
                counts[name.split(".", 1)[0]] += int(f.read() or 0)
        except (OSError, ValueError):
            continue  # replaced or removed while read: next time
    return dict(counts)


def format_line(elapsed_s: float, counts: Dict[str, int], files_total: Optional[int],
                rate: Optional[float], eta_s: Optional[float]) -> str:
    """One progress line (see the module docstring)."""
    files = counts.get("files", 0)
    parts = [f"progress {_clock(elapsed_s)}"]
    if files_total:
        parts.append(f"files {files}/{files_total} ({100 * files / files_total:.0f}%)")
    else:
        parts.append(f"files {files}")
    parts.append(f"frames {counts.get('frames_decoded', 0)} decoded, {counts.get('frames_scored', 0)} scored, "
                 f"{counts.get('frames_indexed', 0)} indexed")
    if rate is not None:
        parts.append(f"{rate:.1f} frames/s")
    if eta_s is not None:
        parts.append(f"~{_clock(eta_s)} left")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    return (f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}")


class ProgressLines:
    """A driver thread printing a progress line every ``interval_s`` from a progress directory.

    Use as a context manager (enter: the directory for :class:`CountProgress`; exit or
    :meth:`stop`: last line, directory removed)::

        with ProgressLines(files_total=305) as progress_dir:
            ... MineFrames(..., progress_dir=progress_dir) ... pipeline.run()
    """

    def __init__(self, files_total: Optional[int] = None, interval_s: float = PRINT_INTERVAL_S,
                 out: Optional[TextIO] = None):
        self._files_total, self._interval = files_total, interval_s
        self._out = out or sys.stderr
        self._dir = None
        self._stop = threading.Event()
        self._thread = None
        self._started = 0.0
        self._history = collections.deque()  # (time, frames indexed or scored, frames indexed)
        self._files_seen, self._files_changed_at = 0, 0.0
        self._first_files = None  # (time, files) of the first line that counted a file done

    def __enter__(self) -> str:
        self._dir = tempfile.mkdtemp(prefix="activebeam-progress-")
        self._started = self._files_changed_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="activebeam-progress", daemon=True)
        self._thread.start()
        return self._dir

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Prints the last line (if anything was counted) and removes the directory; idempotent."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        counts = read_counts(self._dir)
        if counts:
            self._print(counts, final=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _loop(self):
        while not self._stop.wait(self._interval):
            self._print(read_counts(self._dir))

    def _print(self, counts: Dict[str, int], final: bool = False):
        now = time.monotonic()
        done = counts.get("frames_indexed", 0) or counts.get("frames_scored", 0)
        self._history.append((now, done, counts.get("frames_indexed", 0)))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW_S:
            self._history.popleft()
        t0, d0, _ = self._history[0]
        rate = (done - d0) / (now - t0) if now - t0 > 0.5 else None
        if final:
            rate = done / (now - self._started) if now > self._started else None
        if counts.get("files", 0) != self._files_seen:
            self._files_seen, self._files_changed_at = counts.get("files", 0), now
        if self._first_files is None and counts.get("files", 0):
            self._first_files = (now, counts["files"])
        eta = None if final else self._eta(counts, now)
        self._out.write(format_line(now - self._started, counts, self._files_total, rate, eta) + "\n")
        self._out.flush()

    def _eta(self, counts: Dict[str, int], now: float) -> Optional[float]:
        """Seconds left: from the pace of files done while decoding, measured from the first file
        done (the start-up before it, loading models and starting workers, is not a file's cost),
        as long as that count moves (a video counts when its last range is decoded, so a run
        whose images are done waits on its videos with no file done: then no estimate); after,
        from the indexing rate measured since indexing began, over MIN_RATE_SPAN_S or more."""
        files = counts.get("files", 0)
        if not self._files_total or files < MIN_DONE_FRACTION * self._files_total or not files:
            return None
        if files < self._files_total:
            t0, f0 = self._first_files or (now, files)
            if now - self._files_changed_at > STALLED_INTERVALS * self._interval or files <= f0 or now <= t0:
                return None
            return (self._files_total - files) * (now - t0) / (files - f0)
        indexing = [(t, indexed) for t, _, indexed in self._history if indexed > 0]
        if len(indexing) < 2 or indexing[-1][0] - indexing[0][0] < MIN_RATE_SPAN_S:
            return None
        index_rate = (indexing[-1][1] - indexing[0][1]) / (indexing[-1][0] - indexing[0][0])
        if index_rate <= 0:
            return None
        return (counts.get("frames_decoded", 0) - counts.get("frames_indexed", 0)) / index_rate


def count_files(globs) -> Optional[int]:
    """How many files the globs match (the progress total), matched as ``DecodeMedia`` matches
    them (a directory means every file below it; directories themselves are not files), or None
    if listing fails."""
    from transforms.common import files
    from transforms.decode.ptransforms import expand_pattern, match_pattern
    try:
        return sum(entry.kind == files.FILE for glob in globs for entry in match_pattern(expand_pattern(glob)))
    except Exception:  # noqa: BLE001 - a total is a nicety; the pipeline reports real errors
        return None

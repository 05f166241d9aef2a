"""Helpers shared by the benchmarks: repeated timing, medians, peak memory, the JSON result line,
Fashion-MNIST PNGs and a timed run of the batch ``mine`` job."""
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Tuple

import psutil


def timed(fn: Callable[[], object]) -> Tuple[float, object]:
    """Run ``fn`` once; return (wall seconds, its result)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_rate(fn: Callable[[], int], repeats: int) -> Tuple[float, List[float]]:
    """Run ``fn`` ``repeats`` times; it returns how many items it processed.

    Returns the median items per second and the list of per-run rates.
    """
    rates = []
    for _ in range(repeats):
        seconds, items = timed(fn)
        rates.append(items / seconds)
    return statistics.median(rates), rates


def interleaved_rates(sides: Dict[str, Callable[[], int]], repeats: int) -> Dict[str, List[float]]:
    """Run every side once per round, ``repeats`` rounds, so machine noise hits all sides alike.

    Each callable returns the number of items it processed; the result maps side -> items/s per round.
    """
    rates = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            seconds, items = timed(fn)
            rates[name].append(items / seconds)
    return rates


class PeakRss:
    """Context manager sampling the resident memory (MB) of this process and its children."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self):
        proc = psutil.Process(os.getpid())
        while not self._stop.is_set():
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def print_result(result: dict) -> None:
    """Print the benchmark's figures as the last stdout line (one JSON object)."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True), flush=True)


def fashion_pngs(count: int, offset: int = 0) -> list:
    """``count`` distinct Fashion-MNIST test images as PNG bytes."""
    import cv2
    from beam_pipelines.local import sample_media
    images, _ = sample_media.load_split("t10k", sample_media.FASHION_MNIST_DIR)
    if offset + count > len(images):
        raise ValueError(f"only {len(images)} Fashion-MNIST test images: ask for fewer")
    return [cv2.imencode(".png", images[i])[1].tobytes() for i in range(offset, offset + count)]


def batch_seconds(glob, mongo_uri, database, out_dir, env) -> tuple:
    """``(wall seconds, frames written)`` of the batch ``mine`` job on ``glob`` (its own process)."""
    argv = [sys.executable, "-m", "beam_pipelines.mine", f"--input={glob}", f"--mongo_uri={mongo_uri}",
            f"--mongo_database={database}", f"--output_dir={out_dir}", "--budget=50"]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"batch job failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(out_dir, "summary.json")) as f:
        return seconds, json.load(f)["frames_written"]


def prepare_media(directory: str, images: int) -> list:
    """Real media for the run: returns the input globs."""
    from beam_pipelines.local import sample_media
    globs = sample_media.prepare(directory, fashion_mnist_count=images)
    return globs


def frame_metadata(source, index, timestamp_s, media_type, rgb):
    """The ``FrameMetadata`` the job gives a decoded frame (RGB ``(H, W, 3)``)."""
    from schemas.records import FrameMetadata, make_frame_id
    return FrameMetadata(make_frame_id(source, index), source, index, timestamp_s, rgb.shape[1], rgb.shape[0],
                         media_type, "")


def upsert_frames(collection, records) -> int:
    """Bulk-writes frame records as the job's index does (``$set`` upserts by frame id)."""
    import pymongo
    from schemas import frames as frames_schema
    ops = []
    for record in records:
        doc = frames_schema.to_mongo_document(record)
        ops.append(pymongo.UpdateOne({"_id": doc.pop("_id")}, {"$set": doc}, upsert=True))
    collection.bulk_write(ops, ordered=False)
    return len(ops)


#: Elements kept by :func:`keep` in this process (the FnApiRunner runs in-process).
_KEPT: Dict[str, list] = {}


class _Keep:
    """A picklable callable that stores a list of elements under ``key`` in :data:`_KEPT`; it
    lives in this module (imported by name), so the copy Beam unpickles writes the same dict."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, elements):
        _KEPT[self.key] = list(elements)


def keep(pcoll, key: str):
    """Stores the elements of ``pcoll`` under ``key`` when an in-process runner (FnApiRunner)
    runs the pipeline; :func:`taken` returns them afterwards."""
    import apache_beam as beam
    return pcoll | f"ToList{key}" >> beam.combiners.ToList() | f"Keep{key}" >> beam.Map(_Keep(key))


def taken(key: str) -> list:
    """The elements :func:`keep` stored under ``key`` (removed); ``[]`` when none arrived."""
    return _KEPT.pop(key, [])

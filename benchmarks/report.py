"""Report generation for a large selection: seconds, peak memory, size, and time to open.

    python -m benchmarks.report [--candidates 10000] [--pool 50000] [--page_size 60]

The selection points at real bundled media, so every thumbnail is really decoded again: image
candidates spread over the Fashion-MNIST PNGs and the two photos, a fifth of them video frames
of ``vtest.avi``, ``box.mp4`` and ``cup.mp4`` (every frame index, decoded by keyframe interval).
The pool is ``--pool`` frame documents in memory (64-d embeddings, six scores, ten classes, a
pixel hash with some duplicates), streamed to :func:`beam_pipelines.report.write_report` as
MongoDB would stream them. With ``/usr/bin/chromium`` present, the report is then opened in it
(Playwright) and the time until the first page of thumbnails has loaded is measured.

Last stdout line: ``{"candidates", "pool", "generate_s", "peak_rss_mb", "report_mb", "data_js_mb",
"thumbnails", "open_first_page_s", "next_page_s"}``.
"""
import argparse
import glob
import hashlib
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import PeakRss, print_result, timed
from beam_pipelines import report
from beam_pipelines.local.home import media_dir
from transforms.decode.video import plan_video

SCORES = ("entropy", "margin", "least_confidence", "entropy_normalised", "ratio", "uniqueness")


def _sources():
    media = media_dir()
    images = sorted(glob.glob(os.path.join(media, "fashion-mnist", "*.png"))) + [
        os.path.join(media, "china.jpg"), os.path.join(media, "flower.jpg")]
    videos = [(p, plan_video(p).info.frame_count) for p in (os.path.join(media, n) for n in ("vtest.avi", "box.mp4", "cup.mp4"))]
    return images, videos


def _frame_id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def make_selection(n_candidates: int, n_pool: int, seed: int = 0):
    """(candidates, pool frame documents generator) for a synthetic selection on real media."""
    rng = np.random.default_rng(seed)
    images, videos = _sources()
    candidates = []
    for rank in range(1, n_candidates + 1):
        if rank % 5 == 0:
            path, frames = videos[rank % len(videos)]
            index = int(rng.integers(0, frames))
            where = {"source_uri": path, "frame_index": index, "timestamp_s": index / 10.0}
        else:
            where = {"source_uri": images[rank % len(images)], "frame_index": 0, "timestamp_s": None}
        scores = {s: float(v) for s, v in zip(SCORES, rng.random(len(SCORES)))}
        candidates.append(dict(where, frame_id=_frame_id(rank), rank=rank, score=2.3 - rank * 1e-4,
                               strategy="entropy", scores=scores, components={"entropy": scores["entropy"]},
                               predicted_class=int(rng.integers(0, 10)), duplicates=1,
                               model={"name": "bench", "version": "0" * 16}, selection_id="bench"))
    by_id = {c["frame_id"]: c for c in candidates}

    def pool():
        centres = rng.normal(size=(10, 64))
        for i in range(1, n_pool + 1):
            fid = _frame_id(i)
            c = by_id.get(fid)
            cls = int(rng.integers(0, 10))
            yield {"_id": fid, "source_uri": c["source_uri"] if c else f"/cams/cam{i % 40}/{i // 1000}.mp4",
                   "frame_index": i, "timestamp_s": float(i), "predicted_class": cls,
                   "scores": {s: float(v) for s, v in zip(SCORES, rng.random(len(SCORES)))},
                   "embedding": (centres[cls] + rng.normal(scale=0.5, size=64)).tolist(),
                   "pixel_hash": f"{i % (n_pool - n_pool // 50):032x}", "width": 640, "height": 480}
    return candidates, pool()


def open_in_chromium(index_html: str):
    """(seconds until the first page's thumbnails loaded, seconds for the next page), or Nones."""
    if not os.path.exists("/usr/bin/chromium"):
        return None, None
    from playwright.sync_api import sync_playwright
    home = tempfile.mkdtemp(prefix="bench-chromium-")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", env=dict(os.environ, HOME=home),
                args=["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
                      "--disable-background-networking", "--disable-component-update", "--no-first-run"])
            page = browser.new_page()
            loaded = "document.body.dataset.ready === '1' && Array.from(document.images).every(i => i.complete)"
            start = time.perf_counter()
            page.goto("file://" + index_html)
            page.wait_for_function(loaded, timeout=120000)
            first = time.perf_counter() - start
            start = time.perf_counter()
            page.click("#pager-top button.next")
            page.wait_for_function("document.body.dataset.page === '2' && " + loaded)
            second = time.perf_counter() - start
            browser.close()
            return round(first, 2), round(second, 3)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--pool", type=int, default=50000)
    parser.add_argument("--page_size", type=int, default=report.PAGE_SIZE)
    args = parser.parse_args(argv)
    candidates, pool = make_selection(args.candidates, max(args.pool, args.candidates))
    out = tempfile.mkdtemp(prefix="bench-report-")
    try:
        with PeakRss() as rss:
            seconds, index_html = timed(lambda: report.write_report(
                out, candidates, pool, [{"source_uri": "/x/broken.mp4", "stage": "decode", "error": "bad"}],
                {"run_id": "bench"}, page_size=args.page_size))
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
        first, second = open_in_chromium(index_html)
        print_result({
            "candidates": args.candidates, "pool": max(args.pool, args.candidates),
            "generate_s": round(seconds, 1), "peak_rss_mb": round(rss.peak_mb),
            "report_mb": round(size / 2**20, 1), "data_js_mb": round(os.path.getsize(os.path.join(out, "data.js")) / 2**20, 2),
            "thumbnails": len(os.listdir(os.path.join(out, "thumbs"))),
            "open_first_page_s": first, "next_page_s": second})
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

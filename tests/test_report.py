"""The HTML report, opened in a real headless Chromium, and the progress lines of a run.

One small ``mine`` run on real media (a video, two photos, PNGs and a truncated JPEG) against a
real mongod is shared by the tests of this file: its ``report/index.html`` and a report of the
same selection written by the ``python -m beam_pipelines.report`` CLI with small pages.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from beam_pipelines import mine, report
from beam_pipelines.cli import progress
from beam_pipelines.report import frames as report_frames
from tests import harness

CHROMIUM = "/usr/bin/chromium"
BUDGET = 14
# Keep the browser off every network: names resolve to nothing, background services off.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--no-pings",
                 "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"]


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


@pytest.fixture(scope="module")
def run(mongo):
    """One mine run on real media; its summary, output directory and stderr (progress lines)."""
    d = os.path.join(harness.tmpdir(), "media")
    os.makedirs(d)
    shutil.copy(harness.media("cup.mp4"), d)
    shutil.copy(harness.media("china.jpg"), d)
    shutil.copy(harness.media("flower.jpg"), d)
    for i in range(12):
        shutil.copy(harness.media("fashion-mnist", f"t10k-{i:05d}.png"), d)
    with open(harness.media("china.jpg"), "rb") as f:
        jpeg = f.read()
    with open(os.path.join(d, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 3])
    out_dir = harness.tmpdir("report-run-")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        summary = mine.run([f"--input={d}/*", f"--output_dir={out_dir}", f"--mongo_uri={mongo.uri}",
                            f"--budget={BUDGET}", "--video_fps=1"])
    return summary, out_dir, stderr.getvalue()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never ``playwright install``: it downloads)."""
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run scripts/setup.sh (apt-get install chromium)"
    from playwright.sync_api import sync_playwright
    home = harness.tmpdir("chromium-home-")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                              env=dict(os.environ, HOME=home, XDG_CONFIG_HOME=home))
        yield b
        b.close()


class Page:
    """A report opened in the browser, with every console message, page error, failed and
    non-file request recorded (non-file requests are aborted)."""

    def __init__(self, browser, index_html):
        self.errors, self.failed, self.outside = [], [], []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.route("**/*", self._route)
        self.page.goto("file://" + index_html)
        self.page.wait_for_selector("body[data-ready='1']")

    def _route(self, route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def images(self):
        """(complete and decoded, src) of every img on the page, once they have settled."""
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        return self.page.eval_on_selector_all("img", "els => els.map(i => [i.complete && i.naturalWidth > 0, i.src])")

    def clean(self):
        assert self.errors == [] and self.failed == [] and self.outside == []


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_mine_writes_report_and_progress(run):
    summary, out_dir, stderr = run
    assert summary["candidates"] == BUDGET and summary["dead_letters"] == 1
    report_dir = os.path.join(out_dir, "report")
    candidates = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))
    for c in candidates:  # every candidate pictured, thumbnail and full frame
        for sub in ("thumbs", "frames"):
            assert os.path.getsize(os.path.join(report_dir, sub, f"{c['frame_id']}.jpg")) > 0
    # The progress side channel counted what the pipeline's metrics counted.
    last = [line for line in stderr.splitlines() if line.startswith("progress ")][-1]
    n = summary["frames_decoded"]
    assert f"files {summary['files_matched']}/{summary['files_matched']} (100%)" in last
    assert f"frames {n} decoded, {n} scored, {n} indexed" in last


def test_report_in_chromium(run, browser):
    summary, out_dir, _ = run
    page = Page(browser, os.path.join(out_dir, "report", "index.html"))
    images = page.images()
    assert len(images) == BUDGET and all(ok for ok, _ in images), images
    p = page.page
    ranks = p.eval_on_selector_all(".card .rank", "els => els.map(e => e.textContent)")
    assert ranks == [f"#{r}" for r in range(1, BUDGET + 1)]
    # Score components, source and timestamp on the cards; a video frame says where it is.
    assert p.locator(".card tr.comp").count() == sum(
        len(c["components"]) for c in _read_jsonl(os.path.join(out_dir, "candidates.jsonl")))
    texts = p.eval_on_selector_all(".card .src", "els => els.map(e => e.textContent)")
    for c, text in zip(_read_jsonl(os.path.join(out_dir, "candidates.jsonl")), texts):
        where = "" if c["timestamp_s"] is None else f" @ {c['timestamp_s']:.2f} s (frame {c['frame_index']})"
        assert text == os.path.basename(c["source_uri"]) + where
    # Histograms with pool and selection bars, the PCA map drawn, counts, dead letters, summary.
    assert p.locator("svg.hist").count() >= 3
    assert p.locator("svg.hist rect.sel").count() > 0 and p.locator("svg.hist rect.pool").count() > 0
    orange = p.evaluate("""() => { const c = document.getElementById('map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i+1] > 100 && d[i+1] < 150 && d[i+2] < 60) n++;
        return n; }""")
    assert orange > 30  # candidate dots (about 50 px each, some overlap)
    assert int(p.get_attribute("#map", "data-points")) == summary["frames_decoded"]
    assert p.locator("#counts table.counts").first.locator("tbody tr").count() == summary["files_decoded"]
    assert "truncated.jpg" in p.inner_text("#dead-letter-table")
    assert summary["run_id"] in p.inner_text("#summary")
    # The full frame behind a thumbnail loads too.
    href = p.get_attribute(".card a", "href")
    page.page.goto(p.evaluate("h => new URL(h, location.href).href", href))
    assert page.page.evaluate("document.images[0].naturalWidth") > 0
    page.clean()
    page.context.close()


def test_cli_report_paging_in_chromium(run, mongo, browser):
    summary, out_dir, _ = run
    selection_id = _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))[0]["selection_id"]
    report_dir = harness.tmpdir("cli-report-")
    cli = subprocess.run([sys.executable, "-m", "beam_pipelines.report", "--mongo_uri", mongo.uri,
                          "--selection_id", selection_id, "--output", report_dir, "--page_size", "5"],
                         capture_output=True, text=True, cwd=harness.CHECKOUT, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == os.path.join(report_dir, "index.html")
    page = Page(browser, os.path.join(report_dir, "index.html"))
    p = page.page
    seen = []
    for expected_page in (1, 2, 3):
        assert p.get_attribute("body", "data-page") == str(expected_page)
        images = page.images()
        assert len(images) == min(5, BUDGET - 5 * (expected_page - 1)) and all(ok for ok, _ in images)
        seen += p.eval_on_selector_all(".card .rank", "els => els.map(e => e.textContent)")
        assert p.locator("#pager-top .page-info").inner_text().startswith(f"page {expected_page} of 3")
        if expected_page < 3:
            p.click("#pager-top button.next")
            p.wait_for_function(f"document.body.dataset.page === '{expected_page + 1}'")  # not before it turned
    assert p.locator("#pager-top button.next").is_disabled()
    assert seen == [f"#{r}" for r in range(1, BUDGET + 1)]
    # A rank link goes to that candidate's page; the run found from the runs index gives lineage.
    p.evaluate("location.hash = 'rank-7'")
    p.wait_for_selector("#rank-7.target")
    assert p.get_attribute("body", "data-page") == "2"
    assert summary["run_id"] in p.inner_text("#summary")
    assert "truncated.jpg" in p.inner_text("#dead-letter-table")
    page.clean()
    page.context.close()


def test_boxes_are_drawn_from_detections(run):
    """A candidate with detections gets its boxes drawn, scaled from the scored frame's size."""
    import cv2
    summary, out_dir, _ = run
    china = [c for c in _read_jsonl(os.path.join(out_dir, "candidates.jsonl")) if c["source_uri"].endswith("china.jpg")]
    candidate = dict(china[0] if china else _read_jsonl(os.path.join(out_dir, "candidates.jsonl"))[0])
    candidate.update(source_uri=harness.media("china.jpg"), timestamp_s=None, frame_index=0,
                     detections=[{"label": "palace", "class_id": 1, "score": 0.7, "box": [100, 100, 500, 300]}])
    report_dir = harness.tmpdir("boxes-")
    report.write_report(report_dir, [candidate], [{"_id": candidate["frame_id"], "width": 640, "height": 427}])
    full = cv2.imread(os.path.join(report_dir, "frames", f"{candidate['frame_id']}.jpg"))[..., ::-1]
    box = np.array(report_frames.BOX_COLOUR)
    assert np.abs(full[200, 99:102].astype(int) - box).max(axis=1).min() < 60  # left edge
    assert np.abs(full[250, 300].astype(int) - box).max() > 60  # inside: the photo
    with open(os.path.join(report_dir, "data.js")) as f:
        assert '"objects": "palace 1"' in f.read().replace('":"', '": "')  # the card says what it shows


def test_pca_map_equals_scikit_learns_pca():
    # The report's map is scikit-learn's PCA (the reference), without importing scikit-learn in
    # the job: real 64-d rows (the digits set), coordinates, signs and explained variance.
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    x = load_digits().data.astype(np.float32)
    for rows in (x[:400], x[:40, :16], x[:3]):
        reference = PCA(n_components=2, random_state=0)
        expected = reference.fit_transform(rows)
        xy, explained = report.pca_2d(rows)
        assert xy.shape == (len(rows), 2)
        np.testing.assert_allclose(xy, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
        np.testing.assert_allclose(explained, reference.explained_variance_ratio_, rtol=1e-4, atol=1e-7)
    xy, explained = report.pca_2d(np.ones((5, 4), np.float32))  # no variance: a point, no NaN
    assert np.all(xy == 0) and np.all(explained == 0)


def test_report_failure_does_not_fail_the_run(tmp_path, caplog):
    (tmp_path / "candidates.jsonl").write_text('{"rank": 1}\n')  # no frame_id
    assert report.write_run_report_safely(str(tmp_path), None, "activebeam") is None
    assert "could not be written" in caplog.text


def test_progress_counts_files_while_they_are_decoded():
    """The files count moves while frames are still decoded (counted from each decode step, not
    after the runner's flatten of every outcome, which comes after the last file)."""
    import apache_beam as beam
    from transforms.decode.ptransforms import DecodeMedia
    d = harness.tmpdir("progress-live-")
    seen = harness.tmpdir("progress-seen-")

    def look(frame):  # in the decode stage: what the progress reader sees now
        with open(os.path.join(seen, frame.frame_id), "w") as f:
            f.write(str(progress.read_counts(d).get("files", 0)))
    pngs = harness.media("fashion-mnist", "t10k-0000*.png")
    with beam.Pipeline(options=harness.local_options()) as p:
        decoded = p | beam.Create([pngs]) | DecodeMedia()
        _ = {"files": decoded.outcome_steps} | progress.CountProgress(d)
        _ = decoded.frames | beam.Map(look)
    files_seen = [int(open(os.path.join(seen, name)).read()) for name in os.listdir(seen)]
    assert len(files_seen) == 10 and max(files_seen) >= 1
    assert progress.read_counts(d)["files"] == 10


def test_progress_total_counts_files_as_the_job_matches_them():
    """A directory means every file below it, as DecodeMedia reads it (the total was 1 for a
    directory: "files 37/1 (3700%)"); directories matched by a glob are not files."""
    import apache_beam as beam
    from transforms.decode.ptransforms import DecodeMedia
    d = harness.tmpdir("progress-total-")
    os.makedirs(os.path.join(d, "sub"))
    shutil.copy(harness.media("china.jpg"), os.path.join(d, "a.jpg"))
    shutil.copy(harness.media("flower.jpg"), os.path.join(d, "sub", "b.jpg"))
    with open(os.path.join(d, "sub", "notes.txt"), "w") as f:
        f.write("not an image")
    assert progress.count_files([d]) == 3
    assert progress.count_files([os.path.join(d, "*")]) == 1  # a.jpg; sub/ is a directory
    assert progress.count_files([os.path.join(d, "none*"), d]) == 3
    counts = harness.tmpdir("progress-total-counts-")
    with beam.Pipeline(options=harness.local_options()) as p:
        decoded = p | beam.Create([d]) | DecodeMedia()
        _ = {"files": decoded.outcome_steps} | progress.CountProgress(counts)
    assert progress.read_counts(counts)["files"] == progress.count_files([d]) == 3


def test_progress_lines_format_and_counts():
    d = harness.tmpdir("progress-")
    import apache_beam as beam
    with beam.Pipeline(options=harness.local_options()) as p:
        numbers = p | beam.Create(range(1000))
        _ = {"frames_scored": numbers, "files": numbers | beam.Filter(lambda x: x % 100 == 0)} \
            | progress.CountProgress(d)
    assert progress.read_counts(d) == {"frames_scored": 1000, "files": 10}
    line = progress.format_line(75, {"files": 3, "frames_decoded": 40, "frames_scored": 30,
                                     "frames_indexed": 20}, 12, 4.0, 225)
    assert line == ("progress 1:15  files 3/12 (25%)  frames 40 decoded, 30 scored, 20 indexed  "
                    "4.0 frames/s  ~3:45 left")
    out = io.StringIO()
    import time
    with progress.ProgressLines(files_total=4, interval_s=0.05, out=out) as progress_dir:
        with open(os.path.join(progress_dir, "files.a.count"), "w") as f:
            f.write("1")
        time.sleep(0.12)
        with open(os.path.join(progress_dir, "files.a.count"), "w") as f:
            f.write("2")
        with open(os.path.join(progress_dir, "frames_indexed.b.count"), "w") as f:
            f.write("7")
        time.sleep(0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and "files 2/4 (50%)" in lines[-1] and "7 indexed" in lines[-1]
    # Paced from the first file done: 1 file in about 0.1 s, 2 left.
    assert not any("left" in line for line in lines if "files 1/4" in line)
    assert any("left" in line for line in lines if "files 2/4" in line)
    # No file done since the last line (videos still decoding): no estimate from files.
    assert "left" not in lines[-2]
    assert not os.path.exists(progress_dir)


def test_progress_shows_no_time_left_before_it_is_measured_on_enough_work():
    """1 file of 305 done after a moment (a first run's first line used to say ~50:40 left for a
    33-second job), or every file decoded but a frame rate measured over less than
    MIN_RATE_SPAN_S: no estimate."""
    import time
    for files_total, counts in ((305, {"files": 1, "frames_decoded": 40, "frames_indexed": 12}),
                                (4, {"files": 4, "frames_decoded": 400, "frames_indexed": 100})):
        out = io.StringIO()
        with progress.ProgressLines(files_total=files_total, interval_s=0.05, out=out) as progress_dir:
            for name, count in counts.items():
                with open(os.path.join(progress_dir, f"{name}.a.count"), "w") as f:
                    f.write(str(count))
            time.sleep(0.4)
            with open(os.path.join(progress_dir, "frames_indexed.a.count"), "w") as f:
                f.write(str(counts["frames_indexed"] + 30))  # indexing moves: a rate, over 0.4 s
            time.sleep(0.4)
        lines = out.getvalue().splitlines()
        assert len(lines) >= 5 and any("frames/s" in line for line in lines), lines
        assert not any("left" in line for line in lines), lines


def test_progress_estimates_the_end_from_indexing_not_from_scoring(monkeypatch):
    """Every file decoded and scored, nothing indexed yet (a batch job indexes after its
    selection): the scoring rate says nothing of the time left, so no estimate (a run used to say
    ~0:16 left a second before it ended). Once indexing moves over MIN_RATE_SPAN_S: an estimate."""
    import time
    monkeypatch.setattr(progress, "MIN_RATE_SPAN_S", 0.2)

    def lines_for(steps):
        out = io.StringIO()
        with progress.ProgressLines(files_total=4, interval_s=0.05, out=out) as progress_dir:
            for counts in steps:
                for name, count in counts.items():
                    with open(os.path.join(progress_dir, f"{name}.a.count"), "w") as f:
                        f.write(str(count))
                time.sleep(0.3)
        return out.getvalue().splitlines()

    scoring = lines_for([{"files": 4, "frames_decoded": 400, "frames_scored": n} for n in (100, 250, 400)])
    assert any("frames/s" in line for line in scoring), scoring
    assert not any("left" in line for line in scoring), scoring
    indexing = lines_for([{"files": 4, "frames_decoded": 400, "frames_scored": 400, "frames_indexed": n}
                          for n in (50, 100, 150, 200)])
    assert any("left" in line for line in indexing if "200 indexed" in line), indexing



def test_imagenet_classes_are_named_for_the_default_backbone(tmp_path, monkeypatch):
    """Candidates scored by the converted EfficientNet-Lite0 show "880 (name)", not a bare index;
    a record's own predicted_label names its class whatever the model (a user's model with class
    names); another model's classes without one stay numbers."""
    monkeypatch.setenv("ACTIVEBEAM_MODELS", str(tmp_path))
    (tmp_path / "imagenet_classes.json").write_text(json.dumps([f"class{i}" for i in range(1000)]))
    base = {"frame_id": "f1", "source_uri": harness.media("china.jpg"), "rank": 1, "score": 1.0,
            "predicted_class": 880, "strategy": "entropy"}
    for model, label, shown in (("efficientnet_lite0", None, "880 (class880)"), ("fashion_mnist_cnn", None, 880),
                                ("my_model", "forklift", "880 (forklift)")):
        report_dir = str(tmp_path / model)
        report.write_report(report_dir, [dict(base, model={"name": model, "version": "v1"}, predicted_label=label)])
        with open(os.path.join(report_dir, "data.js")) as f:
            data = json.loads(f.read().split("=", 1)[1].rstrip().rstrip(";"))
        assert data["candidates"][0]["cls"] == shown


if __name__ == "__main__":
    harness.main(__file__)

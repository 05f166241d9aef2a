"""Selection per event-time window (transforms.select.windows.SelectPerWindow) on Beam's streaming
local runner with TestStream: any strategy per window, sliding windows, a late pane with the
window's whole content, frames too late for their window dead-lettered, restored frames counted
once, and the window files written by WriteWindowPanes. No servers (no MongoDB: files only)."""
import json
import os
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from schemas.records import DeadLetter, Restored
from tests import harness
from tests.records_factory import clustered_records
from transforms.index.window_outputs import WriteWindowPanes, window_file_name
from transforms.select.windows import SelectPerWindow, WindowSpec

# Event times near the wall clock (the too-late check compares with it): 20 minutes ago.
BASE = (int(time.time()) // 60 - 20) * 60


class _Collect(beam.DoFn):
    def __init__(self, path):
        self._path = path

    def process(self, pane):
        with open(self._path, "a") as f:
            f.write(json.dumps({
                "window": [pane.window_start - BASE, pane.window_end - BASE], "pane": pane.pane,
                "files": pane.files, "frames": pane.frames,
                "candidates": [c.frame_id for c in pane.candidates],
                "strategies": sorted({c.strategy for c in pane.candidates}),
                "components": sorted({k for c in pane.candidates for k, _ in c.components}),
                "dead": [[d.stage, d.source_uri] for d in pane.dead_letters]}) + "\n")


def _run(stream, select, out_dir=None):
    path = os.path.join(harness.tmpdir("panes-"), "panes.jsonl")
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        panes = p | stream | select
        _ = panes | beam.ParDo(_Collect(path))
        if out_dir:
            _ = panes | WriteWindowPanes(out_dir, run_id="test")
    with open(path) as f:
        return [json.loads(line) for line in f]


RECORDS = clustered_records(40, seed=3)


@pytest.mark.parametrize("strategy, params", [
    ("coreset", {}), ("cluster_margin", {"n_clusters": 3}), ("uniqueness", {}), ("entropy", {}),
    ("margin", {"stochastic": "power", "seed": 3}), ("uncertainty_kcenter", {"score": "entropy"})])
def test_every_strategy_selects_its_budget_per_sliding_window(strategy, params):
    def stream():
        return (TestStream()
                .advance_watermark_to(BASE)
                .add_elements([TimestampedValue(r, BASE + 3 * i) for i, r in enumerate(RECORDS)])
                .advance_watermark_to_infinity())
    panes = _run(stream(), SelectPerWindow(WindowSpec(60, 30, 3600), 3, strategy, params, uniqueness_k=3))
    by_window = {tuple(p["window"]): p for p in panes}
    # Frames at 0, 3, ..., 117 s: windows of 60 s every 30 s from -30 to 90.
    assert sorted(by_window) == [(-30, 30), (0, 60), (30, 90), (60, 120), (90, 150)]
    ids = [r.frame.frame_id for r in RECORDS]
    for (start, end), pane in by_window.items():
        inside = {ids[i] for i in range(40) if start <= 3 * i < end}
        assert pane["frames"] == len(inside) and pane["pane"] == "on_time"
        assert len(pane["candidates"]) == 3 and set(pane["candidates"]) <= inside
        assert pane["strategies"] == [strategy + ("+power" if "stochastic" in params else "")]
    if strategy == "cluster_margin":
        assert "cluster" in " ".join(by_window[(0, 60)]["components"])
    if strategy == "uncertainty_kcenter":  # the default of the streaming job too: each pick explains itself
        assert {"score", "distance_to_selected", "rule"} <= set(by_window[(0, 60)]["components"])
    if "stochastic" in params:  # the same noise per frame id: a rerun picks the same frames per window
        again = _run(stream(), SelectPerWindow(WindowSpec(60, 30, 3600), 3, strategy, params, uniqueness_k=3))
        assert {tuple(p["window"]): p["candidates"] for p in again} == {
            w: p["candidates"] for w, p in by_window.items()}


def test_late_pane_too_late_frame_and_restored_frames(tmp_path):
    first, late, too_late = RECORDS[:5], RECORDS[5], RECORDS[6]
    restored = [Restored(r) for r in first[:2]]  # the same frames replayed after a restart
    dead = DeadLetter("file:///cam/broken.png", "decode", "not an image")
    def stream():
        return (TestStream()
                .advance_watermark_to(BASE)
                .add_elements([TimestampedValue(r, BASE + i) for i, r in enumerate(first)])
                .add_elements([TimestampedValue(x, BASE + 10) for x in restored + [dead]])
                .advance_watermark_to(BASE + 120)                        # [0, 60) fires on time
                .add_elements([TimestampedValue(late, BASE + 30)])        # late, within lateness
                .add_elements([TimestampedValue(too_late, BASE - 7200)])  # 2 h before: too late
                .advance_watermark_to_infinity())
    out = str(tmp_path)
    panes = _run(stream(), SelectPerWindow(WindowSpec(60, None, 3600), 2, "entropy"), out)
    window = [p for p in panes if p["window"] == [0, 60]]
    assert [p["pane"] for p in window] == ["on_time", "late"]
    assert (window[0]["frames"], window[0]["files"]) == (5, 6)  # restored ones counted once
    assert (window[1]["frames"], window[1]["files"]) == (6, 7)
    assert window[0]["dead"] == [["decode", "file:///cam/broken.png"]]
    entropies = {r.frame.frame_id: r.entropy for r in first + [late]}
    assert window[1]["candidates"] == sorted(entropies, key=lambda i: -entropies[i])[:2]
    # The frame from 2 hours before is a dead letter in the window of the moment it was read.
    too_late_panes = [p for p in panes if ["window", too_late.frame.source_uri] in p["dead"]]
    assert len(too_late_panes) >= 1 and too_late_panes[0]["window"][0] > 1000
    # The files: rewritten by the late pane, one windows.jsonl line per pane.
    name = window_file_name(BASE, BASE + 60)
    with open(os.path.join(out, "candidates", name)) as f:
        written = [json.loads(line) for line in f]
    assert [c["frame_id"] for c in written] == window[1]["candidates"] and [c["rank"] for c in written] == [1, 2]
    with open(os.path.join(out, "windows.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [(line["pane"], line["frames"]) for line in lines if line["window_start_s"] == BASE] == [
        ("on_time", 5), ("late", 6)]
    # When the frames are decided per frame (--strategy vessal), the too-late frame is indexed and
    # decided: not a failure, no dead letter; the decode failure stays one.
    counted = _run(stream(), SelectPerWindow(WindowSpec(60, None, 3600), 0, "random", decided_per_frame=True),
                   str(tmp_path / "per_frame"))
    assert not [p for p in counted if ["window", too_late.frame.source_uri] in p["dead"]]
    assert [p["dead"] for p in counted if p["window"] == [0, 60]][0] == [["decode", "file:///cam/broken.png"]]


def test_a_window_with_identical_frames_selects_one_and_counts_them():
    twin = RECORDS[0]._replace(frame=RECORDS[0].frame._replace(
        frame_id="twin", source_uri="file:///cam/twin.png"))
    stream = (TestStream()
              .advance_watermark_to(BASE)
              .add_elements([TimestampedValue(r, BASE + 1) for r in (RECORDS[0], twin, RECORDS[1])])
              .advance_watermark_to_infinity())
    panes = _run(stream, SelectPerWindow(WindowSpec(60, None, 3600), 5, "entropy"))
    assert len(panes) == 1 and panes[0]["frames"] == 3 and len(panes[0]["candidates"]) == 2
    assert "twin" not in panes[0]["candidates"]  # the first by source URI stands for both


if __name__ == "__main__":
    harness.main(__file__)

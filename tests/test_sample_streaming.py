"""Streaming selection: per-window budgets over capture time, late data, emission as windows close.

Runs on Beam's ``BundleBasedDirectRunner`` with ``TestStream`` (event-time timestamps are the
frames' capture times, in seconds).
"""
import json
import os

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from tests import harness
from tests.records_factory import frame_record
from transforms.select.ptransforms import SelectCandidates


def _record(name, confidence):
    rest = (1 - confidence) / 2
    return frame_record(f"file:///cam/{name}.png", probabilities=(confidence, rest, rest))


class _Collect(beam.DoFn):
    """Appends each candidate with its pane's timing to a JSON-lines file (the test's sink)."""

    def __init__(self, path):
        self._path = path

    def process(self, c, pane=beam.DoFn.PaneInfoParam):
        with open(self._path, "a") as f:
            f.write(json.dumps({"name": os.path.basename(c.source_uri), "rank": c.rank,
                                "window": [c.window_start, c.window_end], "timing": pane.timing, "pane": pane.index,
                                "selection_id": c.selection_id}) + "\n")


def _run(stream, select):
    path = os.path.join(harness.tmpdir("stream-"), "out.jsonl")
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        _ = p | stream | select | beam.ParDo(_Collect(path))
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_fixed_windows_budget_per_window_and_late_frame_updates_its_window():
    # Confidence 0.40 is the most uncertain; 0.95 the least.
    first = [("a", 0.9), ("b", 0.5), ("c", 0.95), ("d", 0.45), ("e", 0.8)]   # capture 0-50 s
    second = [("f", 0.6), ("g", 0.99), ("h", 0.7), ("i", 0.98)]             # capture 60-110 s
    stream = (TestStream()
              .advance_watermark_to(0)
              .add_elements([TimestampedValue(_record(n, c), 10 * i) for i, (n, c) in enumerate(first)])
              .add_elements([TimestampedValue(_record(n, c), 60 + 10 * i) for i, (n, c) in enumerate(second)])
              .advance_watermark_to(130)                                       # both windows close
              .add_elements([TimestampedValue(_record("late", 0.4), 30)])      # late for [0, 60)
              .add_elements([TimestampedValue(_record("too-late", 0.34), 5)])
              .advance_watermark_to(200)
              .add_elements([TimestampedValue(_record("dropped", 0.34), 6)])   # beyond the lateness
              .advance_watermark_to_infinity())
    out = _run(stream, SelectCandidates(2, "least_confidence", window_s=60, allowed_lateness_s=100))
    by_window = {}
    for row in out:
        by_window.setdefault((tuple(row["window"]), row["timing"]), []).append(row)
    on_time_1 = sorted(by_window[((0.0, 60.0), 1)], key=lambda r: r["rank"])  # PaneInfoTiming.ON_TIME
    on_time_2 = sorted(by_window[((60.0, 120.0), 1)], key=lambda r: r["rank"])
    assert [r["name"] for r in on_time_1] == ["d.png", "b.png"]
    assert [r["name"] for r in on_time_2] == ["f.png", "h.png"]
    assert on_time_1[0]["selection_id"] != on_time_2[0]["selection_id"]
    # Each late frame fires the window again with its accumulated content: a new top 2.
    late_panes = {}
    for r in out:
        if r["window"] == [0.0, 60.0] and r["timing"] == 2:  # PaneInfoTiming.LATE
            late_panes.setdefault(r["pane"], []).append(r)
    ranked = [[r["name"] for r in sorted(rows, key=lambda r: r["rank"])] for _, rows in sorted(late_panes.items())]
    assert ranked == [["late.png", "d.png"], ["too-late.png", "late.png"]]
    assert {r["selection_id"] for rows in late_panes.values() for r in rows} == {on_time_1[0]["selection_id"]}
    assert all(r["name"] != "dropped.png" for r in out)
    assert not any(w == (60.0, 120.0) and timing == 2 for (w, timing) in by_window)


def test_sliding_windows_select_per_window():
    names = [(f"s{i}", 0.5 + 0.04 * i) for i in range(8)]   # s0 most uncertain
    stream = (TestStream()
              .advance_watermark_to(0)
              .add_elements([TimestampedValue(_record(n, c), 15 * i) for i, (n, c) in enumerate(names)])
              .advance_watermark_to_infinity())
    out = _run(stream, SelectCandidates(1, "least_confidence", window_s=60, period_s=30))
    winners = {tuple(r["window"]): r["name"] for r in out}
    # Captures at 0, 15, ..., 105 s; each 60 s window starting every 30 s picks its earliest frame.
    assert winners == {(-30.0, 30.0): "s0.png", (0.0, 60.0): "s0.png", (30.0, 90.0): "s2.png",
                       (60.0, 120.0): "s4.png", (90.0, 150.0): "s6.png"}
    assert all(r["rank"] == 1 for r in out) and len(out) == 5


if __name__ == "__main__":
    harness.main(__file__)

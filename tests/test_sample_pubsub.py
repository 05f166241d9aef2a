"""New-file notifications through the Pub/Sub emulator: a streaming mine of per-window candidates.

Each message names a new image (``data``) and its capture time (attribute ``capture_time``, ms
since the epoch). The pipeline windows notifications by capture time, decodes and scores the
files, and selects ``budget`` candidates per window as the watermark passes the window's end.
Skipped where the Cloud SDK's Pub/Sub emulator is not installed.
"""
import json
import os
import sys
import tempfile
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import window

from beam_pipelines.local.processes import free_port
from tests import harness
from transforms.decode.ptransforms import DecodeMedia
from transforms.score.ptransforms import ScoreFrames, load_model_spec
from transforms.select.ptransforms import SelectCandidates

EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
PROJECT = "activebeam-test"
WINDOW_S = 6


@pytest.fixture()
def pubsub():
    if not os.path.exists(EMULATOR):
        pytest.skip("the Cloud SDK Pub/Sub emulator is not installed")
    port = free_port()
    argv = [EMULATOR, "--host=127.0.0.1", f"--port={port}"]
    # The emulator answers "Ok" to HTTP GET / once it listens.
    with harness._emulator("pubsub", argv, f"http://127.0.0.1:{port}/",
                           {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}"}):
        from google.cloud import pubsub_v1
        publisher = pubsub_v1.PublisherClient()
        publisher.create_topic(name=publisher.topic_path(PROJECT, "new-files"))
        subscriber = pubsub_v1.SubscriberClient()
        subscription = subscriber.subscription_path(PROJECT, "activebeam-mine")
        subscriber.create_subscription(name=subscription, topic=publisher.topic_path(PROJECT, "new-files"))
        yield publisher, subscription


class _Collect(beam.DoFn):
    """Appends each candidate's file name, rank and window to a JSON-lines file."""

    def __init__(self, path):
        self._path = path

    def process(self, c):
        with open(self._path, "a") as f:
            f.write(json.dumps({"name": os.path.basename(c.source_uri), "rank": c.rank,
                                "window": [c.window_start, c.window_end]}) + "\n")


def test_new_file_notifications_yield_candidates_per_capture_window(pubsub):
    publisher, subscription = pubsub
    files = [harness.media("fashion-mnist", f"t10k-{i:05d}.png") for i in range(10)]
    start = (int(time.time()) // WINDOW_S + 3) * WINDOW_S   # a window boundary ahead of now
    first, second = files[:6], files[6:]
    topic = publisher.topic_path(PROJECT, "new-files")
    notices = ([(f, start + i * 0.5) for i, f in enumerate(first)] + [(first[0], start + 4)]  # re-sent
               + [(f, start + WINDOW_S + i * 0.5) for i, f in enumerate(second)])
    for path, capture_s in notices:
        publisher.publish(topic, path.encode(), capture_time=str(int(capture_s * 1000))).result()

    out = os.path.join(harness.tmpdir("pubsub-out-"), "candidates.jsonl")
    options = PipelineOptions(runner="BundleBasedDirectRunner", project=PROJECT)
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    frames = (pipeline
              | "Notifications" >> beam.io.ReadFromPubSub(subscription=subscription,
                                                          timestamp_attribute="capture_time")
              | "Paths" >> beam.Map(lambda data: data.decode("utf-8"))
              | "CaptureWindows" >> beam.WindowInto(window.FixedWindows(WINDOW_S))
              | "Decode" >> DecodeMedia(0.0))
    scored = frames.frames | "Score" >> ScoreFrames(load_model_spec())
    _ = (scored.records | "Select" >> SelectCandidates(2, "least_confidence")
         | "Collect" >> beam.ParDo(_Collect(out)))
    result = pipeline.run()
    try:
        deadline = time.time() + 180
        rows = []
        while time.time() < deadline:
            if os.path.exists(out):
                with open(out) as f:
                    rows = [json.loads(line) for line in f]
                if len({tuple(r["window"]) for r in rows}) == 2:
                    break
            time.sleep(1)
    finally:
        result.cancel()
    windows = {}
    for r in rows:
        windows.setdefault(tuple(r["window"]), []).append(r)
    assert sorted(windows) == [(start, start + WINDOW_S), (start + WINDOW_S, start + 2 * WINDOW_S)]
    names = {w: sorted(r["name"] for r in rs) for w, rs in windows.items()}
    assert len(names[(start, start + WINDOW_S)]) == 2 and len(set(names[(start, start + WINDOW_S)])) == 2
    assert set(names[(start, start + WINDOW_S)]) <= {os.path.basename(f) for f in first}
    assert set(names[(start + WINDOW_S, start + 2 * WINDOW_S)]) <= {os.path.basename(f) for f in second}
    assert all(sorted(r["rank"] for r in rs) == [1, 2] for rs in windows.values())


def test_an_emulator_log_folder_of_its_own_goes_on_a_clean_exit_and_stays_after_an_error(monkeypatch):
    """``run_emulator`` without ``log_dir`` (the demo's and benchmarks' emulators): its temporary
    log folder is removed when the block ends cleanly, and kept with the log after an error."""
    from beam_pipelines.local import emulators
    monkeypatch.setattr(tempfile, "tempdir", harness.tmpdir("emulator-logs-"))  # nothing left in /tmp

    def web_server():  # a real process that answers HTTP, as the emulators do
        port = free_port()
        return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], f"http://127.0.0.1:{port}/"

    argv, url = web_server()
    with emulators.run_emulator("web", argv, url, {"ACTIVEBEAM_TEST_EMULATOR": url}) as log:
        assert os.path.exists(log) and os.environ["ACTIVEBEAM_TEST_EMULATOR"] == url
    assert not os.path.exists(os.path.dirname(log)) and "ACTIVEBEAM_TEST_EMULATOR" not in os.environ
    argv, url = web_server()
    with pytest.raises(RuntimeError, match="the block failed"):
        with emulators.run_emulator("web", argv, url, {}) as log:
            raise RuntimeError("the block failed")
    assert os.path.exists(log)


if __name__ == "__main__":
    harness.main(__file__)

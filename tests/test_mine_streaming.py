"""The streaming `mine` job end to end, against the Pub/Sub emulator, the Cloud Storage emulator and
a real mongod: uploads -> notifications -> frames indexed -> per-window candidate files, with late
arrivals, duplicated and malformed notifications, a job killed mid-window and restarted, a
watched folder (files added while the job runs and while it is down), a model replaced while
it runs, and SIGTERM draining. Each job is a real `python -m beam_pipelines.mine` process.

Skipped where the Cloud SDK's Pub/Sub emulator is not installed (the watched-folder test runs
without it).
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pymongo
import pytest

from beam_pipelines import mine
from tests import harness

EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
PROJECT = "activebeam-stream"
BUCKET = "cams"
WINDOW_S = 10
DATABASE = "activebeam"


@pytest.fixture(scope="module")
def mongo():
    with harness.mongod() as server:
        yield server


@pytest.fixture(scope="module")
def gcs():
    with harness.gcs_emulator(BUCKET) as bucket:
        yield bucket


@pytest.fixture(scope="module")
def pubsub_host():
    if not os.path.exists(EMULATOR):
        pytest.skip("the Cloud SDK Pub/Sub emulator is not installed")
    port = harness.free_port()
    with harness._emulator("pubsub", [EMULATOR, "--host=127.0.0.1", f"--port={port}"],
                           f"http://127.0.0.1:{port}/", {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}"}):
        yield f"127.0.0.1:{port}"


class Notifier:
    """Uploads files to the Cloud Storage emulator and publishes their notifications in Cloud
    Storage's format (attributes, and the object resource the JSON API returns as data)."""

    def __init__(self, bucket, name):
        from google.cloud import pubsub_v1
        self.bucket = bucket
        self.publisher = pubsub_v1.PublisherClient()
        self.topic = self.publisher.topic_path(PROJECT, name)
        self.publisher.create_topic(name=self.topic)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscription = self.subscriber.subscription_path(PROJECT, name)
        self.subscriber.create_subscription(name=self.subscription, topic=self.topic, ack_deadline_seconds=10)

    def upload(self, name, path=None, data=None) -> dict:
        blob = self.bucket.blob(name)
        if data is not None:
            blob.upload_from_string(data)
        else:
            blob.upload_from_filename(path)
        blob.reload()
        resource = dict(blob._properties)  # noqa: SLF001 - the JSON API's object resource
        self.publish(resource)
        return resource

    def publish(self, resource, event="OBJECT_FINALIZE"):
        attributes = {"notificationConfig": f"projects/_/buckets/{BUCKET}/notificationConfigs/1",
                      "eventType": event, "payloadFormat": "JSON_API_V1", "bucketId": BUCKET,
                      "objectId": resource["name"], "objectGeneration": str(resource["generation"]),
                      "eventTime": resource["timeCreated"]}
        self.publisher.publish(self.topic, json.dumps(resource).encode(), **attributes).result()

    def publish_raw(self, data: bytes, **attributes):
        self.publisher.publish(self.topic, data, **attributes).result()

    def left_over(self) -> int:
        """Messages still deliverable on the subscription (none once everything is acknowledged)."""
        response = self.subscriber.pull(request={"subscription": self.subscription, "max_messages": 100},
                                        timeout=5)
        return len(response.received_messages)


_JOBS = []


@pytest.fixture(autouse=True)
def _no_job_left_running():
    yield
    while _JOBS:
        job = _JOBS.pop()
        if job.process.poll() is None:
            job.kill()


class Job:
    """One `python -m beam_pipelines.mine` streaming process (killed at the end of its test)."""

    def __init__(self, argv, name):
        self.log_path = os.path.join(harness.tmpdir(f"{name}-log-"), "job.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, NO_GCE_CHECK="true", PYTHONPATH=harness.CHECKOUT)
        self.process = subprocess.Popen([sys.executable, "-m", "beam_pipelines.mine", *argv],
                                        cwd=harness.CHECKOUT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        _JOBS.append(self)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def check_alive(self):
        if self.process.poll() is not None:
            raise AssertionError(f"the job exited with {self.process.returncode}:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout=120) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if not self._log.closed:
                self._log.close()

    def kill(self):
        self.process.kill()
        self.process.wait()
        if not self._log.closed:
            self._log.close()


def _wait(predicate, timeout, what, job=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job is not None:
            job.check_alive()
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f":\n{job.log()}" if job else ""))


def _sleep_until(moment):
    time.sleep(max(0.0, moment - time.time()))


def _next_window(after_s=0.0) -> float:
    """The start of the first window starting at least ``after_s`` from now, plus 0.5 s."""
    moment = time.time() + after_s
    return (int(moment) // WINDOW_S + 1) * WINDOW_S + 0.5


def _windows_log(out):
    path = os.path.join(out, "windows.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _latest_panes(out):
    latest = {}
    for line in _windows_log(out):
        latest[line["window_start_s"]] = line
    return latest


def _window_of(seconds: float) -> float:
    return float(int(seconds // WINDOW_S) * WINDOW_S)


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _window_file(out, kind, start):
    from transforms.index.window_outputs import window_file_name
    return os.path.join(out, kind, window_file_name(start, start + WINDOW_S))


def _jpeg_with_exif(png_path, when_s) -> bytes:
    """A JPEG of a Fashion-MNIST image whose EXIF DateTimeOriginal is ``when_s`` (UTC)."""
    from PIL import Image
    image = Image.open(png_path).convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(when_s))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _video_created_at(when_s) -> bytes:
    """box.mp4's H.264 stream remuxed (not re-encoded) with the MP4 creation_time ``when_s``."""
    import av
    path = os.path.join(harness.tmpdir("video-"), "clip.mp4")
    with av.open(harness.media("box.mp4")) as source, av.open(path, "w", format="mp4") as target:
        target.metadata["creation_time"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(when_s))
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            target.mux(packet)
    with open(path, "rb") as f:
        return f.read()


def _png(i):
    return harness.media("fashion-mnist", f"t10k-{i:05d}.png")


def _stream_args(out, mongo, *extra):
    return [f"--output_dir={out}", f"--mongo_uri={mongo.uri}", f"--window_seconds={WINDOW_S}",
            "--allowed_lateness_seconds=120", "--budget=2", "--strategy=least_confidence",
            f"--project={PROJECT}", "--status_interval_seconds=2", *extra]


def _database(mongo):
    return pymongo.MongoClient(mongo.uri)[DATABASE]


def test_notifications_to_per_window_candidates(mongo, gcs, pubsub_host):
    notifier = Notifier(gcs, "uploads-e2e")
    out = harness.tmpdir("stream-e2e-")
    db = _database(mongo)
    job = Job([f"--input_subscription={notifier.subscription}", *_stream_args(out, mongo, "--max_runtime_seconds=600")],
              "e2e")
    # Warm-up: the job is reading and its model loaded once this frame is indexed.
    notifier.upload("e2e/warm-up.png", _png(100))
    _wait(lambda: db.frames.find_one({"source_uri": f"gs://{BUCKET}/e2e/warm-up.png"}), 150, "the warm-up frame", job)

    window_a = _next_window()
    _sleep_until(window_a)
    uploaded = [notifier.upload(f"e2e/a{i}.png", _png(i)) for i in range(3)]
    notifier.publish(uploaded[0])  # the same object and generation notified again
    notifier.publish_raw(b"{this is not json", eventType="OBJECT_FINALIZE", bucketId=BUCKET,
                         objectId="e2e/broken.png", objectGeneration="7", payloadFormat="JSON_API_V1")
    notifier.publish(uploaded[1], event="OBJECT_DELETE")
    # A photo taken in 2019 (EXIF) arrives today: far beyond the allowed lateness.
    notifier.upload("e2e/old-photo.jpg", data=_jpeg_with_exif(_png(10), 1561975200))

    window_b = window_a + WINDOW_S
    _sleep_until(window_b)
    uploaded += [notifier.upload(f"e2e/b{i}.png", _png(20 + i)) for i in range(2)]
    # A clip whose container says it was recorded from the start of window B: its 15 frames at
    # 1 frame/s fall into windows B and C.
    notifier.upload("e2e/clip.mp4", data=_video_created_at(window_b - 0.5))
    start_a = _window_of(window_a)
    _wait(lambda: any(line["window_start_s"] == start_a for line in _windows_log(out)), 90,
          "window A's on-time pane", job)
    # While it runs, its entry in `runs` says so, with its counts so far.
    running = _wait(lambda: db.runs.find_one({"inputs": notifier.subscription, "status": "running",
                                              "counts": {"$ne": None}}), 30, "the running run's counts", job)
    assert json.loads(running["counts"])["files_done"] >= 4
    # A photo captured in window A arrives after A closed: a late pane updates A.
    notifier.upload("e2e/late.jpg", data=_jpeg_with_exif(_png(30), window_a + 2))
    _wait(lambda: any(line["window_start_s"] == start_a and line["pane"] == "late" for line in _windows_log(out)),
          90, "window A's late pane", job)
    start_c = start_a + 2 * WINDOW_S
    _wait(lambda: db.arrivals.find_one({"source_uri": f"gs://{BUCKET}/e2e/clip.mp4", "status": "done"}), 90,
          "the clip's frames", job)
    assert job.stop(signal.SIGTERM) == 0, job.log()

    # Frames: each file once, with the event time of the documented precedence.
    frames = {doc["_id"]: doc for doc in db.frames.find({"source_uri": {"$regex": "^gs://cams/e2e/"}})}
    by_file = {}
    for doc in frames.values():
        by_file.setdefault(doc["source_uri"].rsplit("/", 1)[1], []).append(doc)
    clip_frames = db.arrivals.find_one({"source_uri": f"gs://{BUCKET}/e2e/clip.mp4"})["frames"]
    assert clip_frames >= 15  # box.mp4 lasts 15.2 s, sampled at 1 frame/s
    assert {name: len(docs) for name, docs in by_file.items()} == {
        "warm-up.png": 1, "a0.png": 1, "a1.png": 1, "a2.png": 1, "old-photo.jpg": 1,
        "b0.png": 1, "b1.png": 1, "clip.mp4": clip_frames, "late.jpg": 1}
    sources = {name: {d["event_time_source"] for d in docs} for name, docs in by_file.items()}
    assert sources["a0.png"] == {"notification"} and sources["clip.mp4"] == {"container"}
    assert sources["late.jpg"] == sources["old-photo.jpg"] == {"exif"}
    assert by_file["late.jpg"][0]["event_time"] == pytest.approx(int(window_a + 2))
    created = {r["name"].rsplit("/", 1)[1]: harness_rfc3339(r["timeCreated"]) for r in uploaded}
    assert by_file["a0.png"][0]["event_time"] == pytest.approx(created["a0.png"], abs=1e-3)
    clip_times = sorted(d["event_time"] for d in by_file["clip.mp4"])
    assert clip_times[0] == pytest.approx(window_b - 0.5, abs=0.1)
    assert clip_times[-1] - clip_times[0] == pytest.approx(clip_frames - 1, abs=0.5)

    # Windows: A on time then late, B and C on time; one file per window, rewritten by the late pane.
    lines = _windows_log(out)
    panes_a = [line for line in lines if line["window_start_s"] == start_a]
    assert [p["pane"] for p in panes_a] == ["on_time", "late"]
    dead_a = _read_jsonl(_window_file(out, "dead_letters", start_a))
    # a0-a2, the malformed message and, if it was read in window A, the photo from 2019.
    assert panes_a[0]["frames"] == 3 and panes_a[0]["files"] == 3 + len(dead_a)
    assert panes_a[1]["frames"] == 4 and panes_a[1]["files"] == panes_a[0]["files"] + 1
    assert {line["window_start_s"] for line in lines if line["pane"] == "on_time"} >= {
        start_a, start_a + WINDOW_S, start_c}
    assert all(set(line) >= {"window_start", "window_end", "pane", "files", "frames", "dead_letters", "candidates"}
               for line in lines)
    candidates_a = _read_jsonl(_window_file(out, "candidates", start_a))
    assert [c["rank"] for c in candidates_a] == [1, 2]
    assert {c["source_uri"].rsplit("/", 1)[1] for c in candidates_a} <= {"a0.png", "a1.png", "a2.png", "late.jpg"}
    assert all(c["window_start"] == start_a and c["window_end"] == start_a + WINDOW_S for c in candidates_a)
    assert candidates_a[0]["selection_id"] == panes_a[1]["selection_id"]
    # Least confidence ranks the window's most uncertain frames first, over all 4 of its frames.
    confidences = {d["source_uri"].rsplit("/", 1)[1]: d["scores"]["least_confidence"]
                   for d in frames.values() if d["event_time"] // WINDOW_S * WINDOW_S == start_a}
    assert [c["source_uri"].rsplit("/", 1)[1] for c in candidates_a] == sorted(
        confidences, key=lambda name: -confidences[name])[:2]
    # MongoDB holds the window's latest selection, no stale entry of the on-time pane.
    stored = list(db.candidates.find({"window_start": start_a, "selection_id": {
        "$in": [p["selection_id"] for p in panes_a if p["selection_id"]]}}))
    assert sorted(c["frame_id"] for c in stored) == sorted(c["frame_id"] for c in candidates_a)

    # Dead letters: the malformed notification in A, the 2019 photo as too late.
    malformed = [d for d in dead_a if d["stage"] == "notification"]
    assert len(malformed) == 1 and "bad_json" in malformed[0]["error"]
    assert malformed[0]["source_uri"].startswith(notifier.subscription + "#message=")
    all_dead = [d for name in os.listdir(os.path.join(out, "dead_letters"))
                for d in _read_jsonl(os.path.join(out, "dead_letters", name))]
    too_late = [d for d in all_dead if d["stage"] == "window"]
    assert [d["source_uri"] for d in too_late] == [f"gs://{BUCKET}/e2e/old-photo.jpg"]
    assert "too late" in too_late[0]["error"] and "2019-07-01" in too_late[0]["error"]

    # The run: drained, its counts; every message acknowledged, none left on the subscription.
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    run = db.runs.find_one({"_id": summary["run_id"]})
    assert run["status"] == "drained" and summary["stop_reason"] == "signal SIGTERM"
    counts = json.loads(run["counts"])
    assert counts["files_done"] == 9 and counts["frames_written"] == 8 + clip_frames
    assert counts["notifications_malformed"] == 1 and counts["notifications_duplicate"] == 1
    assert counts["notifications_by_event_type"] == {"OBJECT_FINALIZE": 11, "OBJECT_DELETE": 1}
    assert db.arrivals.count_documents({"input": notifier.subscription, "status": "done"}) == 10
    assert notifier.left_over() == 0


def harness_rfc3339(text):
    from transforms.intake.notifications import parse_rfc3339
    return parse_rfc3339(text)


def test_killed_job_restarts_without_loss_or_duplicates(mongo, gcs, pubsub_host):
    notifier = Notifier(gcs, "uploads-restart")
    out = harness.tmpdir("stream-restart-")
    db = _database(mongo)
    argv = [f"--input_subscription={notifier.subscription}", "--ack_deadline_seconds=10",
            *_stream_args(out, mongo, "--max_runtime_seconds=600")]
    first = Job(argv, "restart-1")
    resources = [notifier.upload("restart/warm-up.png", _png(200))]
    _wait(lambda: db.frames.find_one({"source_uri": f"gs://{BUCKET}/restart/warm-up.png"}), 150,
          "the warm-up frame", first)
    window_a = _next_window()
    _sleep_until(window_a)
    resources += [notifier.upload(f"restart/a{i}.png", _png(210 + i)) for i in range(3)]
    names = [f"gs://{BUCKET}/restart/a{i}.png" for i in range(3)]
    _wait(lambda: db.arrivals.count_documents({"source_uri": {"$in": names}, "status": "done"}) == 3, 30,
          "the frames of window A indexed", first)
    first.kill()  # SIGKILL, most likely before window A fired
    # While the job is down: two more files, and a notification pulled by nobody.
    resources += [notifier.upload(f"restart/down{i}.png", _png(220 + i)) for i in range(2)]

    second = Job(argv, "restart-2")
    expected = {}
    for resource in resources:
        start = _window_of(harness_rfc3339(resource["timeCreated"]))
        expected[start] = expected.get(start, 0) + 1
    _wait(lambda: all(_latest_panes(out).get(start, {}).get("files") == n for start, n in expected.items()),
          150, f"windows with {expected} files", second)
    assert second.stop(signal.SIGTERM) == 0, second.log()

    # Nothing lost: every file's frame once; nothing duplicated: one arrival per file, done.
    uris = sorted(f"gs://{BUCKET}/{r['name']}" for r in resources)
    frames = list(db.frames.find({"source_uri": {"$regex": "^gs://cams/restart/"}}))
    assert sorted(d["source_uri"] for d in frames) == uris
    arrivals = list(db.arrivals.find({"input": notifier.subscription}))
    assert sorted(a["source_uri"] for a in arrivals) == uris and {a["status"] for a in arrivals} == {"done"}
    # The windows: every file in its window; a window rebuilt unchanged after the restart writes
    # no second line; MongoDB holds exactly the latest selections.
    lines = _windows_log(out)
    for start in expected:
        digests = [line["digest"] for line in lines if line["window_start_s"] == start]
        assert len(digests) == len(set(digests)), lines
        latest = _latest_panes(out)[start]
        selections = {line["selection_id"] for line in lines if line["window_start_s"] == start} - {None}
        stored = sorted(c["frame_id"] for c in db.candidates.find(
            {"window_start": start, "selection_id": {"$in": sorted(selections)}}))
        written = sorted(c["frame_id"] for c in _read_jsonl(_window_file(out, "candidates", start)))
        assert stored == written and len(written) == latest["candidates"] == min(2, expected[start])
    runs = list(db.runs.find({"inputs": notifier.subscription}).sort("started_at", 1))
    # The killed run could not record its end; the restart, on the same machine, closed it.
    assert [r["status"] for r in runs] == ["failed", "drained"]
    assert runs[0]["failure"].startswith(f"lost: its driver (pid {first.process.pid} on ")
    assert runs[0]["failure"].endswith(f"found when run {runs[1]['_id']} started")
    assert notifier.left_over() == 0


def _save_model_copy(path):
    """A "retrained" model: the bundled one with its last layer's bias nudged, saved atomically."""
    import numpy as np
    from transforms.score.keras_models import load_embedding_classifier
    from transforms.score.model_base import default_model_path
    import keras
    model = keras.models.load_model(default_model_path(), compile=False)
    layer = model.layers[-1]
    weights = layer.get_weights()
    weights[-1] = weights[-1] + np.linspace(-0.5, 0.5, len(weights[-1])).astype(weights[-1].dtype)
    layer.set_weights(weights)
    tmp = os.path.join(os.path.dirname(path), ".tmp-model.keras")
    model.save(tmp)
    os.replace(tmp, path)
    load_embedding_classifier(path)  # still a valid (embedding, probabilities) model


def test_watched_folder_model_switch_and_restart(mongo):
    root = harness.tmpdir("stream-watch-")
    folder, models, out = (os.path.join(root, d) for d in ("incoming", "models", "out"))
    os.makedirs(folder)
    os.makedirs(models)
    db = _database(mongo)
    pattern = os.path.join(folder, "*.png")
    argv = [f"--watch={pattern}", "--watch_interval_seconds=1", f"--model_watch={models}/*.keras",
            *_stream_args(out, mongo)]

    def add(name, source):  # written elsewhere, then renamed into the folder (atomic)
        tmp = os.path.join(root, name)
        shutil.copyfile(source, tmp)
        os.replace(tmp, os.path.join(folder, name))
        return os.path.join(folder, name)

    first = Job(argv, "watch-1")
    add("warm-up.png", _png(250))
    _wait(lambda: db.frames.find_one({"source_uri": os.path.join(folder, "warm-up.png")}), 150,
          "the warm-up frame", first)
    for i in range(3):
        add(f"w{i}.png", _png(260 + i))
    _wait(lambda: db.arrivals.count_documents({"input": pattern, "status": "done"}) == 4, 60,
          "the first files indexed", first)
    # A file replaced in place is a new version: mined once more.
    replaced = add("w0.png", _png(269))
    _wait(lambda: db.arrivals.count_documents({"input": pattern, "source_uri": replaced, "status": "done"}) == 2,
          60, "the replaced file mined again", first)
    original_version = db.frames.find_one({"source_uri": replaced})["model"]["version"]

    _save_model_copy(os.path.join(models, "retrained.keras"))
    def switched():
        run = db.runs.find_one({"inputs": pattern, "status": "running", "counts": {"$ne": None}})
        return run and json.loads(run["counts"])["feed"]["model_switches"] == 1
    _wait(switched, 150, "the job to see the new model", first)  # loading it takes long on a loaded machine
    time.sleep(2.5)  # files read from the next intake window on are scored by it
    later = [add(f"after-model{i}.png", _png(270 + i)) for i in range(2)]
    _wait(lambda: db.frames.count_documents({"source_uri": {"$in": later}}) == 2, 60, "frames after the switch", first)
    assert first.stop(signal.SIGTERM) == 0, first.log()

    versions = {d["source_uri"]: d["model"] for d in db.frames.find({"source_uri": {"$regex": "^" + folder}})}
    assert {versions[p]["name"] for p in later} == {"retrained"}
    assert {versions[p]["version"] for p in later} != {original_version}
    assert versions[replaced]["version"] == original_version
    assert versions[replaced]["name"] == "fashion_mnist_cnn"
    # The replaced file's frame holds the new content (same frame id, rewritten).
    new_hash = db.frames.find_one({"source_uri": replaced})["pixel_hash"]
    assert db.frames.count_documents({"source_uri": replaced}) == 1

    # While the job is down: two more files. The restarted job mines only those.
    down = [add(f"down{i}.png", _png(280 + i)) for i in range(2)]
    done_before = {a["_id"]: a["run_id"] for a in db.arrivals.find({"input": pattern, "status": "done"})}
    second = Job(argv, "watch-2")
    _wait(lambda: db.arrivals.count_documents({"source_uri": {"$in": down}, "status": "done"}) == 2, 150,
          "the files added while the job was down", second)
    assert second.stop(signal.SIGTERM) == 0, second.log()
    after = {a["_id"]: a["run_id"] for a in db.arrivals.find({"input": pattern, "status": "done"})}
    assert {k: v for k, v in after.items() if k in done_before} == done_before  # not mined again
    assert len(after) == len(done_before) + 2
    assert db.frames.find_one({"source_uri": replaced})["pixel_hash"] == new_hash
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["files_done"] == 2 and summary["feed"]["versions_already_done"] == len(done_before) - 1
    runs = [r["status"] for r in db.runs.find({"inputs": pattern})]
    assert runs == ["drained", "drained"]


def test_vessal_picks_per_frame_and_a_restart_keeps_its_state(mongo):
    """--strategy vessal on a watched folder: each pick is written at once (candidates/picks file,
    MongoDB candidate with its selection probability); a restarted job continues the saved state
    (its frame count goes on, not from zero) and picks no frame twice."""
    root = harness.tmpdir("stream-vessal-")
    folder, out = os.path.join(root, "cam1"), os.path.join(root, "out")
    os.makedirs(folder)
    db = _database(mongo)
    pattern = os.path.join(folder, "*.png")
    argv = [f"--watch={pattern}", "--watch_interval_seconds=1", f"--output_dir={out}", f"--mongo_uri={mongo.uri}",
            f"--window_seconds={WINDOW_S}", "--allowed_lateness_seconds=120", "--strategy=vessal",
            "--label_rate=0.3", "--vessal_state_key=camera", f"--project={PROJECT}", "--status_interval_seconds=2"]

    def add(names):
        for i in names:
            tmp = os.path.join(root, f"{i}.png")
            shutil.copyfile(_png(200 + i), tmp)
            os.replace(tmp, os.path.join(folder, f"{i}.png"))

    def picks():
        directory = os.path.join(out, "candidates", "picks")
        files = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        return [_read_jsonl(os.path.join(directory, name))[0] for name in files]

    def state():
        docs = list(db.selection_state.find({"key": folder}))
        return docs[0] if len(docs) == 1 else None

    def decided_before_done():
        # A file is done (a restart skips it) only once its frames are decided and the decisions
        # saved: the state's count, read after the ledger, covers every done file's frame.
        done = db.arrivals.count_documents({"input": pattern, "status": "done"})
        seen = (state() or {}).get("seen", 0)
        assert seen >= done, f"{done} files done, {seen} frames decided: a restart would never decide the rest"
        return done

    for run, names in enumerate((range(0, 20), range(20, 40))):
        job = Job(argv, f"vessal-{run}")
        add(names)
        _wait(lambda: decided_before_done() == names.stop, 150, "the files indexed", job)
        _wait(lambda: (state() or {}).get("seen") == names.stop, 60, "every frame decided", job)
        assert job.stop(signal.SIGTERM) == 0, job.log()
    written = picks()
    ids = [p["frame_id"] for p in written]
    assert len(ids) == len(set(ids))  # no frame picked twice
    assert 0.3 * 40 * 0.3 <= len(ids) <= 0.3 * 40 * 2.5, len(ids)
    assert {p["strategy"] for p in written} == {"vessal"}
    assert all(0 < p["score"] <= 1 and p["score"] == p["components"]["probability"] for p in written)
    stored = {d["frame_id"]: d for d in db.candidates.find({"strategy": "vessal", "source_uri": {"$regex": "^" + root}})}
    assert set(stored) == set(ids)
    assert state()["picks"] == len(ids)
    assert sorted(p["rank"] for p in written) == list(range(1, len(ids) + 1))  # ranks go on after the restart
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["label_rate"] == 0.3 and summary["picks"] == len(ids) and summary["candidates"] == 0


def test_vessal_on_pubsub_notifications(mongo, gcs, pubsub_host):
    """--strategy vessal on Cloud Storage notifications: every notified frame decided once, each
    pick in candidates/picks and in MongoDB with the same frame ids, messages acknowledged."""
    notifier = Notifier(gcs, "uploads-vessal")
    out = harness.tmpdir("stream-vessal-pubsub-")
    db = _database(mongo)
    job = Job([f"--input_subscription={notifier.subscription}", f"--output_dir={out}", f"--mongo_uri={mongo.uri}",
               "--strategy=vessal", "--label_rate=0.5", "--vessal_state_key=source", f"--project={PROJECT}",
               "--status_interval_seconds=2", "--max_runtime_seconds=600"], "vessal-pubsub")
    names = [f"vessal/{i}.png" for i in range(8)]
    for i, name in enumerate(names):
        notifier.upload(name, _png(230 + i))
    uris = [f"gs://{BUCKET}/{name}" for name in names]
    _wait(lambda: db.selection_state.count_documents({"key": {"$in": uris}}) == len(uris)
          and all(d["seen"] == 1 for d in db.selection_state.find({"key": {"$in": uris}})), 150,
          "every frame decided once (one state per source)", job)
    assert job.stop(signal.SIGTERM) == 0, job.log()
    directory = os.path.join(out, "candidates", "picks")
    written = sorted(_read_jsonl(os.path.join(directory, f))[0]["frame_id"] for f in os.listdir(directory))
    stored = sorted(d["frame_id"] for d in db.candidates.find({"strategy": "vessal", "source_uri": {"$in": uris}}))
    assert written == stored and len(written) >= 1
    assert sum(d["picks"] for d in db.selection_state.find({"key": {"$in": uris}})) == len(written)
    assert notifier.left_over() == 0


def test_streaming_runs_the_detector_as_asked_and_records_only_what_it_applied(mongo):
    """The streaming job builds its detector as the batch job does: with the default NanoDet-g and
    --detector_flip off, frames get detections but no flip-TTA localisation score; its lineage
    leaves out the batch-only settings it does not apply."""
    import cv2
    from transforms.score import pretrained
    from transforms.score.detection import LOCALISATION_SCORE
    root = harness.tmpdir("stream-detector-")
    folder, out = os.path.join(root, "incoming"), os.path.join(root, "out")
    os.makedirs(folder)
    capture = cv2.VideoCapture(harness.media("vtest.avi"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)  # a crowded moment: several pedestrians
    ok, bgr = capture.read()
    assert ok
    cv2.imwrite(os.path.join(root, "crowd.jpg"), bgr)
    os.replace(os.path.join(root, "crowd.jpg"), os.path.join(folder, "crowd.jpg"))
    pattern = os.path.join(folder, "*.jpg")
    with harness.pretrained_defaults():
        job = Job([f"--watch={pattern}", "--watch_interval_seconds=1", "--detector_flip=off",
                   *_stream_args(out, mongo)], "stream-detector")
    db = _database(mongo)
    frame = _wait(lambda: db.frames.find_one({"source_uri": os.path.join(folder, "crowd.jpg")}), 180,
                  "the frame indexed", job)
    assert job.stop(signal.SIGTERM) == 0, job.log()
    assert frame["model"]["detector_name"] == pretrained.DETECTOR_FILE
    assert sum(d["label"] == "person" for d in frame["detections"]) >= 3
    assert "detection_sum" in frame["scores"] and LOCALISATION_SCORE not in frame["scores"]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["detector"]["flip"] is False
    assert not {"near_duplicate_similarity", "selection_embedding", "include_labelled"} & set(summary)
    run = db.runs.find_one({"inputs": pattern})
    assert not {"near_duplicate_similarity", "selection_embedding", "include_labelled"} & set(json.loads(run["options"]))


def test_bigquery_written_continuously(mongo):
    """Frames and each window's candidates reach BigQuery (the emulator) while the job runs."""
    root = harness.tmpdir("stream-bq-")
    folder, out = os.path.join(root, "incoming"), os.path.join(root, "out")
    os.makedirs(folder)
    db = _database(mongo)
    with harness.bigquery_emulator() as endpoint:
        client = harness.bigquery_client(endpoint)
        client.create_dataset("stream")
        table = f"{harness.BIGQUERY_PROJECT}:stream.frames"
        job = Job([f"--watch={folder}/*.png", "--watch_interval_seconds=1", f"--bigquery_table={table}",
                   *_stream_args(out, mongo, f"--project={harness.BIGQUERY_PROJECT}")], "bigquery")
        names = [f"b{i}.png" for i in range(4)]
        for i, name in enumerate(names):
            shutil.copyfile(_png(150 + i), os.path.join(root, name))
            os.replace(os.path.join(root, name), os.path.join(folder, name))
        paths = [os.path.join(folder, n) for n in names]
        _wait(lambda: db.arrivals.count_documents({"source_uri": {"$in": paths}, "status": "done"}) == 4, 150,
              "the files indexed", job)

        def rows(sql):
            return [dict(r) for r in client.query(sql).result()]
        # Frames are in BigQuery before the job stops, with their event time and its source.
        frames = _wait(lambda: (lambda r: r if len(r) == 4 else None)(rows(
            "SELECT source_uri, event_time, event_time_source FROM `stream.frames`")), 30, "frame rows", job)
        assert sorted(r["source_uri"] for r in frames) == sorted(paths)
        assert {r["event_time_source"] for r in frames} == {"mtime"}
        mtimes = {p: os.path.getmtime(p) for p in paths}
        assert all(r["event_time"] == pytest.approx(mtimes[r["source_uri"]], abs=1e-3) for r in frames)
        assert job.stop(signal.SIGTERM) == 0, job.log()
        # The windows were written when the job drained: one row per candidate of each pane.
        candidates = rows("SELECT selection_id, frame_id, rank, window_start, indexed_at FROM `stream.candidates`")
    latest = _latest_panes(out)
    expected = {(line["selection_id"], line["window_start_s"]) for line in latest.values() if line["candidates"]}
    assert {(c["selection_id"], c["window_start"]) for c in candidates} == expected
    assert len(candidates) == sum(line["candidates"] for line in latest.values())


def test_a_missing_subscription_is_a_store_error(mongo, pubsub_host):
    out = harness.tmpdir("no-subscription-")
    done = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.mine", f"--input_subscription=projects/{PROJECT}/subscriptions/nope",
         f"--mongo_uri={mongo.uri}", f"--output_dir={out}", "--direct_num_workers=2"],
        cwd=harness.CHECKOUT, env=dict(os.environ, NO_GCE_CHECK="true", PYTHONPATH=harness.CHECKOUT),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "streaming on the local runner runs in one process" in done.stderr  # not silently ignored
    assert done.stderr.strip().splitlines()[-1].startswith("mine: error: --input_subscription projects/")
    assert "does not exist" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--streaming"], "needs a source"),
    (["--watch=/tmp/x/*", "--input_subscription=projects/p/subscriptions/s"], "two sources"),
    (["--watch=/tmp/x/*", "--input=/tmp/y/*"], "--input is for batch"),
    (["--input_subscription=my-subscription"], "projects/PROJECT/subscriptions/NAME"),
    (["--watch=/tmp/x/*", "--runner=FnApiRunner"], "FnApiRunner cannot run a streaming job"),
    (["--watch=/tmp/x/*", "--bigquery_write_method=FILE_LOADS"], "FILE_LOADS"),
    (["--watch=/tmp/x/*", "--window_seconds=60", "--window_period_seconds=90"], "--window_period_seconds"),
    (["--watch=/tmp/x/*", "--allowed_lateness_seconds=-1"], "--allowed_lateness_seconds"),
    (["--watch=/tmp/x/*", "--window_seconds=nan"], "--window_seconds"),
    (["--watch=/tmp/x/*", "--ack_deadline_seconds=5"], "--ack_deadline_seconds"),
    (["--watch=/tmp/x/*", "--runner=DataflowRunner", "--mongo_uri=mongodb://h:1"], "--watch must be a gs:// glob"),
    (["--watch=/tmp/x/*", "--budget=-1"], "--budget"),
    # Batch-only options are refused, not ignored (the lineage says only what the run applied).
    (["--watch=/tmp/x/*", "--near_duplicate_similarity=0.9"], "--near_duplicate_similarity applies to batch runs only"),
    (["--watch=/tmp/x/*", "--selection_embedding=objects"], "--selection_embedding applies to batch runs only"),
    (["--watch=/tmp/x/*", "--include_labelled"], "--include_labelled applies to batch runs only"),
    (["--watch=/tmp/x/*", "--max_dead_letter_fraction=0.2"], "--max_dead_letter_fraction applies to batch runs only"),
    (["--watch=/tmp/x/*", "--strategy=vessal"], "needs --label_rate"),
    (["--watch=/tmp/x/*", "--strategy=vessal", "--label_rate=1.5"], "--label_rate"),
    (["--watch=/tmp/x/*", "--strategy=vessal", "--label_rate=0.1", '--strategy_params={"dim": 1000}'], "dim"),
    (["--watch=/tmp/x/*", "--label_rate=0.1"], "--label_rate applies to --strategy vessal only"),
    (["--watch=/tmp/x/*", "--strategy=vessal", "--label_rate=0.1", "--budget=5"], "--budget does not apply"),
    (["--watch=/tmp/x/*", "--index_dir=/tmp/index"], "--index_dir applies to batch runs only"),
    # ... also when given at their default values (not ignored because the value is the default).
    (["--watch=/tmp/x/*", "--max_dead_letter_fraction=0.5"], "--max_dead_letter_fraction applies to batch runs only"),
    (["--watch=/tmp/x/*", "--strategy=vessal", "--label_rate=0.1", "--budget=50"], "--budget does not apply"),
])
def test_streaming_options_are_checked_before_anything_starts(argv, message):
    with pytest.raises(ValueError, match=message):
        mine.run(argv + ["--output_dir=" + harness.tmpdir("opts-")])


if __name__ == "__main__":
    harness.main(__file__)


def test_streaming_run_is_scraped_by_prometheus(mongo):
    """--metrics_port: while a streaming job runs, Prometheus' text format gives its frames,
    index lag, dead letters by stage and window panes (docs/operations.md)."""
    root = harness.tmpdir("stream-metrics-")
    folder, out = os.path.join(root, "incoming"), os.path.join(root, "out")
    os.makedirs(folder)
    port = harness.free_port()
    job = Job([f"--watch={folder}/*.png", "--watch_interval_seconds=1", f"--metrics_port={port}",
               *_stream_args(out, mongo, "--max_runtime_seconds=600")], "metrics")
    _wait(lambda: harness.scrape_metrics(port), 120, "the metrics endpoint", job)
    names = [f"m{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        shutil.copyfile(_png(200 + i), os.path.join(root, name))
        os.replace(os.path.join(root, name), os.path.join(folder, name))
    with open(os.path.join(root, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not a picture")
    os.replace(os.path.join(root, "broken.png"), os.path.join(folder, "broken.png"))
    started = time.time()

    def indexed():
        samples = harness.scrape_metrics(port)
        done = samples.get(("activebeam_frames_indexed_total", ()), 0) >= 4 and any(
            name == "activebeam_dead_letters_total" and value >= 1 for (name, _), value in samples.items())
        return samples if done else None
    samples = _wait(indexed, 150, "4 frames indexed and a dead letter in the scraped metrics", job)
    job.check_alive()  # scraped while the job runs
    assert samples[("activebeam_frames_decoded_total", ())] == 4
    assert samples[("activebeam_frames_scored_total", ())] == 4
    dead = {dict(labels)["stage"]: value for (name, labels), value in samples.items()
            if name == "activebeam_dead_letters_total"}
    assert sum(dead.values()) == 1 and set(dead) <= {"read", "decode"}, dead
    assert not any(name == "activebeam_store_write_errors_total" for name, _ in samples)
    # The lag of each frame: from its event time (the file's mtime) to its MongoDB write.
    assert samples[("activebeam_index_lag_seconds_count", ())] == 4
    assert 0 <= samples[("activebeam_index_lag_seconds_sum", ())] <= 4 * (time.time() - started + 5)
    assert samples[("activebeam_index_lag_seconds_bucket", (("le", "+Inf"),))] == 4
    # Each window pane written: its kind and its number of candidates.
    panes = _wait(lambda: (lambda s: s if s.get(("activebeam_window_candidates_count", ())) else None)(harness.scrape_metrics(port)),
                  60, "a window pane in the scraped metrics", job)
    # By kind: on time, or late when the machine is slow enough for the watermark to pass a
    # frame's window before it is indexed (a loaded CI machine); every pane is counted once.
    kinds = {dict(labels)["pane"]: value for (name, labels), value in panes.items()
             if name == "activebeam_window_panes_total"}
    assert kinds and set(kinds) <= {"on_time", "late", "early"}, kinds
    assert panes[("activebeam_window_candidates_count", ())] == sum(kinds.values())
    written = int(panes[("activebeam_window_candidates_count", ())])  # lines are logged before they count
    assert panes[("activebeam_window_candidates_sum", ())] == sum(
        line["candidates"] for line in _windows_log(out)[:written])
    assert job.stop(signal.SIGTERM) == 0, job.log()
    assert harness.scrape_metrics(port) == {}  # the server stops with the job

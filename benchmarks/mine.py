"""The whole ``mine`` job with one and two worker processes, against a plain single-process loop.

    python -m benchmarks.mine [--images 1000] [--repeats 3]

Media (real, made from the bundled sets in a temporary folder): ``--images`` Fashion-MNIST PNGs,
scikit-learn's two photos, and OpenCV's three clips (``vtest.avi``, ``box.mp4``, ``cup.mp4``)
decoded at every frame (``--video_fps 0``, ranges of 20 s): about 2,470 frames with the
defaults. One real
``mongod`` (started here on 127.0.0.1) serves every side; each run writes into a fresh database.
Every side is a new process, timed from start to exit (Python, TensorFlow and model start-up
included, as a user sees it), sides interleaved per round, medians of ``--repeats`` rounds:

* ``job_1``: ``python -m beam_pipelines.mine`` on the in-process ``FnApiRunner`` (one worker);
* ``job_2``: the same with ``--direct_running_mode=multi_processing --direct_num_workers=2``;
* ``loop``: a plain Python loop, one process: read each file, decode it (``cv2.imdecode`` /
  PyAV, every video frame), prepare and run the same model (:func:`transforms.score.handlers
  .prepare_input`, one Keras call per batch of ``--batch_size``, as the job's handler calls it), compute the same
  scores and ``bulk_write`` the same frame documents (``$set`` upserts) to the same mongod. No
  dead letters, no selection, no result files: the practical limit on one core.

Last stdout line (JSON): ``frames_per_s_1_worker``, ``frames_per_s_2_workers``,
``two_worker_speedup`` (goal >= 1.6 on 2 cores), ``frames_per_s_loop``, ``mine_vs_loop`` (job_1 /
loop, goal >= 0.8), ``peak_rss_mb_per_worker`` (the largest resident set of any single process
of the two-worker run), ``frames``, ``rounds``.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from benchmarks.common import frame_metadata, prepare_media, print_result, upsert_frames

DATABASE_PREFIX = "bench_mine"
#: Videos are cut into ranges of this many seconds (the job's option), so that two workers
#: share the long clip: vtest.avi (80 s) is the heaviest input.
SPLIT_SECONDS = 20


class _TreePeak:
    """Largest resident set (MB) of any single process in the tree of ``pid``, sampled."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self.peak_mb = 0.0
        self._pid, self._interval = pid, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for proc in procs:
                try:
                    self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            self._stop.wait(self._interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def _run(argv, env) -> tuple:
    """Runs a side in a new process; returns (wall seconds, peak RSS MB of one process, stdout,
    CPU seconds: user + system of the process and every child it waited for)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = _TreePeak(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    peak_mb = peak.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{err[-3000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, peak_mb, out, cpu_s


def _job_argv(globs, mongo_uri, database, output_dir, workers, batch_size, video_fps=0.0):
    argv = [sys.executable, "-m", "beam_pipelines.mine", "--input", ",".join(globs),
            "--mongo_uri", mongo_uri, "--mongo_database", database, "--output_dir", output_dir,
            "--video_fps", f"{video_fps:g}", "--video_split_seconds", str(SPLIT_SECONDS), "--budget", "50"]
    if workers > 1:
        argv += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    return argv


def run_loop(globs, mongo_uri, database, batch_size) -> int:
    """The baseline: decode, infer and upsert in one process, no Beam. Returns frames written."""
    import av
    import cv2
    import numpy as np
    import pymongo

    from schemas.records import FrameRecord
    from transforms.score import uncertainty
    from transforms.score.handlers import load_model_spec
    from transforms.score.keras_models import load_embedding_classifier
    from transforms.score.model_base import default_model_path
    from transforms.score.preprocessing import prepare_input

    spec = load_model_spec()
    model, _, _ = load_embedding_classifier(default_model_path(), spec.version.embedding_layer)
    prep = spec.prep()
    client = pymongo.MongoClient(mongo_uri)
    collection = client[database]["frames"]
    written = 0
    pending = []  # (metadata, model input)

    def flush():
        nonlocal written
        if not pending:
            return
        x = np.stack([inp for _, inp in pending])
        embeddings, probabilities = model([x], training=False)  # as the job's Keras handler calls it
        embeddings, probabilities = np.asarray(embeddings), np.asarray(probabilities)
        entropy = uncertainty.entropy(probabilities)
        margin = uncertainty.margin(probabilities)
        least = uncertainty.least_confidence(probabilities)
        written += upsert_frames(collection, [
            FrameRecord(meta, embeddings[i], probabilities[i], int(probabilities[i].argmax()),
                        float(entropy[i]), float(margin[i]), float(least[i]), spec.version)
            for i, (meta, _) in enumerate(pending)])
        pending.clear()

    def add(source, index, timestamp_s, media_type, rgb):
        pending.append((frame_metadata(source, index, timestamp_s, media_type, rgb), prepare_input(rgb, prep)))
        if len(pending) >= batch_size:
            flush()

    for path in sorted(p for g in globs for p in glob.glob(g)):
        if path.endswith((".avi", ".mp4")):
            with av.open(path) as container:
                stream = container.streams.video[0]
                for index, frame in enumerate(container.decode(stream)):
                    add(path, index, float(frame.time or 0.0), "video", frame.to_ndarray(format="rgb24"))
        else:
            with open(path, "rb") as f:
                data = f.read()
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            add(path, 0, None, "image", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    flush()
    client.close()
    return written


def run_default_models_loop(globs, mongo_uri, database, batch_size, video_fps) -> int:
    """The baseline of ``--default_models``: one process, no Beam: decode (``--video_fps`` with the
    job's own PyAV decoder, :mod:`transforms.decode.video`), NanoDet-g once per frame (the job's default ``--detector_flip auto``: no flip for
    the default selection), EfficientNet-Lite0 in batches of ``batch_size`` through the job's own
    runtime handler, the same scores and frame documents, ``bulk_write`` upserts. Returns frames
    written."""
    import cv2
    import numpy as np
    import pymongo

    from schemas.records import FrameRecord
    from transforms.score import pretrained
    from transforms.score.detection import UNCERTAIN_BAND, aggregate_detection_scores
    from transforms.score.detectors import NanoDetDetector, detector_version
    from transforms.score.handlers import load_model_spec, make_handler
    from transforms.score.preprocessing import prepare_input
    from transforms.score.ptransforms import _to_probabilities, detection_records, probability_scores

    spec = load_model_spec(pretrained.backbone_path())
    handler = make_handler(spec)
    model = handler.load_model()
    detector = NanoDetDetector(pretrained.detector_path(), flip=False).load()
    detector_id = detector_version(pretrained.detector_path())
    prep = spec.prep()
    client = pymongo.MongoClient(mongo_uri)
    collection = client[database]["frames"]
    written = 0
    pending = []  # (metadata, model input, detections)

    def flush():
        nonlocal written
        if not pending:
            return
        results = handler.run_inference([x for _, x, _ in pending], model)
        records = []
        for (meta, _, found), result in zip(pending, results):
            probabilities = _to_probabilities(result.inference.output, spec.model_output)
            scores = probability_scores(probabilities)
            scores.update(aggregate_detection_scores(found.confidences, UNCERTAIN_BAND))
            records.append(FrameRecord(
                meta, np.asarray(result.inference.embedding, np.float32), probabilities.astype(np.float32),
                int(probabilities.argmax()), scores.pop("entropy"), scores.pop("margin"),
                scores.pop("least_confidence"), spec.version, extra_scores=tuple(sorted(scores.items())),
                detections=detection_records(found), detector=detector_id))
        written += upsert_frames(collection, records)
        pending.clear()

    def add(source, index, timestamp_s, media_type, rgb):
        pending.append((frame_metadata(source, index, timestamp_s, media_type, rgb), prepare_input(rgb, prep),
                        detector.detect(rgb)))
        if len(pending) >= batch_size:
            flush()

    from transforms.decode.video import Sampling, VideoFrame, decode_range, plan_video, split_ranges
    for path in sorted(p for g in globs for p in glob.glob(g)):
        if path.endswith((".avi", ".mp4")):  # the frames the job keeps, through the same decoder
            plan = plan_video(path)
            for video_range in split_ranges(plan, path, None):
                for item in decode_range(path, video_range, Sampling("fps", fps=video_fps)):
                    if isinstance(item, VideoFrame):
                        add(path, item.frame_index, item.timestamp_s, "video", item.pixels)
        else:
            with open(path, "rb") as f:
                bgr = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
            add(path, 0, None, "image", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    flush()
    client.close()
    return written


#: Dataflow list prices of batch workers in us-central1 (USD per vCPU-hour and per GB-hour of
#: memory), https://cloud.google.com/dataflow/pricing, as last read (2024; not re-read offline:
#: check them before quoting a bill).
DATAFLOW_PRICES = {"usd_per_vcpu_hour": 0.056, "usd_per_gb_hour": 0.003557, "as_of": "2024 (not re-read offline)"}


def usd_per_million_frames(cpu_s_per_frame: float, rss_gb: float, frames_per_s_per_vcpu: float) -> float:
    """What a million frames cost on Dataflow batch workers at :data:`DATAFLOW_PRICES`: their
    CPU-seconds, plus the memory one worker process holds (``rss_gb``) for as long as a vCPU takes
    to do them (``1e6 / frames_per_s_per_vcpu`` seconds)."""
    vcpu_hours = cpu_s_per_frame * 1e6 / 3600.0
    gb_hours = rss_gb * (1e6 / frames_per_s_per_vcpu) / 3600.0
    return vcpu_hours * DATAFLOW_PRICES["usd_per_vcpu_hour"] + gb_hours * DATAFLOW_PRICES["usd_per_gb_hour"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST PNGs in the media.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64, help="The job's largest inference batch.")
    parser.add_argument("--default_models", action="store_true",
                        help="The job with its default models (NanoDet-g + EfficientNet-Lite0, "
                             "converted by set-up), videos at --video_fps, against the same job "
                             "with the float scoring of before (--detector_flip on), the same job "
                             "pinned to one core (taskset -c 0) and a loop with the same models: "
                             "CPU-seconds per frame, cores_speedup, USD per million frames.")
    parser.add_argument("--video_fps", type=float, default=2.0,
                        help="Video sampling of the --default_models run (0: every frame).")
    parser.add_argument("--loop", nargs=3, metavar=("GLOBS_JSON", "MONGO_URI", "DATABASE"),
                        help=argparse.SUPPRESS)  # internal: run the baseline side in this process
    args = parser.parse_args(argv)
    if args.loop:
        globs, uri, database = json.loads(args.loop[0]), args.loop[1], args.loop[2]
        if args.default_models:
            n = run_default_models_loop(globs, uri, database, args.batch_size, args.video_fps)
        else:
            n = run_loop(globs, uri, database, args.batch_size)
        print(json.dumps({"frames": n}))
        return
    if args.default_models:
        return _default_models(args)

    from beam_pipelines.local.mongod import LocalMongoD
    import pymongo
    work = tempfile.mkdtemp(prefix="activebeam-bench-mine-")
    env = dict(os.environ, NO_GCE_CHECK="true", TF_CPP_MIN_LOG_LEVEL="3",
               ACTIVEBEAM_DEFAULT_MODEL="fashion_mnist")  # the loop baseline runs that model
    sides = ("job_1", "job_2", "loop")
    video_fps = 0.0
    try:
        globs = prepare_media(os.path.join(work, "media"), args.images)
        with LocalMongoD(os.path.join(work, "mongo")) as mongo:
            client = pymongo.MongoClient(mongo.uri)
            seconds = {side: [] for side in sides}
            frames = {}
            peak_rss = []
            for round_ in range(args.repeats):
                for side in seconds:
                    database = f"{DATABASE_PREFIX}_{side}_{round_}"
                    client.drop_database(database)
                    if side == "loop":
                        argv = [sys.executable, "-m", "benchmarks.mine", "--batch_size",
                                str(args.batch_size), "--loop", json.dumps(globs), mongo.uri, database]
                    else:
                        out_dir = os.path.join(work, f"out-{side}-{round_}")
                        argv = _job_argv(globs, mongo.uri, database, out_dir,
                                         1 if side == "job_1" else 2, args.batch_size, video_fps)
                    wall, peak_mb, _, _ = _run(argv, env)
                    seconds[side].append(wall)
                    frames[side] = client[database]["frames"].count_documents({})
                    if side == "job_2":
                        peak_rss.append(peak_mb)
                    print(f"round {round_ + 1}/{args.repeats} {side}: {frames[side]} frames in "
                          f"{wall:.1f} s ({frames[side] / wall:.1f} frames/s, peak {peak_mb:.0f} MB)",
                          file=sys.stderr, flush=True)
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(set(frames.values())) != 1:
        raise RuntimeError(f"the sides wrote different numbers of frames: {frames}")
    n = frames["job_1"]
    rate = {side: n / statistics.median(s) for side, s in seconds.items()}
    print_result({
        "frames": n,
        "rounds": args.repeats,
        "frames_per_s_1_worker": round(rate["job_1"], 1),
        "frames_per_s_2_workers": round(rate["job_2"], 1),
        "frames_per_s_loop": round(rate["loop"], 1),
        "two_worker_speedup": round(rate["job_2"] / rate["job_1"], 3),
        "mine_vs_loop": round(rate["job_1"] / rate["loop"], 3),
        "peak_rss_mb_per_worker": round(max(peak_rss), 0),
        "seconds": {side: [round(x, 1) for x in s] for side, s in seconds.items()},
    })


#: Goals of ``--default_models`` (issue 28): the job's CPU per frame against the loop's, the
#: default scoring's frames per CPU-second against the float two-pass scoring's, 2 cores against 1.
GOALS = {"job_vs_loop": 0.85, "frames_per_cpu_s_vs_float": 3.0, "cores_speedup": 1.7}


def _default_models(args):
    """``--default_models``: six sides on the same media, interleaved per round, medians. The job
    runs in one process (its interpreters take every CPU) and in two worker processes (one thread
    each); ``cores_speedup`` takes the faster of the two against the job pinned to one core (which
    then runs one interpreter thread: the affinity mask counts). ``job_two_stage`` is the job with
    ``--two_stage_scoring on``, its candidates compared with the default job's of the same round."""
    from beam_pipelines.local.mongod import LocalMongoD
    import pymongo
    work = tempfile.mkdtemp(prefix="activebeam-bench-mine-")
    env = dict(os.environ, NO_GCE_CHECK="true", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("ACTIVEBEAM_DEFAULT_MODEL", None)
    sides = ("job", "job_2_proc", "job_float", "job_1_core", "job_two_stage", "loop")
    wall, cpu, frames, peak = ({s: [] for s in sides} for _ in range(4))
    picks = {s: [] for s in ("job", "job_two_stage")}  # candidate ids in rank order, per round
    try:
        globs = prepare_media(os.path.join(work, "media"), args.images)
        with LocalMongoD(os.path.join(work, "mongo")) as mongo:
            client = pymongo.MongoClient(mongo.uri)
            for round_ in range(args.repeats):
                for side in sides:
                    database = f"{DATABASE_PREFIX}_{side}_{round_}"
                    client.drop_database(database)
                    if side == "loop":
                        argv = [sys.executable, "-m", "benchmarks.mine", "--default_models", "--video_fps",
                                f"{args.video_fps:g}", "--batch_size", str(args.batch_size), "--loop",
                                json.dumps(globs), mongo.uri, database]
                    else:
                        argv = _job_argv(globs, mongo.uri, database, os.path.join(work, f"out-{side}-{round_}"),
                                         2 if side == "job_2_proc" else 1, args.batch_size, args.video_fps)
                        argv += ["--detector_flip=on"] if side == "job_float" else []
                        argv += ["--two_stage_scoring=on"] if side == "job_two_stage" else []
                        argv = (["taskset", "-c", "0"] if side == "job_1_core" else []) + argv
                    seconds, peak_mb, _, cpu_s = _run(argv, env)
                    wall[side].append(seconds)
                    cpu[side].append(cpu_s)
                    peak[side].append(peak_mb)
                    frames[side].append(client[database]["frames"].count_documents({}))
                    if side in picks:
                        with open(os.path.join(work, f"out-{side}-{round_}", "candidates.jsonl")) as f:
                            picks[side].append([json.loads(line)["frame_id"] for line in f])
                    print(f"round {round_ + 1}/{args.repeats} {side}: {frames[side][-1]} frames in {seconds:.1f} s, "
                          f"{cpu_s:.1f} CPU-s, peak {peak_mb:.0f} MB", file=sys.stderr, flush=True)
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = {side: set(n) for side, n in frames.items()}
    if len(set().union(*counts.values())) != 1:
        raise RuntimeError(f"the sides wrote different numbers of frames: {counts}")
    n = frames["job"][0]
    cpu_per_frame = {side: statistics.median(c) / n for side, c in cpu.items()}
    median_wall = {side: statistics.median(w) for side, w in wall.items()}
    faster = min(("job", "job_2_proc"), key=median_wall.get)
    figures = {
        "job_vs_loop": cpu_per_frame["loop"] / cpu_per_frame["job"],
        "frames_per_cpu_s_vs_float": cpu_per_frame["job_float"] / cpu_per_frame["job"],
        "cores_speedup": median_wall["job_1_core"] / median_wall[faster],
    }
    same = [a == b for a, b in zip(picks["job"], picks["job_two_stage"])]
    rss_gb = max(peak["job"]) / 1024.0
    print_result(dict(
        {"models": "default (NanoDet-g + EfficientNet-Lite0)", "frames": n, "rounds": args.repeats,
         "video_fps": args.video_fps, "cores_speedup_setting": {"job": "one process",
                                                                  "job_2_proc": "two worker processes"}[faster],
         "one_process_cores_speedup": round(median_wall["job_1_core"] / median_wall["job"], 3),
         "cpu_s_per_frame": {side: round(v, 4) for side, v in cpu_per_frame.items()},
         "frames_per_s": {side: round(n / w, 2) for side, w in median_wall.items()},
         "peak_rss_mb": {side: round(max(p), 0) for side, p in peak.items()},
         "usd_per_million_frames": round(usd_per_million_frames(cpu_per_frame["job"], rss_gb,
                                                                1.0 / cpu_per_frame["job"]), 2),
         "usd_per_million_frames_float": round(usd_per_million_frames(cpu_per_frame["job_float"], rss_gb,
                                                                      1.0 / cpu_per_frame["job_float"]), 2),
         # --two_stage_scoring on (an option): its CPU against the float job's, and whether it
         # picked the default job's candidates in the same order in every round
         "frames_per_cpu_s_vs_float_two_stage": round(cpu_per_frame["job_float"] / cpu_per_frame["job_two_stage"], 3),
         "two_stage_vs_default_cpu": round(cpu_per_frame["job_two_stage"] / cpu_per_frame["job"], 3),
         "two_stage_candidates_equal": all(same),
         "prices": DATAFLOW_PRICES,
         "seconds": {side: [round(x, 1) for x in w] for side, w in wall.items()}},
        # 4 decimals: a figure a hair under its goal does not print as the goal
        **{k: round(v, 4) for k, v in figures.items()},
        **{f"{k}_goal_met": figures[k] >= goal for k, goal in GOALS.items()}))


if __name__ == "__main__":
    main()

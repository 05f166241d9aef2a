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

from benchmarks.common import print_result

DATABASE_PREFIX = "bench_mine"
#: Videos are cut into ranges of this many seconds (the job's option), so that two workers
#: share the long clip: vtest.avi (80 s) is the heaviest input.
SPLIT_SECONDS = 20


def prepare_media(directory: str, images: int) -> list:
    """Real media for the run: returns the input globs."""
    from beam_pipelines.local import sample_media
    globs = sample_media.prepare(directory, fashion_mnist_count=images)
    return globs


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
    """Runs a side in a new process; returns (wall seconds, peak RSS MB of one process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = _TreePeak(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    peak_mb = peak.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{err[-3000:]}")
    return seconds, peak_mb, out


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

    from schemas import frames as frames_schema
    from schemas.records import FrameMetadata, FrameRecord, make_frame_id
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
        ops = []
        for i, (meta, _) in enumerate(pending):
            record = FrameRecord(meta, embeddings[i], probabilities[i], int(probabilities[i].argmax()),
                                 float(entropy[i]), float(margin[i]), float(least[i]), spec.version)
            doc = frames_schema.to_mongo_document(record)
            ops.append(pymongo.UpdateOne({"_id": doc.pop("_id")}, {"$set": doc}, upsert=True))
        collection.bulk_write(ops, ordered=False)
        written += len(pending)
        pending.clear()

    def add(source, index, timestamp_s, media_type, rgb):
        meta = FrameMetadata(make_frame_id(source, index), source, index, timestamp_s,
                             rgb.shape[1], rgb.shape[0], media_type, "")
        pending.append((meta, prepare_input(rgb, prep)))
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST PNGs in the media.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64, help="The job's largest inference batch.")
    parser.add_argument("--default_models", action="store_true",
                        help="Run the job with its default models (NanoDet-g + EfficientNet-Lite0, "
                             "converted by set-up) on one and two workers, videos at --video_fps; "
                             "no loop side (its baseline runs the small model).")
    parser.add_argument("--video_fps", type=float, default=2.0,
                        help="Video sampling of the --default_models run (0: every frame).")
    parser.add_argument("--loop", nargs=3, metavar=("GLOBS_JSON", "MONGO_URI", "DATABASE"),
                        help=argparse.SUPPRESS)  # internal: run the baseline side in this process
    args = parser.parse_args(argv)
    if args.loop:
        globs, uri, database = json.loads(args.loop[0]), args.loop[1], args.loop[2]
        print(json.dumps({"frames": run_loop(globs, uri, database, args.batch_size)}))
        return

    from beam_pipelines.local.mongod import LocalMongoD
    import pymongo
    work = tempfile.mkdtemp(prefix="activebeam-bench-mine-")
    env = dict(os.environ, NO_GCE_CHECK="true", TF_CPP_MIN_LOG_LEVEL="3")
    if not args.default_models:
        env["ACTIVEBEAM_DEFAULT_MODEL"] = "fashion_mnist"  # the loop baseline runs that model
    sides = ("job_1", "job_2") if args.default_models else ("job_1", "job_2", "loop")
    video_fps = args.video_fps if args.default_models else 0.0
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
                    wall, peak_mb, _ = _run(argv, env)
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
    if args.default_models:
        print_result({
            "models": "default (NanoDet-g + EfficientNet-Lite0)", "frames": n, "rounds": args.repeats,
            "video_fps": video_fps,
            "frames_per_s_1_worker": round(rate["job_1"], 2),
            "frames_per_s_2_workers": round(rate["job_2"], 2),
            "two_worker_speedup": round(rate["job_2"] / rate["job_1"], 3),
            "peak_rss_mb_per_worker": round(max(peak_rss), 0),
            "seconds": {side: [round(x, 1) for x in s] for side, s in seconds.items()},
        })
        return
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


if __name__ == "__main__":
    main()

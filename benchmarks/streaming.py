"""Benchmark of the streaming ``mine`` job: notification-to-index latency and sustained throughput.

    python -m benchmarks.streaming                       # 10 images/s for 30 s, a burst of 600
    python -m benchmarks.streaming --rate 10 --seconds 60 --burst 1200

Everything runs on this machine: a real ``mongod``, the Cloud Storage emulator (the images) and
the Cloud SDK's Pub/Sub emulator (their notifications, in Cloud Storage's format); the streaming
job is ``python -m beam_pipelines.mine --input_subscription ...`` in its own process, on the
local streaming runner.

1. **Latency**: Fashion-MNIST images (distinct, real) are uploaded, then their notifications are
   published at ``--rate`` per second for ``--seconds``; for each, the time from publishing to
   the moment its frame's document exists in MongoDB (polled every 20 ms). Reported: p50, p95
   and max (goal: p95 <= 5 s at 10 images/s).
2. **Sustained throughput**: ``--burst`` more images are uploaded, their notifications published
   at once; frames indexed per second from the first publication to the last frame indexed.
3. **Batch**: the batch job (``--input gs://...``, the default local runner) on the same burst of
   files, and on its first half: the marginal rate ``(N - N/2) / (t_N - t_N/2)`` leaves out the
   fixed start-up (imports, model load) that the streaming figure does not include either.

The last stdout line is a JSON object with ``notification_to_indexed_p50_s``,
``notification_to_indexed_p95_s`` and ``streaming_vs_batch_frames_per_s`` (streaming
frames/s over batch frames/s; goal >= 0.7), and the figures behind them.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.common import batch_seconds, fashion_pngs, print_result

PROJECT = "activebeam-bench"
BUCKET = "bench-stream"


class _IndexWatcher:
    """Polls MongoDB for the frames of given source URIs; records when each first exists."""

    def __init__(self, frames, interval_s: float = 0.02):
        self._frames = frames
        self._interval_s = interval_s
        self._pending = set()
        self.seen = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def expect(self, uris):
        with self._lock:
            self._pending.update(uris)

    def _run(self):
        while not self._stop.is_set():
            with self._lock:
                pending = list(self._pending)
            if pending:
                found = {d["source_uri"] for d in self._frames.find(
                    {"source_uri": {"$in": pending}}, {"source_uri": 1, "_id": 0})}
                now = time.time()
                with self._lock:
                    for uri in found:
                        self.seen.setdefault(uri, now)
                    self._pending -= found
            self._stop.wait(self._interval_s)

    def wait(self, uris, timeout_s: float) -> float:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self._lock:
                if all(u in self.seen for u in uris):
                    return max(self.seen[u] for u in uris)
            time.sleep(0.05)
        missing = [u for u in uris if u not in self.seen]
        raise TimeoutError(f"{len(missing)} of {len(uris)} frames not indexed after {timeout_s} s")

    def close(self):
        self._stop.set()
        self._thread.join()


def _percentile(values, q):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="Notifications per second (latency phase).")
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of the latency phase.")
    parser.add_argument("--burst", type=int, default=600, help="Images of the throughput phase.")
    args = parser.parse_args(argv)

    import pymongo
    from beam_pipelines.local.emulators import Uploader, gcs_emulator, pubsub_emulator
    from beam_pipelines.local.mongod import LocalMongoD

    work = tempfile.mkdtemp(prefix="activebeam-bench-stream-")
    latency_n = int(round(args.rate * args.seconds))
    pngs = fashion_pngs(1 + latency_n + args.burst)
    warm, latency_pngs, burst_pngs = pngs[0], pngs[1:1 + latency_n], pngs[1 + latency_n:]
    try:
        with LocalMongoD(os.path.join(work, "mongo")) as mongo, gcs_emulator(BUCKET) as bucket, pubsub_emulator():
            env = dict(os.environ, NO_GCE_CHECK="true", TF_CPP_MIN_LOG_LEVEL="3",
                       ACTIVEBEAM_DEFAULT_MODEL="fashion_mnist")  # its baseline runs that model
            uploader = Uploader(bucket, PROJECT, "uploads")
            client = pymongo.MongoClient(mongo.uri)
            watcher = _IndexWatcher(client["bench_stream"]["frames"])
            log = open(os.path.join(work, "job.log"), "wb")
            job = subprocess.Popen(
                [sys.executable, "-m", "beam_pipelines.mine", f"--input_subscription={uploader.subscription}",
                 f"--mongo_uri={mongo.uri}", "--mongo_database=bench_stream",
                 f"--output_dir={os.path.join(work, 'out-stream')}", "--budget=50", f"--project={PROJECT}"],
                env=env, stdout=log, stderr=subprocess.STDOUT)
            def job_log():
                with open(os.path.join(work, "job.log"), errors="replace") as f:
                    return f.read()[-3000:]
            try:
                uri = f"gs://{BUCKET}/warm-up.png"
                watcher.expect([uri])
                uploader.upload("warm-up.png", data=warm)
                watcher.wait([uri], 300)
                print("streaming job warm", file=sys.stderr, flush=True)

                # 1. Latency at a fixed rate.
                resources = [uploader.put(f"latency/{i:05d}.png", data=d) for i, d in enumerate(latency_pngs)]
                uris = [f"gs://{BUCKET}/{r['name']}" for r in resources]
                watcher.expect(uris)
                published = {}
                start = time.time()
                for i, resource in enumerate(resources):
                    time.sleep(max(0.0, start + i / args.rate - time.time()))
                    published[uris[i]] = time.time()
                    uploader.notify(resource)
                achieved_rate = len(resources) / (time.time() - start)
                watcher.wait(uris, 300)
                latencies = [watcher.seen[u] - published[u] for u in uris]
                quarters = [statistics.median(latencies[i * len(latencies) // 4:(i + 1) * len(latencies) // 4])
                            for i in range(4)]
                print(f"latency: p50 {statistics.median(latencies):.2f} s, p95 "
                      f"{_percentile(latencies, 0.95):.2f} s; medians by quarter of the run "
                      f"{[round(q, 2) for q in quarters]}", file=sys.stderr, flush=True)

                # 2. Sustained throughput: a burst.
                resources = [bucket_put for bucket_put in
                             (uploader.put(f"burst/{i:05d}.png", data=d) for i, d in enumerate(burst_pngs))]
                burst_uris = [f"gs://{BUCKET}/{r['name']}" for r in resources]
                watcher.expect(burst_uris)
                start = time.time()
                futures = [uploader.publisher.publish(
                    uploader.topic, json.dumps(r).encode(), **_attributes(r)) for r in resources]
                for future in futures:
                    future.result()
                last = watcher.wait(burst_uris, 1800)
                stream_rate = len(burst_uris) / (last - start)
                print(f"streaming: {len(burst_uris)} frames in {last - start:.1f} s "
                      f"({stream_rate:.1f} frames/s)", file=sys.stderr, flush=True)
            except TimeoutError as e:
                raise TimeoutError(f"{e}; the streaming job's log ends with:\n{job_log()}") from None
            finally:
                job.send_signal(signal.SIGTERM)
                try:
                    job.wait(300)
                except subprocess.TimeoutExpired:
                    job.kill()
                log.close()
                watcher.close()
            if job.returncode != 0:
                raise RuntimeError(f"the streaming job exited {job.returncode}:\n{job_log()}")

            # 3. The batch job on the same files (and on the first half of them).
            half = len(burst_pngs) // 2
            for i, data in enumerate(burst_pngs[:half]):
                uploader.put(f"half/{i:05d}.png", data=data)
            t_half, n_half = batch_seconds(f"gs://{BUCKET}/half/*.png", mongo.uri, "bench_batch_half",
                                            os.path.join(work, "out-half"), env)
            t_full, n_full = batch_seconds(f"gs://{BUCKET}/burst/*.png", mongo.uri, "bench_batch_full",
                                            os.path.join(work, "out-full"), env)
            batch_rate = (n_full - n_half) / (t_full - t_half)
            print(f"batch: {n_half} frames in {t_half:.1f} s, {n_full} in {t_full:.1f} s "
                  f"({batch_rate:.1f} frames/s marginal)", file=sys.stderr, flush=True)
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_result({
        "notification_to_indexed_p50_s": round(statistics.median(latencies), 2),
        "notification_to_indexed_p95_s": round(_percentile(latencies, 0.95), 2),
        "notification_to_indexed_max_s": round(max(latencies), 2),
        "latency_images": len(latencies),
        "published_per_s": round(achieved_rate, 2),
        "streaming_frames_per_s": round(stream_rate, 1),
        "batch_frames_per_s": round(batch_rate, 1),
        "streaming_vs_batch_frames_per_s": round(stream_rate / batch_rate, 3),
        "burst_images": len(burst_uris),
        "batch_seconds": {"half": round(t_half, 1), "full": round(t_full, 1)},
    })


def _attributes(resource):
    from transforms.intake.notifications import notification_attributes
    return notification_attributes(resource)


if __name__ == "__main__":
    main()

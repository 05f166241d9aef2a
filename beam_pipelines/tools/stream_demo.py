"""A local demo of the streaming ``mine`` job: a "camera" uploads to Cloud Storage, the job mines.

    python -m beam_pipelines.tools.stream_demo                 # 90 s, output in ./activebeam-stream-demo
    python -m beam_pipelines.tools.stream_demo --seconds 180 --output_dir /tmp/demo

Everything runs on this machine and is started for you: the Cloud Storage emulator (bucket
``cams``), the Cloud SDK's Pub/Sub emulator (topic and subscription ``uploads``; without it the
demo watches a local folder instead), and the job itself (``python -m beam_pipelines.mine
--input_subscription ...`` with an embedded mongod under the output directory). While it runs,
a simulated camera uploads real media, each upload followed by its Cloud Storage notification:

* a Fashion-MNIST image every half second (event time: the object's ``timeCreated``);
* every 20 s a clip (the bundled ``box.mp4``) whose MP4 header says it was recorded just now
  (event time: creation time + each frame's presentation time);
* after 30 s, a photo whose EXIF says it was taken 40 s earlier: it arrives after its window
  closed, and a late pane updates that window;
* one malformed notification (a dead letter of stage ``notification``) and one duplicate
  (changes nothing).

The job stops by itself (``--max_runtime_seconds``), writes the open windows and exits; the
demo then prints ``windows.jsonl`` and where everything is.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

WINDOW_S = 20


def _jpeg_taken_at(png_path: str, when_s: float) -> bytes:
    from PIL import Image
    image = Image.open(png_path).convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(when_s))  # DateTimeOriginal
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _clip_recorded_at(when_s: float, source: str) -> bytes:
    """``source``'s video stream remuxed (not re-encoded) with the MP4 ``creation_time`` ``when_s``."""
    import av
    path = os.path.join(tempfile.mkdtemp(prefix="activebeam-demo-"), "clip.mp4")
    with av.open(source) as src, av.open(path, "w", format="mp4") as dst:
        dst.metadata["creation_time"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(when_s))
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with open(path, "rb") as f:
        return f.read()


class Camera(threading.Thread):
    """Uploads real media for ``seconds`` with ``put(name, data)`` (see the module docstring)."""

    def __init__(self, put, seconds: float, notify_raw=None, redo=None):
        super().__init__(daemon=True)
        self._put, self._seconds, self._notify_raw, self._redo = put, seconds, notify_raw, redo
        self.uploaded = 0
        self.error = None

    def run(self):
        from beam_pipelines.local.home import media_dir
        try:
            pngs = sorted(f for f in os.listdir(os.path.join(media_dir(), "fashion-mnist")) if f.endswith(".png"))
            start, i, next_clip, late_sent, odd_sent = time.time(), 0, 0.0, False, False
            while time.time() - start < self._seconds:
                elapsed = time.time() - start
                name = pngs[i % len(pngs)]
                with open(os.path.join(media_dir(), "fashion-mnist", name), "rb") as f:
                    self._put(f"cam1/{i:05d}-{name}", f.read())
                i += 1
                if elapsed >= next_clip:
                    self._put(f"cam2/clip-{int(elapsed):03d}.mp4",
                              _clip_recorded_at(time.time(), os.path.join(media_dir(), "box.mp4")))
                    next_clip += WINDOW_S
                if elapsed >= 30 and not late_sent:
                    self._put("cam3/taken-40s-ago.jpg", _jpeg_taken_at(
                        os.path.join(media_dir(), "fashion-mnist", pngs[0]), time.time() - 40))
                    late_sent = True
                if elapsed >= 10 and not odd_sent:
                    if self._notify_raw:
                        self._notify_raw()
                    if self._redo:
                        self._redo()
                    odd_sent = True
                self.uploaded = i
                time.sleep(0.5)
        except Exception as e:  # noqa: BLE001 - reported by the demo
            self.error = e


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="How long the camera uploads.")
    parser.add_argument("--output_dir", default="./activebeam-stream-demo")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    from beam_pipelines.local import emulators
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    with contextlib.ExitStack() as stack:
        bucket = stack.enter_context(emulators.gcs_emulator("cams"))
        try:
            stack.enter_context(emulators.pubsub_emulator())
            uploader = emulators.Uploader(bucket, "activebeam-demo", "uploads")
            source = [f"--input_subscription={uploader.subscription}", "--project=activebeam-demo"]
            last = {}

            def put(name, data):
                last["resource"] = uploader.upload(name, data=data)

            def notify_raw():
                uploader.publisher.publish(uploader.topic, b"{this is not a resource", eventType="OBJECT_FINALIZE",
                                           bucketId="cams", objectId="cam9/broken.png", objectGeneration="1",
                                           payloadFormat="JSON_API_V1").result()

            def redo():
                uploader.notify(last["resource"])
            print(f"Pub/Sub emulator: notifications on {uploader.subscription}")
        except emulators.EmulatorNotFound as e:
            folder = os.path.join(out, "incoming")
            os.makedirs(folder, exist_ok=True)
            source = [f"--watch={folder}/*/*", "--watch_interval_seconds=1"]
            notify_raw = redo = None

            def put(name, data):
                path = os.path.join(folder, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path + ".part", "wb") as f:
                    f.write(data)
                os.replace(path + ".part", path)
            print(f"{e}: watching {folder} instead")
        argv = [sys.executable, "-m", "beam_pipelines.mine", *source, f"--output_dir={out}",
                f"--window_seconds={WINDOW_S}", "--allowed_lateness_seconds=120", "--budget=3",
                "--strategy=least_confidence", f"--max_runtime_seconds={args.seconds + 20:g}"]
        print("job:", " ".join(argv[1:]), flush=True)
        job = subprocess.Popen(argv, env=dict(os.environ))
        time.sleep(15)  # the job imports TensorFlow and loads its model
        camera = Camera(put, args.seconds, notify_raw, redo)
        camera.start()
        seen = 0
        while job.poll() is None:
            time.sleep(2)
            path = os.path.join(out, "windows.jsonl")
            if os.path.exists(path):
                with open(path) as f:
                    lines = f.readlines()
                for line in lines[seen:]:
                    pane = json.loads(line)
                    print(f"window {pane['window_start']} .. {pane['window_end']} {pane['pane']:>7}: "
                          f"{pane['files']} files, {pane['frames']} frames, {pane['dead_letters']} dead "
                          f"letters, {pane['candidates']} candidates", flush=True)
                seen = len(lines)
        if camera.error:
            raise camera.error
        print(f"\njob exited with {job.returncode}; the camera uploaded {camera.uploaded} images")
        print(f"candidates:   {out}/candidates/<window_start>_<window_end>.jsonl")
        print(f"dead letters: {out}/dead_letters/<window_start>_<window_end>.jsonl")
        print(f"windows:      {out}/windows.jsonl, summary: {out}/summary.json")
        print(f"MongoDB data: {out}/mongo-data (frames, candidates, arrivals, runs)")
        sys.exit(job.returncode)


if __name__ == "__main__":
    main()

"""Decoding throughput and memory: activebeam's decode stage against plain OpenCV and ffmpeg.

    python -m benchmarks.decode                       # a few minutes on 2 cores
    python -m benchmarks.decode --repeats 7 --long_minutes 20
    bazel run //benchmarks:decode -- --repeats 3

Both sides run in the same process and rounds (``interleaved_rates``), medians reported:

* ``image_decode_ratio``: images/s of the decode stage's per-file work (read, sniff, header
  probe and pixel limit, ``cv2.imdecode`` to RGB, EXIF orientation, sha256 of the file, the
  ``Frame`` with its pixel hash) / images/s of ``open().read()`` + ``cv2.imdecode`` on the same
  files (real photos: china.jpg, flower.jpg, digits.png). Goal >= 0.8.
  ``image_decode_ratio_no_pixel_hash`` is the same without the frame's pixel hash;
  ``small_image_decode_ratio`` the same on 28x28 Fashion-MNIST PNGs (per-file overhead).
* ``video_full_decode_ratio``: frames/s of the video stage decoding every frame to RGB ``Frame``\\ s
  (single-threaded) / frames/s of ``ffmpeg -threads 1 -i F -f rawvideo -pix_fmt rgb24 -y
  /dev/null`` on the same file (vtest.avi). Goal >= 0.7.
* ``video_sampled_speedup``: source-seconds/wall-second at 1 fps sampling / the same for full
  decode, on vtest.avi (keyframes 25 s apart); ``..._1s_gop`` on an H.264 re-encode of it with a
  keyframe every second (a usual IP-camera setting) and ``..._handheld_1s_gop`` on the same
  re-encode of box.mp4 (a moving hand-held camera). Goal >= 3.
* ``long_video_peak_rss_mb``: peak resident memory of a process running ``DecodeMedia`` (every
  frame, ranges of 60 s, FnApiRunner) on a >= 10-minute video made by looping vtest.avi with
  ``ffmpeg -stream_loop`` (no re-encode). Goal <= 500.
"""
import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from benchmarks.common import PeakRss, interleaved_rates, print_result
from beam_pipelines.local.home import media_dir
from transforms.decode import ptransforms as decode
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.decode.video import Sampling

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"


_PLAN = decode.PlanFileFn(decode.DEFAULT_SPLIT_SECONDS)
_DECODERS = {}


def _decode_file(path, sampling=Sampling()) -> int:
    """The decode stage's per-file work, as its DoFns do it in the pipeline; returns frames."""
    if sampling not in _DECODERS:  # one DoFn instance per sampling, as on a worker
        _DECODERS[sampling] = decode.DecodeTaskFn(DEFAULT_MAX_PIXELS, None, sampling, 1)
    fn = _DECODERS[sampling]
    tasks = [t for t in _PLAN.process(path) if not isinstance(t, decode.beam.pvalue.TaggedOutput)]
    return sum(1 for task in tasks for item in fn.process(task)
               if not isinstance(item, decode.beam.pvalue.TaggedOutput))


def _image_sides(files, with_hash=True):
    original = decode.pixel_hash

    def ours():
        if not with_hash:
            decode.pixel_hash = lambda pixels: ""
        try:
            return sum(_decode_file(path) for path in files)
        finally:
            decode.pixel_hash = original

    def opencv():
        n = 0
        for path in files:
            with open(path, "rb") as f:
                image = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
            n += image is not None
        return n
    return {"activebeam": ours, "cv2.imdecode": opencv}


def _measure(sides, repeats):
    """One untimed warm-up call per side (imports, codec tables, page cache), then the rounds."""
    for fn in sides.values():
        fn()
    return interleaved_rates(sides, repeats)


def _ratio(rates):
    ours, base = (statistics.median(v) for v in rates.values())
    return round(ours / base, 3), round(ours, 1), round(base, 1)


def _ffmpeg(path):
    subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", path, "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-y", "/dev/null"], check=True)


def _duration(path):
    from transforms.decode.video import plan_video
    return plan_video(path).info


def _long_video_rss(path, timeout_s):
    """Runs DecodeMedia on ``path`` in a fresh process; returns (peak RSS MB, frames, seconds)."""
    code = (
        "import os, apache_beam as beam\n"
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "from transforms.decode.ptransforms import DecodeMedia\n"
        "with beam.Pipeline(options=PipelineOptions([], runner='FnApiRunner')) as p:\n"
        "    d = p | beam.Create([os.environ['BENCH_VIDEO']]) | DecodeMedia(video_fps=0)\n"
        "    _ = d.frames | beam.combiners.Count.Globally() | beam.Map(lambda n: print('FRAMES', n))\n")
    env = dict(os.environ, NO_GCE_CHECK="true", BENCH_VIDEO=path)
    started = time.monotonic()
    with PeakRss(interval_s=0.1) as rss:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=timeout_s, cwd=os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__))))
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    frames = int(next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("FRAMES")))
    return rss.peak_mb, frames, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved rounds per measure.")
    parser.add_argument("--image_copies", type=int, default=10,
                        help="How many times the photo set is decoded per round.")
    parser.add_argument("--small_images", type=int, default=500, help="Fashion-MNIST PNGs per round.")
    parser.add_argument("--video", default=os.path.join(media_dir(), "vtest.avi"))
    parser.add_argument("--long_minutes", type=float, default=10.0,
                        help="Minimum length of the looped video for the memory figure; 0 skips it.")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    cv2.setNumThreads(1)  # both sides single-threaded; the machine's other core is not ours
    result = {"repeats": args.repeats}

    photos = [os.path.join(media_dir(), "china.jpg"), os.path.join(media_dir(), "flower.jpg"),
              os.path.join(OPENCV_DATA, "digits.png")] * args.image_copies
    ratio, ours, base = _ratio(_measure(_image_sides(photos), args.repeats))
    result.update(image_decode_ratio=ratio, image_per_s=ours, image_per_s_cv2=base)
    result["image_decode_ratio_no_pixel_hash"] = _ratio(
        _measure(_image_sides(photos, with_hash=False), args.repeats))[0]
    small = sorted(glob.glob(os.path.join(media_dir(), "fashion-mnist", "*.png")))[:args.small_images]
    ratio, ours, base = _ratio(_measure(_image_sides(small), args.repeats))
    result.update(small_image_decode_ratio=ratio, small_image_per_s=ours, small_image_per_s_cv2=base)

    info = _duration(args.video)
    rates = _measure({
        "activebeam": lambda: _decode_file(args.video, Sampling("all")),
        "ffmpeg": lambda: (_ffmpeg(args.video), info.frame_count)[1],
    }, args.repeats)
    ratio, ours, base = _ratio(rates)
    result.update(video_full_decode_ratio=ratio, video_full_fps=ours, video_full_fps_ffmpeg=base,
                  video=os.path.basename(args.video), video_codec=info.codec)

    work = tempfile.mkdtemp(prefix="activebeam-bench-")
    try:
        samples = [("", args.video)]
        for suffix, source in (("_1s_gop", args.video),
                               ("_handheld_1s_gop", os.path.join(media_dir(), "box.mp4"))):
            gop = os.path.join(work, f"gop{suffix}.mp4")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", source, "-c:v", "libx264",
                            "-preset", "veryfast", "-g", str(max(1, round(_duration(source).fps))),
                            "-pix_fmt", "yuv420p", gop], check=True)
            samples.append((suffix, gop))
        for suffix, path in samples:
            seconds = _duration(path).duration_s
            rates = _measure({
                "fps1": lambda p=path: (_decode_file(p, Sampling("fps", fps=1.0)), seconds)[1],
                "all": lambda p=path: (_decode_file(p, Sampling("all")), seconds)[1],
            }, args.repeats)
            result[f"video_sampled_speedup{suffix}"] = _ratio(rates)[0]
            result[f"source_s_per_s_1fps{suffix}"], result[f"source_s_per_s_all{suffix}"] = _ratio(rates)[1:]

        if args.long_minutes > 0:
            loops = int(np.ceil(args.long_minutes * 60 / info.duration_s))
            long_path = os.path.join(work, "long.avi")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i",
                            args.video, "-c", "copy", long_path], check=True)
            long_info = _duration(long_path)
            peak, frames, seconds = _long_video_rss(long_path, timeout_s=1800)
            result.update(long_video_peak_rss_mb=round(peak, 1), long_video_minutes=round(
                long_info.duration_s / 60, 2), long_video_frames=frames,
                long_video_frames_expected=long_info.frame_count,
                long_video_fps=round(frames / seconds, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_result(result)


if __name__ == "__main__":
    main()

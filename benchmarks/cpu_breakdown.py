"""Where a frame's CPU-seconds go with the default models: each stage of the ``mine`` job measured
alone, in one process, on the media of ``benchmarks.mine``, against the whole job's CPU.

    python -m benchmarks.cpu_breakdown [--images 800] [--video_fps 2] [--job_cpu_s_per_frame X]

Stages, each timed with ``time.process_time`` (CPU of every thread of this process) over the same
frames: ``decode`` (the job's decoders: PyAV ranges at ``--video_fps``, ``cv2.imdecode``),
``detector`` (NanoDet-g once per frame, box decoding included), ``flip`` (the second detector pass
of ``--detector_flip on``), ``backbone`` (EfficientNet-Lite0 through the job's runtime handler,
batches of 64), ``crops`` (the backbone on every detected object's crop, what
``--selection_embedding objects`` adds), ``knn`` (exact cosine k-NN of every frame among all,
k = 3, faiss), ``writes`` (frame documents built and bulk-upserted to a local ``mongod``; the
server's own CPU is not counted). With ``--job_cpu_s_per_frame`` (from ``benchmarks.mine
--default_models``), ``beam_and_rest`` is the job's CPU per frame minus the stages it runs.

Last stdout line (JSON): ``cpu_ms_per_frame`` per stage, ``frames``, and the default job's and the
float two-pass job's sums.
"""
import argparse
import glob
import os
import shutil
import tempfile
import time

from benchmarks.common import print_result


def _frames(globs, video_fps):
    """Yields (source, index, timestamp, media type, RGB) as the job decodes them."""
    import cv2
    import numpy as np
    from transforms.decode.video import Sampling, VideoFrame, decode_range, plan_video, split_ranges
    for path in sorted(p for g in globs for p in glob.glob(g)):
        if path.endswith((".avi", ".mp4")):
            for video_range in split_ranges(plan_video(path), path, None):
                for item in decode_range(path, video_range, Sampling("fps", fps=video_fps)):
                    if isinstance(item, VideoFrame):
                        yield path, item.frame_index, item.timestamp_s, "video", item.pixels
        else:
            with open(path, "rb") as f:
                bgr = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
            yield path, 0, None, "image", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def measure(globs, video_fps: float, mongo_uri: str) -> dict:
    """CPU milliseconds per frame of each stage (see the module docstring)."""
    import numpy as np
    from benchmarks.common import frame_metadata, upsert_frames
    from schemas.records import FrameRecord
    from transforms.score import knn, pretrained
    from transforms.score.detectors import NanoDetDetector
    from transforms.score.handlers import load_model_spec, make_handler
    from transforms.score.preprocessing import prepare_input
    from transforms.score.ptransforms import _to_probabilities, detection_records

    cpu = {}
    start = time.process_time()
    frames = list(_frames(globs, video_fps))
    cpu["decode"] = time.process_time() - start
    n = len(frames)

    detector = NanoDetDetector(pretrained.detector_path(), flip=False).load()
    start = time.process_time()
    found = [detector.detect(f[4]) for f in frames]
    cpu["detector"] = time.process_time() - start
    flipped = NanoDetDetector(pretrained.detector_path(), flip=True).load()
    start = time.process_time()
    for f in frames:
        flipped.detect(f[4])
    cpu["flip"] = time.process_time() - start - cpu["detector"]

    spec = load_model_spec(pretrained.backbone_path())
    handler = make_handler(spec)
    model = handler.load_model()
    prep = spec.prep()

    def embed(images):
        out = []
        for i in range(0, len(images), 64):
            out += handler.run_inference([prepare_input(x, prep) for x in images[i:i + 64]], model)
        return out
    start = time.process_time()
    results = embed([f[4] for f in frames])
    cpu["backbone"] = time.process_time() - start
    crops = [f[4][int(y1):int(y2), int(x1):int(x2)] for f, d in zip(frames, found) for x1, y1, x2, y2 in d.boxes
             if int(x2) > int(x1) and int(y2) > int(y1)]
    start = time.process_time()
    embed(crops)
    cpu["crops"] = time.process_time() - start

    embeddings = np.stack([np.asarray(r.inference.embedding, np.float32) for r in results])
    start = time.process_time()
    ids = [str(i) for i in range(n)]
    unit = knn.unit_rows(embeddings)
    index = knn.build_index(unit, knn.COSINE)
    knn.shard_distances(ids, index, ids, unit, 3, knn.COSINE)
    cpu["knn"] = time.process_time() - start

    import pymongo
    records = []
    for f, d, r in zip(frames, found, results):
        p = _to_probabilities(r.inference.output, spec.model_output)
        records.append(FrameRecord(frame_metadata(*f), np.asarray(r.inference.embedding, np.float32), p.astype(np.float32),
                                   int(p.argmax()), 0.0, 0.0, 0.0, spec.version, detections=detection_records(d)))
    with pymongo.MongoClient(mongo_uri) as client:
        start = time.process_time()
        for i in range(0, n, 256):
            upsert_frames(client["bench_breakdown"]["frames"], records[i:i + 256])
        cpu["writes"] = time.process_time() - start
    return {"frames": n, "objects": len(crops), "cpu_ms_per_frame": {k: round(1000 * v / n, 2) for k, v in cpu.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=800, help="Fashion-MNIST PNGs in the media.")
    parser.add_argument("--video_fps", type=float, default=2.0)
    parser.add_argument("--job_cpu_s_per_frame", type=float, default=None,
                        help="The default job's CPU-s per frame (benchmarks.mine --default_models).")
    args = parser.parse_args(argv)
    from beam_pipelines.local.mongod import LocalMongoD
    from benchmarks.common import prepare_media
    work = tempfile.mkdtemp(prefix="activebeam-bench-breakdown-")
    try:
        globs = prepare_media(os.path.join(work, "media"), args.images)
        with LocalMongoD(os.path.join(work, "mongo")) as mongo:
            result = measure(globs, args.video_fps, mongo.uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ms = result["cpu_ms_per_frame"]
    default = sum(ms[k] for k in ("decode", "detector", "backbone", "knn", "writes"))
    result["default_stages_ms"] = round(default, 2)
    result["float_two_pass_stages_ms"] = round(default + ms["flip"], 2)
    if args.job_cpu_s_per_frame:
        result["beam_and_rest_ms"] = round(1000 * args.job_cpu_s_per_frame - default, 2)
    print_result(result)


if __name__ == "__main__":
    main()

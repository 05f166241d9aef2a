"""Benchmark: ScoreFrames (RunInference) against a plain loop calling the same model.

    python -m benchmarks.inference [--images 30000] [--batch_size 64] [--repeats 3] [--mc_passes 10]

30,000 images by default so that the pipeline's fixed start-up (about 0.35 s: runner, graph,
model load) is amortised as it is in a real job; ``--images 10000`` shows its weight.

Real data: Fashion-MNIST test images (as RGB frames, the decoder's output) and the bundled CNN.
Sides, interleaved per round (medians over ``--repeats`` rounds):

* ``pipeline``: ``ScoreFrames`` on the in-process FnApiRunner (prepare, RunInference with a
  fixed batch size, scores, FrameRecords), frames created in the pipeline;
* ``loop``: the same work in a plain Python loop: load the model, make the frames, prepare them,
  one call of the same two-output Keras model per batch of the same size, the same scores;
* ``pipeline_mc`` / ``loop_mc``: the same with ``--mc_passes`` dropout passes per batch.

Also measures the plain loop's images/s per batch size (what ``--batch_size`` and the
``BatchElements`` bounds were chosen from). Last stdout line: one JSON object with
``embed_ratio`` = pipeline / loop images/s (goal >= 0.85) and ``mc_dropout_cost_ratio`` =
images/s with one pass / images/s with T passes (pipeline).

The pretrained models (converted by set-up; skipped with a note when they are missing), on
``--detect_frames`` real frames of ``vtest.avi`` (768x576), decoded inside each side:

* ``detect_pipeline``: the NanoDet-g detector through ``RunInference`` (``DetectorHandler``,
  LiteRT, ``--threads`` interpreter threads) on the FnApiRunner;
* ``detect_loop``: a plain loop: the same decoding, one LiteRT interpreter with the same
  threads, NanoDet's preparation and box decoding per frame (the flip is off on both sides);

``detect_ratio`` = pipeline / loop frames/s (goal >= 0.85); ``detector_ms_per_frame`` and
``backbone_ms_per_frame`` (EfficientNet-Lite0, batches of ``--batch_size`` 224x224 inputs) are
the plain loop's milliseconds per frame. ``--only detect`` runs just these sides.
"""
import argparse
import functools
import os
import statistics

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks.common import PeakRss, interleaved_rates, median_rate, print_result
from models.train_fashion_mnist import load_split
from schemas.records import Frame, make_frame_id
from transforms.score.handlers import load_model_spec
from transforms.score.keras_models import load_embedding_classifier, mc_dropout_samples
from transforms.score.model_base import default_model_path
from transforms.score.preprocessing import prepare_input
from transforms.score.ptransforms import ScoreFrames, probability_scores
from transforms.score.threads import usable_cpus
from transforms.score import pretrained


@functools.lru_cache(maxsize=1)
def _test_images() -> np.ndarray:
    images, _ = load_split("t10k")
    return images


def fashion_frames(start: int, stop: int):
    """Fashion-MNIST test images ``start..stop-1`` as RGB ``Frame``s (grey replicated, as
    decoded PNGs are), cycling through the 10,000 test images."""
    images = _test_images()
    frames = []
    for i in range(start, stop):
        pixels = np.repeat(images[i % len(images)][..., None], 3, axis=2)
        uri = f"/fashion-mnist/t10k-{i:05d}.png"
        frames.append(Frame(make_frame_id(uri, 0), uri, 0, None, 28, 28, "image", f"h{i}", pixels))
    return frames


def run_pipeline(count, spec, batch_size, chunk=500) -> int:
    """ScoreFrames over ``count`` frames made inside the pipeline (as decoding makes them), so
    the pipeline's figure is not Create's pickling of pixel arrays."""
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        records = (p | beam.Create([(s, min(s + chunk, count)) for s in range(0, count, chunk)])
                   | "Frames" >> beam.FlatMapTuple(fashion_frames)
                   | ScoreFrames(spec, min_batch_size=batch_size, max_batch_size=batch_size)).records
        _ = records | beam.combiners.Count.Globally()
    return count


def run_loop(count, spec, batch_size, mc_passes=0, chunk=500) -> int:
    """The same work as :func:`run_pipeline` without Beam: load the model, make frames, prepare,
    one model call per batch of ``batch_size`` (plus the MC-dropout call), the same scores."""
    model, _, _ = load_embedding_classifier(default_model_path())
    prep = spec.prep()
    for chunk_start in range(0, count, chunk):
        frames = fashion_frames(chunk_start, min(chunk_start + chunk, count))
        for start in range(0, len(frames), batch_size):
            x = np.stack([prepare_input(f.pixels, prep) for f in frames[start:start + batch_size]])
            embeddings, probabilities = (np.asarray(t) for t in model([x], training=False))
            samples = mc_dropout_samples(model, x, mc_passes) if mc_passes else [None] * len(x)
            for p, s in zip(probabilities.astype(np.float64), samples):
                probability_scores(p / p.sum(), s)
    return count


def vtest_frames(start: int, stop: int):
    """Frames ``start..stop-1`` of the sample video ``vtest.avi`` as RGB ``Frame``s."""
    import av
    from beam_pipelines.local.home import media_dir
    uri = os.path.join(media_dir(), "vtest.avi")
    frames = []
    with av.open(uri) as container:
        for i, f in enumerate(container.decode(video=0)):
            if i >= stop:
                break
            if i >= start:
                pixels = f.to_ndarray(format="rgb24")
                frames.append(Frame(make_frame_id(uri, i), uri, i, i / 10.0, pixels.shape[1], pixels.shape[0],
                                    "video", f"v{i}", pixels))
    return frames


def run_detect_pipeline(count, threads, chunk=25) -> int:
    """NanoDet-g through ``RunInference`` on ``count`` vtest frames decoded in the pipeline."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from transforms.score.detectors import DetectorHandler, NanoDetDetector
    handler = KeyedModelHandler(DetectorHandler(NanoDetDetector(pretrained.detector_path(), flip=False,
                                                                num_threads=threads)))
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        found = (p | beam.Create([(s, min(s + chunk, count)) for s in range(0, count, chunk)])
                 | "Frames" >> beam.FlatMapTuple(vtest_frames)
                 | "Key" >> beam.Map(lambda f: (f.frame_id, f.pixels))
                 | RunInference(handler)
                 | "Boxes" >> beam.Map(lambda kv: len(kv[1].inference.boxes)))
        _ = found | beam.combiners.Count.Globally()
    return count


def run_detect_loop(count, threads, chunk=25) -> int:
    """The same work without Beam: decode, prepare, invoke one LiteRT interpreter, decode boxes."""
    from ai_edge_litert.interpreter import Interpreter
    from transforms.score.pretrained import nanodet
    interpreter = Interpreter(model_path=pretrained.detector_path(), num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outputs = [d["index"] for d in interpreter.get_output_details()]
    for start in range(0, count, chunk):
        for frame in vtest_frames(start, min(start + chunk, count)):
            interpreter.set_tensor(index, nanodet.prepare(frame.pixels))
            interpreter.invoke()
            nanodet.decode([interpreter.get_tensor(i) for i in outputs], frame.width, frame.height)
    return count


def backbone_ms_per_frame(frames, batch_size, threads) -> float:
    """Milliseconds per frame of EfficientNet-Lite0 (LiteRT) on prepared 224x224 inputs."""
    import time
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=pretrained.backbone_path(), num_threads=threads)
    index = interpreter.get_input_details()[0]["index"]
    x = np.stack([prepare_input(f.pixels, (224, 224, 3)) for f in frames[:batch_size]])
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()  # warm up
    started = time.perf_counter()
    rounds = max(1, len(frames) // batch_size)
    for _ in range(rounds):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    return (time.perf_counter() - started) * 1000 / (rounds * len(x))


def detect_figures(frames: int, batch_size: int, repeats: int, threads: int) -> dict:
    """``detect_ratio`` and the two models' ms per frame (see the module docstring)."""
    if not (os.path.isfile(pretrained.detector_path()) and os.path.isfile(pretrained.backbone_path())):
        print(f"pretrained models missing in {pretrained.models_dir()}: run scripts/setup.sh")
        return {}
    run_detect_loop(5, threads)  # warm up
    rates = interleaved_rates({"detect_pipeline": lambda: run_detect_pipeline(frames, threads),
                               "detect_loop": lambda: run_detect_loop(frames, threads)}, repeats)
    median = {side: statistics.median(values) for side, values in rates.items()}
    for side, values in rates.items():
        print(f"{side:16s} median {median[side]:6.2f} frames/s  rounds {[round(v, 2) for v in values]}")
    return {
        "detect_frames": frames, "threads": threads,
        "detect_pipeline_frames_per_s": round(median["detect_pipeline"], 2),
        "detect_loop_frames_per_s": round(median["detect_loop"], 2),
        "detect_ratio": round(median["detect_pipeline"] / median["detect_loop"], 3),
        "detector_ms_per_frame": round(1000 / median["detect_loop"], 1),
        "backbone_ms_per_frame": round(backbone_ms_per_frame(vtest_frames(0, 2 * batch_size), batch_size,
                                                             threads), 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mc_passes", type=int, default=10)
    parser.add_argument("--mc_images", type=int, default=1000, help="images for the MC-dropout sides")
    parser.add_argument("--detect_frames", type=int, default=150, help="vtest.avi frames for the detector sides")
    parser.add_argument("--threads", type=int, default=usable_cpus(),
                        help="LiteRT interpreter threads (default: the CPUs this process may use)")
    parser.add_argument("--only", choices=("all", "detect"), default="all")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")
    detect = detect_figures(args.detect_frames, args.batch_size, args.repeats, args.threads)
    if args.only == "detect":
        print_result(dict({"benchmark": "inference", "repeats": args.repeats}, **detect))
        return

    spec = load_model_spec()
    mc_spec = load_model_spec(mc_passes=args.mc_passes)
    run_loop(256, spec, args.batch_size)  # warm up (tracing)

    batch_rates = {}
    for size in (8, 16, 32, 64, 128, 256):
        batch_rates[size], _ = median_rate(lambda: run_loop(4096, spec, size), 1)
    with PeakRss() as rss:
        rates = interleaved_rates({
            "pipeline": lambda: run_pipeline(args.images, spec, args.batch_size),
            "loop": lambda: run_loop(args.images, spec, args.batch_size),
            "pipeline_mc": lambda: run_pipeline(args.mc_images, mc_spec, args.batch_size),
            "loop_mc": lambda: run_loop(args.mc_images, spec, args.batch_size, args.mc_passes),
        }, args.repeats)
    median = {side: statistics.median(values) for side, values in rates.items()}
    for side, values in rates.items():
        print(f"{side:12s} median {median[side]:8.0f} images/s  rounds {[round(v) for v in values]}")
    print("plain loop images/s by batch size:", {k: round(v) for k, v in batch_rates.items()})
    print_result({
        "benchmark": "inference",
        "images": args.images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "mc_passes": args.mc_passes,
        "pipeline_images_per_s": round(median["pipeline"], 1),
        "loop_images_per_s": round(median["loop"], 1),
        "embed_ratio": round(median["pipeline"] / median["loop"], 3),
        "pipeline_mc_images_per_s": round(median["pipeline_mc"], 1),
        "loop_mc_images_per_s": round(median["loop_mc"], 1),
        "mc_dropout_cost_ratio": round(median["pipeline"] / median["pipeline_mc"], 2),
        "mc_dropout_cost_ratio_loop": round(median["loop"] / median["loop_mc"], 2),
        "loop_images_per_s_by_batch_size": {str(k): round(v, 1) for k, v in batch_rates.items()},
        "best_batch_size": max(batch_rates, key=batch_rates.get),
        "peak_rss_mb": round(rss.peak_mb, 1),
        **detect,
    })


if __name__ == "__main__":
    main()

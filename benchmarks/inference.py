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
from transforms.score.handlers import (default_model_path, load_embedding_classifier, load_model_spec,
                                 mc_dropout_samples, prepare_input)
from transforms.score.ptransforms import ScoreFrames, probability_scores


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mc_passes", type=int, default=10)
    parser.add_argument("--mc_images", type=int, default=1000, help="images for the MC-dropout sides")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_GCE_CHECK", "true")

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
    })


if __name__ == "__main__":
    main()

"""Cost that grows with the data: the mine job's global stages at 10k, 100k and 1M frames.

    python -m benchmarks.scale --quick       # 10k and 100k frames; about 10 min on 2 shared cores, 7.7 GB
    python -m benchmarks.scale               # 10k, 100k and 1M frames (about 67 GB at 1M by the 100k figures)

Data: the default backbone (EfficientNet-Lite0, :func:`transforms.score.pretrained.backbone_path`)
embeds real frames (``vtest.avi``, ``box.mp4``, ``cup.mp4`` every 4th frame, ``china.jpg``,
``flower.jpg``): 1280-d embeddings and 1000 ImageNet probabilities. Each synthetic camera clip
(:func:`near_copy_clusters`) starts from one of them moved to a scene of its own (a random
offset of norm 0.5 on the unit sphere) and walks through :data:`CLIP_LENGTH` frames of
temporally correlated near-copies (an AR(1) walk, correlation 0.9 per frame, norm 0.15):
neighbouring frames have cosine similarity ~0.998, frames 5-6 apart cross the job's 0.99
near-duplicate threshold, as frames of a slowly changing scene do. Probabilities: the base
frame's, with Gaussian noise (sd 0.3) on their logarithms. Records are generated inside the
pipeline, :data:`CHUNK` frames per element, from a seed: nothing is pickled into the pipeline.

Stages, each its own pipeline on the in-process ``FnApiRunner`` (as the tests run the job):
``source`` (generation alone), ``novelty`` (the job's :class:`ScoreNovelty`: cosine k=3
uniqueness, near-duplicate groups at 0.99, ``index_factory="auto"``, ``--shards`` shards, 1 by default), ``selection``
(:class:`SelectCandidates`, the default ``uncertainty_kcenter``, ``--budget`` picks) and
``writes`` (:class:`WriteFramesToMongoDB` into a local mongod). A stage's time is its pipeline's
wall time minus ``source``'s; peak RSS is the process's (records and runner included).

The baseline is exact search: ``exact_search_s`` is the time of a ``Flat`` search of
``--recall_queries`` sampled frames against all N, scaled by ``N / queries`` (exact cost is
linear in the queries). The recall figures (:func:`transforms.score.ann_accuracy.compare_with_exact`)
come from the same sample at the largest size: recall@3, Spearman of uniqueness, recall of the
near-duplicate pairs. Growth exponents are ``log(t2 / t1) / log(n2 / n1)`` between the two
largest sizes; the projection to 10M and 100M multiplies by ``(N / n_max) ** exponent`` and
prices vCPU-hours (wall time x ``--cores``) and memory at :data:`DATAFLOW_PRICES`.

Goals (issue 29), one ``<figure>_goal_met`` each in the last JSON line: every stage's exponent
<= 1.2; 1M frames through novelty and selection in <= 1200 s with <= 4096 MB peak RSS (only
when 1M was run); recall@3 >= 0.95, Spearman >= 0.98, pair recall >= 0.99.
"""
import argparse
import glob
import math
import os
import tempfile
import time

import numpy as np

from benchmarks.common import PeakRss, print_result

CLIP_LENGTH = 50
CHUNK = 1000
SCENE_OFFSET = 0.5
WALK_NORM = 0.15
WALK_CORRELATION = 0.9
LOGIT_NOISE = 0.3
THRESHOLD = 0.99
K = 3
#: Dataflow batch worker list prices, us-central1, USD per vCPU-hour and per GB-hour, as
#: published on cloud.google.com/dataflow/pricing in the 2024 price list; this offline machine
#: could not re-read the live page (noted 2026-12-06): check it before budgeting. Memory is
#: counted at n1-standard-1's 3.75 GB per vCPU (Dataflow's default batch worker).
DATAFLOW_PRICES = {"price_list": "2024 (not re-verified 2026-12-06)", "region": "us-central1",
                   "vcpu_hour": 0.056, "gb_hour": 0.003557, "gb_per_vcpu": 3.75}


def real_frame_embeddings(step: int = 4):
    """``(embeddings float32 (b, 1280) unit rows, probabilities float32 (b, 1000))`` of real
    frames through the default backbone (raises ``DefaultModelsMissing`` without it)."""
    import cv2

    from beam_pipelines.local.home import media_dir
    from transforms.score.handlers import load_model_spec
    from transforms.score.preprocessing import LOGITS, prepare_input
    from transforms.score.pretrained import backbone_path
    from transforms.score.runtimes import RuntimeSession

    spec = load_model_spec(backbone_path())
    session = RuntimeSession(spec.uri, spec.runtime, spec.prep())
    frames = []
    for path in sorted(glob.glob(os.path.join(media_dir(), "*"))):
        if path.endswith((".avi", ".mp4")):
            capture = cv2.VideoCapture(path)
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                if index % step == 0:
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
        elif path.endswith(".jpg"):
            frames.append(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
    embeddings, outputs = [], []
    for start in range(0, len(frames), 32):
        x = np.stack([prepare_input(f, spec.prep()) for f in frames[start:start + 32]])
        e, o = session.run(x)
        embeddings.append(e)
        outputs.append(o)
    e, o = np.concatenate(embeddings).astype(np.float32), np.concatenate(outputs).astype(np.float64)
    if spec.model_output == LOGITS:
        o = np.exp(o - o.max(axis=1, keepdims=True))
        o /= o.sum(axis=1, keepdims=True)
    return e / np.linalg.norm(e, axis=1, keepdims=True), o.astype(np.float32)


def near_copy_clusters(bases: np.ndarray, clips: int, first_clip: int = 0, seed: int = 0):
    """``clips`` camera clips of :data:`CLIP_LENGTH` frames: float32 ``(clips * CLIP_LENGTH, D)``
    unit rows and each row's base index (int). Clip ``c`` is deterministic in ``(seed, c)``.

    Clip ``c`` starts from base ``c mod b`` plus a random offset of norm :data:`SCENE_OFFSET`
    (its own scene), then adds an AR(1) walk ``w_t = r w_{t-1} + sqrt(1 - r^2) e_t`` of
    stationary norm :data:`WALK_NORM`, ``r`` = :data:`WALK_CORRELATION`.
    """
    b, dim = bases.shape
    out = np.empty((clips * CLIP_LENGTH, dim), dtype=np.float32)
    which = np.empty(clips * CLIP_LENGTH, dtype=np.int64)
    r = WALK_CORRELATION
    for i in range(clips):
        c = first_clip + i
        rng = np.random.default_rng([seed, c])
        centre = bases[c % b] + rng.standard_normal(dim, dtype=np.float32) * (SCENE_OFFSET / math.sqrt(dim))
        steps = rng.standard_normal((CLIP_LENGTH, dim), dtype=np.float32) * (WALK_NORM / math.sqrt(dim))
        walk = np.empty_like(steps)
        walk[0] = steps[0]
        for t in range(1, CLIP_LENGTH):
            walk[t] = r * walk[t - 1] + math.sqrt(1 - r * r) * steps[t]
        rows = slice(i * CLIP_LENGTH, (i + 1) * CLIP_LENGTH)
        out[rows] = centre + walk
        which[rows] = c % b
    return out / np.linalg.norm(out, axis=1, keepdims=True), which


def _records(chunk, bases, probabilities, seed):
    """The FrameRecords of one chunk (:data:`CHUNK` frames, whole clips)."""
    from schemas.records import FrameMetadata, FrameRecord, ModelVersion, make_frame_id
    from transforms.score import uncertainty
    clips = CHUNK // CLIP_LENGTH
    embeddings, which = near_copy_clusters(bases, clips, chunk * clips, seed)
    rng = np.random.default_rng([seed, chunk, 1])  # near_copy_clusters seeds with [seed, clip]
    logp = np.log(np.maximum(probabilities[which], 1e-9)) + rng.normal(scale=LOGIT_NOISE, size=(len(which), probabilities.shape[1]))
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    entropy, margin, least = uncertainty.entropy(p), uncertainty.margin(p), uncertainty.least_confidence(p)
    model = ModelVersion("efficientnet_lite0", "benchmark", "embedding")
    for row in range(len(which)):
        clip, t = divmod(chunk * CHUNK + row, CLIP_LENGTH)
        uri = _uri(clip)
        meta = FrameMetadata(make_frame_id(uri, t), uri, t, float(t), 1280, 720, "video", f"{clip}-{t}")
        yield FrameRecord(meta, embeddings[row], p[row], int(p[row].argmax()), float(entropy[row]),
                          float(margin[row]), float(least[row]), model)


def _run(n, bases, probabilities, seed, stage, args, mongo_uri=None, history=None, first_chunk=0):
    """Runs one stage's pipeline over ``n`` generated frames (chunks from ``first_chunk``);
    returns wall seconds. ``history``: a :class:`NoveltyHistory` for the novelty stage."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.index.mongodb import WriteFramesToMongoDB
    from transforms.score.novelty import COSINE, ScoreNovelty
    from transforms.select.ptransforms import SelectCandidates
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        records = (p | beam.Create(range(first_chunk, first_chunk + n // CHUNK)) | "Spread" >> beam.Reshuffle()
                   | "Generate" >> beam.FlatMap(_records, bases, probabilities, seed))
        if stage == "novelty":
            out = (records | ScoreNovelty(k=K, metric=COSINE, duplicate_threshold=THRESHOLD,
                                          assign_duplicate_groups=True, num_shards=args.shards,
                                          history=history)).records
        elif stage == "selection":
            out = records | SelectCandidates(args.budget, "uncertainty_kcenter")
        elif stage == "writes":
            out = (records | WriteFramesToMongoDB(mongo_uri, "scale_benchmark")).frame_ids
        else:
            out = records
        _ = out | beam.combiners.Count.Globally()
    return time.perf_counter() - start


def incremental(n_history, n_new, bases, probabilities, seed, args, work):
    """Seconds of the novelty stage over ``n_new`` new frames against a kept index of the
    first ``n_history`` frames (:class:`NoveltyHistory`, built outside the timed run), source
    time not subtracted."""
    from schemas.records import ModelVersion
    from transforms.score.history import NoveltyHistory
    model = ModelVersion("efficientnet_lite0", "benchmark", "embedding")
    history = NoveltyHistory(os.path.join(work, "index"), model)
    clips = CHUNK // CLIP_LENGTH
    x = np.concatenate([near_copy_clusters(bases, clips, c * clips, seed)[0] for c in range(n_history // CHUNK)])
    ids = list(_frame_ids(n_history))
    history.write_next(ids, x, [(i, 0) for i in ids])
    history.commit()
    del x
    return _run(n_new, bases, probabilities, seed, "novelty", args, history=history,
                first_chunk=n_history // CHUNK)


def _frame_ids(n):
    """The frame ids :func:`_records` gives the first ``n`` frames."""
    from schemas.records import make_frame_id
    for row in range(n):
        clip, t = divmod(row, CLIP_LENGTH)
        yield make_frame_id(_uri(clip), t)


def _uri(clip):
    return f"gs://fleet/cam{clip % 100:02d}/clip{clip:07d}.mp4"


def exact_baseline(n, bases, seed, queries):
    """Seconds of an exact (``Flat``) cosine search of ``queries`` sampled frames against all
    ``n``, scaled to all ``n`` queries, and the recall figures of ``"auto"`` on that sample."""
    from transforms.score import ann, ann_accuracy, knn
    x = np.concatenate([near_copy_clusters(bases, CHUNK // CLIP_LENGTH, c * (CHUNK // CLIP_LENGTH), seed)[0]
                        for c in range(n // CHUNK)])
    rows = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
    index = knn.build_index(x, knn.COSINE, ann.EXACT)
    start = time.perf_counter()
    index.search(x[rows], K + 1)
    seconds = (time.perf_counter() - start) * n / len(rows)
    del index
    accuracy = ann_accuracy.compare_with_exact(x, rows, K, knn.FIFTYONE_WEIGHTS, THRESHOLD, ann.AUTO, exact_below=0)
    return seconds, accuracy


def exponents(sizes, seconds):
    """Growth exponent of each stage between the two largest sizes (``None`` with one size)."""
    if len(sizes) < 2:
        return {stage: None for stage in seconds}
    (n1, n2) = sizes[-2:]
    return {stage: round(math.log(max(t[-1], 1e-3) / max(t[-2], 1e-3)) / math.log(n2 / n1), 3)
            for stage, t in seconds.items()}


def projection(n_max, seconds_at_max, exponent, cores):
    """Projected vCPU-hours and USD at 10M and 100M frames for one stage (the exponent is
    never taken below 1: a stage that touches every frame is at least linear; smaller fitted
    values come from fixed start-up costs at small N)."""
    out, exponent = {}, max(exponent, 1.0)
    for n in (10_000_000, 100_000_000):
        s = seconds_at_max * (n / n_max) ** exponent
        vcpu_h = s * cores / 3600
        usd = vcpu_h * DATAFLOW_PRICES["vcpu_hour"] + vcpu_h * DATAFLOW_PRICES["gb_per_vcpu"] * DATAFLOW_PRICES["gb_hour"]
        out[f"{n // 1_000_000}M"] = {"vcpu_hours": round(vcpu_h, 2), "usd": round(usd, 2)}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10k and 100k")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="frames per run (multiples of 1000)")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1,
                        help="novelty shards (one per worker on Dataflow; on one machine each shard multiplies the queries held in memory)")
    parser.add_argument("--recall_queries", type=int, default=2000)
    parser.add_argument("--stages", nargs="+", default=["novelty", "selection", "writes"])
    parser.add_argument("--incremental_fraction", type=float, default=0.1,
                        help="new frames of the incremental day, as a fraction of the largest size (0: skip)")
    parser.add_argument("--cores", type=int, default=2, help="cores of this machine, for vCPU-hours")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    bases, probabilities = real_frame_embeddings()
    print(f"{len(bases)} real frames embedded ({bases.shape[1]}-d)", flush=True)
    from beam_pipelines.local.mongod import LocalMongoD
    seconds = {stage: [] for stage in args.stages}
    peaks = {stage: [] for stage in args.stages}
    with tempfile.TemporaryDirectory(prefix="scale-") as work, LocalMongoD(os.path.join(work, "mongo")) as mongo:
        _run(CHUNK, bases, probabilities, args.seed, "source", args)  # warm-up: imports, runner
        for n in sizes:
            source = min(_run(n, bases, probabilities, args.seed, "source", args) for _ in range(2))
            for stage in args.stages:
                with PeakRss() as rss:
                    total = _run(n, bases, probabilities, args.seed, stage, args, mongo.uri)
                seconds[stage].append(max(total - source, 0.0))
                peaks[stage].append(rss.peak_mb)
                print(f"n={n} {stage}: {seconds[stage][-1]:.1f} s (pipeline {total:.1f} s, source {source:.1f} s), "
                      f"peak RSS {rss.peak_mb:.0f} MB", flush=True)
        n_new = int(sizes[-1] * args.incremental_fraction) // CHUNK * CHUNK
        incremental_s = incremental(sizes[-1], n_new, bases, probabilities, args.seed, args, work) if n_new else None
        if incremental_s is not None:
            print(f"incremental: {n_new} new frames against {sizes[-1]} kept: {incremental_s:.1f} s", flush=True)
    exact_s, accuracy = exact_baseline(sizes[-1], bases, args.seed, args.recall_queries)
    print(f"n={sizes[-1]} exact search (estimated from {accuracy.queries} queries): {exact_s:.1f} s; {accuracy}",
          flush=True)
    growth = exponents(sizes, seconds)
    n_max = sizes[-1]
    result = {
        "sizes": sizes, "dim": int(bases.shape[1]), "real_frames": len(bases), "clip_length": CLIP_LENGTH,
        "shards": args.shards, "budget": args.budget,
        "seconds": {s: [round(t, 2) for t in v] for s, v in seconds.items()},
        "peak_rss_mb": {s: [round(m) for m in v] for s, v in peaks.items()},
        "growth_exponent": growth,
        "exact_search_s_at_max": round(exact_s, 1),
        "novelty_speedup_vs_exact_at_max": (round(exact_s / seconds["novelty"][-1], 2)
                                            if "novelty" in seconds and seconds["novelty"][-1] else None),
        "recall_at_3": round(accuracy.recall_at_k, 4), "uniqueness_spearman": round(accuracy.uniqueness_spearman, 4),
        "pair_recall": round(accuracy.pair_recall, 4), "exact_pairs": accuracy.exact_pairs,
        "dataflow_prices": DATAFLOW_PRICES,
        "incremental_new_frames": n_new, "incremental_seconds": round(incremental_s, 2) if incremental_s else None,
        # a full recompute of history + new frames costs at least the novelty stage at the largest size
        "incremental_ratio_vs_full": (round(incremental_s / seconds["novelty"][-1], 3)
                                      if incremental_s and "novelty" in seconds else None),
        "projection": {s: projection(n_max, seconds[s][-1], growth[s] if growth[s] is not None else 1.0,
                                     args.cores) for s in seconds},
    }
    at_1m = 1_000_000 in sizes
    global_s = sum(seconds[s][sizes.index(1_000_000)] for s in ("novelty", "selection") if s in seconds) if at_1m else None
    result.update({
        "growth_exponent_goal_met": all(g is not None and g <= 1.2 for g in growth.values()),
        "seconds_1m_goal_met": bool(at_1m and global_s <= 1200),
        "peak_rss_1m_goal_met": bool(at_1m and max(peaks[s][sizes.index(1_000_000)] for s in seconds) <= 4096),
        "recall_at_3_goal_met": accuracy.recall_at_k >= 0.95,
        "uniqueness_spearman_goal_met": accuracy.uniqueness_spearman >= 0.98,
        "pair_recall_goal_met": accuracy.pair_recall >= 0.99,
        "incremental_ratio_goal_met": bool(result["incremental_ratio_vs_full"] is not None
                                           and result["incremental_ratio_vs_full"] <= 0.10),
    })
    print_result(result)


if __name__ == "__main__":
    main()

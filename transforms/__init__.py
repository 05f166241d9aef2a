"""activebeam's reusable Beam ``PTransform``\\ s, one stage per module.

* :mod:`transforms.decode`: ``DecodeMedia``: file globs to frames (images and videos).
* :mod:`transforms.model`: ``ScoreFrames``: embeddings and class probabilities via ``RunInference``.
* :mod:`transforms.handlers`: model handlers (Keras, SavedModel, TFLite, ONNX) and preprocessing specs.
* :mod:`transforms.uncertainty`: least confidence, margin, ratio, entropy, BALD, ... (pure numpy).
* :mod:`transforms.detection`: per-frame detection uncertainty; a fixed-camera detector.
* :mod:`transforms.novelty`: ``ScoreNovelty``: k-NN uniqueness and near-duplicate groups (faiss).
* :mod:`transforms.store`: ``WriteFramesToMongoDB``, ``WriteFramesToBigQuery``.
* :mod:`transforms.sample`: ``SelectCandidates``: distributed top-k without identical frames.
* :mod:`transforms.outputs`: ``candidates.jsonl``, ``dead_letter.jsonl``, ``summary.json``.
* :mod:`transforms.files`: local-versus-remote helpers (``is_local``, ``local_copy``).
* :mod:`transforms.gcp_emulators`: local emulators for GCS and BigQuery (tests, offline work).

Every transform sends what it cannot process to a dead-letter output of
:class:`schemas.records.DeadLetter` (stage and reason) instead of failing the pipeline.
"""

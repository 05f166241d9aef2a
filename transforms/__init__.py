"""activebeam's reusable Beam ``PTransform``\\ s, one subpackage per stage of ``MineFrames.expand``.

* :mod:`transforms.intake`: **Intake** (streaming only): arrivals of new files, their claims in a
  ledger, event times, acknowledgement.
* :mod:`transforms.decode`: **Decode**: ``DecodeMedia``: file globs to frames (images and videos).
* :mod:`transforms.score`: **EmbedAndScore**: ``ScoreFrames`` (embeddings and class probabilities
  via ``RunInference``; uncertainty, Bayesian and detection scores), ``ScoreNovelty`` (uniqueness).
* :mod:`transforms.index`: **IndexInMongoDB** / **IndexInBigQuery**: the frame and candidate writers.
* :mod:`transforms.select`: **SelectCandidates**: sampler strategies, distributed and per window.
* :mod:`transforms.annotate`: **Annotate**: ``ExportToLabelStudio``, ``NormaliseAnnotations``,
  ``WriteTrainingSet`` (the labelling loop with Label Studio), vendor QC and training sets.
* :mod:`transforms.common`: files, result files, redaction, emulators.

Each subpackage keeps its pure modules (numpy, OpenCV, PyAV, faiss, store clients; no Beam) apart
from its Beam plumbing; its ``BUILD`` has a ``pure`` library and a test that imports it with Beam
unavailable. Every transform sends what it cannot process to a dead-letter output of
:class:`schemas.records.DeadLetter` (stage and reason) instead of failing the pipeline.
"""

"""Stage **EmbedAndScore**: embeddings, class probabilities and uncertainty scores of frames.

Public transforms: :class:`ScoreFrames` (:mod:`.ptransforms`: ``RunInference`` with the handler of
the model's runtime, :mod:`.handlers`) and :class:`ScoreNovelty` (:mod:`.novelty`: k-NN
uniqueness over sharded faiss indexes, :class:`AddDuplicateGroups`; the index kept between runs
in :mod:`.history`); detectors in :mod:`.detectors`
(NanoDet-g, the default; :class:`AddClassRarity`); the pretrained models converted at set-up in
:mod:`.pretrained`. Pure modules (no Beam; enforced by ``//transforms/score:pure_test`` and
``//transforms/score/pretrained:pretrained_test``):

* :mod:`.registry`: the score registry (:mod:`schemas.scores`) with each score's function.
* :mod:`.uncertainty`: least confidence, margin, ratio, entropy, BALD, variation ratios, ...
* :mod:`.detection`: per-box detection uncertainty aggregated per frame.
* :mod:`.knn`: k-NN uniqueness and near-duplicate pairs with faiss.
* :mod:`.ann`: which faiss index a shard uses (exact or HNSW, by size) and its accuracy against exact.
"""
from transforms._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ptransforms": ("ScoreFrames", "ScoredFrames", "probability_scores"),
    "handlers": ("ModelSpec", "load_model_spec", "make_handler"),
    "model_base": ("default_model_path", "DEFAULT_MODEL_NAME"),
    "preprocessing": ("LOGITS", "PROBABILITIES", "Preprocessing", "prepare_input"),
    "novelty": ("ScoreNovelty", "NoveltyResult", "AddDuplicateGroups"),
    "detectors": ("DetectorHandler", "NanoDetDetector", "BackgroundDifferenceDetector", "nanodet_handler",
                  "AddClassRarity"),
})

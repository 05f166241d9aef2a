"""The one registry of per-frame scores: name, meaning, orientation and what each needs.

Everything that lists scores reads :data:`SCORES`: the frame schema (:mod:`schemas.frames`:
required columns and nullable extra columns, in this order), the strategies
(:mod:`transforms.select.base`: which scores rank frames and how), ``ScoreFrames`` (which
Bayesian scores to compute from MC-dropout passes), the ``mine`` job's ``--strategy`` choices and
checks, and the table of docs/scores.md (``python -m schemas.generate``). The function that
computes each score from its array is :mod:`transforms.score.registry`'s (the maths lives with the
stage; the names, here, are what every stored record agrees on).

Orientation: ``uncertain_when`` says which end of a score means "label this frame". Ranking
always uses :func:`wanted` (higher = more wanted): a ``LOW`` score ``s`` in [0, 1] (``margin``)
ranks as ``1 - s``, everything else as it is.

::

    from schemas import scores
    scores.get("bald").needs                 # 'mc_samples'
    scores.wanted("margin", [0.1, 0.9])      # array([0.9, 0.1])
    scores.names(needs=scores.MC_SAMPLES)    # ('bald', 'variation_ratios', 'mean_std')
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

#: What a score is computed from.
PROBABILITIES = "probabilities"  # class probabilities of one pass, float (N, C)
MC_SAMPLES = "mc_samples"        # T stochastic passes (MC dropout), float (T, N, C); --mc_passes
ENSEMBLE = "ensemble"            # class probabilities of M ensemble members, float (M, N, C)
EMBEDDINGS = "embeddings"        # k-NN over the run's embeddings (ScoreNovelty); --uniqueness_k
DETECTIONS = "detections"        # a detector's boxes and confidences (ScoreFrames(detector=...))
NEEDS = (PROBABILITIES, MC_SAMPLES, ENSEMBLE, EMBEDDINGS, DETECTIONS)

HIGH, LOW = "high", "low"


class Score(NamedTuple):
    """One per-frame score.

    ``name``: the stored name (column, ``scores.<name>``); ``description``: its meaning and unit;
    ``needs``: one of :data:`NEEDS`; ``uncertain_when``: :data:`HIGH` or :data:`LOW` (the
    function that computes it, if any, is :data:`transforms.score.registry.FUNCTIONS`'s);
    ``column``: a REQUIRED column of
    every frame (else a NULLABLE extra score, stored when present); ``rankable``: usable as a
    top-k ``--strategy``.
    """
    name: str
    description: str
    needs: str
    uncertain_when: str = HIGH
    column: bool = False
    rankable: bool = False


#: Every score, in schema order: the three required columns first, then the extra scores.
SCORES: Tuple[Score, ...] = (
    Score("entropy", "Shannon entropy of the class probabilities, in nats.", PROBABILITIES, HIGH, column=True, rankable=True),
    Score("margin", "p(1st) - p(2nd); low means uncertain.", PROBABILITIES, LOW, column=True, rankable=True),
    Score("least_confidence", "1 - p(1st); high means uncertain.", PROBABILITIES, HIGH, column=True, rankable=True),
    Score("ratio", "p(2nd) / p(1st); high means uncertain.", PROBABILITIES, HIGH),
    Score("entropy_normalised", "Entropy / ln(num_classes), in [0, 1].", PROBABILITIES, HIGH),
    Score("bald", "BALD mutual information over MC-dropout passes, in nats.", MC_SAMPLES, HIGH, rankable=True),
    Score("variation_ratios", "1 - share of MC-dropout passes voting for the modal class.",
          MC_SAMPLES, HIGH, rankable=True),
    Score("mean_std", "Mean over classes of the std of p_c across MC-dropout passes.", MC_SAMPLES,
          HIGH, rankable=True),
    Score("ensemble_disagreement", "Jensen-Shannon divergence between ensemble members, in nats.",
          ENSEMBLE, HIGH),
    Score("uniqueness", "Distance of the embedding to its k nearest neighbours (weighted, cosine).",
          EMBEDDINGS, HIGH, rankable=True),
    Score("detection_max", "Highest per-box uncertainty 1 - |2c - 1| of the frame's detections.", DETECTIONS,
          rankable=True),
    Score("detection_mean", "Mean per-box uncertainty 1 - |2c - 1| of the frame's detections.", DETECTIONS,
          rankable=True),
    Score("detection_sum", "Sum of per-box uncertainties 1 - |2c - 1| of the frame's detections.", DETECTIONS,
          rankable=True),
    Score("detection_uncertain_count", "Number of boxes with a confidence inside the uncertain band.",
          DETECTIONS),
    Score("detection_count", "Number of detected boxes.", DETECTIONS),
    Score("detection_localisation", "Mean over boxes of 1 - IoU with the same-class box found in the "
          "horizontally flipped frame (1: not found again).", DETECTIONS, rankable=True),
    Score("detection_rare_class", "Rarity of the frame's rarest detected class among the run's boxes, "
          "max log(B / n_c) / log(B), in [0, 1].", DETECTIONS, rankable=True),
)
_BY_NAME = {score.name: score for score in SCORES}

#: Strategies that are not a single score (see :func:`transforms.select.factory.make_strategy`).
SET_STRATEGIES = ("uncertainty_kcenter", "random", "coreset", "cluster_margin", "combined")


def get(name: str) -> Score:
    """The registered score ``name``.

    Raises
    ------
    ValueError
        If no score has that name (the message lists them).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown score {name!r}; known: {', '.join(_BY_NAME)}") from None


def names(*, needs: Optional[str] = None, column: Optional[bool] = None,
          rankable: Optional[bool] = None) -> Tuple[str, ...]:
    """Names of the scores matching every given filter, in registry order."""
    return tuple(s.name for s in SCORES
                 if (needs is None or s.needs == needs)
                 and (column is None or s.column == column)
                 and (rankable is None or s.rankable == rankable))


def strategy_names() -> Tuple[str, ...]:
    """Every ``--strategy``: the rankable scores (top-k), then :data:`SET_STRATEGIES`."""
    return names(rankable=True) + SET_STRATEGIES


def wanted(name: str, values) -> np.ndarray:
    """``values`` of score ``name`` oriented so that higher = more wanted, float64 ``(N,)``.

    A :data:`LOW` score (``margin``, in [0, 1]) becomes ``1 - values``; others are unchanged.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return 1.0 - values if get(name).uncertain_when == LOW else values


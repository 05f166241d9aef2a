"""The score registry with its maths: :mod:`schemas.scores` (names, meaning, orientation, needs)
plus the pure function that computes each score from its array (pure; no Beam).

The names live in :mod:`schemas.scores`, so that the frame schema reads them without importing
this stage; they are re-exported here so that the stage reads one module::

    from transforms.score import registry
    registry.get("bald").needs                 # 'mc_samples'
    registry.compute("entropy", probabilities)  # float64 (N,)
    registry.FUNCTIONS["margin"]               # transforms.score.uncertainty.margin
"""
from typing import Callable, Dict

import numpy as np

from schemas.scores import (DETECTIONS, EMBEDDINGS, ENSEMBLE, HIGH, LOW, MC_SAMPLES, NEEDS, PROBABILITIES,
                            SCORES, SET_STRATEGIES, Score, get, names, strategy_names, wanted)
from transforms.score import uncertainty

__all__ = ["DETECTIONS", "EMBEDDINGS", "ENSEMBLE", "HIGH", "LOW", "MC_SAMPLES", "NEEDS", "PROBABILITIES",
           "SCORES", "SET_STRATEGIES", "Score", "get", "names", "strategy_names", "wanted", "FUNCTIONS",
           "compute"]

#: The pure function of each score computed from its ``needs`` array, float64 ``(N,)``; the other
#: scores of :data:`SCORES` are computed by a transform (uniqueness, detection aggregates).
FUNCTIONS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "entropy": uncertainty.entropy,
    "margin": uncertainty.margin,
    "least_confidence": uncertainty.least_confidence,
    "ratio": uncertainty.ratio,
    "entropy_normalised": uncertainty.entropy_normalised,
    "bald": uncertainty.bald,
    "variation_ratios": uncertainty.variation_ratios,
    "mean_std": uncertainty.mean_std,
    "ensemble_disagreement": uncertainty.ensemble_disagreement,
}


def compute(name: str, inputs) -> np.ndarray:
    """Score ``name`` from its ``needs`` array (``(N, C)``, or ``(T, N, C)`` / ``(M, N, C)``),
    float64 ``(N,)`` as stored (not oriented).

    Raises
    ------
    ValueError
        If the score is unknown or is computed by a transform, not from an array.
    """
    score = get(name)
    if name not in FUNCTIONS:
        raise ValueError(f"score {name!r} is computed by a transform from {score.needs}, "
                         "not from an array")
    return np.asarray(FUNCTIONS[name](inputs), dtype=np.float64).reshape(-1)

"""How close an approximate novelty index is to exact search on the same vectors (pure).

:func:`compare_with_exact` gives recall@k of the neighbours, Spearman rank correlation of the
uniqueness values and recall of the near-duplicate pairs at the threshold (the figures of
``benchmarks.scale`` and of ``tests/test_ann.py``), for the index :mod:`transforms.score.ann`
chooses, built and searched by :mod:`transforms.score.knn` as the job does.
"""
from typing import NamedTuple, Sequence

import numpy as np

from transforms.score import ann, knn


class AnnAccuracy(NamedTuple):
    """An approximate index against exact search on the same vectors (cosine, the job's metric).

    ``recall_at_k``: mean fraction of each query's exact k nearest neighbours the index returns;
    ``uniqueness_spearman``: Spearman rank correlation of the queries' uniqueness values;
    ``pair_recall``: fraction of the exact near-duplicate pairs (cosine similarity >= threshold,
    a query in the pair) the index finds (1.0 when there are none); ``exact_pairs``: how many.
    """
    recall_at_k: float
    uniqueness_spearman: float
    pair_recall: float
    exact_pairs: int
    queries: int


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of ``|found_i & exact_i| / |exact_i|`` for ``(m, k)`` integer id arrays
    (``-1`` = missing, ignored in ``exact``)."""
    hits, total = 0, 0
    for f, e in zip(np.asarray(found), np.asarray(exact)):
        e = set(e[e >= 0].tolist())
        hits += len(e & set(f.tolist()))
        total += len(e)
    return hits / total if total else 1.0


def compare_with_exact(embeddings: np.ndarray, query_rows: Sequence[int], k: int, weights: Sequence[float],
                       threshold: float, index_factory: str = ann.AUTO, exact_below: int = ann.EXACT_BELOW
                       ) -> AnnAccuracy:
    """Searches ``query_rows`` of ``embeddings`` (float32 ``(n, D)``) with the chosen index and
    with ``Flat``, both built over all ``n`` rows, cosine metric, the query itself excluded.

    Parameters
    ----------
    embeddings : float32 ``(n, D)``
    query_rows : row numbers to query (a sample keeps the exact side at ``O(m n D)``)
    k, weights : neighbours and their uniqueness weights (:func:`knn.uniqueness_from_distances`)
    threshold : cosine similarity of a near-duplicate pair
    index_factory, exact_below : the index under test, as :func:`transforms.score.ann.resolve` reads them

    Returns
    -------
    :class:`AnnAccuracy`
    """
    from scipy.stats import spearmanr

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids = [f"{i:09d}" for i in range(len(x))]
    rows = np.asarray(query_rows)
    qids, q = [ids[i] for i in rows], x[rows]
    sides = {}
    for name, factory in (("approx", index_factory), ("exact", ann.EXACT)):
        index = knn.build_index(x, knn.COSINE, factory, exact_below=exact_below)
        found = knn.search_shard(ids, x, qids, q, k, knn.COSINE, index=index)
        neighbours = np.full((len(rows), k), -1)
        distances = np.full((len(rows), k), np.inf)
        for row, hits in enumerate(found):
            neighbours[row, :len(hits)] = [int(h.frame_id) for h in hits]
            distances[row, :len(hits)] = [h.distance for h in hits]
        uniqueness = knn.uniqueness_from_distances(distances, weights)
        pairs = set(knn.near_duplicate_pairs(ids, index, qids, q, threshold, each_pair_once=False))
        sides[name] = (neighbours, uniqueness, pairs)
    (na, ua, pa), (ne, ue, pe) = sides["approx"], sides["exact"]
    finite = np.isfinite(ua) & np.isfinite(ue)
    rho = float(spearmanr(ua[finite], ue[finite]).statistic) if finite.sum() > 2 else 1.0
    return AnnAccuracy(recall_at_k(na, ne), rho, len(pa & pe) / len(pe) if pe else 1.0, len(pe), len(rows))

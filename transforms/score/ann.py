"""Which faiss index a novelty shard uses, chosen by its size, and how close it is to exact (pure).

Exact search (``Flat``) compares every query with every indexed vector: ``O(n)`` per query, so
uniqueness over ``N`` frames costs ``O(N^2 * D)``. Above :data:`EXACT_BELOW` vectors per shard a
shard is a hierarchical navigable small-world graph (HNSW, Malkov & Yashunin 2018) built by
faiss's own ``index_factory`` (``"HNSW32,Flat"``): about ``O(log n)`` distance computations per
query, so the cost of the whole search grows close to linearly with ``N``::

    choice = choose_index(250_000)        # IndexChoice("HNSW32,Flat", 80, 128)
    index = knn.build_index(x, COSINE, "auto")   # the same choice, applied

The parameters (faiss's names):

* ``M = 32`` (:data:`HNSW_M`): graph neighbours per vector (faiss's guideline 16-64; memory
  ``n * (4 D + 8 M)`` bytes, 5.4 GB for 1M x 1280-d float32 vectors).
* ``efConstruction = 80`` (:data:`EF_CONSTRUCTION`): candidate list while inserting (faiss's
  default 40, with efSearch 64, gave recall@3 0.96 on 20,000 clustered 1280-d vectors; 80 buys
  recall with build time).
* ``efSearch = 128`` (:data:`EF_SEARCH`): candidate list while searching, set with faiss's
  ``ParameterSpace`` (the auto-tuning interface); faiss raises it to ``k`` when ``k`` is larger.

Vectors stay uncompressed (``Flat`` storage): scalar or product quantisation (``SQ8``, ``PQ``)
moves cosine similarities near the near-duplicate threshold (0.99) by more than the margin, and
on these embeddings ``HNSW32,SQ8`` fell to recall@3 0.23.

faiss's HNSW has no range search (the call aborts the process), so near-duplicate pairs come
from k-NN searches that double ``k`` while a query's farthest result is still above the
threshold (:func:`transforms.score.knn.near_duplicate_pairs`): no pair is lost to a fixed ``k``.

:func:`compare_with_exact` measures an index against exact search on the same vectors:
recall@k of the neighbours, Spearman rank correlation of the uniqueness values, and recall of the
near-duplicate pairs at the threshold (the figures of ``benchmarks.scale`` and its test).

References
----------
Malkov & Yashunin (2018), Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs, IEEE TPAMI;
Johnson, Douze & Jégou (2019), Billion-scale similarity search with GPUs (faiss);
faiss wiki, "Guidelines to choose an index" and "Index IO, cloning and hyper parameter tuning".
"""
from typing import NamedTuple, Optional, Sequence

import numpy as np

#: Shards with fewer vectors than this are searched exactly (``Flat``): below it a graph's
#: build time is not repaid (all-pairs k-NN of 20,000 x 1280-d on 2 shared cores: Flat 25-35 s,
#: HNSW32 with efConstruction 40 built in 8 s and searched in 1.5 s; docs/scale.md).
EXACT_BELOW = 10_000
HNSW_M = 32
EF_CONSTRUCTION = 80
EF_SEARCH = 128
EXACT = "Flat"
AUTO = "auto"


class IndexChoice(NamedTuple):
    """A faiss ``index_factory`` string and its HNSW build/search parameters (``None`` for
    indexes without a graph)."""
    factory: str
    ef_construction: Optional[int] = None
    ef_search: Optional[int] = None


def choose_index(n: int, exact_below: int = EXACT_BELOW) -> IndexChoice:
    """The index for a shard of ``n`` vectors: exact ``Flat`` below ``exact_below``, else
    ``HNSW{M},Flat`` with :data:`EF_CONSTRUCTION` and :data:`EF_SEARCH`.

    Raises
    ------
    ValueError
        If ``n`` or ``exact_below`` is negative.
    """
    if n < 0 or exact_below < 0:
        raise ValueError(f"n and exact_below must be >= 0, got {n}, {exact_below}")
    if n < exact_below:
        return IndexChoice(EXACT)
    return IndexChoice(f"HNSW{HNSW_M},Flat", EF_CONSTRUCTION, EF_SEARCH)


def resolve(index_factory: str, n: int, exact_below: int = EXACT_BELOW) -> IndexChoice:
    """``index_factory`` as an :class:`IndexChoice`: ``"auto"`` is :func:`choose_index` of
    ``n``; an HNSW factory string gets this module's ef parameters; anything else as given."""
    if index_factory == AUTO:
        return choose_index(n, exact_below)
    if "HNSW" in index_factory:
        return IndexChoice(index_factory, EF_CONSTRUCTION, EF_SEARCH)
    return IndexChoice(index_factory)


def new_index(dim: int, choice: IndexChoice, faiss_metric):
    """An empty faiss index of ``choice`` (``efConstruction`` set, before any ``add``)."""
    import faiss
    index = faiss.index_factory(dim, choice.factory, faiss_metric)
    if choice.ef_construction is not None:
        faiss.downcast_index(index).hnsw.efConstruction = choice.ef_construction
    return index


def tune(index, choice: IndexChoice) -> None:
    """Sets the search-time parameters of ``choice`` on a built index (faiss ``ParameterSpace``)."""
    import faiss
    if choice.ef_search is not None:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", choice.ef_search)


def is_graph(index) -> bool:
    """True for faiss HNSW indexes (no range search: pairs come from growing k-NN searches)."""
    import faiss
    return isinstance(faiss.downcast_index(index), faiss.IndexHNSW)


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
                       threshold: float, index_factory: str = AUTO, exact_below: int = EXACT_BELOW
                       ) -> AnnAccuracy:
    """Searches ``query_rows`` of ``embeddings`` (float32 ``(n, D)``) with the chosen index and
    with ``Flat``, both built over all ``n`` rows, cosine metric, the query itself excluded.

    Parameters
    ----------
    embeddings : float32 ``(n, D)``
    query_rows : row numbers to query (a sample keeps the exact side at ``O(m n D)``)
    k, weights : neighbours and their uniqueness weights (:func:`knn.uniqueness_from_distances`)
    threshold : cosine similarity of a near-duplicate pair
    index_factory, exact_below : the index under test, as :func:`resolve` reads them

    Returns
    -------
    :class:`AnnAccuracy`
    """
    from scipy.stats import spearmanr

    from transforms.score import knn
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids = [f"{i:09d}" for i in range(len(x))]
    rows = np.asarray(query_rows)
    qids, q = [ids[i] for i in rows], x[rows]
    sides = {}
    for name, factory in (("approx", index_factory), ("exact", EXACT)):
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

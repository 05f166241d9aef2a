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

:mod:`transforms.score.ann_accuracy` measures an index against exact search on the same vectors.

References
----------
Malkov & Yashunin (2018), Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs, IEEE TPAMI;
Johnson, Douze & Jégou (2019), Billion-scale similarity search with GPUs (faiss);
faiss wiki, "Guidelines to choose an index" and "Index IO, cloning and hyper parameter tuning".
"""
from typing import NamedTuple, Optional

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

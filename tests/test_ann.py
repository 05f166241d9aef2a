"""Approximate search for novelty: the index chosen by shard size, measured against exact faiss
search on 20,000 clustered 1280-d vectors (clips of temporally correlated near-copies, the
benchmark's generator) for recall@3, Spearman of uniqueness and near-duplicate pair recall."""
import numpy as np
import pytest

from benchmarks.scale import CLIP_LENGTH, THRESHOLD, near_copy_clusters
from transforms.score import ann, ann_accuracy, knn

N, DIM, QUERIES = 20_000, 1280, 1000


@pytest.fixture(scope="module")
def vectors():
    bases = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)
    bases /= np.linalg.norm(bases, axis=1, keepdims=True)
    x, _ = near_copy_clusters(bases, N // CLIP_LENGTH, seed=3)
    return x


def test_index_is_chosen_by_size():
    assert ann.choose_index(ann.EXACT_BELOW - 1) == ann.IndexChoice("Flat")
    graph = ann.choose_index(ann.EXACT_BELOW)
    assert graph.factory == f"HNSW{ann.HNSW_M},Flat"
    assert (graph.ef_construction, graph.ef_search) == (ann.EF_CONSTRUCTION, ann.EF_SEARCH)
    assert ann.resolve("IVF64,Flat", 10**6) == ann.IndexChoice("IVF64,Flat")
    with pytest.raises(ValueError, match="n and exact_below"):
        ann.choose_index(-1)


def test_auto_builds_flat_below_and_a_tuned_graph_above(vectors):
    import faiss
    small = knn.build_index(vectors[:500], knn.COSINE, ann.AUTO)
    assert isinstance(faiss.downcast_index(small), faiss.IndexFlat) and not ann.is_graph(small)
    large = knn.build_index(vectors[:2000], knn.COSINE, ann.AUTO, exact_below=1000)
    assert ann.is_graph(large)
    hnsw = faiss.downcast_index(large).hnsw
    assert (hnsw.efConstruction, hnsw.efSearch) == (ann.EF_CONSTRUCTION, ann.EF_SEARCH)


def test_graph_pairs_equal_range_search_pairs(vectors):
    """The growing k-NN searches of an HNSW index find the pairs of a Flat range search."""
    x, ids = vectors[:3000], [f"{i:05d}" for i in range(3000)]
    exact = set(knn.near_duplicate_pairs(ids, knn.build_index(x, knn.COSINE), ids, x, THRESHOLD))
    graph = set(knn.near_duplicate_pairs(ids, knn.build_index(x, knn.COSINE, ann.AUTO, exact_below=0),
                                         ids, x, THRESHOLD))
    assert len(exact) > len(x)  # clips of near-copies: several pairs per frame
    assert len(graph & exact) / len(exact) >= 0.99
    assert len(graph - exact) <= len(exact) // 1000  # float rounding at the threshold only


def test_approximate_against_exact_meets_the_goals(vectors):
    rows = np.random.default_rng(0).choice(N, size=QUERIES, replace=False)
    accuracy = ann_accuracy.compare_with_exact(vectors, rows, 3, knn.FIFTYONE_WEIGHTS, THRESHOLD, ann.AUTO,
                                      exact_below=0)
    assert accuracy.queries == QUERIES and accuracy.exact_pairs > QUERIES
    assert accuracy.recall_at_k >= 0.95, accuracy
    assert accuracy.uniqueness_spearman >= 0.98, accuracy
    assert accuracy.pair_recall >= 0.99, accuracy


def test_recall_at_k_counts_found_neighbours():
    exact = np.array([[1, 2, 3], [4, 5, -1]])
    assert ann_accuracy.recall_at_k(np.array([[3, 2, 9], [5, 4, 7]]), exact) == pytest.approx(4 / 5)

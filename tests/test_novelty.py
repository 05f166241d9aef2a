"""Novelty: sharded faiss k-NN uniqueness against FiftyOne's definition (recomputed with
scikit-learn) on real Fashion-MNIST embeddings, and near-duplicate groups."""
import apache_beam as beam
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from models.train_fashion_mnist import load_split
from tests import harness
from tests.records_factory import frame_record
from transforms.score.ptransforms import default_model_path, load_embedding_classifier
from transforms.score.novelty import (COSINE, FIFTYONE_WEIGHTS, AddDuplicateGroups, ScoreNovelty,
                                      build_index, duplicate_groups, frame_uniqueness, knn_uniqueness,
                                      merge_neighbours, search_shard, shard_distances,
                                      uniqueness_from_distances)

N = 300


@pytest.fixture(scope="module")
def embeddings():
    model, _, _ = load_embedding_classifier(default_model_path())
    images, _ = load_split("t10k")
    embedded, _ = model.predict(images[:N, ..., None].astype("float32"), batch_size=100, verbose=0)
    return embedded.astype(np.float32)


def _records(embeddings):
    return [frame_record(f"/data/f{i:04d}.png")._replace(embedding=e) for i, e in enumerate(embeddings)]


def _fiftyone_reference(embeddings, metric="euclidean", k=3, weights=FIFTYONE_WEIGHTS):
    """FiftyOne Brain's uniqueness: k+1 neighbours (the first is the sample itself), weighted
    mean of the k distances, divided by the maximum."""
    dists, _ = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(embeddings).kneighbors(embeddings)
    values = np.mean(dists[:, 1:] * np.asarray(weights), axis=1)
    return values / values.max()


def _run(records, **kwargs):
    def build(p):
        result = p | beam.Create(records) | ScoreNovelty(**kwargs)
        return {"records": result.records, "groups": result.duplicate_groups}
    out = harness.run_collect(build)
    by_uri = {r.frame.source_uri: dict(r.extra_scores)["uniqueness"] for r in out["records"]}
    assert len(by_uri) == len(records)
    return np.array([by_uri[r.frame.source_uri] for r in records]), out["groups"]


@pytest.mark.parametrize("num_shards", [1, 3])
def test_uniqueness_matches_fiftyone_definition(embeddings, num_shards):
    ours, groups = _run(_records(embeddings), num_shards=num_shards, query_batch_size=64)
    np.testing.assert_allclose(ours, _fiftyone_reference(embeddings), rtol=1e-4, atol=1e-5)
    assert ours.max() == pytest.approx(1.0)
    # Near-duplicate groups agree with brute force over all pairs (cosine >= 0.99).
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = [r.frame.frame_id for r in _records(embeddings)]
    pairs = [(ids[i], ids[j]) for i, j in zip(*np.nonzero(np.triu(unit @ unit.T >= 0.99, 1)))]
    assert sorted(groups) == sorted(duplicate_groups(pairs).items())


def test_cosine_metric_and_custom_k(embeddings):
    weights = (0.5, 0.25, 0.15, 0.1, 0.0)
    ours, _ = _run(_records(embeddings[:120]), k=5, weights=weights, metric=COSINE, num_shards=2)
    reference = _fiftyone_reference(embeddings[:120], metric="cosine", k=5, weights=weights)
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4)


def test_unnormalised_and_approximate_index(embeddings):
    exact, _ = _run(_records(embeddings), normalise=False, num_shards=2)
    reference = np.mean(NearestNeighbors(n_neighbors=4).fit(embeddings).kneighbors(embeddings)[0][:, 1:]
                        * np.asarray(FIFTYONE_WEIGHTS), axis=1)
    np.testing.assert_allclose(exact, reference, rtol=1e-4)
    approximate, _ = _run(_records(embeddings), normalise=False, num_shards=2, index_factory="IVF4,Flat")
    # An inverted file misses some true neighbours, so it can only over-estimate distances.
    assert np.all(approximate >= exact - 1e-4)
    assert np.corrcoef(approximate, exact)[0, 1] > 0.8


def test_near_duplicate_groups(embeddings):
    rng = np.random.default_rng(0)
    base = embeddings[:40]
    copies = np.concatenate([base, base[[3]], base[[3]] * 1.001, base[[7]] + rng.normal(0, 1e-3, base.shape[1])])
    records = _records(copies)
    ids = [r.frame.frame_id for r in records]
    _, groups = _run(records, num_shards=3)
    members = {member: group for _, group in groups for member in group}
    # The inserted copies join their originals (real images may have other near-duplicates too).
    assert {ids[3], ids[40], ids[41]} <= set(members[ids[40]])
    assert {ids[7], ids[42]} <= set(members[ids[42]])
    assert members[ids[40]] != members[ids[42]] and ids[0] not in members.get(ids[40], ())
    assert all(leader == group[0] for leader, group in groups)


def test_duplicate_groups_are_transitive_and_order_free():
    pairs = [("c", "b"), ("b", "a"), ("x", "y"), ("a", "c")]
    assert duplicate_groups(pairs) == {"a": ("a", "b", "c"), "x": ("x", "y")}
    assert duplicate_groups(reversed(pairs)) == duplicate_groups(pairs)
    assert duplicate_groups([]) == {}


def test_search_and_merge_exclude_self_and_keep_k_nearest():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], np.float32)
    ids = ["a", "b", "c", "d"]
    found = search_shard(ids[:2], points[:2], ids, points, k=2)
    assert [n.frame_id for n in found[0]] == ["b"]  # "a" itself is excluded
    more = search_shard(ids[2:], points[2:], ids, points, k=2)
    merged = merge_neighbours([found[0], more[0]], k=2)
    assert [(n.frame_id, round(n.distance, 5)) for n in merged] == [("b", 1.0), ("d", 2.0)]
    np.testing.assert_allclose(knn_uniqueness([[1.0, 2.0]], (0.5, 0.5)), [0.75])


def test_assigned_groups_equal_the_add_duplicate_groups_step(embeddings):
    """``assign_duplicate_groups`` (one join, the representative from the pairs' keys) gives
    every record the group that the separate ``AddDuplicateGroups`` step gives it."""
    base = embeddings[:60]
    copies = np.concatenate([base, base[[5]], base[[5]] * 1.001, base[[9]] * 0.999])
    # the copies come first in (source_uri, frame_index) order, so they, not the originals, lead
    records = [frame_record("/data/a-copy.mp4", i, frame_id=f"copy-{i}")._replace(embedding=e)
               for i, e in enumerate(copies[60:])]
    records += _records(base)

    def build(p):
        created = p | beam.Create(records)
        one = created | "Assigned" >> ScoreNovelty(num_shards=3, query_batch_size=16, assign_duplicate_groups=True)
        two = created | "Separate" >> ScoreNovelty(num_shards=3, query_batch_size=16)
        return {"assigned": one.records,
                "separate": (two.records, two.duplicate_groups) | AddDuplicateGroups()}
    out = harness.run_collect(build)
    assigned = {r.frame.frame_id: (r.duplicate_group, dict(r.extra_scores)["uniqueness"]) for r in out["assigned"]}
    separate = {r.frame.frame_id: (r.duplicate_group, dict(r.extra_scores)["uniqueness"]) for r in out["separate"]}
    assert assigned == separate and len(assigned) == len(records)
    assert assigned["copy-0"][0] == assigned["copy-1"][0] == assigned[records[3 + 5].frame.frame_id][0] == "copy-0"
    assert assigned["copy-2"][0] == "copy-2"  # base[9] x 0.999: same direction, its own group's first
    assert sum(group is not None for group, _ in assigned.values()) >= 5


def test_vectorised_distances_equal_the_neighbour_lists(embeddings):
    """``shard_distances`` + ``uniqueness_from_distances`` (the transform's path) against
    ``search_shard`` + ``merge_neighbours`` + ``frame_uniqueness``, with a shard smaller than k."""
    ids = [f"f{i}" for i in range(len(embeddings))]
    shards = [(0, 150), (150, 298), (298, 300)]  # the last shard holds 2 frames: fewer than k + 1
    for metric in ("euclidean", COSINE):
        lists, arrays = [], []
        for lo, hi in shards:
            index = build_index(embeddings[lo:hi], metric)
            lists.append(search_shard(ids[lo:hi], embeddings[lo:hi], ids, embeddings, 3, metric, index))
            arrays.append(shard_distances(ids[lo:hi], index, ids, embeddings, 3, metric))
        assert arrays[2].shape == (len(ids), 3) and np.isinf(arrays[2][298]).sum() == 2  # itself + missing
        expected = [frame_uniqueness(merge_neighbours([found[i] for found in lists], 3), FIFTYONE_WEIGHTS)
                    for i in range(len(ids))]
        np.testing.assert_allclose(uniqueness_from_distances(np.concatenate(arrays, axis=1), FIFTYONE_WEIGHTS),
                                   expected, rtol=1e-6)
    # fewer finite neighbours than weights, and none
    got = uniqueness_from_distances(np.array([[2.0, np.inf, np.inf], [np.inf, np.inf, np.inf]]), (0.6, 0.3, 0.1))
    assert got[0] == pytest.approx(1.2) and np.isinf(got[1])


@pytest.mark.parametrize("kwargs,match", [({"k": 0}, "k must be"), ({"weights": (1.0,)}, "weights"),
                                          ({"metric": "manhattan"}, "metric"),
                                          ({"duplicate_threshold": 2.0}, "duplicate_threshold"),
                                          ({"num_shards": 0}, "num_shards")])
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoreNovelty(**kwargs)


if __name__ == "__main__":
    harness.main(__file__)


def test_build_index_can_normalise_its_input_in_place_to_the_same_vectors():
    """``overwrite=True`` (a shard's own copy of its vectors) saves a copy, not a bit of the index."""
    from transforms.score.knn import build_index, unit_rows
    x = np.random.default_rng(4).normal(size=(300, 24)).astype(np.float32)
    mine = x.copy()
    index = build_index(mine, COSINE, overwrite=True)
    assert np.array_equal(mine, unit_rows(x))  # normalised in place
    assert np.array_equal(index.reconstruct_n(0, 300), build_index(x, COSINE).reconstruct_n(0, 300))
    untouched = x.copy()
    build_index(untouched, COSINE)
    assert np.array_equal(untouched, x)

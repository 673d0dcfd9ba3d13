"""The FAISS index: approximate search checked against exact search, filters, persistence."""

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.errors import IndexCorrupt
from indexer.vector_index import (
    COARSE_FAST_SCAN_MIN_LISTS,
    FLAT,
    IVF,
    REFINE_FACTORS,
    TARGET_RECALL,
    CalibrationSample,
    VectorIndex,
    _coarse_quantizer,
)


def _unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Clustered data, closer to real embeddings than uniform noise.
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, size=n)] + 0.4 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_kind_is_chosen_by_catalogue_size():
    vectors = _unit_vectors(2000)
    ids = np.arange(2000) + 10
    assert VectorIndex.build(ids, vectors, exact_max_items=5000).kind == FLAT
    assert VectorIndex.build(ids, vectors, exact_max_items=1000).kind == IVF


def test_approximate_recall_against_exact_search():
    vectors = _unit_vectors(20_000)
    ids = np.arange(20_000) * 3 + 7  # stable external ids, not positions
    exact = VectorIndex.build(ids, vectors, exact_max_items=10**9)
    approx = VectorIndex.build(ids, vectors, exact_max_items=1000)
    # Queries as the service makes them: blends of catalogue items (a user's liked items, an
    # item's neighbours), not points from unrelated clusters that no query resembles.
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, 20_000, 100)] + vectors[rng.integers(0, 20_000, 100)]
    queries += 0.3 * rng.normal(size=queries.shape)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    recalls = []
    for query in queries:
        truth = {hit.item_id for hit in exact.search(query, 10)}
        found = {hit.item_id for hit in approx.search(query, 10)}
        recalls.append(len(truth & found) / 10)
    assert np.mean(recalls) >= 0.9


@pytest.mark.parametrize("exact_max_items", [10**9, 100])
def test_exclusion_never_starves_results(exact_max_items):
    vectors = _unit_vectors(3000)
    ids = np.arange(3000)
    index = VectorIndex.build(ids, vectors, exact_max_items=exact_max_items)
    query = vectors[0]
    nearest = [hit.item_id for hit in index.search(query, 500)]
    excluded = set(nearest[:400])
    hits = index.search(query, 10, exclude=excluded)
    assert len(hits) == 10
    assert not excluded & {hit.item_id for hit in hits}
    only_odd = index.search(query, 10, accept=lambda item_id: item_id % 2 == 1)
    assert len(only_odd) == 10 and all(hit.item_id % 2 == 1 for hit in only_odd)


def test_add_replaces_and_remove_deletes():
    vectors = _unit_vectors(100)
    index = VectorIndex.build(np.arange(100), vectors, exact_max_items=1000)
    index.add(np.array([5]), vectors[[7]])
    assert len(index) == 100
    assert index.search(vectors[7], 2)[0].item_id in {5, 7}
    index.remove(np.array([5, 7]))
    assert len(index) == 98
    assert {hit.item_id for hit in index.search(vectors[7], 5)}.isdisjoint({5, 7})


def test_approximate_scores_are_exact_after_reranking_and_removal_hides_items():
    """The 4-bit codes only pick candidates: returned scores are the float16 rows' inner
    products, with ids far from positions (rows are addressed by id; gaps stay empty)."""
    vectors = _unit_vectors(3000, seed=5)
    ids = np.arange(3000, dtype=np.int64) * 5 + 1000
    index = VectorIndex.build(ids, vectors, exact_max_items=100)
    assert index.kind == IVF and len(index) == 3000
    query = vectors[42]
    hits = index.search(query, 10)
    assert hits[0].item_id == ids[42]
    for hit in hits:
        expected = float(vectors[(hit.item_id - 1000) // 5] @ query)
        assert hit.score == pytest.approx(expected, abs=2e-3)
    assert index.remove(np.array([ids[42], ids[43]])) == 2
    assert len(index) == 2998
    assert not {int(ids[42]), int(ids[43])} & {h.item_id for h in index.search(query, 50)}
    with pytest.raises(ValueError):  # rows are addressed by id: only new, ascending ids
        index.add(np.array([ids[42]]), vectors[[42]])


def test_an_index_published_with_rabitq_lists_still_loads_and_serves(tmp_path):
    """Files of the previous layout (1-bit RaBitQ lists, x40 re-ranking) serve until the next
    reindex rebuilds them, with the query precision and factor they were calibrated with."""
    vectors = _unit_vectors(3000, seed=6)
    ids = np.arange(3000, dtype=np.int64)
    quantizer = faiss.IndexFlatIP(32)
    lists = faiss.IndexIVFRaBitQ(quantizer, 32, 20, faiss.METRIC_INNER_PRODUCT)
    lists.train(vectors)
    lists.add_with_ids(vectors, ids)
    lists.nprobe = 20
    refine = faiss.IndexScalarQuantizer(
        32, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    refine.train(vectors)
    refine.add(vectors)
    old = faiss.IndexRefine(lists, refine)
    old.k_factor = 40
    path = tmp_path / "rabitq.faiss"
    faiss.write_index(old, str(path))
    loaded = VectorIndex.load(path, mmap=True)
    assert (loaded.kind, loaded.nprobe, loaded.refine_factor, len(loaded)) == (IVF, 20, 40, 3000)
    for row in (0, 1234):
        exact = np.argsort(-(vectors @ vectors[row]))[1:6].tolist()  # itself excluded
        found = [hit.item_id for hit in loaded.search(vectors[row], 5, exclude={row})]
        assert found == exact


def test_save_load_round_trip_and_checksum(tmp_path):
    vectors = _unit_vectors(500)
    index = VectorIndex.build(np.arange(500), vectors, exact_max_items=100)
    path = tmp_path / "index.faiss"
    checksum = index.save(path)
    loaded = VectorIndex.load(path, checksum)
    assert loaded.kind == IVF and len(loaded) == 500
    assert [h.item_id for h in loaded.search(vectors[3], 5)] == [
        h.item_id for h in index.search(vectors[3], 5)
    ]
    mapped = VectorIndex.load(path, checksum, mmap=True)
    assert len(mapped) == 500
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(IndexCorrupt):
        VectorIndex.load(path, checksum)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(("exact_max_items", "kind"), [(10**9, FLAT), (100, IVF)])
def test_a_memory_mapped_index_is_mapped_not_copied(tmp_path, exact_max_items, kind):
    """Servers share one copy of the index only if its vectors stay file-backed pages."""
    vectors = _unit_vectors(2000)
    index = VectorIndex.build(np.arange(2000), vectors, exact_max_items=exact_max_items)
    path = tmp_path / f"{kind}.faiss"
    checksum = index.save(path)
    mapped = VectorIndex.load(path, checksum, mmap=True)
    assert mapped.kind == kind
    assert str(path) in Path("/proc/self/maps").read_text()
    for row in (0, 7, 1999):
        assert [h.item_id for h in mapped.search(vectors[row], 5, exclude={row})] == [
            h.item_id for h in index.search(vectors[row], 5, exclude={row})
        ]


def _users(vectors: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[set[int]]]:
    """User-like queries: the mean of 5-20 items near one another, those items excluded."""
    rng = np.random.default_rng(seed)
    queries, excludes = [], []
    for anchor in rng.integers(0, len(vectors), n):
        near = np.argsort(-(vectors @ vectors[anchor]))[:60]
        seen = rng.choice(near, int(rng.integers(5, 21)), replace=False)
        query = vectors[seen].mean(axis=0)
        queries.append(query / np.linalg.norm(query))
        excludes.append({int(i) for i in seen})
    return np.array(queries, dtype=np.float32), excludes


def _served_recall(index: VectorIndex, vectors, queries, excludes) -> float:
    recalls = []
    for query, seen in zip(queries, excludes, strict=True):
        scores = vectors @ query
        scores[list(seen)] = -np.inf
        truth = set(np.argsort(-scores)[:10].tolist())
        found = {hit.item_id for hit in index.search(query, 10, exclude=seen)}
        recalls.append(len(truth & found) / 10)
    return float(np.mean(recalls))


def test_nprobe_is_calibrated_on_users_queries_with_their_exclusions():
    """Synthetic calibration queries are easier than users' (here it leaves these users at
    ~0.95); calibrated on the users themselves, the index reaches the target for them, and
    other users of the same kind come close."""
    vectors = _unit_vectors(20_000, seed=3)
    ids = np.arange(20_000)  # ids equal row positions here
    queries, excludes = _users(vectors, 100, seed=4)
    index = VectorIndex.build(
        ids, vectors, exact_max_items=1000, calibration=CalibrationSample(queries, excludes)
    )
    assert _served_recall(index, vectors, queries, excludes) >= TARGET_RECALL
    fresh, fresh_excludes = _users(vectors, 100, seed=5)
    assert _served_recall(index, vectors, fresh, fresh_excludes) >= 0.95


def _calibrated(vectors: np.ndarray, ids: np.ndarray, **kwargs) -> VectorIndex:
    queries, excludes = _users(vectors, 60, seed=7)
    return VectorIndex.build(
        ids,
        vectors,
        exact_max_items=1000,
        calibration=CalibrationSample(queries, excludes),
        **kwargs,
    )


def _centroids(index: VectorIndex) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index._index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_a_rebuild_keeps_centroids_that_still_fit(caplog):
    caplog.set_level("INFO", logger="indexer.vector_index")
    vectors = _unit_vectors(12_000, seed=8)
    ids = np.arange(12_000)
    first = _calibrated(vectors[:10_000], ids[:10_000])
    # 20% more items of the same kind: same lists and codebook, no k-means, no codebook
    # fitting, and the target still reached.
    second = _calibrated(vectors, ids, previous=first)
    np.testing.assert_array_equal(_centroids(second), _centroids(first))
    np.testing.assert_array_equal(_codebook(second), _codebook(first))
    queries, excludes = _users(vectors, 60, seed=7)
    assert _served_recall(second, vectors, queries, excludes) >= TARGET_RECALL
    # Items of another kind entirely: the old lists would pile them into few lists.
    other = _unit_vectors(12_000, seed=9)
    third = _calibrated(other, ids, previous=second)
    assert not np.array_equal(_centroids(third), _centroids(second))
    assert not np.array_equal(_codebook(third), _codebook(second))
    assert "retrained" in caplog.text


def _codebook(index: VectorIndex) -> np.ndarray:
    codebook = index.codebook()
    assert codebook is not None
    return faiss.vector_to_array(codebook.centroids)


def test_centroids_are_not_reused_across_sizes_or_dimensions():
    small = _calibrated(_unit_vectors(4_000, seed=10), np.arange(4_000))
    assert small.reusable_centroids(4_400, 32) is not None
    assert (
        small.reusable_centroids(40_000, 32) is None
    )  # a fresh build would choose many more lists
    assert small.reusable_centroids(4_000, 64) is None


def test_bulk_add_matches_faiss_own_assignment():
    vectors = _unit_vectors(10_000, seed=11)
    ids = np.arange(10_000) * 2 + 1
    built = VectorIndex.build(ids, vectors, exact_max_items=1000)  # float32 assignment
    ivf = faiss.extract_index_ivf(built._index)
    reference = faiss.IndexIVFScalarQuantizer(
        ivf.quantizer, 32, ivf.nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    reference.train(vectors[:100])
    reference.add_with_ids(vectors, ids)  # FAISS's own
    for row in (0, 17, 4242):
        _, expected = reference.search(
            vectors[row : row + 1], 10, params=faiss.SearchParametersIVF(nprobe=built.nprobe)
        )
        assert [hit.item_id for hit in built.search(vectors[row], 10)] == expected[0].tolist()


def test_the_refine_factor_is_calibrated_and_saved_with_the_index(tmp_path):
    vectors = _unit_vectors(20_000)
    ids = np.arange(20_000)
    queries, excludes = _users(vectors, 100, seed=4)
    index = VectorIndex.build(
        ids, vectors, exact_max_items=1000, calibration=CalibrationSample(queries, excludes)
    )
    # These clustered 32-d vectors are full of near-ties: re-ranking 20 candidates a hit
    # reaches recall@10 0.63 even with every list probed, so calibration must fetch more.
    assert index.refine_factor > REFINE_FACTORS[1]
    assert _served_recall(index, vectors, queries, excludes) >= TARGET_RECALL
    assert index.calibrated_recall is not None and index.calibrated_recall >= TARGET_RECALL
    assert f"nprobe={index.nprobe}/" in index.search_settings
    assert f"refine=x{index.refine_factor}" in index.search_settings
    path = tmp_path / "calibrated.faiss"
    loaded = VectorIndex.load(path, index.save(path), mmap=True)
    assert (loaded.nprobe, loaded.refine_factor) == (index.nprobe, index.refine_factor)


def test_many_lists_are_found_through_fast_scan_codes_of_the_centroids():
    """From `COARSE_FAST_SCAN_MIN_LISTS` on, the coarse search re-ranks fast-scan candidates by
    the float16 centroids: it must probe the lists a full scan of them would."""
    centroids = _unit_vectors(COARSE_FAST_SCAN_MIN_LISTS + 100, seed=13)
    coarse = _coarse_quantizer(centroids)
    assert isinstance(faiss.downcast_index(coarse), faiss.IndexRefine)
    full = faiss.IndexFlatIP(centroids.shape[1])
    full.add(centroids)
    queries = _users(centroids, 100, seed=14)[0]
    _, expected = full.search(queries, 64)
    found = np.vstack([coarse.search(query.reshape(1, -1), 64)[1] for query in queries])
    same = np.mean([len(set(a) & set(b)) / 64 for a, b in zip(expected, found, strict=True)])
    assert same >= 0.99
    # Fewer lists: all float16 centroids, scanned in full.
    assert isinstance(_coarse_quantizer(centroids[:500]), faiss.IndexScalarQuantizer)


def test_calibration_finds_the_same_nprobe_from_any_start():
    vectors = _unit_vectors(20_000, seed=12)
    ids = np.arange(20_000)
    index = _calibrated(vectors, ids)
    chosen = index.nprobe
    sample = CalibrationSample(*_users(vectors, 60, seed=7))
    for start in (0, 4, chosen, 4 * chosen, 10**6):
        index.calibrate(ids, vectors, calibration=sample, start=start)
        assert index.nprobe == chosen

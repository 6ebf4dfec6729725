"""The kNN reference after its speed-up (issue 15): the same distances as the definition, and a
conn's bits independent of the block it is scored in (watch's small batches vs score's input)."""
from __future__ import annotations

import numpy as np
import pytest

from zeekml.scoring.detectors.reference import (CHUNK, INDEX_ALIGN, KnnIndex, KnnReference,
                                                distinct_rows, knn_blocks, knn_distance, unit_rows)


def brute_force(e: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """The definition in float64: mean of the ``k`` smallest cosine distances."""
    d = 1.0 - e.astype(np.float64) @ ref.astype(np.float64).T
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def test_knn_distance_is_the_mean_of_the_k_smallest_cosine_distances():
    rng = np.random.default_rng(1)
    ref = unit_rows(rng.standard_normal((1000, 64)))
    e = unit_rows(rng.standard_normal((CHUNK * 2 + 37, 64)))
    got = knn_distance(e, ref, 5)
    # float32 products: within a few float32 ulps of the float64 definition
    np.testing.assert_allclose(got, brute_force(e, ref, 5), rtol=0, atol=1e-6)
    # k beyond the reference: every row of it
    np.testing.assert_allclose(knn_distance(e[:3], ref[:4], 9), brute_force(e[:3], ref[:4], 4), atol=1e-6)


def test_every_row_scored_alone_gives_the_bits_of_the_whole_input():
    """Each of the 293 rows alone, and the input shifted by 101 rows (so every row sits at
    another position of its block, the ragged last rows of a GEMM included), equal the whole."""
    rng = np.random.default_rng(2)
    ref = KnnReference(k=5).fit(rng.standard_normal((700, 48)).astype(np.float32))
    e = rng.standard_normal((CHUNK + 37, 48)).astype(np.float32)
    whole = ref.score(e)
    alone = np.array([ref.score(e[i:i + 1])[0] for i in range(len(e))])
    assert np.array_equal(alone, whole)
    shifted = ref.score(np.concatenate([e[-101:], e[:-101]]))
    assert np.array_equal(np.concatenate([shifted[101:], shifted[:101]]), whole)


def test_a_reference_row_that_is_not_finite_is_nobodys_neighbour():
    rng = np.random.default_rng(3)
    ref = unit_rows(rng.standard_normal((50, 16)))
    e = unit_rows(rng.standard_normal((20, 16)))
    bad = ref.copy()
    bad[7] = np.nan
    np.testing.assert_array_equal(knn_distance(e, bad, 3), knn_distance(e, np.delete(ref, 7, axis=0), 3))
    assert np.isnan(knn_distance(e, np.full((2, 16), np.nan, np.float32), 3)).all()


def test_fit_and_score_a_slab_at_a_time_give_the_same_bits(monkeypatch):
    """``KnnReference`` scales only the drawn reference rows and scores a large input a slab at
    a time (bounded memory on a 300k-conn baseline): the same bits as all at once."""
    from zeekml.scoring.detectors import reference as ref_mod

    rng = np.random.default_rng(3)
    base, x = rng.normal(size=(900, 16)), rng.normal(size=(1000, 16)).astype(np.float32)
    whole = ref_mod.KnnReference(max_reference=300, seed=1).fit(base)
    want = ref_mod.knn_distance(ref_mod.unit_rows(x), whole.ref, whole.k)
    np.testing.assert_array_equal(whole.ref, ref_mod.unit_rows(base)[whole.rows])
    monkeypatch.setattr(ref_mod, "EMBED_PIECE", 77)
    sliced = ref_mod.KnnReference(max_reference=300, seed=1).fit(base)
    np.testing.assert_array_equal(sliced.ref, whole.ref)
    np.testing.assert_array_equal(sliced.score(x), want)
    np.testing.assert_array_equal(ref_mod._score_at(sliced, x, np.arange(999, -1, -3)),
                                  want[np.arange(999, -1, -3)])


def test_distinct_rows_groups_equal_bytes_only():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((7, 5)).astype(np.float32)
    pick = rng.integers(0, 7, size=300)
    x = base[pick]
    first, inverse = distinct_rows(x)
    assert len(first) == len(np.unique(pick))
    assert np.array_equal(x[first[inverse]], x)
    # 0.0 and -0.0: other bytes, other groups (never a wrong group, only fewer saved)
    z = np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    f, inv = distinct_rows(z)
    assert len(f) == 2 and inv[0] == inv[2] != inv[1]
    assert [len(a) for a in distinct_rows(x[:1])] == [1, 1]
    assert [len(a) for a in distinct_rows(x[:0])] == [0, 0]


def test_distinct_rows_keeps_rows_apart_whose_keys_collide(monkeypatch):
    """Keys forced equal (every row collides): rows that differ from their group's first row
    stay apart, so no row takes another's score."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    x[10] = x[0]
    real_unique = np.unique

    def one_key(a, **kw):
        if a.dtype == np.uint64 and a.ndim == 1:
            a = np.zeros_like(a)
        return real_unique(a, **kw)

    monkeypatch.setattr(np, "unique", one_key)
    first, inverse = distinct_rows(x)
    assert np.array_equal(x[first[inverse]], x)
    assert len(first) == 39 and inverse[0] == inverse[10]


def test_repeated_queries_and_reference_rows_give_the_bits_of_the_plain_search():
    """Queries scored once per distinct row and a reference merged into distinct rows with
    counts: the distances of searching every row (the search before merging; the same bits
    here, though BLAS may sum a product of another width in another order), ties and a ``k``
    larger than the distinct rows included."""
    rng = np.random.default_rng(6)
    distinct = unit_rows(rng.standard_normal((40, 32)))
    ref = distinct[rng.integers(0, 40, size=900)]           # 40 distinct rows, heavily repeated
    index = KnnIndex(ref)
    assert len(index) == 900 and index.counts.sum() == 900 and index.counts[:40].min() >= 1
    assert len(index.rows) < 900 and len(index.rows) % INDEX_ALIGN == 0
    e = unit_rows(rng.standard_normal((CHUNK + 50, 32)))
    e = np.concatenate([e, e[:100], distinct[:7]])          # repeated queries, exact ties
    for k in (1, 5, 60):
        plain = knn_blocks(e, _unmerged(ref), k)
        got = knn_distance(e, ref, k)
        assert np.array_equal(got, plain), k
        np.testing.assert_allclose(got, brute_force(e, ref, k), rtol=0, atol=1e-6)


def _unmerged(ref: np.ndarray) -> KnnIndex:
    """An index that searches every row of ``ref`` as it is (the search before merging)."""
    index = KnnIndex(ref[:1])
    index.rows = np.ascontiguousarray(ref, dtype=np.float32)
    index.counts = np.ones(len(ref), dtype=np.int64)
    index.size = len(ref)
    index.pads = 0
    index.searched = len(ref)
    return index


def test_a_varied_reference_is_searched_as_it_is():
    rng = np.random.default_rng(7)
    ref = unit_rows(rng.standard_normal((300, 16)))
    ref[1] = ref[0]                                         # one repeat: not worth merging
    index = KnnIndex(ref)
    assert np.array_equal(index.rows[:300], ref) and (index.counts[:300] == 1).all()
    # padded to an aligned width with zero rows that count for nothing
    assert len(index.rows) == 304 and not index.rows[300:].any() and not index.counts[300:].any()
    assert index.searched == 300


@pytest.mark.parametrize("m", [5, 37, 300, 301])
def test_padding_the_reference_moves_no_distance(m):
    """Zero pad rows are nobody's neighbour, even where every real similarity is negative (a
    zero row's 0 would beat them): the distances are those of the real rows alone."""
    rng = np.random.default_rng(m)
    ref = unit_rows(np.abs(rng.standard_normal((m, 8))))    # all in the positive orthant
    e = unit_rows(rng.standard_normal((CHUNK + 9, 8)))
    e[3] = unit_rows(-np.abs(rng.standard_normal((1, 8))))  # every real similarity negative
    index = KnnIndex(ref)
    assert index.pads == len(index.rows) - m and index.searched == m
    assert index.pads > 0 or m % INDEX_ALIGN == 0
    for k in (1, 5, m):
        got = knn_distance(e, index, k)
        # BLAS may sum a product of another width in another order: last float32 bits only
        np.testing.assert_allclose(got, knn_blocks(e, _unmerged(ref), k), rtol=0, atol=1e-6)
        np.testing.assert_allclose(got, brute_force(e, ref, k), rtol=0, atol=1e-6)
        assert np.array_equal(knn_distance(e[3:4], index, k), got[3:4])


def test_knn_reference_scores_repeats_once_with_the_bits_of_each_alone():
    """``KnnReference.score`` scores each distinct row once over the whole input (repeats span
    its slabs): every row's bits equal that row scored alone."""
    from zeekml.scoring.detectors import reference as ref_mod

    rng = np.random.default_rng(8)
    base = rng.standard_normal((60, 24)).astype(np.float32)
    kref = KnnReference(k=4).fit(base[rng.integers(0, 60, size=500)])
    x = rng.standard_normal((30, 24)).astype(np.float32)[rng.integers(0, 30, size=400)]
    whole = kref.score(x)
    alone = np.array([kref.score(x[i:i + 1])[0] for i in range(0, 400, 7)])
    assert np.array_equal(whole[::7], alone)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ref_mod, "EMBED_PIECE", 13)
        assert np.array_equal(kref.score(x), whole)

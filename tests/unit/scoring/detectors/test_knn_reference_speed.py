"""The kNN reference after its speed-up (issue 15): the same distances as the definition, and a
conn's bits independent of the block it is scored in (watch's small batches vs score's input)."""
from __future__ import annotations

import numpy as np

from zeekml.scoring.detectors.reference import CHUNK, KnnReference, knn_distance, unit_rows


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

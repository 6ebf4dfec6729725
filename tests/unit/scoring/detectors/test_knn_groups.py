"""``nearest_in_block``: the kNN search's top-k over candidate groups (issue 15) gives the values
of a top-k over every column, and so the distances of the plain search bit for bit, on the
shipped autoencoder's real embeddings of the IoT-23 example as on hand-made ties and NaN."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zeekml.scoring.detectors import reference as ref_mod
from zeekml.scoring.detectors.reference import (CHUNK, GROUP, KnnIndex, KnnReference, distinct_rows,
                                                knn_blocks, nearest_in_block, unit_rows)

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[4]
MAE_BASE = ROOT / "models" / "mae-base"
IOT23 = ROOT / "examples" / "iot23" / "conn.log.labeled"


def plain_blocks(e: np.ndarray, index: KnnIndex, k: int) -> np.ndarray:
    """``knn_blocks`` as it was before the groups: a ``topk`` over every column of each block."""
    out = np.empty(len(e))
    k = max(1, min(k, index.size))
    top, real = min(k, index.searched), index.searched
    r = torch.from_numpy(index.rows).T
    counts = torch.from_numpy(index.counts)
    slot = torch.arange(k).view(1, k, 1)
    for a in range(0, len(e), CHUNK):
        n = len(e[a:a + CHUNK])
        x = torch.zeros(CHUNK, e.shape[1])
        x[:n] = torch.from_numpy(np.ascontiguousarray(e[a:a + CHUNK], dtype=np.float32))
        sim = torch.mm(x, r)
        sim[:, real:] = -torch.inf
        near = sim[:n].topk(top, dim=1)
        vals = near.values
        if (index.counts[:real] > 1).any():
            ends = counts[near.indices].cumsum(dim=1)
            vals = vals.gather(1, (ends.unsqueeze(1) <= slot).sum(dim=2))
        out[a:a + n] = (1.0 - vals).double().mean(dim=1).numpy()
    return out


def assert_same_top(sim: torch.Tensor, top: int) -> None:
    """Values bit for bit those of ``topk``; every column named holds its value, each column once;
    where no two of a row's ``top + 1`` largest values tie, the very columns ``topk`` names."""
    vals, cols = nearest_in_block(sim, top)
    want = sim.topk(top, dim=1)
    assert torch.equal(vals, want.values)
    assert torch.equal(sim.gather(1, cols), vals)
    assert all(len(set(c)) == top for c in cols.tolist())
    untied = torch.tensor([len(set(v)) == len(v) for v in sim.topk(top + 1, dim=1).values.tolist()])
    assert untied.sum() >= len(sim) // 4
    assert torch.equal(cols[untied], want.indices[untied])


@pytest.fixture(params=["groups", "plain top-k"])
def selection(request, monkeypatch) -> str:
    """``knn_blocks`` through ``nearest_in_block``'s groups and through the plain top-k (which
    ``groups_pay`` picks by torch's threads), whatever threads this run has."""
    monkeypatch.setattr(ref_mod, "groups_pay", lambda: request.param == "groups")
    return request.param


@pytest.fixture(scope="module")
def real_embeddings() -> np.ndarray:
    """The shipped autoencoder's 64-d embeddings of the IoT-23 example's ~2,000 conns."""
    if not (MAE_BASE / "config.json").exists():
        pytest.skip("models/mae-base not shipped")
    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreSummary, load_conns
    from zeekml.scoring.detectors.mae import LoadedMAE

    table = load_conns([str(IOT23)], Quarantine(), ScoreSummary())
    loaded = LoadedMAE.from_dir(str(MAE_BASE))
    return loaded.run(loaded.modalities(table), want=("embedding",))["embedding"]


@pytest.mark.parametrize("merge", [True, False])
def test_real_embeddings_give_the_distances_of_the_plain_search(real_embeddings, merge, selection):
    """A reference of the first 800 conns, 200 of them twice (merged into distinct rows with
    counts, and searched as it is: exact ties), and the rest scored, 100 reference conns among
    them: the same bits as a top-k over every column, for several k."""
    emb = real_embeddings
    assert len(emb) > 1500
    ref = unit_rows(np.concatenate([emb[:800], emb[:200]]))
    index = KnnIndex(ref)
    assert index.searched == (800 if merge else 1000) or not merge
    if not merge:
        index = KnnIndex(ref[:1])
        pad = -len(ref) % 16
        index.rows = np.concatenate([ref, np.zeros((pad, ref.shape[1]), np.float32)])
        index.counts = np.concatenate([np.ones(len(ref), np.int64), np.zeros(pad, np.int64)])
        index.size = index.searched = len(ref)
        index.pads = pad
    # the groups are used (wide enough), and the embeddings repeat: ties are real here
    assert len(index.rows) // GROUP >= ref_mod.MIN_GROUPS_PER_NEIGHBOUR * 5
    q = unit_rows(np.concatenate([emb[800:], emb[100:200]]))
    for k in (1, 5, 9):
        assert np.array_equal(knn_blocks(q, index, k), plain_blocks(q, index, k)), k
    sim = torch.mm(torch.from_numpy(q[:CHUNK]), torch.from_numpy(index.rows).T)
    sim[:, index.searched:] = -torch.inf
    for top in (1, 5, 9):
        assert_same_top(sim, top)


def test_real_embeddings_score_as_before_through_knn_reference(real_embeddings, selection):
    kref = KnnReference(k=5).fit(real_embeddings[:900])
    q = real_embeddings[900:]
    first, inverse = distinct_rows(q)
    want = plain_blocks(unit_rows(q[first]), kref._index, 5)[inverse]
    assert np.array_equal(kref.score(q), want)


def test_ties_nan_and_pads_give_the_values_of_topk():
    rng = np.random.default_rng(11)
    n, w = 64, 40 * GROUP
    sim = torch.from_numpy(rng.integers(-3, 4, size=(n, w)).astype(np.float32) / 4)   # many ties
    sim[0] = 0.5                                      # every column tied
    sim[1, 7] = torch.nan                             # a NaN is the largest, as topk has it
    sim[2] = torch.nan
    sim[3, w - 24:] = -torch.inf                      # pads
    sim[4, :] = -torch.inf
    sim[4, 3] = 0.25
    for top in (1, 2, 5, 10):
        vals, cols = nearest_in_block(sim, top)
        want = sim.topk(top, dim=1).values
        assert torch.equal(vals.isnan(), want.isnan())
        assert torch.equal(torch.nan_to_num(vals), torch.nan_to_num(want))
        assert all(len(set(c)) == top for c in cols.tolist())
    assert cols[1, 0].item() == 7 and torch.isnan(vals[2]).all()


def test_a_narrow_reference_takes_the_plain_topk():
    """Fewer than ``MIN_GROUPS_PER_NEIGHBOUR`` groups per neighbour: the plain ``topk`` (the same
    columns, ties included)."""
    sim = torch.from_numpy(np.random.default_rng(12).standard_normal((8, 2 * GROUP)).astype(np.float32))
    vals, cols = nearest_in_block(sim, 5)
    want = sim.topk(5, dim=1)
    assert torch.equal(vals, want.values) and torch.equal(cols, want.indices)


def test_the_groups_are_taken_with_one_torch_thread_only(monkeypatch):
    calls = []
    inner = ref_mod.nearest_in_block
    monkeypatch.setattr(ref_mod, "nearest_in_block", lambda sim, top: calls.append(top) or inner(sim, top))
    rng = np.random.default_rng(13)
    index = KnnIndex(unit_rows(rng.standard_normal((400, 16))))
    e = unit_rows(rng.standard_normal((300, 16)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not ref_mod.groups_pay()
        plain = knn_blocks(e, index, 5)
        assert calls == []
        torch.set_num_threads(1)
        assert ref_mod.groups_pay()
        # (the products' last bits may move with the thread count on some CPUs)
        np.testing.assert_allclose(knn_blocks(e, index, 5), plain, rtol=0, atol=1e-6)
        assert calls == [5, 5]
    finally:
        torch.set_num_threads(threads)

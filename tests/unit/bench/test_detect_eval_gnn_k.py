"""bench/detect_eval.py's ``--gnn-k`` and ``--compare-detector``: the gnn detector rebuilt with
another ``k`` scores by that many neighbours (checked against a brute-force kNN on the shipped
model's embeddings of a real log), and the per-detector comparison of two sets of runs on
hand-built ``detection.json`` files. The benchmark itself (which needs ../shared/data) is run by
hand."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from bench_script import load_bench

from zeekml._core.errors import ZeekmlError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODEL = os.path.join(ROOT, "models", "gnn-base")
# 400 real conns of IoT-23 CTU-34-1 (tests/data/README.md)
LOG = os.path.join(ROOT, "tests", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


@pytest.fixture(scope="module")
def de():
    return load_bench("detect_eval")


def brute_knn(e: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each row of ``e`` to its ``k`` nearest rows of ``ref``."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)  # noqa: E731
    d = 1.0 - unit(e.astype(np.float64)) @ unit(ref.astype(np.float64)).T
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def test_with_gnn_k_rebuilds_the_gnn_alone_and_scores_by_k_neighbours(de):
    pytest.importorskip("torch")
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        pytest.skip("models/ not shipped")
    from zeekml.scoring.detectors.gnn import embed_rows
    from zeekml.scoring.detectors.iforest import IsolationForestDetector
    from zeekml.scoring.registry import get_kind
    from zeekml.train.data import load_conns

    gnn = get_kind("gnn").detector(MODEL, device="cpu")
    other = IsolationForestDetector(seed=0)
    assert de.with_gnn_k([gnn, other], None) == [gnn, other]
    new = de.with_gnn_k([gnn, other], 12)
    assert new[1] is other and new[0] is not gnn
    assert new[0].k == 12 and new[0].reference.k == 12 and new[0].bundle is gnn.bundle
    with pytest.raises(ZeekmlError, match="no gnn detector"):
        de.with_gnn_k([other], 12)

    table = load_conns(LOG)
    base, rest = table.slice(0, 150), table.slice(150)
    e_base, e_rest = embed_rows(gnn.bundle, base), embed_rows(gnn.bundle, rest)
    got_k = new[0].fit(base).score(rest)
    got_5 = gnn.fit(base).score(rest)
    np.testing.assert_allclose(got_k, brute_knn(e_rest, e_base, 12), atol=1e-5)
    np.testing.assert_allclose(got_5, brute_knn(e_rest, e_base, gnn.k), atol=1e-5)
    assert not np.allclose(got_k, got_5, atol=1e-5)      # k reaches the score


def run_json(aurocs: dict[str, dict[str, float]], precision: float, recall: float) -> dict:
    """A ``detection.json`` holding what ``compare_detector`` reads: per setting and capture the
    gnn's AUROC, and the pooled combined alerts."""
    caps = {c: {s: {"detectors": {"gnn": {"auroc": aurocs[s][c]}}} for s in aurocs} for c in aurocs["deployment"]}
    pooled = {f"{s}/combined": {"precision": precision, "recall": recall} for s in aurocs}
    return {"captures": caps, "pooled": pooled}


def write_runs(root, runs: dict[int, dict]) -> str:
    for seed, r in runs.items():
        d = root / f"s{seed}"
        d.mkdir(parents=True)
        (d / "detection.json").write_text(json.dumps(r))
    return str(root)


def test_compare_detector_gives_mean_and_range_over_the_seeds_found_in_both(de, tmp_path):
    def aurocs(a, b):
        return {"deployment": {"ctu-8-1": a, "strato-008": b}, "archive": {"ctu-8-1": 0.5, "strato-008": 0.25}}

    before = write_runs(tmp_path / "before", {0: run_json(aurocs(0.90, 0.94), 1.0, 0.8),
                                              1: run_json(aurocs(0.96, 0.96), 0.9, 1.0),
                                              7: run_json(aurocs(0.10, 0.10), 0.0, 0.0)})   # not in after
    after = write_runs(tmp_path / "after", {0: run_json(aurocs(0.99, 0.95), 1.0, 0.9),
                                            1: run_json(aurocs(0.97, 0.97), 0.8, 1.0)})
    lines = de.compare_detector(before, after, "gnn").splitlines()
    assert "seeds 0, 1" in lines[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in lines if line.startswith("| deployment") or line.startswith("| archive")}
    assert rows[("deployment", "before")] == ["0.930 (0.900-0.960)", "0.950 (0.940-0.960)", "0.950 / 0.900"]
    assert rows[("deployment", "after")] == ["0.980 (0.970-0.990)", "0.960 (0.950-0.970)", "0.900 / 0.950"]
    assert rows[("archive", "after")] == ["0.500 (0.500-0.500)", "0.250 (0.250-0.250)", "0.900 / 0.950"]
    with pytest.raises(ZeekmlError, match="no seed found in both"):
        de.compare_detector(before, str(tmp_path / "before" / "s0"), "gnn")


def test_features_beside_standardises_by_the_baseline_and_weighs_the_features(de):
    from zeekml.scoring.detectors.reference import KnnReference

    rng = np.random.default_rng(0)
    e = rng.normal(size=(40, 4)).astype(np.float32) + 3.0
    x = np.column_stack([rng.normal(2.0, 5.0, 40), np.full(40, 7.0)]).astype(np.float32)  # 2nd: constant
    ref = de.FeaturesBeside(KnnReference(k=3), hidden=4, weight=0.5).fit(np.hstack([e, x]))
    sd = x.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(ref.mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ref.std, sd + de.FEATURE_FLOOR * sd.mean(), rtol=1e-6)
    z = ref._t(np.hstack([e, x]))[:, 4:].astype(np.float64)
    np.testing.assert_allclose(z[:, 1], 0.0)                   # the constant column: no division by 0
    # the features hold weight**2 of the embedding's mean square norm on the baseline
    np.testing.assert_allclose((z ** 2).sum(1).mean(), 0.25 * (e.astype(np.float64) ** 2).sum(1).mean(), rtol=1e-5)
    q = np.hstack([rng.normal(size=(6, 4)) + 3.0, rng.normal(2.0, 5.0, (6, 2))]).astype(np.float32)
    want = brute_knn(ref._t(q), ref._t(np.hstack([e, x])), 3)
    np.testing.assert_allclose(ref.score(q), want, atol=1e-5)
    # a conn off the baseline in a feature alone (its embedding a baseline conn's) scores higher
    off = np.hstack([e[:1], x[:1] + np.array([[0.0, 1.0]], np.float32)])
    assert ref.score(off)[0] > ref.score(np.hstack([e[:1], x[:1]]))[0] + 0.01


def test_gnn_with_features_scores_a_few_rows_as_among_the_whole_table(de):
    pytest.importorskip("torch")
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        pytest.skip("models/ not shipped")
    from zeekml.scoring.registry import get_kind
    from zeekml.train.data import load_conns

    table = load_conns(LOG)
    det = de.gnn_variant(get_kind("gnn").detector(MODEL, device="cpu"), 10, 0.05)
    det.fit(table.slice(0, 150))
    full = det.score(table)
    rows = np.array([3, 160, 161, 399])
    np.testing.assert_allclose(det.score_rows(table, rows), full[rows], atol=1e-6)
    assert det.k == 10 and det.reference.inner.k == 10

"""Explanations of the learned detectors a person can use: the nearest baseline conns (kNN
references) and the least expected tokens of a host's history (token models)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from zeekml.scoring.detectors.reference import KnnReference, baseline_nearest_q99, nearest_rows
from zeekml.scoring.explain import (conn_label, nearest_text, odds, reference_identity,
                                    surprise_text)


def test_nearest_returns_original_baseline_rows_nearest_first():
    # 10 baseline rows on the unit circle at known angles; only 4 kept (a draw)
    ang = np.sort(np.random.default_rng(7).uniform(0, np.pi / 2, 10))   # no ties
    base = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    ref = KnnReference(k=2, max_reference=4, seed=3).fit(base)
    assert len(ref.rows) == 4 and set(ref.rows) <= set(range(10))
    np.testing.assert_allclose(ref.ref, base[ref.rows], atol=1e-6)
    dist, rows = ref.nearest(base, k=2)
    assert dist.shape == rows.shape == (10, 2)
    kept = set(ref.rows.tolist())
    for i in range(10):
        # the true two nearest kept rows, by angle
        want = sorted(kept, key=lambda j: (abs(ang[j] - ang[i]), j))[:2]
        assert set(rows[i].tolist()) == set(want)
        assert dist[i, 0] <= dist[i, 1]
        np.testing.assert_allclose(dist[i, 0], 1 - np.cos(ang[i] - ang[rows[i, 0]]), atol=1e-5)
    # a kept row is its own nearest, at distance 0
    r0 = int(ref.rows[0])
    assert rows[r0, 0] == r0 and dist[r0, 0] == pytest.approx(0.0, abs=1e-6)


def test_nearest_before_fit_is_an_error():
    from zeekml._core.errors import ModelError
    with pytest.raises(ModelError, match="before fit"):
        KnnReference().nearest(np.ones((1, 2)), 1)


def test_baseline_nearest_q99_leaves_each_row_out():
    # two tight pairs far apart: each row's nearest other row is its twin
    e = np.array([[1, 0], [0.995, 0.0998], [0, 1], [0.0998, 0.995]], np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    q = baseline_nearest_q99(e)
    assert q == pytest.approx(1 - float(e[0] @ e[1]), abs=1e-4)
    d, pos = nearest_rows(e, e, 2)
    assert pos[:, 0].tolist() == [0, 1, 2, 3]
    assert pos[:, 1].tolist() == [1, 0, 3, 2]


def _identity() -> pa.Table:
    t = pa.table({"uid": ["Ca", "Cb"], "ts": [1.0, 2.0], "id.orig_h": ["192.168.1.5", "10.0.0.2"],
                  "id.resp_h": ["8.8.8.8", "10.0.0.1"], "id.resp_p": [53, 8],
                  "proto": ["udp", "icmp"], "service": ["dns", None], "extra": [1, 2]})
    return reference_identity(t, np.array([1, 0]))


def test_reference_identity_keeps_the_named_columns_of_the_rows():
    ident = _identity()
    assert ident.column_names == ["uid", "ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto",
                                  "service"]
    assert ident.column("uid").to_pylist() == ["Cb", "Ca"]


def test_conn_label():
    a, b = _identity().to_pylist()
    assert conn_label(b) == "192.168.1.5 -> 8.8.8.8:53/udp dns"
    assert conn_label(a) == "10.0.0.2 -> 10.0.0.1 icmp"


def test_nearest_text_near_and_far():
    ident = _identity()
    near, far = nearest_text(ident, np.array([[0.41, 0.5], [0.62, 0.7]]),
                             np.array([[1, 0], [1, 0]]), far=0.45, n_reference=4000)
    assert near == ("nearest baseline conns (baseline p99 0.45): 192.168.1.5 -> 8.8.8.8:53/udp dns "
                    "(uid Ca, distance 0.41), 10.0.0.2 -> 10.0.0.1 icmp (uid Cb, distance 0.50)")
    assert far == ("unlike any of the baseline's 4,000 conns (nearest distance 0.62, baseline p99 "
                   "0.45: 192.168.1.5 -> 8.8.8.8:53/udp dns, uid Ca)")
    assert "\n" not in near + far and "\t" not in near + far


def test_nearest_text_without_finite_distances_claims_nothing():
    text, = nearest_text(_identity(), np.array([[np.nan]]), np.array([[0]]), far=np.nan,
                         n_reference=2)
    assert text == ("nearest baseline conns (baseline p99 n/a): 10.0.0.2 -> 10.0.0.1 icmp (uid Cb, "
                    "distance n/a)")


def test_token_values_in_words():
    from zeekml.scoring.explain import token_value
    assert token_value({"_gap": 4.25}, "gap") == "4.25 s after the host's previous conn"
    assert token_value({"_gap": None}, "gap") == "first of the sequence"
    assert token_value({"_same_resp": False}, "same_resp") == "another responder than the alert's"
    assert token_value({"_same_resp": True}, "same_resp") == "same responder as the alert"
    assert token_value({"history": "ShADadfF"}, "history") == "history ShADadfF"
    assert token_value({"resp_bytes": None}, "resp_bytes") == "resp_bytes unset"


def test_odds_and_surprise_text():
    assert odds(np.log(650)) == "1 in 650"
    assert odds(0.1) == "90%"
    conn = {"id.orig_h": "192.168.1.9", "id.resp_h": "10.0.0.7", "id.resp_p": 23, "proto": "tcp",
            "service": None, "duration": 0.5}
    text = surprise_text("192.168.1.9", 16, conn, [("port", np.log(130)), ("duration", 0.0)],
                         is_self=False)
    assert text == ("of 192.168.1.9's last 16 conns the least expected: 192.168.1.9 -> "
                    "10.0.0.7:23/tcp (port 23: 1 in 130, duration 0.5 s: 100%)")


# -- the detectors' explain, on tiny models trained on 400 real conns --------------------------

from tiny import LABELED_LOG, TINY_TOKEN, pretrain_tiny# noqa: E402

LOG = LABELED_LOG


@pytest.fixture(scope="module")
def conns() -> pa.Table:
    from zeekml.train.data import load_conns
    return load_conns([LOG])


@pytest.fixture(scope="module")
def fitted(conns, tmp_path_factory):
    """kind -> a detector of a tiny pretrained model, fitted on the first 300 conns."""
    pytest.importorskip("torch")
    from zeekml.scoring.registry import get_kind
    done = {}

    def get(kind: str):
        if kind not in done:
            out = str(tmp_path_factory.mktemp(kind) / kind)
            pretrain_tiny(conns, out, kind)
            done[kind] = get_kind(kind).detector(out).fit(conns.slice(0, 300))
        return done[kind]

    return get


@pytest.mark.parametrize("kind", ["gnn", "mae", "moe"])
def test_knn_explanation_names_the_nearest_baseline_conns(kind, fitted, conns):
    det = fitted(kind)
    base = conns.slice(0, 300)
    rows = np.array([3, 150, 299])
    texts = det.explain(base, rows)
    assert len(texts) == 3
    uids = set(base.column("uid").to_pylist())
    for r, text in zip(rows, texts):
        assert "\n" not in text and "\t" not in text
        # a baseline conn explained among the baseline is at distance 0 from itself (or from
        # an identical one), so it is never "unlike any"
        assert text.startswith("nearest baseline conns (baseline p99 "), text
        first = text.split("(uid ", 1)[1].split(",", 1)[0]
        assert first in uids
        assert "distance 0.00)" in text.split("),", 1)[0] + ")"
    # a conn after the baseline: the named conns are baseline conns, nearest first
    text = det.explain(conns, np.array([399]))[0]
    named = [part.split(",", 1)[0] for part in text.split("(uid ")[1:]]
    assert named and set(named) <= uids, text


def test_token_explanation_names_the_least_expected_conn_of_the_host(fitted, conns):
    det = fitted("moe")
    rows = np.array([350, 399])
    texts = det.explain(conns, rows, top=2)
    orig = conns.column("id.orig_h").to_pylist()
    for r, text in zip(rows, texts):
        clause = text.split("; ", 1)[1]
        assert clause.startswith(f"of {orig[r]}'s last "), clause
        n = int(clause.split("'s last ", 1)[1].split(" ", 1)[0])
        assert 1 <= n <= TINY_TOKEN["seq_len"]
        assert clause.count(": 1 in ") + clause.count("%") >= 2, clause   # two fields, each a chance


def test_position_nll_masks_one_position_at_a_time(fitted, conns):
    """The NLL of the last position equals the detector's own masked-conn NLL (the score's
    field NLL masks exactly the conn itself, the last position of host tokens)."""
    torch = pytest.importorskip("torch")
    from zeekml.scoring.detectors.token import position_nll
    L = fitted("moe").loaded
    ids = L.tokens(conns, rows=np.array([10, 200, 399]))
    valid, nll = position_nll(L, ids)
    assert valid[:, -1].all()
    with torch.inference_mode():
        want = L.field_nll(torch.as_tensor(ids)).numpy()
    np.testing.assert_allclose(nll[:, -1, :], want, rtol=1e-4, atol=1e-5)
    assert (nll[~valid] == 0).all()


def test_zscore_references_explain_in_words(fitted, conns):
    """With the z-score reference there are no neighbours: mae says which modality is
    reconstructed worse than the baseline's, moe only the host's least expected conn."""
    from zeekml.scoring.detectors.mae import PARTS, MAEDetector
    from zeekml.scoring.detectors.token import TokenDetector
    base = conns.slice(0, 300)
    mae = MAEDetector(fitted("mae").loaded, reference="zscore").fit(base)
    for text in mae.explain(conns, np.array([350, 399])):
        assert text.startswith(("reconstructed worse than the baseline's conns: ",
                                "no modality reconstructed worse")), text
        if text.startswith("reconstructed"):
            assert any(f"{p} error " in text for p in PARTS)
    moe = TokenDetector(fitted("moe").loaded, reference="zscore").fit(base)
    text = moe.explain(conns, np.array([399]))[0]
    assert text.startswith("of ") and "nearest" not in text

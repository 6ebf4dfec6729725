"""Values the baseline never had (``UnseenValues``): counted beside the IsolationForest's trees,
which never split on a feature the baseline holds constant, calibrated leave-one-out, and named
in the explanation."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from zeekml._core.errors import ModelError
from zeekml.features.flow_features import FlowParts
from zeekml.flows.table import conn_table
from zeekml.scoring.detectors.iforest import IsolationForestDetector
from zeekml.scoring.detectors.unseen import UnseenValues


def conns(n: int, proto: str = "udp", state: str = "SF", history: str = "Dd", service: str | None = "dns",
          port: int = 53, seed: int = 0, t0: float = 1e9) -> pa.Table:
    """``n`` conns of one kind, with sizes and durations that vary (what the trees split on)."""
    rng = np.random.default_rng(seed)
    return conn_table([pa.table({
        "ts": t0 + np.arange(n, dtype=np.float64), "uid": [f"C{seed}x{i}" for i in range(n)],
        "id.orig_h": ["10.0.0.1"] * n, "id.orig_p": pa.array(rng.integers(1024, 65535, n), pa.uint16()),
        "id.resp_h": ["10.0.0.53"] * n, "id.resp_p": pa.array([port] * n, pa.uint16()),
        "proto": [proto] * n, "service": pa.array([service] * n, pa.string()),
        "duration": rng.exponential(0.05, n), "conn_state": [state] * n, "history": [history] * n,
        "orig_bytes": pa.array(rng.integers(30, 60, n), pa.uint64()),
        "resp_bytes": pa.array(rng.integers(60, 300, n), pa.uint64()),
        "orig_pkts": pa.array([1] * n, pa.uint64()), "resp_pkts": pa.array([1] * n, pa.uint64())})])


def fields(t: pa.Table) -> dict:
    return FlowParts.of(t).categorical()


def test_values_no_baseline_conn_had_are_counted_per_field():
    base = pa.concat_tables([conns(50), conns(30, service=None, seed=1)])
    u = UnseenValues().fit(fields(base))
    new = pa.concat_tables([conns(1, seed=2), conns(1, proto="tcp", state="S0", history="S", service=None,
                                                  port=443, seed=3)])
    got = u.unseen(fields(new))
    names = u.fields
    assert not got[0].any()                         # a DNS conn like the baseline's
    flagged = {names[j] for j in np.flatnonzero(got[1])}
    # TCP, S0, a history with S and without D or d: each a value no baseline conn had; the
    # unset service and a well-known port are in the baseline
    assert flagged == {"proto", "conn_state", "history S", "history D", "history d"}
    assert u.text(fields(new), 1) == ("proto tcp, conn_state S0, history with S, "
                                      "history without D, history without d")
    assert u.text(fields(new), 1, most=2) == "proto tcp, conn_state S0 and 3 more"
    assert u.text(fields(new), 0) == ""


def test_a_baseline_conn_is_counted_without_itself():
    """Leave-one-out: the values only it has are unseen for it, shared ones are not."""
    base = pa.concat_tables([conns(40), conns(1, proto="tcp", state="S0", history="S", service=None,
                                              port=443, seed=1), conns(2, state="S0", history="D", seed=2)])
    u = UnseenValues().fit(fields(base))
    held = u.held_out_unseen(fields(base))
    assert not held[:40].any()
    assert held[40].sum() == 4                # proto tcp, history with S, without D, without d
    assert not held[41:].any()                # S0 and a history without d: two conns have them
    assert not u.unseen(fields(base)).any()   # scored as new conns, every value is in the counts


def test_unfitted_or_mismatched_use_is_an_error():
    with pytest.raises(ModelError, match="before fit"):
        UnseenValues().unseen(fields(conns(3)))
    u = UnseenValues().fit(fields(conns(3)))
    with pytest.raises(ValueError, match="missing"):
        u.unseen({"proto": fields(conns(3))["proto"]})


def test_a_protocol_the_baseline_never_had_ranks_above_every_conn_without_one():
    """The blind spot the count closes: the trees never split on proto (constant on a UDP
    baseline), so a TCP SYN of ordinary size looks ordinary to them."""
    base = conns(400, seed=0)
    det = IsolationForestDetector(n_estimators=50, seed=0).fit(base)
    odd_dns = conns(20, seed=5)
    odd_dns = odd_dns.set_column(odd_dns.schema.get_field_index("resp_bytes"), "resp_bytes",
                                 pa.array([5000] * 20, pa.uint64()))       # large, but DNS
    syn = conns(5, proto="tcp", state="S0", history="S", service=None, port=443, seed=6)
    table = pa.concat_tables([odd_dns, syn])
    forest, score = det.forest_score(table), det.score(table)
    assert (forest < 1).all()
    assert np.array_equal(score[:20], forest[:20])        # nothing unseen: the trees alone
    # proto tcp, conn_state S0, service unset (every baseline conn is DNS), history with S,
    # without D, without d
    assert np.array_equal(score[20:] - forest[20:], np.full(5, 6.0))
    assert score[20:].min() > score[:20].max()
    text = det.explain(table, np.array([20, 0]))
    assert text[0].startswith("never in the baseline: proto tcp, conn_state S0, service unset, "
                              "history with S, history without D, history without d; ")
    assert "never" not in text[1]


def test_calibration_scores_count_a_baseline_conns_own_values_as_unseen():
    base = pa.concat_tables([conns(300), conns(1, proto="tcp", state="S0", history="S", service=None,
                                               port=443, seed=1)])
    det = IsolationForestDetector(n_estimators=50, seed=0).fit(base)
    assert det.oob_scores[:300].max() < 1
    assert det.oob_scores[300] > 6                   # its six values count, as for a new conn
    import pickle

    back = pickle.loads(pickle.dumps(det))           # --dask and watch's pool take it so
    syn = conns(3, proto="tcp", state="S0", history="S", service=None, port=443, seed=4)
    assert np.array_equal(back.score(syn), det.score(syn))

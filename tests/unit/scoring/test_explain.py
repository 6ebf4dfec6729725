"""Explanations against the baseline of the same kind of conn, with exact numbers."""
import numpy as np
import pyarrow as pa
import pytest

from zeekml.flows.table import CONN_SCHEMA
from zeekml.scoring.explain import BaselineProfile


def conns(rows: list[dict]) -> pa.Table:
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in CONN_SCHEMA})


def baseline() -> pa.Table:
    rows = []
    for k in range(40):   # dns: resp_bytes around 1,200, duration 0.1 s, SF
        rows.append({"id.resp_p": 53, "proto": "udp", "service": "dns", "resp_bytes": 1100 + 5 * k,
                     "orig_bytes": 40, "duration": 0.1, "conn_state": "SF"})
    for k in range(30):   # port 445/tcp without a service: empty, unanswered
        rows.append({"id.resp_p": 445, "proto": "tcp", "resp_bytes": 0, "orig_bytes": 0,
                     "duration": 3.0, "conn_state": "S0"})
    for k in range(5):    # too few ssl (and 8443/tcp) conns: they fall back to tcp
        rows.append({"id.resp_p": 8443, "proto": "tcp", "service": "ssl", "resp_bytes": 5000,
                     "orig_bytes": 700, "duration": 1.0, "conn_state": "SF"})
    return conns(rows)


def test_profiles_per_kind_and_fallback():
    p = BaselineProfile(min_count=20).fit(baseline())
    assert set(p.kinds) == {"dns", "53/udp", "445/tcp", "udp", "tcp", "all"}
    assert p.kinds["dns"].count == 40 and p.kinds["dns"].median[2] == pytest.approx(1197.5)
    probe = conns([{"service": "dns", "id.resp_p": 53, "proto": "udp"},
                   {"service": "ssl", "id.resp_p": 8443, "proto": "tcp"},
                   {"id.resp_p": 445, "proto": "tcp"},
                   {"id.resp_p": 9, "proto": "icmp"}])
    assert p.kind_of(probe).tolist() == ["dns", "tcp", "445/tcp", "all"]


def test_explain_words_and_numbers():
    p = BaselineProfile().fit(baseline())
    alerts = conns([
        {"service": "dns", "id.resp_p": 53, "proto": "udp", "resp_bytes": 47_900, "orig_bytes": 40,
         "duration": 0.1, "conn_state": "SF"},
        {"id.resp_p": 445, "proto": "tcp", "resp_bytes": 0, "orig_bytes": 0, "duration": 3.0,
         "conn_state": "REJ"},
        {"service": "dns", "id.resp_p": 53, "proto": "udp", "resp_bytes": 1200, "orig_bytes": 40,
         "duration": 0.1, "conn_state": "SF"},
        {"service": "dns", "id.resp_p": 53, "proto": "udp", "resp_bytes": 1200, "orig_bytes": 40,
         "duration": 0.0004, "conn_state": "SF"},
    ])
    text = p.explain(alerts, np.arange(4), top=2)
    assert text[0] == "resp_bytes 47,900, 40x the baseline median 1,198 for dns"
    assert text[1] == "conn_state REJ, never in the baseline's 445/tcp conns"
    assert text[2] == "typical of the baseline for dns"
    assert text[3] == "duration 0.0004 s, 1/250 of the baseline median 0.1 s for dns"
    devs = p.deviations(alerts, np.array([0]), top=5)[0]
    assert devs[0].feature == "resp_bytes" and devs[0].z == pytest.approx(
        (np.log1p(47_900) - np.log1p(1197.5)) / 0.25)


def test_median_zero_and_unset_values():
    p = BaselineProfile().fit(baseline())
    t = conns([{"id.resp_p": 445, "proto": "tcp", "orig_bytes": 5000, "resp_bytes": None,
                "duration": None, "conn_state": "S0"}])
    assert p.explain(t, np.array([0]), top=3) == [
        "orig_bytes 5,000, where the baseline median for 445/tcp is 0"]


def test_round_trip_and_errors():
    p = BaselineProfile().fit(baseline())
    q = BaselineProfile.from_dict(p.to_dict())
    t = baseline()
    assert q.explain(t, np.array([0, 45])) == p.explain(t, np.array([0, 45]))
    with pytest.raises(ValueError):
        BaselineProfile().fit(conns([]))
    with pytest.raises(RuntimeError):
        BaselineProfile().deviations(t, np.array([0]))


def test_median_zero_names_the_99th_percentile():
    rows = [{"id.resp_p": 445, "proto": "tcp", "resp_bytes": 600 if k == 29 else 0,
             "conn_state": "S0"} for k in range(30)]
    p = BaselineProfile().fit(conns(rows))
    t = conns([{"id.resp_p": 445, "proto": "tcp", "resp_bytes": 50_000, "conn_state": "S0"}])
    assert p.explain(t, np.array([0]), top=1) == [
        "resp_bytes 50,000, where the baseline median for 445/tcp is 0 (99th percentile 426)"]


def test_sorted_groups_is_np_unique_of_strings():
    from zeekml.scoring.explain import sorted_groups

    rng = np.random.default_rng(0)
    pool = ["dns", "", "445/tcp", "Z", "a", "é", "€", "\U0001F600", "53/udp", "dns "]
    for n in (0, 1, 7, 500):
        values = np.array([pool[i] for i in rng.integers(0, len(pool), n)], dtype=object)
        uniq, inv, counts = sorted_groups(values)
        want = np.unique(values, return_inverse=True, return_counts=True) if n else ([], [], [])
        assert list(uniq) == list(want[0]) and np.array_equal(inv, want[1]) and np.array_equal(counts, want[2])


def test_profile_of_a_real_log_equals_the_np_unique_grouping(monkeypatch):
    """The IoT-23 example's profile (its kinds in order, every number) as it was with
    ``np.unique``'s grouping."""
    import json
    import os

    from zeekml.scoring import explain
    from zeekml.train.data import load_conns

    log = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "iot23", "conn.log.labeled")
    table = load_conns([log])
    got = json.dumps(BaselineProfile().fit(table).to_dict())
    monkeypatch.setattr(explain, "sorted_groups",
                        lambda v: np.unique(v, return_inverse=True, return_counts=True) if len(v)
                        else (np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64)))
    want = BaselineProfile().fit(table).to_dict()
    assert len(want["kinds"]) > 5 and got == json.dumps(want)


def test_profile_kinds_are_the_rows_a_mask_per_kind_picks():
    """``fit`` groups each level's rows with one stable sort and the conn states with codes made
    once: every kind's profile is that of the rows ``level == kind`` picks (in order), with its
    states' shares as ``np.unique`` counts them, on the real IoT-23 example."""
    import os

    from zeekml.scoring import explain
    from zeekml.train.data import load_conns

    log = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "iot23", "conn.log.labeled")
    table = load_conns([log])
    got = BaselineProfile().fit(table)
    x, ok = explain._quantities(table)
    states = explain._strings(table, "conn_state")
    levels = explain.candidate_kinds(table) + [np.full(table.num_rows, "all", dtype=object)]
    seen = set()
    for level in levels:
        for kind in sorted(set(level)):
            mask = level == kind
            if not kind or kind in seen or (mask.sum() < got.min_count and kind != "all"):
                continue
            seen.add(kind)
            prof = got.kinds[kind]
            assert prof.count == mask.sum()
            lx = np.log(x[mask] + explain.OFFSETS)
            for j in range(x.shape[1]):
                col = x[mask][ok[mask][:, j], j]
                if len(col):
                    assert prof.median[j] == float(np.median(col))
                    assert prof.log_median[j] == float(np.median(lx[ok[mask][:, j], j]))
            names, counts = np.unique(states[mask][states[mask] != ""], return_counts=True)
            assert prof.states == {str(v): float(c) / mask.sum() for v, c in zip(names, counts)}
    assert len(seen) > 5 and set(got.kinds) == seen


def test_every_row_is_explained_as_it_is_alone_on_a_real_log():
    """``explain`` scores all the rows asked at once: each row's words are those of the row
    explained by itself (its own kind, z-scores, conn state, "typical" text) on the real
    IoT-23 example against a baseline of its earliest third, rows in any order and repeated."""
    import os

    from zeekml.train.data import load_conns

    log = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "iot23", "conn.log.labeled")
    table = load_conns([log])
    p = BaselineProfile().fit(table.slice(0, table.num_rows // 3))
    rows = np.concatenate([np.arange(table.num_rows)[::-1], [7, 7, 0]])
    got = p.explain(table, rows)
    alone = [p.explain(table.slice(int(r), 1), np.array([0]))[0] for r in rows]
    assert got == alone
    typical = sum(t.startswith("typical of the baseline") for t in got)
    assert 0 < typical < len(got) - 100


def test_ties_keep_the_order_of_the_quantities_then_the_conn_state():
    """Two quantities as far from their kind's median, and a rare conn state: the quantities
    ranked in ``QUANTITIES`` order (a stable sort of the candidates), the state by its z."""
    from zeekml.scoring import explain

    base = conns([{"id.resp_p": 80, "proto": "tcp", "orig_pkts": 5, "resp_pkts": 5, "orig_bytes": 300,
                   "resp_bytes": 300, "duration": 1.0, "conn_state": "SF"}] * 30)
    p = BaselineProfile().fit(base)
    probe = conns([{"id.resp_p": 80, "proto": "tcp", "orig_pkts": 50, "resp_pkts": 50, "orig_bytes": 300,
                    "resp_bytes": 300, "duration": 1.0, "conn_state": "REJ"}])
    devs = p.deviations(probe, np.array([0]), top=3)[0]
    assert [d.feature for d in devs] == ["orig_pkts", "resp_pkts", "conn_state"]
    assert devs[0].z == devs[1].z > explain.RARE_STATE_Z == devs[2].z
    assert [d.feature for d in p.deviations(probe, np.array([0]), top=1)[0]] == ["orig_pkts"]

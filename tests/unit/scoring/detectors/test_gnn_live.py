"""The GNN detector's node states kept between ``score_rows`` calls (``gnn_live``): releases
scored one after another reuse the states of the windows they share, with the bits of scoring
the whole table; a window whose content changed between calls (a late conn) is computed again;
what is kept stays within the last graph's windows; a copy starts with nothing kept."""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("torch_geometric")

from zeekml.scoring.context import detectors_in_context, ts_array  # noqa: E402
from zeekml.scoring.detectors import gnn_live  # noqa: E402
from checks import assert_same  # noqa: E402

def fresh(det):
    det._live = det._new_live_state()
    return det._live


def releases(table: pa.Table, size: int) -> list[np.ndarray]:
    """Consecutive batches of ``size`` conns in ``ts`` order (the log is in the order Zeek wrote
    the conns, at their end), each as sorted row indices."""
    order = np.argsort(ts_array(table), kind="stable")
    return [np.sort(order[a:a + size]) for a in range(0, table.num_rows, size)]


def scored(det, table: pa.Table, targets: np.ndarray) -> np.ndarray:
    """``targets``' scores among their context, as ``watch`` scores a release."""
    (d,) = detectors_in_context([det], table, targets, ts_array(table))
    return d.score(table.take(pa.array(targets)))


def test_the_shipped_encoders_steps_reach_two_windows_back_per_layer(fitted_gnn):
    """(content, links) windows back: the input reads its window's content, each temporal step
    2 windows more (``span - 1``) and the links into its window, then 2 windows of links more."""
    det, _, _ = fitted_gnn
    assert det._live.reach == [(0, -1), (2, 0), (2, 0), (4, 2), (4, 2)]


def test_releases_in_turn_reuse_states_with_the_whole_tables_bits(fitted_gnn, avx2):
    """As ``watch`` scores: each batch of 8 conns among its context; later batches fill in
    states the earlier ones computed (counted), and every score is the whole table's."""
    det, table, full = fitted_gnn
    live = fresh(det)
    got = np.full(table.num_rows, np.nan)
    for targets in releases(table, 8):
        got[targets] = scored(det, table, targets)
    assert_same(got, full, avx2)
    assert live.offered > table.num_rows               # more than one state a conn on average


def test_a_late_conn_in_a_kept_window_is_seen(fitted_gnn, monkeypatch, avx2):
    """A conn that arrives after a release, into a window whose states that release kept,
    changes that window's fingerprint: the next release computes it again and gets the whole
    table's bits. Without the fingerprints compared, the kept states would be used and the
    scores would move (the check is what keeps them right)."""
    det, table, _ = fitted_gnn
    ts = ts_array(table)
    batches = releases(table, 8)
    first, second = batches[25], batches[26]
    # a copy of the first batch's latest conn, 1 ms later, under a new uid, written just after
    # it: it joins the windows the first batch's states were kept for
    at = int(first[np.argmax(ts[first])])
    late = table.take(pa.array([at]))
    late = late.set_column(late.column_names.index("ts"), "ts", pa.array([ts[at] + 0.001]))
    late = late.set_column(late.column_names.index("uid"), "uid", pa.array(["Clate"]))
    grown = pa.concat_tables([table.slice(0, at + 1), late, table.slice(at + 1)])
    second = second + (second > at)
    want = det.score(grown)[second]

    def run():
        fresh(det)
        scored(det, table, first)
        return scored(det, grown, second)

    assert_same(run(), want, avx2)
    monkeypatch.setattr(gnn_live.GraphWindows, "span_prints", lambda self, w, reach: ())
    assert (run() != want).any()


def test_what_is_kept_is_within_the_last_graphs_windows(fitted_gnn):
    det, table, _ = fitted_gnn
    live = fresh(det)
    ts = ts_array(table)
    builder = det.bundle.builder()
    _, last = builder.windows(table)
    for targets in releases(table, 25):
        (d,) = detectors_in_context([det], table, targets, ts)
        if d is det:
            continue
        d.score(None)
        windows = {w for _, w in live.kept}
        assert windows
        # from the earliest target's window to the graph's last (the targets'); 2 windows
        # before at the first temporal step (its next-flow edges: ``next_flows_into``)
        first = int(last[targets].min())
        assert max(windows) <= int(last[targets].max())
        assert min(w for s, w in live.kept if s != 1) >= first
        assert min(w for s, w in live.kept if s == 1) >= first - 2
        assert live.keep_from(first) == [first, first - 2, first, first, first]
        # the targets' own embeddings (the last step) are not kept
        assert {s for s, _ in live.kept} <= set(range(len(live.reach) - 1))


def test_a_copy_starts_with_nothing_kept(fitted_gnn):
    det, table, _ = fitted_gnn
    fresh(det)
    det.score_rows(table, np.arange(100, 120))
    assert det._live.kept
    copy = pickle.loads(pickle.dumps(det))
    assert copy._live is not None and not copy._live.kept and det._live.kept


def test_conns_without_a_time_among_others_keep_their_bits(fitted_gnn, avx2):
    """Conns without ``ts`` share one window with no neighbours in time (``NULL_WINDOW``): nothing
    is kept for it, and releases holding such conns, or only such conns, get ``score``'s bits."""
    det, table, _ = fitted_gnn
    ts = ts_array(table)
    unset = np.zeros(table.num_rows, dtype=bool)
    unset[::5] = True
    t = table.set_column(table.column_names.index("ts"), "ts",
                         pa.array(np.where(unset, np.nan, ts), mask=unset))
    full = det.score(t)
    live = fresh(det)
    for rows in (np.flatnonzero(unset)[:12], np.arange(40, 60), np.arange(60, 80)):
        assert_same(det.score_rows(t, rows), full[rows], avx2)
    assert all(w != gnn_live.NULL_WINDOW for _, w in live.kept)


def test_explaining_a_release_leaves_its_kept_states(fitted_gnn):
    """``explain`` (the alerts of a release) embeds without the kept states: what ``score_rows``
    kept for the next release stays as it was."""
    det, table, _ = fitted_gnn
    live = fresh(det)
    targets = releases(table, 25)[8]
    (d,) = detectors_in_context([det], table, targets, ts_array(table))
    d.score(None)
    before = {key: (k.prints, k.flow[0].copy(), k.ip[0].copy()) for key, k in live.kept.items()}
    assert before
    d.explain(None, np.array([len(targets) - 1]))
    after = {key: (k.prints, k.flow[0], k.ip[0]) for key, k in live.kept.items()}
    assert after.keys() == before.keys()
    assert all(after[key][0] == v[0] and np.array_equal(after[key][1], v[1])
               and np.array_equal(after[key][2], v[2]) for key, v in before.items())


def test_a_call_over_many_windows_keeps_only_the_last_ones(fitted_gnn, monkeypatch, avx2):
    """A call whose targets span many windows (a chunk of `score`) keeps the states of the
    windows from ``KEEP_WINDOWS`` before its latest target on, not of every window it embedded;
    the next call still gets the whole table's bits, and reuses what was kept."""
    det, table, full = fitted_gnn
    monkeypatch.setattr(gnn_live, "KEEP_WINDOWS", 1)
    _, last = det.bundle.builder().windows(table)
    order = np.argsort(ts_array(table), kind="stable")
    first_call, second_call = np.sort(order[:120]), np.sort(order[120:160])
    first, latest = int(last[first_call].min()), int(last[first_call].max())
    assert latest - first > 3                     # the first call spans more windows than kept
    live = fresh(det)
    assert_same(scored(det, table, first_call), full[first_call], avx2)
    assert live.keep_from(first, latest) == [latest - 1, latest - 3, latest - 1, latest - 1, latest - 1]
    assert min(w for s, w in live.kept if s != 1) >= latest - 1
    assert min(w for s, w in live.kept if s == 1) >= latest - 3
    offered = live.offered
    assert_same(scored(det, table, second_call), full[second_call], avx2)
    assert live.offered > offered


def test_a_calls_computed_states_hold_the_kept_windows_only(fitted_gnn, monkeypatch, avx2):
    """What the encoder hands over for ``store`` (``KeptSteps``) holds, of each step, only the
    rows of the windows ``store`` keeps, and none of the last step's: a chunk's states of every
    window were ~310 MiB at the end of its forward. The scores stay the whole table's."""
    det, table, full = fitted_gnn
    monkeypatch.setattr(gnn_live, "KEEP_WINDOWS", 1)
    seen = []
    store = gnn_live.GNNLiveState.store

    def spy(self, layout, computed, keep_from):
        seen.append((layout, list(computed), computed.los))
        return store(self, layout, computed, keep_from)

    monkeypatch.setattr(gnn_live.GNNLiveState, "store", spy)
    fresh(det)
    targets = np.sort(np.argsort(ts_array(table), kind="stable")[:120])
    assert_same(scored(det, table, targets), full[targets], avx2)
    (layout, computed, los), = seen
    assert len(computed) == len(los) + 1 and computed[-1] == {}
    held = 0
    for step, done in enumerate(computed[:-1]):
        for name, (rows, states) in done.items():
            j = layout.window_of(name, rows.numpy())
            assert (j >= 0).all() and (layout.windows[j] >= los[step]).all()
            assert len(states) == len(rows)
            held += len(rows)
    assert held > 0 and layout.windows.min() < min(los)   # kept some, not those of every window

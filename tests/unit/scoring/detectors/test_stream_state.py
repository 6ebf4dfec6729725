"""Per-host kept state of a causal token detector (issue 15): ``watch`` scores each window's due
conns among their host's preceding conns; with the state a new conn reuses its predecessors'
keys and values from the window that computed them instead of recomputing their cone. It must
give exactly the bits of the path without it, on real logs, in any window split, with late
conns and with hosts dropped from the state and seen again. A tiny 4-block, 16-token causal MoE
(the shipped model's spans: 4, 4, 4, 3) pretrained here."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pyarrow as pa
import pytest

from zeekml.flows.select import ts_sort_key
from zeekml.scoring.context import detectors_in_context
from zeekml.scoring.detectors.stream_state import StreamState
from zeekml.scoring.registry import get_kind
from zeekml.train.data import load_conns
from tiny import LABELED_LOG, pretrain_tiny

pytest.importorskip("torch")

# 3,512 conns of 954 originators, some busy (751, 536, 437 conns): Suricata flow events from
# the Slips dataset (tests/data/README.md)
MANY_HOSTS = "tests/data/real/slips-dataset/dataset/test6-malicious.suricata.json.gz"
SHIPPED_SPANS = {"chunk": 16, "attention": "causal_window", "n_layers": 4, "seq_len": 16}


@pytest.fixture(autouse=True)
def state_on_every_call(monkeypatch):
    """The state on every call, however many targets a host's run holds (the tests are about
    its bits; ``test_a_call_with_busy_runs_leaves_the_state_alone`` about the switch)."""
    from zeekml.scoring.detectors import token

    monkeypatch.setattr(token, "STATE_TARGETS_PER_RUN", 10**9)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("moe") / "moe")
    pretrain_tiny(load_conns([LABELED_LOG]), d, "moe", **SHIPPED_SPANS)
    return d


def by_time(path: str, n: int | None = None) -> pa.Table:
    """A log in time order (as watch releases it), its first ``n`` conns."""
    t = load_conns([path])
    t = t.take(pa.array(np.argsort(ts_sort_key(t), kind="stable")))
    return t if n is None else t.slice(0, n)


def detector(model_dir: str, table: pa.Table, state: bool):
    det = get_kind("moe").detector(model_dir)
    assert det.loaded.encoder.spans == [4, 4, 4, 3]
    det.fit(table.slice(0, 300))
    if not state:
        det._state = None
    return det


def windows(det, table: pa.Table, bounds: list[int]) -> np.ndarray:
    """Scores of ``table``'s conns released in the windows ``bounds`` (ends), each among the
    context ``scoring.context`` cuts for it from the conns seen so far, as watch does."""
    out = np.zeros(bounds[-1])
    lo = 0
    for hi in bounds:
        seen = table.slice(0, hi)
        targets = np.arange(lo, hi)
        (d,) = detectors_in_context([det], seen, targets)
        out[lo:hi] = d.score(seen.take(pa.array(targets)))
        lo = hi
    return out


@pytest.mark.parametrize("path,n", [(MANY_HOSTS, None), (LABELED_LOG, None)])
def test_kept_state_gives_the_bits_of_the_cone_in_every_window_split(model_dir, path, n):
    table = by_time(path, n)
    cold, warm = detector(model_dir, table, False), detector(model_dir, table, True)
    whole = cold.score(table)
    rng = np.random.default_rng(0)
    for split in ([1] * 40, [7] * 30, [100] * 5, list(rng.integers(1, 60, 80))):
        bounds = list(np.cumsum(split))
        bounds = [b for b in bounds if b < table.num_rows] + [table.num_rows]
        hits = warm._state.hits
        got = windows(warm, table, bounds)
        assert np.array_equal(got, windows(cold, table, bounds)), split[:3]
        assert np.array_equal(got, whole), split[:3]
        assert warm._state.hits > hits                            # the state was used


def test_calls_split_into_many_stream_batches_keep_and_use_the_state_alike(model_dir, monkeypatch):
    from zeekml.scoring.detectors import token

    table = by_time(MANY_HOSTS, 1500)
    cold, warm = detector(model_dir, table, False), detector(model_dir, table, True)
    bounds = [300, 700, 701, 1200, 1500]
    want = windows(cold, table, bounds)
    monkeypatch.setattr(token, "STREAM_BATCH", 16)        # a call's targets in batches of 16
    assert np.array_equal(windows(warm, table, bounds), want)
    assert warm._state.hits > 20


def test_a_late_conn_is_not_covered_by_a_state_that_lacks_it(model_dir):
    table = by_time(LABELED_LOG)
    # conn 200 arrives after conns 201..205, which are scored without it; the state kept when
    # 205 was scored lacks it, so it must not be used for the conns after it (206.., whose
    # windows hold it), nor for it
    order = np.r_[np.arange(200), np.arange(201, 206), [200], np.arange(206, table.num_rows)]
    arrived = table.take(pa.array(order))
    cold, warm = detector(model_dir, table, False), detector(model_dir, table, True)
    bounds = list(range(5, arrived.num_rows, 5)) + [arrived.num_rows]
    assert 205 in bounds                              # 201..205 are scored before 200 arrives

    def run(det):
        out = np.zeros(arrived.num_rows)
        lo = 0
        for hi in bounds:
            # the context in time order, as the context cut orders a host's conns
            seen = arrived.slice(0, hi)
            idx = np.argsort(ts_sort_key(seen), kind="stable")
            ctx = seen.take(pa.array(idx))
            pos = np.flatnonzero((idx >= lo) & (idx < hi))
            (d,) = detectors_in_context([det], ctx, pos)
            out[idx[pos]] = d.score(ctx.take(pa.array(pos)))
            lo = hi
        return out

    misses = warm._state.misses
    got = run(warm)
    assert np.array_equal(got, run(cold))
    assert warm._state.misses > misses + 1 and warm._state.hits > 0
    # the conns after the late one got the scores they have with it in their history
    whole = cold.score(table)
    assert np.array_equal(got[206:], whole[order[206:]])
    assert not np.array_equal(got[200:205], whole[201:206])     # scored before it came


@pytest.mark.parametrize("max_hosts,horizon", [(1, None), (10_000, 60.0)])
def test_a_host_dropped_from_the_state_and_seen_again_gets_the_same_bits(model_dir, max_hosts, horizon):
    table = by_time(MANY_HOSTS)
    cold, warm = detector(model_dir, table, False), detector(model_dir, table, True)
    s = warm._state
    warm._state = StreamState(s.spans, s.horizon if horizon is None else horizon, max_hosts)
    bounds = list(range(5, table.num_rows, 5)) + [table.num_rows]
    got = windows(warm, table, bounds)
    assert np.array_equal(got, windows(cold, table, bounds))
    assert len(warm._state) <= max_hosts
    assert warm._state.misses > 0 and warm._state.hits > 0


def test_the_state_stops_the_cone_at_the_kept_rows(model_dir):
    """With the state, a new conn's predecessors are not recomputed: their tokens are read only
    to check the state, so a stream whose kept rows give other outputs (here: every state's
    keys and values zeroed) changes the new conn's embedding; without a matching state, not."""
    table = by_time(LABELED_LOG)
    det = detector(model_dir, table, True)
    L = det.loaded
    before = L.stream_embedding(table, np.arange(0, 300), det._state)
    assert len(det._state) >= 1
    ref = L.stream_embedding(table, np.arange(300, 301))
    broken = copy.deepcopy(det._state)
    broken.kv[:] = 0.0
    assert not np.array_equal(L.stream_embedding(table, np.arange(300, 301), broken), ref)
    assert np.array_equal(L.stream_embedding(table, np.arange(300, 301), det._state), ref)
    assert before.shape == (300, L.encoder.config.d_model)


def test_a_copy_of_the_detector_starts_without_state(model_dir):
    table = by_time(LABELED_LOG)
    det = detector(model_dir, table, True)
    det.score_rows(table, np.arange(100))
    assert len(det._state) >= 1
    for other in (pickle.loads(pickle.dumps(det)), copy.copy(det)):
        assert other._state is not det._state and len(other._state) == 0
        assert np.array_equal(other.score_rows(table, np.arange(100, 120)),
                              det.score_rows(table, np.arange(100, 120)))


def test_a_call_with_busy_runs_leaves_the_state_alone(model_dir, monkeypatch):
    from zeekml.scoring.detectors import token

    monkeypatch.setattr(token, "STATE_TARGETS_PER_RUN", 32)
    table = by_time(LABELED_LOG)                         # one busy host
    cold, warm = detector(model_dir, table, False), detector(model_dir, table, True)
    # windows of 100 conns of one host: the state is neither used nor kept
    bounds = [100, 200, 300, 400]
    assert np.array_equal(windows(warm, table, bounds), windows(cold, table, bounds))
    assert warm._state.hits == warm._state.misses == len(warm._state) == 0
    # of 10: used and kept
    bounds = list(range(10, 410, 10))
    assert np.array_equal(windows(warm, table, bounds), windows(cold, table, bounds))
    assert warm._state.hits > 30 and len(warm._state) >= 1


def test_state_refuses_a_size_it_cannot_keep():
    with pytest.raises(ValueError, match="max_hosts"):
        StreamState([4, 4, 4, 3], 3600.0, 0)

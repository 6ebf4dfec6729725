"""features.table_memo: what a scope shares is computed once per table and is, bit for bit, what
each featuriser computes without it (on real IoT-23 conns); nothing is kept outside a scope."""
from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pyarrow as pa
import pytest

from zeekml.features import flow_features, modality, table_memo
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.features.host_history import HostHistory
from zeekml.features.modality import ModalityFeaturizer, SkipGramConfig
from zeekml.features.tokens import FlowTokenizer
from zeekml.pipeline.chunked import prepare
from zeekml.train.data import load_conns

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")


@pytest.fixture(scope="module")
def real() -> pa.Table:
    return load_conns(SLICE)


def rows_of(table: pa.Table) -> np.ndarray:
    # an unsorted, sparse pick, as fit_split's pieces and the GNN's neighbourhoods are not
    rng = np.random.default_rng(3)
    return np.sort(rng.choice(table.num_rows, table.num_rows // 3, replace=False))[::-1].copy()


def same(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_a_scope_computes_each_table_and_key_once_and_nothing_outside_it():
    t1, t2 = pa.table({"a": [1, 2]}), pa.table({"a": [1, 2]})
    calls = []

    def compute(tag):
        calls.append(tag)
        return np.arange(3)

    table_memo.memoised(t1, "k", lambda: compute("out"))
    table_memo.memoised(t1, "k", lambda: compute("out"))
    assert calls == ["out", "out"] and not table_memo.active()
    with table_memo.scope() as memo:
        assert table_memo.active()
        x = table_memo.memoised(t1, "k", lambda: compute("t1"))
        assert table_memo.memoised(t1, "k", lambda: compute("again")) is x
        table_memo.memoised(t2, "k", lambda: compute("t2"))       # an equal table is another table
        table_memo.memoised(t1, "other", lambda: compute("other"))
        with table_memo.scope() as inner:                          # nested: the same memo
            assert inner is memo
            table_memo.memoised(t1, "k", lambda: compute("inner"))
        assert table_memo.active() and len(memo) == 3
        with pytest.raises(ValueError):
            x[0] = 7                                               # shared arrays are read-only
    assert calls == ["out", "out", "t1", "t2", "other"]
    assert not table_memo.active()


def test_the_memo_keeps_no_table_alive():
    with table_memo.scope() as memo:
        t = pa.table({"a": [1, 2, 3]})
        table_memo.memoised(t, "k", lambda: np.zeros(3))
        ref = weakref.ref(t)
        del t
        gc.collect()
        assert ref() is None and len(memo) == 0


def test_drop_dead_lets_go_of_the_results_of_tables_gone():
    """A scope held over many tables (``chunked``'s chunks) drops what it computed of the
    tables gone, and keeps the rest."""
    with table_memo.scope() as memo:
        gone, kept = pa.table({"a": [1, 2, 3]}), pa.table({"a": [4]})
        held = weakref.ref(table_memo.memoised(gone, "k", lambda: np.zeros(1 << 20)))
        table_memo.memoised(kept, "k", lambda: np.ones(1))
        del gone
        gc.collect()
        assert held() is not None                  # its table is gone, its result still held
        table_memo.drop_dead()
        gc.collect()
        assert held() is None and len(memo) == 1
        assert table_memo.memoised(kept, "k", lambda: None)[0] == 1.0
    table_memo.drop_dead()                         # no scope: nothing to do


def test_flow_features_of_rows_in_a_scope_are_those_of_the_rows_alone(real):
    f = FlowFeaturizer().fit(real)
    rows = rows_of(real)
    want_all, want_rows = f.transform(real), f.transform(real.take(pa.array(rows)))
    raw = f._raw(real)
    with table_memo.scope():
        same(f.transform(real, rows), want_rows)
        same(f.transform(real), want_all)
        same(f._raw(real), raw)
        # another featuriser (other services) shares the conn-alone columns, not the services
        g = FlowFeaturizer(top_services=2).fit(real)
        assert g.services != f.services
        with_g = g.transform(real, rows)
    same(with_g, g.transform(real.take(pa.array(rows))))
    same(f.transform(real, rows), want_rows)                      # outside: rows featurised alone


def test_modalities_and_tokens_in_a_scope_are_the_same_bits(real):
    mf = ModalityFeaturizer(seq_source="host", skipgram=SkipGramConfig(dim=8, epochs=1)).fit(real)
    tok = FlowTokenizer(source="host").fit(real)
    rows = rows_of(real)
    want = [mf.transform(real), mf.transform(real, rows=rows), mf.transform(real, hide_service=True, rows=rows)]
    want_ids = [tok.transform(real), tok.transform(real, rows=rows)]
    want_stream = tok.host_stream(real, rows, width=4)
    with table_memo.scope():
        got = [mf.transform(real), mf.transform(real, rows=rows), mf.transform(real, hide_service=True, rows=rows)]
        got_ids = [tok.transform(real), tok.transform(real, rows=rows)]
        got_stream = tok.host_stream(real, rows, width=4)
    for g, w in zip(got, want):
        for name in ("quantity", "sequence", "entity", "quantity_keep", "entity_keep"):
            same(getattr(g, name), getattr(w, name))
    for g, w in zip(got_ids, want_ids):
        same(g, w)
    for name in ("ids", "keys", "targets", "table_rows", "run_start"):
        same(getattr(got_stream, name), getattr(want_stream, name))


def test_host_history_in_a_scope_keeps_every_table(real):
    other = real.slice(0, 100)
    with table_memo.scope():
        a, b = HostHistory.of(real), HostHistory.of(other)
        assert HostHistory.of(real) is a and HostHistory.of(other) is b
    # outside, only the last table is remembered (the baseline and input evicted each other)
    HostHistory.of(real)
    HostHistory.of(other)
    assert HostHistory.of(real) is not a


def test_prepare_fills_the_scope_so_featurisers_find_it(real, monkeypatch):
    mf = ModalityFeaturizer(seq_source="host", skipgram=SkipGramConfig(dim=8, epochs=1)).fit(real)
    calls = {"flow": 0, "steps": 0}
    parts_of, steps = flow_features.FlowParts.of, modality.host_steps

    def counted_flow(t):
        calls["flow"] += 1
        return parts_of(t)

    def counted_steps(t, h):
        calls["steps"] += 1
        return steps(t, h)

    monkeypatch.setattr(flow_features.FlowParts, "of", staticmethod(counted_flow))
    monkeypatch.setattr(modality, "host_steps", counted_steps)
    prepare([real])                                   # outside a scope: nothing is done
    assert calls == {"flow": 0, "steps": 0}
    with table_memo.scope():
        prepare([real])
        assert calls == {"flow": 1, "steps": 1}
        mf.transform(real, rows=rows_of(real))
        FlowFeaturizer().fit(real)
        assert calls == {"flow": 1, "steps": 1}


def test_the_flow_parts_kept_are_a_fraction_of_the_columns(real):
    parts = flow_features.FlowParts.of(real)
    kept = sum(a.nbytes for a in parts.numbers + parts.missing) + sum(
        getattr(parts, n).nbytes for n in ("proto_code", "state_code", "history_code",
                                          "service_code", "port", "port_missing"))
    cols = FlowFeaturizer().fit(real)._raw(real)
    assert kept < cols.nbytes / 3


def test_a_memo_pickles_empty():
    """A detector holding a memo is pickled to --dask workers: the copy starts empty (its tables
    are this process's objects) and works."""
    import pickle

    memo = table_memo.TableMemo()
    t = pa.table({"a": [1, 2]})
    memo.get(t, "k", lambda: np.arange(2))
    copy = pickle.loads(pickle.dumps(memo))
    assert len(memo) == 1 and len(copy) == 0 and copy.peek(t, "k") is None
    assert copy.get(t, "k", lambda: 7) == 7

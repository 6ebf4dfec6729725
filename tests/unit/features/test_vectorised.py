"""The columnar featurisers equal their per-row definitions (the code they replaced), value for
value, on a real log with unset fields."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from zeekml.features.flow_features import HISTORY_LETTERS, FlowFeaturizer
from zeekml.features.modality import ModalityFeaturizer, ip_token, port_token
from zeekml.features.tokens import FieldVocab
from zeekml.flows.table import conn_table
from zeekml.parse import Quarantine, read_log

ROOT = Path(__file__).resolve().parents[3]
LOG = ROOT / "examples" / "iot23" / "conn.log.labeled"


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return conn_table(list(read_log(str(LOG), Quarantine())))


def test_category_ids_equal_the_per_row_lookup(table):
    voc = FieldVocab("service", "categorical", values=["dns", "irc"])
    values = [v or "" for v in table.column("service").to_pylist()]
    lookup = {v: 2 + i for i, v in enumerate(voc.values)}
    want = [1 if v == "" else lookup.get(v, 2 + len(voc.values)) for v in values]
    assert voc.encode_strings(table.column("service")).tolist() == want
    assert voc.encode_category(np.asarray(values, dtype=object)).tolist() == want
    assert set(want) == {1, 2, 3, 4}                  # unset, both known values and "other" occur


def test_port_and_int_ids_equal_the_per_row_lookup():
    voc = FieldVocab("port", "port", values=["80", "23", "123"])
    port = np.array([80.0, 23.0, 8080.0, 0.0, 50000.0, 123.0])
    missing = np.array([False, False, False, True, False, False])
    assert voc.encode_port(port, missing).tolist() == [2, 3, 6, 1, 7, 4]
    flags = FieldVocab("flags", "categorical", values=["2", "18"])
    assert flags.encode_ints(np.array([2.0, 18.0, 16.0, 2.0])).tolist() == [2, 3, 4, 2]


def test_flow_features_strings_equal_the_per_row_counts(table):
    f = FlowFeaturizer().fit(table)
    raw = f._raw(table)
    names = f.feature_names
    hist = [h or "" for h in table.column("history").to_pylist()]
    for c in HISTORY_LETTERS[:6]:
        j = names.index(next(n for n in names if n.startswith("history_") and n.endswith(
            c if c != "^" else "caret") and ("up_" if c.isupper() else "lo_") in n))
        assert raw[:, j].tolist() == [float(h.count(c)) for h in hist]
    assert raw[:, names.index("history_len")].tolist() == [float(len(h)) for h in hist]
    svc = [s or "" for s in table.column("service").to_pylist()]
    assert raw[:, names.index("service_none")].tolist() == [float(s == "") for s in svc]


def test_entity_vectors_equal_the_per_row_lookup(table):
    m = ModalityFeaturizer(seq_source="host")
    m.fit(table.slice(0, 600))
    ent = m._entities(table)
    oh, rh = table.column("id.orig_h").to_pylist(), table.column("id.resp_h").to_pylist()
    rp, pr = table.column("id.resp_p").to_pylist(), table.column("proto").to_pylist()
    d = m.skipgram.dim
    for i in range(0, table.num_rows, 97):
        for j, tok in enumerate((ip_token(oh[i]), ip_token(rh[i]), port_token(rp[i], pr[i]))):
            row, unseen = m.w2v.lookup(tok)
            assert np.array_equal(ent[i, j * d:(j + 1) * d], m.w2v.vectors[row])
            assert ent[i, 3 * d + j] == float(unseen)


def test_fit_transform_raw_is_fit_then_transform_with_its_raw_features(table):
    """Fitting computes the raw features once and scales them (``fit_transform``,
    ``fit_transform_raw``): the same bits as fitting, then transforming the table again."""
    two_pass = FlowFeaturizer().fit(table)
    x, raw = FlowFeaturizer().fit_transform_raw(table)
    np.testing.assert_array_equal(x, two_pass.transform(table))
    np.testing.assert_array_equal(raw, two_pass._raw(table))
    np.testing.assert_array_equal(FlowFeaturizer().fit_transform(table), x)
    f = FlowFeaturizer()
    ex, eraw = f.fit_transform_raw(table.slice(0, 0))      # no services: fewer columns
    assert ex.shape == eraw.shape == (0, len(f.feature_names)) and f.fitted


@pytest.mark.parametrize("hide_service", [False, True])
def test_transform_scales_column_by_column_to_the_bits_of_the_matrix_scaling(table, hide_service):
    """``transform`` scales each raw column on its own (``_scale_columns``); the result is
    ``_scale`` of the stacked raw matrix bit for bit, clipped values included (the scaling is
    fitted on the first 300 conns, so later conns fall outside its quantiles)."""
    f = FlowFeaturizer(hide_service=hide_service).fit(table.slice(0, 300))
    got = f.transform(table)
    want = f._scale(f._raw(table))
    raw = f._raw(table)
    assert ((raw < np.asarray(f.lo)) | (raw > np.asarray(f.hi))).any()      # clipping happens
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    assert f.transform(table.slice(0, 0)).shape == (0, len(f.feature_names))

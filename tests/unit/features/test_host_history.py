"""The host-history index shared by the token and autoencoder featurisers, and the uid join."""
from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa

from zeekml.features.host_history import HostHistory, distinct_codes, flow_rows


def conns() -> pa.Table:
    # host a: rows 0, 2, 4 (ts 10, 5, 20); host b: rows 1, 3; row 5: unset originator
    return pa.table({"id.orig_h": ["a", "b", "a", "b", "a", None],
                     "id.resp_h": ["x", "y", "x", None, "z", "x"],
                     "ts": [10.0, 1.0, 5.0, 2.0, 20.0, None]})


def test_order_rank_and_group_start():
    h = HostHistory.build(conns())
    # a's conns by ts (2, 0, 4), then b's (1, 3), then the unset host (5); codes by first appearance
    assert h.order.tolist() == [2, 0, 4, 1, 3, 5]
    assert h.rank[h.order].tolist() == list(range(6))
    assert h.group_start.tolist() == [0, 0, 0, 3, 3, 5]
    assert h.sorted_ts.tolist() == [5.0, 10.0, 20.0, 1.0, 2.0, 0.0]
    assert h.resp[0] == h.resp[2] == h.resp[5] != h.resp[4]


def test_window_holds_the_same_hosts_earlier_conns_within_max_age():
    h = HostHistory.build(conns())
    pos, valid = h.window(np.array([4, 1]), 3, max_age=None)
    assert h.order[pos[0]].tolist() == [2, 0, 4] and valid[0].all()
    assert valid[1].tolist() == [False, False, True] and h.order[pos[1, 2]] == 1
    pos, valid = h.window(np.array([4]), 3, max_age=12.0)      # ts 20: only conns from ts 8 on
    assert valid[0].tolist() == [False, True, True]


def test_of_shares_one_index_per_table_and_never_keeps_it_alive():
    t = conns()
    first = HostHistory.of(t)
    assert HostHistory.of(t) is first
    other = conns()
    assert HostHistory.of(other) is not first
    import zeekml.features.host_history as hh

    ref = hh._last[0]
    del t, other
    gc.collect()
    assert ref() is None


def test_distinct_codes_treat_unset_as_empty_and_any_type_as_strings():
    values, codes = distinct_codes(pa.chunked_array([["a", None], ["", "a"]]))
    assert values == ["a", ""] and codes.tolist() == [0, 1, 1, 0]
    values, codes = distinct_codes(pa.array([80, 443, 80], pa.uint16()))
    assert values == ["80", "443"] and codes.tolist() == [0, 1, 0]


def test_flow_rows_takes_the_last_record_of_a_uid_and_skips_unset_uids():
    got = flow_rows(pa.chunked_array([["u1", "u9", None, "", "u2"]]), pa.array(["u2", "u1", "u1", "", None]))
    assert got.tolist() == [2, -1, -1, -1, 0]

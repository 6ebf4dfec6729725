"""The earliest fraction of conns by time: ties keep input order, unset ts sorts last."""
import numpy as np
import pyarrow as pa

from zeekml.flows.select import earliest_rows, ts_sort_key


def test_earliest_rows_by_ts_with_ties_in_input_order():
    ts = np.array([5.0, 1.0, 3.0, 1.0, 9.0, 3.0])
    assert earliest_rows(ts, 0.5).tolist() == [1, 2, 3]        # 1.0, 1.0, then the first 3.0
    assert earliest_rows(ts, 1.0).tolist() == [0, 1, 2, 3, 4, 5]
    assert earliest_rows(ts, 0.01).tolist() == []
    assert earliest_rows(ts, 0.01, min_rows=1).tolist() == [1]
    assert earliest_rows(np.zeros(0), 0.3, min_rows=1).tolist() == []


def test_unset_ts_sorts_last():
    t = pa.table({"ts": pa.array([None, 2.0, None, 1.0], pa.float64())})
    key = ts_sort_key(t)
    assert key.tolist() == [np.inf, 2.0, np.inf, 1.0]
    assert earliest_rows(key, 0.5).tolist() == [1, 3]
    assert earliest_rows(key, 0.75).tolist() == [0, 1, 3]

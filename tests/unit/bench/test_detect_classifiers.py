"""bench/detect_classifiers.py's training draw on hand-built captures: ``--shots`` per class from
each capture's earliest 70% by time, ``--benign-shots`` redraws the benign ones only, rows are
offset into the pooled table, and a presumed-benign set (``--extra-benign``) is all Benign. The
benchmark itself (which needs ../shared/data) is run by hand."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest
from bench_script import load_bench



@pytest.fixture(scope="module")
def dcl():
    return load_bench("detect_classifiers")


def capture(n: int, y: list[int]) -> tuple[pa.Table, np.ndarray]:
    # ts descending: the earliest 70% by time are the table's last rows
    return pa.table({"ts": pa.array(np.arange(n, 0, -1, dtype=np.float64))}), np.array(y)


def test_training_draw(dcl, monkeypatch):
    caps = {"a": capture(20, [1, 0] * 10), "b": capture(10, [0] * 9 + [-1]), "zat": capture(5, [0] * 5)}
    monkeypatch.setattr(dcl, "load_any", lambda name: caps[name])
    table, labels, rows, early = dcl.training_set(["a", "b"], shots=3, seed=0)
    assert table.num_rows == 30 and list(labels[:2]) == ["Malicious", "Benign"] and labels[29] is None
    # earliest 70% of a: its rows 6-19 (ts 14..1); of b: rows 3-9, offset by 20
    assert sorted(early) == list(range(6, 20)) + list(range(23, 30))
    assert set(rows) <= set(early)
    a_rows, b_rows = rows[rows < 20], rows[rows >= 20]
    assert sorted(labels[a_rows]) == ["Benign"] * 3 + ["Malicious"] * 3
    assert len(b_rows) == 3 and set(labels[b_rows]) == {"Benign"}
    # --benign-shots: the malicious draw is kept, the benign one redrawn at its own size
    _, _, rows5, _ = dcl.training_set(["a", "b"], shots=3, seed=0, benign_shots=5)
    a5 = rows5[rows5 < 20]
    assert set(a5[labels[a5] == "Malicious"]) == set(a_rows[labels[a_rows] == "Malicious"])
    assert (labels[a5] == "Benign").sum() == 5
    assert (rows5 >= 20).sum() == 5 and 29 not in rows5     # b's unlabeled row never drawn
    # a presumed-benign set joins as Benign conns, drawn like a capture's
    _, lab_x, rows_x, _ = dcl.training_set(["a", "zat"], shots=3, seed=0)
    assert set(lab_x[20:]) == {"Benign"} and (rows_x >= 20).sum() == 3

"""``scoring.context.InContext.explain``: asked about no rows, it does not ask its detector
(``score_batch`` asks every detector, also those that top no alert, and a learned detector
featurises its whole context to explain none)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from zeekml.scoring.context import InContext


class _Explains:
    name, note = "toy", "ZeekML::Anomalous_Flow"

    def __init__(self):
        self.calls: list[list[int]] = []

    def explain(self, table, rows, top=3):
        self.calls.append(list(rows))
        return [f"row {r} of {table.num_rows}" for r in rows]


def test_explain_of_no_rows_does_not_reach_the_detector():
    det = _Explains()
    ctx = pa.table({"ts": [1.0, 2.0, 3.0, 4.0]})
    wrapped = InContext(det, ctx, np.array([1, 3]))
    assert wrapped.explain(ctx.take([1, 3]), np.zeros(0, dtype=np.int64)) == []
    assert det.calls == []
    # rows are the targets' positions in the context
    assert wrapped.explain(ctx.take([1, 3]), np.array([1])) == ["row 3 of 4"]
    assert det.calls == [[3]]

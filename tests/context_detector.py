"""A toy detector with a time context whose scoring a test can hold back, for the live-scoring
tests (``tests/e2e/test_watch_release_schedule.py``, ``tests/unit/pipeline/test_live_release_queue.py``).
Imported as ``from context_detector import ContextCounter`` (pytest puts tests/ on sys.path for
its conftest, as for ``tiny``)."""
from __future__ import annotations

import os

import numpy as np


class ContextCounter:
    """Score = conns of its context within ``back`` s before the scored conn (its ``ts``
    included), times ``1 + orig_bytes % 7`` with ``by_bytes`` (so that some conns alert and
    others do not). With ``gate`` (a pipe's read end) each call first reads one byte from it,
    so the process that runs it scores a release only when the test lets it."""

    note = "ZeekML::Anomalous_Flow"
    forward_context_seconds = 0.0

    def __init__(self, name: str, back: float, gate: int | None = None, by_bytes: bool = False):
        self.name, self.context_seconds, self.gate, self.by_bytes = name, back, gate, by_bytes

    def fit(self, table):
        return self

    def score(self, table):
        if self.gate is not None:
            os.read(self.gate, 1)
        ts = table.column("ts").to_numpy(zero_copy_only=False)
        order = np.sort(ts)
        n = (np.searchsorted(order, ts, "right")
             - np.searchsorted(order, ts - self.context_seconds, "left")).astype(float)
        if self.by_bytes:
            n *= 1.0 + np.asarray(table.column("orig_bytes").to_pylist(), dtype=float) % 7
        return n

    def explain(self, table, rows, top=3):
        return [f"{self.name}: {len(table)} conns in context" for _ in rows]

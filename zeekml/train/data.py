"""Labeled conn data for the three tasks: label mapping, temporal splits, k-shot draws.

The protocol (``docs/models.md``): k shots per class are drawn from the earliest 70% of a file by time;
the latest 30% is the test set and is never touched in training.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.flows.select import earliest_rows, ts_sort_key
from zeekml.flows.table import conn_table, is_conn_batch
from zeekml.parse import Quarantine, read_log
from zeekml.sources.archive import expand_inputs

log = logging.getLogger(__name__)

LABEL_FIELDS = ("label", "detailedlabel", "detailed-label", "service")
TRAIN_SHARE = 0.7


def canonical_label_field(field: str) -> str:
    if field not in LABEL_FIELDS:
        raise ValueError(f"unknown label field {field!r}; use one of {', '.join(LABEL_FIELDS)}")
    return "detailedlabel" if field == "detailed-label" else field


def load_conns(paths: list[str] | str, quarantine: Quarantine | None = None,
               failed: list[ZeekmlError] | None = None) -> pa.Table:
    """Conn records of every file under ``paths`` (labels kept when the logs carry them).

    A file that cannot be read to its end raises, unless ``failed`` is given: then its error is
    appended there, its records before the failure (a damaged archive's before the damage) are
    kept, with a warning, and the other files are read."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    q = quarantine or Quarantine()
    batches = []
    for f in expand_inputs(paths):
        try:
            for b in read_log(f, q):
                if is_conn_batch(b):
                    batches.append(b)
        except ZeekmlError as e:
            if failed is None:
                raise
            failed.append(e)
            log.warning("%s", e)
    return conn_table(batches)


def labels_of(table: pa.Table, field: str) -> np.ndarray:
    """Class names per row (object array); ``None`` where a row has no usable label.

    ``label``: as written (Benign, Malicious, Background...). ``detailedlabel``: the family; an
    unset family on a benign row is ``Benign`` (IoT-23 writes ``-`` for benign rows).
    ``service``: Zeek's DPI service; unset is ``none`` (conns Zeek could not identify).
    """
    field = canonical_label_field(field)
    vals = np.asarray(table.column(field).to_pylist(), dtype=object)
    if field == "service":
        return np.array([v if v else "none" for v in vals], dtype=object)
    if field == "detailedlabel":
        base = np.asarray(table.column("label").to_pylist(), dtype=object)
        out = []
        for d, b in zip(vals, base):
            if d not in (None, "", "-", "(empty)"):
                out.append(d)
            elif b is not None and str(b).lower().startswith("benign"):
                out.append("Benign")
            else:
                out.append(None)
        return np.array(out, dtype=object)
    return np.array([v if v not in (None, "", "-") else None for v in vals], dtype=object)


def temporal_split(table: pa.Table, train_share: float = TRAIN_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the earliest ``train_share`` by ts and of the rest (ties by input order)."""
    train = earliest_rows(ts_sort_key(table), train_share)
    return train, np.setdiff1d(np.arange(table.num_rows), train)


def sample_shots(labels: np.ndarray, candidates: np.ndarray, k: int | None = None,
                 fraction: float | None = None, seed: int = 0) -> np.ndarray:
    """At most ``k`` rows per class (or ``fraction`` of each class) among ``candidates``."""
    rng = np.random.default_rng(seed)
    chosen = []
    cand = np.asarray([i for i in candidates if labels[i] is not None], dtype=np.int64)
    for cls in sorted({labels[i] for i in cand}):
        rows = cand[np.asarray([labels[i] == cls for i in cand])]
        if k is not None:
            n = min(k, len(rows))
        elif fraction is not None:
            n = max(1, int(round(len(rows) * fraction)))
        else:
            n = len(rows)
        chosen.append(rng.choice(rows, size=n, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


@dataclass
class Prediction:
    """What a model says about each conn of a table, in table order.

    ``proba``: ``[n, len(classes)]`` or None for pure anomaly models; ``score``: anomaly score
    (higher = more anomalous) or None; ``reason``: why a row could not be placed (None = placed).
    """

    classes: list[str]
    proba: np.ndarray | None
    score: np.ndarray | None = None
    reason: list[str | None] | None = None

    def pred(self) -> list[str | None]:
        if self.proba is None:
            return [None] * (len(self.score) if self.score is not None else 0)
        idx = np.argmax(self.proba, axis=1)
        out = [self.classes[i] for i in idx]
        if self.reason is not None:
            out = [None if r else p for p, r in zip(out, self.reason)]
        return out

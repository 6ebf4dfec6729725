"""Values a baseline never had: which of a conn's categorical fields (proto, conn state,
service, responder port class, each ``history`` letter) take a value that no baseline conn takes.

Why a detector needs it beside its model: the IsolationForest splits only on features that vary
in the data it grows its trees on, so a field constant on the baseline (every conn UDP, no
``history`` with ``S``) is never split on, and a conn whose novelty lies there alone looks
ordinary (CTU-21-1's TCP/443 C&C SYNs against a DNS and NTP baseline: IsolationForest AUROC 0.91,
docs/results/detection.md). Counting unseen values restores what the trees cannot see.

Calibrating on the baseline's own conns stays honest: a baseline conn is scored with itself left
out (``held_out_unseen``), so it counts as unseen exactly the values only it has. The share of
such conns is the Good-Turing estimate of how often a new normal conn brings a value not seen
yet, which is what a threshold set on them then allows for.
"""
from __future__ import annotations

import numpy as np

from zeekml._core.errors import ModelError

Fields = dict[str, tuple[np.ndarray, np.ndarray]]
"""``{field: (distinct values, code of each conn)}``, as ``FlowParts.categorical`` gives them."""


class UnseenValues:
    """How many of the baseline's conns had each value of each field; per conn, the fields
    whose value none had.

    Fitted on the baseline's ``Fields``; ``unseen`` (new conns) and ``held_out_unseen`` (the
    baseline's own conns, each left out of the counts) answer ``[n, n_fields]`` bool in
    ``fields`` order, ``text`` names a conn's unseen values."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}

    @property
    def fields(self) -> list[str]:
        return list(self.counts)

    def fit(self, fields: Fields) -> UnseenValues:
        """Count each value of each field over the baseline's conns."""
        self.counts = {}
        for name, (values, codes) in fields.items():
            per_code = np.bincount(codes, minlength=len(values))
            seen: dict[str, int] = {}
            for v, c in zip(values, per_code.tolist()):
                if c:
                    seen[str(v)] = seen.get(str(v), 0) + int(c)
            self.counts[name] = seen
        return self

    def _value_counts(self, fields: Fields) -> np.ndarray:
        """The baseline count of each conn's value, ``[n, n_fields]`` int64."""
        if not self.counts:
            raise ModelError("UnseenValues used before fit")
        missing = [f for f in self.counts if f not in fields]
        if missing:
            raise ValueError(f"fields {missing} missing from the conns given")
        n = len(next(iter(fields.values()))[1]) if fields else 0
        out = np.zeros((n, len(self.counts)), dtype=np.int64)
        for j, (name, seen) in enumerate(self.counts.items()):
            values, codes = fields[name]
            # one lookup per distinct value, indexed by each conn's code: no per-conn Python
            per_value = np.fromiter((seen.get(str(v), 0) for v in values), dtype=np.int64,
                                    count=len(values))
            out[:, j] = per_value[codes]
        return out

    def unseen(self, fields: Fields) -> np.ndarray:
        """Which fields of each conn take a value no baseline conn took, ``[n, n_fields]``."""
        return self._value_counts(fields) == 0

    def held_out_unseen(self, fields: Fields) -> np.ndarray:
        """``unseen`` of the baseline's own conns (the ``fields`` ``fit`` was given, row for
        row), each with itself left out of the counts: the values it alone has."""
        return self._value_counts(fields) <= 1

    def text(self, fields: Fields, row: int, most: int = 6) -> str:
        """The unseen values of conn ``row`` of ``fields`` in words (empty when none), the
        first ``most`` of them and how many more, e.g. ``proto tcp, history with S, history
        without D`` (a notice's message stays a line a person reads)."""
        unseen = self.unseen({k: (v, c[row:row + 1]) for k, (v, c) in fields.items()})[0]
        words = []
        for name, new in zip(self.counts, unseen):
            if not new:
                continue
            values, codes = fields[name]
            v = str(values[codes[row]])
            if name.startswith("history "):
                words.append(f"history {v} {name.split(' ', 1)[1]}")
            else:
                words.append(f"{name} {v or 'unset'}")
        more = f" and {len(words) - most} more" if len(words) > most else ""
        return ", ".join(words[:most]) + more

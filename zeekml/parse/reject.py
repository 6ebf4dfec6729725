"""Quarantine of malformed records: nothing is dropped silently."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable

SAMPLE_BYTES = 512


@dataclass(frozen=True)
class RejectedRecord:
    """A record that could not be parsed. ``sample`` holds at most ``SAMPLE_BYTES`` of it."""

    path: str
    line: int
    offset: int
    reason: str
    sample: bytes

    def describe(self) -> str:
        return f"{self.path}:{self.line} (byte {self.offset}): {self.reason}"


class Quarantine:
    """Counts rejected records by reason and hands each to ``sink`` (e.g. a quarantine file).

    Keeps at most ``keep`` records in memory for summaries; the counts are always exact.
    """

    def __init__(self, sink: Callable[[RejectedRecord], None] | None = None, keep: int = 100):
        self.sink = sink
        self.keep = keep
        self.records: list[RejectedRecord] = []
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.by_file: collections.Counter[str] = collections.Counter()
        self.count = 0

    def reject(self, path: str, line: int, offset: int, reason: str, raw: bytes) -> None:
        rec = RejectedRecord(path, line, offset, reason, bytes(raw[:SAMPLE_BYTES]))
        self.count += 1
        self.by_reason[reason.split(":")[0]] += 1
        self.by_file[path] += 1
        if len(self.records) < self.keep:
            self.records.append(rec)
        if self.sink is not None:
            self.sink(rec)

"""Quarantine of malformed records: nothing is dropped silently.

Every rejected record is counted exactly (per reason and per file). The records handed to the
sink (the ``quarantine.jsonl`` writer) are a capped sample: at most ``sample_cap`` per file and
reason, because a small hostile input (a ``.gz`` of newlines) can hold millions of bad lines and
the quarantine file would otherwise grow without bound.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

SAMPLE_BYTES = 512
DEFAULT_SAMPLE_CAP = 1000
"""Records kept per (file, reason) in the quarantine sink by default."""


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


def reason_class(reason: str) -> str:
    """The part of a reason that names the kind of damage (``invalid JSON: ...`` -> ``invalid JSON``)."""
    return reason.split(":")[0]


class Quarantine:
    """Counts rejected records by reason and hands a capped sample to ``sink``.

    Args:
        sink: called with each record kept in the sample (e.g. the quarantine file writer).
        keep: records kept in memory (``records``) for summaries.
        sample_cap: records handed to ``sink`` per (file, reason class); ``None`` for no cap.
            The counts (``count``, ``by_reason``, ``by_file``) always include every record;
            ``suppressed`` counts, per (file, reason class), those left out of the sample.
    """

    def __init__(self, sink: Callable[[RejectedRecord], None] | None = None, keep: int = 100,
                 sample_cap: int | None = DEFAULT_SAMPLE_CAP):
        if sample_cap is not None and sample_cap < 0:
            raise ValueError(f"sample_cap must be >= 0, got {sample_cap}")
        self.sink = sink
        self.keep = keep
        self.sample_cap = sample_cap
        self.records: list[RejectedRecord] = []
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.by_file: collections.Counter[str] = collections.Counter()
        self.suppressed: collections.Counter[tuple[str, str]] = collections.Counter()
        self._sampled: collections.Counter[tuple[str, str]] = collections.Counter()
        self.count = 0

    @property
    def suppressed_count(self) -> int:
        """Records counted but not handed to the sink (over the per file and reason cap)."""
        return sum(self.suppressed.values())

    def reject(self, path: str, line: int, offset: int, reason: str, raw: bytes) -> None:
        cls = reason_class(reason)
        self.count += 1
        self.by_reason[cls] += 1
        self.by_file[path] += 1
        key = (path, cls)
        if self.sample_cap is not None and self._sampled[key] >= self.sample_cap:
            if not self.suppressed[key]:
                log.warning("%s: more than %d records quarantined for %r; only the first %d are "
                            "stored, the counts stay exact", path, self.sample_cap, cls,
                            self.sample_cap)
            self.suppressed[key] += 1
            return
        self._sampled[key] += 1
        rec = RejectedRecord(path, line, offset, reason, bytes(raw[:SAMPLE_BYTES]))
        if len(self.records) < self.keep:
            self.records.append(rec)
        if self.sink is not None:
            self.sink(rec)

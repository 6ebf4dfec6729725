"""JSON-lines sinks: ``verdicts.jsonl`` (one line per scored conn) and the quarantine file."""
from __future__ import annotations

import json
import math
import os
from typing import Any

from zeekml._core.errors import OutputError
from zeekml.parse.reject import RejectedRecord
from zeekml.scoring.verdict import Verdict


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class JsonLinesWriter:
    """Appends one JSON object per line; each line is one ``write`` call."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.count = 0
        try:
            self._f = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", self.path) from e

    def write_obj(self, obj: dict) -> None:
        try:
            self._f.write(json.dumps(_clean(obj), separators=(",", ":")) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", self.path) from e
        self.count += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def verdict_record(v: Verdict) -> dict:
    return {
        "verdict_id": v.verdict_id, "uid": v.uid, "ts": v.ts,
        "id.orig_h": v.orig_h, "id.orig_p": v.orig_p, "id.resp_h": v.resp_h,
        "id.resp_p": v.resp_p, "proto": v.proto, "scores": v.scores, "score": v.score,
        "alert": v.alert, "note": v.note if v.alert else None, "model": v.model,
    }


def verdict_lines(verdicts: list[Verdict]) -> str:
    """The ``verdicts.jsonl`` lines of ``verdicts``, as ``VerdictWriter`` writes them (rendered
    where the verdicts are made, e.g. on a Dask worker, so only text travels)."""
    return "".join(json.dumps(_clean(verdict_record(v)), separators=(",", ":")) + "\n" for v in verdicts)


class VerdictWriter(JsonLinesWriter):
    """``verdicts.jsonl``: uid, ts, id fields, each detector's score, the combined score, alert."""

    def write(self, v: Verdict) -> None:
        self.write_obj(verdict_record(v))

    def write_lines(self, text: str, n: int) -> None:
        try:
            self._f.write(text)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", self.path) from e
        self.count += n


class QuarantineWriter(JsonLinesWriter):
    """``quarantine.jsonl``: every rejected record with file, line, byte offset and reason."""

    def write(self, r: RejectedRecord) -> None:
        self.write_obj({"path": r.path, "line": r.line, "offset": r.offset, "reason": r.reason,
                        "sample": r.sample.decode("utf-8", "backslashreplace")})

    __call__ = write

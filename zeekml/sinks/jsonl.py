"""JSON-lines sinks: one JSON object per line (the quarantine file; verdicts: ``sinks.verdicts``)."""
from __future__ import annotations

import json
import math
import os
from typing import Any

from zeekml._core.outfile import OUTPUT_MODE, PRIVATE_MODE, OutputFile
from zeekml.parse.reject import RejectedRecord

QUARANTINE_FILE = "quarantine.jsonl"


def clean_floats(v: Any) -> Any:
    """``v`` with non-finite floats (also as dict values, recursively) as ``None``: JSON has no
    NaN or Infinity."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: clean_floats(x) for k, x in v.items()}
    return v


def json_line(obj: dict) -> bytes:
    """One line of compact JSON, non-finite floats as null. Skips ``clean_floats``'s walk when
    every float is finite (the same bytes: it only turns non-finite floats into null)."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(clean_floats(obj), separators=(",", ":"))
    return text.encode() + b"\n"


class JsonLinesWriter:
    """Appends one JSON object per line to ``path``, or with ``path=None`` keeps the lines in
    memory (``take_lines``) for a caller that writes them itself (``zeekml watch`` appends and
    fsyncs each window's lines with its checkpoint). The file is opened with
    ``_core.outfile`` (no symlinks, mode ``MODE``); failures are ``OutputError``."""

    MODE = OUTPUT_MODE

    def __init__(self, path: str | os.PathLike | None):
        self.path = os.fspath(path) if path is not None else None
        self.count = 0
        self._lines: list[bytes] = []
        self._f = OutputFile(self.path, mode=self.MODE) if self.path is not None else None

    def write_obj(self, obj: dict) -> None:
        """Append ``obj`` as one line."""
        line = json_line(obj)
        if self._f is None:
            self._lines.append(line)
        else:
            self._f.write(line)
        self.count += 1

    def take_lines(self) -> list[bytes]:
        """In-memory mode: the lines written since the last call."""
        lines, self._lines = self._lines, []
        return lines

    def close(self) -> None:
        """Flush, fsync and close the file (nothing in memory mode); ``OutputError`` if that
        fails, the file is closed either way."""
        if self._f is not None:
            self._f.close()


class QuarantineWriter(JsonLinesWriter):
    """``quarantine.jsonl``: every rejected record with file, line, byte offset and reason.
    Mode 0600: the samples are raw input lines, which may come from files others cannot read."""

    MODE = PRIVATE_MODE

    def write(self, r: RejectedRecord) -> None:
        """Append one rejected record (the ``sample`` bytes as text, undecodable ones escaped)."""
        self.write_obj({"path": r.path, "line": r.line, "offset": r.offset, "reason": r.reason,
                        "sample": r.sample.decode("utf-8", "backslashreplace")})

    __call__ = write

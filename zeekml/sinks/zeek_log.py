"""Zeek-format log writers: ASCII TSV (header, escaping, ``#close``) and JSON lines."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from zeekml._core.outfile import OutputFile
from zeekml._core.zeek_format import (DEFAULT_SEPARATOR, DEFAULT_SET_SEPARATOR, format_close,
                                      format_header, format_record)


class ZeekLogWriter:
    """Writes records to ``path`` in Zeek's ASCII TSV format.

    Args:
        path: file to create (truncated, as Zeek does).
        log_path: the ``#path`` value, e.g. ``"conn"`` or ``"zeekml_notice"``.
        fields: ``(name, zeek_type)`` pairs in column order.
        open_ts: stamp for ``#open`` (default: now).

    Records are mappings from field name to Python value (``None`` = unset, containers as
    iterables, strings as ``str`` or ``bytes``).
    """

    def __init__(self, path: str | os.PathLike, log_path: str, fields: Sequence[tuple[str, str]],
                 open_ts: float | None = None, separator: bytes = DEFAULT_SEPARATOR,
                 set_separator: bytes = DEFAULT_SET_SEPARATOR):
        self.path = os.fspath(path)
        self.names = [f for f, _ in fields]
        self.types = [t for _, t in fields]
        self.separator = separator
        self.set_separator = set_separator
        self.count = 0
        # opened with _core.outfile (no symlinks, mode 0640); failures are OutputError
        self._f = OutputFile(self.path, append=True)
        self._f.write(format_header(log_path, self.names, self.types, separator, set_separator,
                                    open_ts))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record."""
        self._f.write(format_record((record.get(n) for n in self.names), self.types,
                                    self.separator, self.set_separator))
        self.count += 1

    def write_line(self, line: bytes) -> None:
        """Append one record already formatted for this log's fields (``format_record`` with
        its types and separators, ``\\n`` included)."""
        self._f.write(line)
        self.count += 1

    def close(self, close_ts: float | None = None) -> None:
        """Write ``#close``, fsync and close (closed even when that fails: ``OutputError``)."""
        if self._f.closed:
            return
        try:
            if not self._f.failed:
                self._f.write(format_close(close_ts, self.separator))
        finally:
            self._f.close()

    def __enter__(self) -> "ZeekLogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonLogWriter:
    """Zeek's JSON writer layout: one object per line, dotted keys, unset fields omitted."""

    def __init__(self, path: str, fields: Sequence[tuple[str, str]]):
        self.path = path
        self.names = [n for n, _ in fields]
        self.types = dict(fields)
        self.count = 0
        self._f = OutputFile(path)   # no symlinks, mode 0640; failures are OutputError

    def write(self, rec: dict) -> None:
        """Append one record."""
        obj = {}
        for n in self.names:
            v = rec.get(n)
            if v is None:
                continue
            t = self.types[n]
            if t in ("time", "interval"):
                v = round(v, 6)  # Zeek's JSON writer: microsecond precision
            elif t == "vector[interval]":
                v = [round(x, 6) for x in v]
            obj[n] = v
        self._f.write((json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8"))
        self.count += 1

    def close(self) -> None:
        """Flush, fsync and close (closed even when that fails: ``OutputError``)."""
        self._f.close()

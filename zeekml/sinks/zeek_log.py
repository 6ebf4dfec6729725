"""Zeek-format log writers: ASCII TSV (header, escaping, ``#close``) and JSON lines."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from zeekml._core.atomic import write_all
from zeekml._core.errors import OutputError
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
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            self._write(format_header(log_path, self.names, self.types, separator, set_separator,
                                      open_ts))
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", self.path) from e

    def _write(self, data: bytes) -> None:
        write_all(self._fd, data)

    def write(self, record: Mapping[str, Any]) -> None:
        line = format_record((record.get(n) for n in self.names), self.types, self.separator,
                             self.set_separator)
        try:
            self._write(line)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", self.path) from e
        self.count += 1

    def close(self, close_ts: float | None = None) -> None:
        if self._fd < 0:
            return
        try:
            self._write(format_close(close_ts, self.separator))
            os.fsync(self._fd)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", self.path) from e
        finally:
            os.close(self._fd)
            self._fd = -1

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
        try:
            self._f = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", path) from e

    def write(self, rec: dict) -> None:
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
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.count += 1

    def close(self) -> None:
        self._f.close()

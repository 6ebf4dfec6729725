"""Zeek JSON-lines logs (``LogAscii::use_json=T`` and json-streaming-logs) into Arrow batches.

Fast path: ``pyarrow.json`` on a block of complete lines. If the block holds a line it cannot
take (invalid JSON, a field whose type changes), the block is parsed line by line with ``json``
and the bad lines are quarantined. Both paths apply the same rules, so a line's fate never
depends on its neighbours; lines nested deeper than ``MAX_JSON_DEPTH``, invalid UTF-8 and lone
surrogates are quarantined before or instead of reaching pyarrow (it crashes on deep nesting
and passes invalid UTF-8 through). Known Zeek fields are cast to the Arrow types of
``zeek_types.arrow_type``; ``ts`` may be epoch seconds or ISO 8601 (``LogAscii::json_timestamps``).
Strings are kept as Zeek wrote them after JSON decoding (Zeek's own ``\\xHH`` text for invalid
UTF-8 stays as text, since JSON logs cannot tell it from a literal backslash).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from zeekml._core.zeek_format import container_element_type
from zeekml.parse.batch import LogBatch
from zeekml.parse.lines import MAX_JSON_DEPTH, LineFeeder, too_deep_lines
from zeekml.parse.zeek_types import KNOWN_FIELD_TYPES, arrow_type

log = logging.getLogger(__name__)

_TIME_FIELDS = {f for f, t in KNOWN_FIELD_TYPES.items() if t == "time"}
# A value of the wrong JSON type in these fields is a malformed record; other known fields
# (``service`` is a string in conn.log but a set in known_services.log) fall back to inference.
# Every conn field that is not text is strict, so a conn batch always casts to the conn schema.
STRICT_FIELDS = frozenset({
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "duration", "orig_bytes",
    "resp_bytes", "missed_bytes", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "local_orig", "local_resp", "ip_proto", "src_port", "dst_port"})

# JSON escapes of UTF-16 surrogates; only lines holding one need the (slower) Unicode check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads_line(line: bytes) -> Any:
    """``json.loads`` of one line that is not nested too deep (see ``too_deep_lines``).

    Raises ``ValueError`` for invalid JSON, invalid UTF-8 and strings holding a lone surrogate
    (``"\\ud800"``: valid JSON syntax, but no Unicode text, and Zeek never writes one).
    """
    try:
        obj = json.loads(line)
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:  # only if a caller skipped the depth check
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _SURROGATE_ESCAPE.search(line) and not _valid_unicode(obj):
        raise ValueError("lone UTF-16 surrogate in a string")
    return obj


def _valid_unicode(obj: Any) -> bool:
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def iso_to_epoch(value: str) -> float:
    """``2018-03-24T17:16:39.739898Z`` (or with an offset like ``+0200``) -> epoch seconds."""
    s = value.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    elif len(s) > 5 and s[-5] in "+-" and s[-4:].isdigit():
        s = s[:-2] + ":" + s[-2:]
    d = dt.datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    # exact to the microsecond: avoid float error from timestamp()
    delta = d - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return delta.days * 86400 + delta.seconds + delta.microseconds / 1e6


class LineBlockParser(LineFeeder):
    """JSON-lines formats: a block of whole lines at a time, parsed by ``parse_block``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._block_lines = 0
        self._too_deep: set[int] = set()   # lines of the current block nested too deep

    def _consume(self, block: bytes, final: bool) -> list[LogBatch]:
        if final:
            return self._block(block + b"\n", trailing_newline=False)
        return self._block(block)

    def _block(self, block: bytes, trailing_newline: bool = True) -> list[LogBatch]:
        first_line = self.line_no + 1
        start = self.offset
        self._block_lines = block.count(b"\n")
        # before any JSON parser sees the block: deep nesting crashes pyarrow and recurses in json
        self._too_deep = too_deep_lines(block)
        out = self.parse_block(block, first_line, start)
        nbytes = len(block) - (0 if trailing_newline else 1)
        self.offset += nbytes
        self.line_no += self._block_lines
        return out

    def iter_lines(self, block: bytes, first_line: int, start: int):
        """(line_no, offset, line) for each line of ``block``; empty and huge lines quarantined."""
        off = start
        for i, line in enumerate(block.split(b"\n")[:-1]):
            ln = first_line + i
            if len(line) > self.max_line_bytes:
                self.quarantine.reject(self.source, ln, off, f"line longer than {self.max_line_bytes} bytes", line)
            elif i in self._too_deep:
                self.quarantine.reject(self.source, ln, off,
                                       f"JSON nested deeper than {MAX_JSON_DEPTH} levels", line)
            elif not line.strip():
                self.quarantine.reject(self.source, ln, off, "empty line", line)
            else:
                yield ln, off, line
            off += len(line) + 1

    def parse_block(self, block: bytes, first_line: int, start: int) -> list[LogBatch]:
        raise NotImplementedError


class ZeekJsonParser(LineBlockParser):
    """Incremental Zeek JSON-lines parser (same ``feed``/``finish`` protocol as the TSV one)."""

    def parse_block(self, block: bytes, first_line: int, start: int) -> list[LogBatch]:
        table = None
        if b"\n\n" not in block and not block.startswith(b"\n") and b"\r" not in block \
                and len(block) < (64 << 20) and not self._too_deep and _is_utf8(block):
            try:
                table = pajson.read_json(
                    io.BytesIO(block),
                    read_options=pajson.ReadOptions(use_threads=True,
                                                     block_size=1 << 20),
                    parse_options=pajson.ParseOptions(newlines_in_values=False))
                table = self._normalise(table)
                if table.num_rows != self._block_lines:
                    table = None
            except (pa.ArrowException, ValueError, TypeError, OverflowError):
                # any surprise (even an Arrow IndexError on a list of nulls) -> the exact path
                table = None
        if table is None:
            table = self._slow(block, first_line, start)
        if table is None or table.num_rows == 0:
            return []
        return self._batches(table, first_line, start + len(block))

    def _batches(self, table: pa.Table, first_line: int, end_offset: int) -> list[LogBatch]:
        path = ""
        if "_path" in table.column_names and table.num_rows:
            first = table.column("_path")[0].as_py()
            # _path is a log name; anything else (a number, invalid UTF-8) names none
            path = first.decode("utf-8", "replace") if isinstance(first, bytes) else (
                first if isinstance(first, str) else "")
        types = {c: KNOWN_FIELD_TYPES.get(c, "") for c in table.column_names}
        parts = [(path, table)] if path else _split_by_log(self.source, table)
        return [LogBatch(p, b, types, self.source, first_line, end_offset)
                for p, part in parts for b in part.to_batches()]

    def _normalise(self, table: pa.Table) -> pa.Table:
        cols, names = [], []
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            cols.append(_cast_known(name, col))
            names.append(name)
        return pa.table(cols, names=names)

    def _slow(self, block: bytes, first_line: int, start: int) -> pa.Table | None:
        rows: list[dict[str, Any]] = []
        for ln, off, line in self.iter_lines(block, first_line, start):
            try:
                obj = loads_line(line)
            except ValueError as e:
                self.quarantine.reject(self.source, ln, off, f"invalid JSON: {e}", line)
                continue
            if not isinstance(obj, dict):
                self.quarantine.reject(self.source, ln, off, "JSON value is not an object", line)
                continue
            try:
                rows.append({k: _py_known(k, v) for k, v in obj.items()})
            except (ValueError, TypeError, OverflowError) as e:
                self.quarantine.reject(self.source, ln, off, f"bad value: {e}", line)
        if not rows:
            return None
        keys: dict[str, None] = {}
        for r in rows:
            keys.update(dict.fromkeys(r))
        cols = {}
        for k in keys:
            values = [r.get(k) for r in rows]
            zt = KNOWN_FIELD_TYPES.get(k)
            # the known type, else what Arrow infers, else JSON text: an unknown field never
            # costs a record (ints beyond 64 bits raise OverflowError in Arrow)
            try:
                if not zt:
                    raise pa.ArrowTypeError("unknown field")
                cols[k] = pa.array(values, type=arrow_type(zt))
            except (pa.ArrowException, TypeError, OverflowError):
                try:
                    cols[k] = pa.array(values)
                except (pa.ArrowException, TypeError, OverflowError):
                    cols[k] = pa.array([None if v is None else json.dumps(v, default=repr)
                                        for v in values], pa.string())
        return pa.table(cols)


def _is_utf8(block: bytes) -> bool:
    """Pyarrow's JSON reader passes invalid UTF-8 in strings through (to fail later, on use)."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


CONN_IDENTIFYING_FIELDS = frozenset({"conn_state", "id.orig_h", "id.resp_h", "proto"})
"""Fields every Zeek conn record has (Zeek's JSON leaves out unset fields, never these) and no
other Zeek log has all of: records holding them are conn records."""


def _split_by_log(source: str, table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The records of a block that carry no ``_path``, by log: ``conn`` for those with every
    field of ``CONN_IDENTIFYING_FIELDS``, whatever the file is called (``flows.json``); the
    others by the file name's first part (``dns`` for ``dns.log``), so that a warning names
    the log a user gave by mistake. Decided record by record, so that a record's log never
    depends on the others read in its block."""
    other = os.path.basename(source).split(".")[0]
    if not CONN_IDENTIFYING_FIELDS.issubset(table.column_names):
        return [(other, table)]
    # a field Zeek left out of a record is null in the block's table
    is_conn = pc.is_valid(table.column("conn_state"))
    for c in CONN_IDENTIFYING_FIELDS - {"conn_state"}:
        is_conn = pc.and_(is_conn, pc.is_valid(table.column(c)))
    flags = is_conn.to_numpy(zero_copy_only=False)
    # runs of records of one log, in file order (read_log's promise)
    starts = [0, *(np.flatnonzero(flags[1:] != flags[:-1]) + 1).tolist()]
    ends = [*starts[1:], len(flags)]
    return [("conn" if flags[a] else other, table.slice(a, b - a)) for a, b in zip(starts, ends)]


def _cast_known(name: str, col: pa.Array) -> pa.Array:
    try:
        return _cast_known_strict(name, col)
    except (ValueError, TypeError, OverflowError, pa.ArrowException):
        if name in STRICT_FIELDS:
            raise
        return col


def _cast_known_strict(name: str, col: pa.Array) -> pa.Array:
    """The column of a known field in its Arrow type; the same rules as ``_py_known_strict``
    (a value of the wrong JSON type raises), so a record's fate does not depend on whether its
    block took the fast path."""
    zt = KNOWN_FIELD_TYPES.get(name)
    if zt is None:
        return col
    target = arrow_type(zt)
    t = col.type
    if pa.types.is_null(t):
        return pa.nulls(len(col), target)
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t)
    if name in _TIME_FIELDS and is_text:
        return pa.array([None if v is None else iso_to_epoch(v) for v in col.to_pylist()], pa.float64())
    if zt in ("time", "interval", "double"):
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise ValueError(f"{name}: not a number")
        # unsafe: a count above 2**53 is a valid (rounded) time, as float() makes it in the slow path
        return pc.cast(col, target, safe=False)
    if zt in ("count", "counter", "port", "int"):
        if not pa.types.is_integer(t):
            raise ValueError(f"{name}: not an integer")
        return pc.cast(col, target)
    if zt == "bool":
        if not pa.types.is_boolean(t):
            raise ValueError(f"{name}: not a bool")
        return col
    if container_element_type(zt) is not None:
        if not pa.types.is_list(t):
            raise ValueError(f"{name}: not a list")
        return pc.cast(col, target)
    if not is_text:
        raise ValueError(f"{name}: not a string")
    return pc.cast(col, target)


def _py_known(name: str, value: Any) -> Any:
    try:
        return _py_known_strict(name, value)
    except (ValueError, TypeError, OverflowError):
        if name in STRICT_FIELDS:
            raise
        return value


def _py_known_strict(name: str, value: Any) -> Any:
    zt = KNOWN_FIELD_TYPES.get(name)
    if zt is None or value is None:
        return value
    if zt == "time" and isinstance(value, str):
        return iso_to_epoch(value)
    if zt in ("time", "interval", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: not a number")
        return float(value)
    if zt in ("count", "counter", "port", "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: not an integer")
        if zt == "port" and not 0 <= value < 65536:
            raise ValueError(f"{name}: port out of range")
        if zt in ("count", "counter") and not 0 <= value < 1 << 64:
            raise ValueError(f"{name}: count out of range")
        if zt == "int" and not -(1 << 63) <= value < 1 << 63:
            raise ValueError(f"{name}: int out of range")
        return value
    if zt == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: not a bool")
        return value
    if zt.startswith(("set[", "vector[")):
        if not isinstance(value, list):
            raise ValueError(f"{name}: not a list")
        elem = zt[zt.index("[") + 1:-1]
        if elem in ("string",):
            return [None if v is None else str(v).encode("utf-8", "surrogatepass") for v in value]
        return [None if v is None else str(v) for v in value]
    if zt == "string":
        if not isinstance(value, str):
            raise ValueError(f"{name}: not a string")
        return value.encode("utf-8", "surrogatepass")
    if not isinstance(value, str):
        raise ValueError(f"{name}: not a string")
    return value

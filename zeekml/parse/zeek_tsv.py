"""Zeek ASCII (TSV) logs, and the CSV conversions of them, into Arrow batches.

Two paths give the same result. The fast path hands a run of clean lines to ``pyarrow.csv`` with
every column as raw bytes, then applies Zeek's rules column-wise (unset, ``(empty)``, escapes,
types). Any surprise (a field-count mismatch, a value that does not fit its type, CR bytes, empty
lines, a multi-byte separator) sends that run to the exact line-by-line path, which quarantines
what it cannot read and keeps the rest.

``ZeekTsvParser`` is incremental (``feed`` bytes, ``finish`` at end of file), so the live tailer
and the batch reader share it; it only consumes complete lines, so a partial last line waits.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from zeekml._core.zeek_format import (EMPTY, ZeekHeader, apply_meta_line, container_element_type,
                                      parse_field, parse_separator_line, unescape)
from zeekml.parse.batch import LogBatch
from zeekml.parse.lines import DEFAULT_MAX_LINE_BYTES, LineFeeder
from zeekml.parse.reject import Quarantine
from zeekml.parse.zeek_types import KNOWN_FIELD_TYPES, arrow_type

log = logging.getLogger(__name__)

PACKED_SEPARATOR = b"   "  # IoT-23 packs `tunnel_parents   label   detailed-label` into one column
_STRING_ARROW = (pa.string(), pa.binary())
# The exact path's number syntax (zeek_format.parse_scalar), for whole values
_FLOAT_PATTERN = r"^(?:-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?nan|-?inf)$"
_COUNT_PATTERN = r"^[0-9]{1,20}$"
_INT_PATTERN = r"^-?[0-9]{1,19}$"


# Arrow scalars built from buffers, never from Python values: pyarrow's ``pa.scalar`` and
# ``pa.array`` (and a compute function handed a Python value, which calls them) first ask
# whether the value is a pandas object, and that question imports pandas (~0.23 s of CPU, 364
# modules). With these the fast path of a clean log never converts a Python value, so
# ``zeekml cat`` does not load pandas (test_lazy_imports).
def _binary_scalar(value: bytes | None) -> pa.Scalar:
    """``pa.scalar(value, pa.binary())`` without the pandas check (None: the null scalar)."""
    if value is None:
        return pa.nulls(1, pa.binary())[0]
    offsets = pa.py_buffer(np.array([0, len(value)], dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(value)])[0]


def _bool_scalar(value: bool) -> pa.Scalar:
    """``pa.scalar(value)`` of Arrow's bool type without the pandas check."""
    return pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x01" if value else b"\x00")])[0]


def _int32_array(values: np.ndarray) -> pa.Array:
    """``pa.array(values)`` of an int32 ndarray without the pandas check (no nulls)."""
    values = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def _int32_scalar(value: int) -> pa.Scalar:
    """``pa.scalar(value, pa.int32())`` without the pandas check."""
    return _int32_array(np.array([value], dtype=np.int32))[0]


def _int32_numpy(values: pa.Array) -> np.ndarray:
    """A null-free int32 array's values as an ndarray view: ``to_numpy`` converts through
    pyarrow's pandas conversion, which imports pandas."""
    if values.type != pa.int32() or values.null_count:
        raise ValueError(f"_int32_numpy takes a null-free int32 array, not {values.type} "
                         f"with {values.null_count} null(s)")
    return np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:values.offset + len(values)]


_NULL = _binary_scalar(None)
_EMPTY_BYTES = _binary_scalar(b"")
_T, _F = _binary_scalar(b"T"), _binary_scalar(b"F")
_TRUE, _FALSE = _bool_scalar(True), _bool_scalar(False)
_ZERO = _int32_scalar(0)


class _FastPathRefused(Exception):
    """The fast path cannot take this run exactly; use the line-by-line path."""


class UnusableHeader(ValueError):
    """A header no record can be read by (its records are quarantined, naming its line)."""


# conn fields the conn table takes as numbers or bools (``flows.CONN_SCHEMA`` and its aliases)
CONN_TYPED_FIELDS = frozenset({
    "ts", "id.orig_p", "id.resp_p", "duration", "orig_bytes", "resp_bytes", "local_orig",
    "local_resp", "missed_bytes", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "ip_proto", "src_port", "dst_port"})


def _type_problem(name: str, zeek_type: str, conn: bool) -> str | None:
    """Why ``zeek_type`` cannot describe column ``name``, or ``None`` when it can.

    Zeek logs hold no nested containers. In a conn log (``conn`` or unnamed ``#path``), a
    field the conn table takes as a number or bool (ports, counts, times, ``local_orig``)
    must be declared with Zeek's type for it: the conn table and the flow features rely on it.
    """
    elem = container_element_type(zeek_type)
    if elem is not None and container_element_type(elem) is not None:
        return f"{name}: nested container type {zeek_type!r} (Zeek logs cannot hold one)"
    if not conn or name not in CONN_TYPED_FIELDS:
        return None
    known = KNOWN_FIELD_TYPES[name]
    if arrow_type(zeek_type) != arrow_type(known):
        return f"{name}: declared {zeek_type!r}, but {name} is a {known}"
    return None


@dataclass
class _Schema:
    """Column layout derived from a complete header."""

    fields: list[str]          # output column names (packed column expanded)
    types: list[str]           # Zeek types of the output columns
    raw_ncols: int             # columns on a line
    packed_at: int | None      # raw column index that packs several fields
    packed_n: int              # how many fields it packs

    @classmethod
    def from_header(cls, header: ZeekHeader) -> "_Schema":
        """The layout of ``header``; raises ``UnusableHeader`` when no record could be read by it."""
        fields, types = list(header.fields), list(header.types)
        if len(types) < len(fields):  # CSV conversions have no #types: use the known ones
            types = types + [KNOWN_FIELD_TYPES.get(f, "string") for f in fields[len(types):]]
        packed_at, packed_n = None, 1
        for i, f in enumerate(fields):
            if "   " in f:
                names = f.split("   ")
                ptypes = types[i].split("   ") if "   " in types[i] else [types[i]] * len(names)
                if len(ptypes) != len(names):
                    raise UnusableHeader(f"packed column {f!r} has {len(names)} names but "
                                         f"{len(ptypes)} types")
                fields = fields[:i] + names + fields[i + 1:]
                types = types[:i] + ptypes + types[i + 1:]
                packed_at, packed_n = i, len(names)
                break
        seen: set[str] = set()
        conn = not header.path or header.path.startswith("conn")
        for f, t in zip(fields, types):
            if f in seen:
                raise UnusableHeader(f"field {f!r} appears twice in #fields")
            seen.add(f)
            problem = _type_problem(f, t, conn)
            if problem:
                raise UnusableHeader(problem)
        raw = len(fields) - (packed_n - 1)
        return cls(fields, types, raw, packed_at, packed_n)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(f, arrow_type(t)) for f, t in zip(self.fields, self.types)])


class ZeekTsvParser(LineFeeder):
    """Incremental Zeek TSV parser.

    Args:
        source: file name used in batches and quarantine records.
        quarantine: where malformed records go.
        max_line_bytes: lines longer than this are quarantined (memory stays bounded).
        start_offset: byte offset of the first byte fed (for resuming at a checkpoint).
        header: a header read earlier (when resuming past it).
        csv: the input is a CSV conversion (comma separated, a plain header row of names).
    """

    def __init__(self, source: str, quarantine: Quarantine,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, start_offset: int = 0,
                 start_line: int = 0, header: ZeekHeader | None = None, csv: bool = False):
        super().__init__(source, quarantine, max_line_bytes, start_offset, start_line)
        self.header = header
        self.csv = csv
        self._schema = None
        self._header_problem: str | None = None   # quarantine reason for records under a bad header
        if header and header.is_complete():
            self._set_schema(header, b"")
        self.fast_rows = 0
        self.slow_rows = 0

    def _consume(self, block: bytes, final: bool) -> list[LogBatch]:
        out: list[LogBatch] = []
        self._process(block, out, final=final)
        return out

    def _process(self, block: bytes, out: list[LogBatch], final: bool = False) -> None:
        pos, n = 0, len(block)
        while pos < n:
            if self.csv and self.header is None:
                nl = block.find(b"\n", pos)
                end = n if nl < 0 else nl + 1
                self._csv_header(block[pos:end])
                self._advance(end - pos, 1)
                pos = end
                continue
            if block[pos] == 0x23 and not self.csv:  # '#': a meta line
                nl = block.find(b"\n", pos)
                end = n if nl < 0 else nl + 1
                self._meta(block[pos:end])
                self._advance(end - pos, 1)
                pos = end
                continue
            nxt = -1 if self.csv else block.find(b"\n#", pos)
            end = n if nxt < 0 else nxt + 1
            run = block[pos:end]
            nlines = run.count(b"\n") + (1 if final and not run.endswith(b"\n") else 0)
            batch = self._data(run, final and end == n)
            if batch is not None:
                out.append(batch)
            self._advance(end - pos, nlines)
            pos = end

    def _advance(self, nbytes: int, nlines: int) -> None:
        self.offset += nbytes
        self.line_no += nlines

    def _csv_header(self, line: bytes) -> None:
        names = line.rstrip(b"\n").rstrip(b"\r").split(b",")
        h = ZeekHeader(separator=b",", set_separator=b"|", path="conn")
        h.fields = [x.decode("utf-8", "replace") for x in names]
        h.types = [KNOWN_FIELD_TYPES.get(f, "string") for f in h.fields]
        self.header = h
        self._set_schema(h, line)

    def _set_schema(self, h: ZeekHeader, line: bytes) -> None:
        try:
            self._schema = _Schema.from_header(h)
        except UnusableHeader as e:
            self._unusable(line, str(e))

    def _unusable(self, line: bytes, problem: str) -> None:
        """Quarantine a header line no record can be read by; its records follow it there.

        Not raised: ``watch`` would stop at this line on every restart. The warning and the
        quarantine record name the file and the header's line.
        """
        ln = self.line_no + 1
        self._schema = None
        self._header_problem = f"record under an unusable header: see line {ln}"
        log.warning("%s:%d: unusable header (%s); its records are quarantined", self.source, ln,
                    problem)
        self.quarantine.reject(self.source, ln, self.offset, f"unusable header: {problem}", line)

    def _meta(self, line: bytes) -> None:
        if line.startswith(b"#separator "):
            self.header = ZeekHeader(separator=parse_separator_line(line) or b"\t")
            self._schema = None
            self._header_problem = None
            return
        if self.header is None:
            self.header = ZeekHeader()
        apply_meta_line(self.header, line)
        key = line[1:].split(self.header.separator, 1)[0]
        if key in (b"fields", b"types"):
            h = self.header
            self._header_problem = None
            if h.fields and h.types and len(h.fields) == len(h.types):
                self._set_schema(h, line)
            elif h.fields and h.types:
                self._unusable(line, "#fields and #types differ in length")

    def _data(self, run: bytes, final: bool) -> LogBatch | None:
        first_line = self.line_no + 1
        if self._schema is None:
            reason = self._header_problem or "record before a complete #fields/#types header"
            offset = self.offset
            for i, line in enumerate(_lines(run)):
                self.quarantine.reject(self.source, first_line + i, offset, reason, line)
                offset += len(line) + 1
            return None
        try:
            batch = self._fast(run)
            self.fast_rows += batch.num_rows
        except _FastPathRefused:
            batch = self._slow(run, first_line)
            self.slow_rows += batch.num_rows
        if batch.num_rows == 0:
            return None
        return LogBatch(log_path=self.header.path or "", batch=batch,
                        zeek_types=dict(zip(self._schema.fields, self._schema.types)),
                        source=self.source, first_line=first_line,
                        end_offset=self.offset + len(run))

    # fast path -----------------------------------------------------------------------------

    def _fast(self, run: bytes) -> pa.RecordBatch:
        h, sch = self.header, self._schema
        if (len(h.separator) != 1 or not h.set_separator or b"\r" in run or b"\x00" in run
                or run.startswith(b"\n") or b"\n\n" in run):
            raise _FastPathRefused
        if not run.endswith(b"\n"):
            run = run + b"\n"
        arr = np.frombuffer(run, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        if nl.size and int(np.max(np.diff(nl, prepend=-1))) > self.max_line_bytes:
            raise _FastPathRefused
        # A line with the wrong field count goes to the exact path before Arrow sees it: Arrow
        # decodes such a row as UTF-8 for its invalid-row handler, and on invalid UTF-8 that
        # raises inside Arrow and prints a traceback on stderr for every hostile line.
        seps = np.flatnonzero(arr == h.separator[0])
        if np.any(np.diff(np.searchsorted(seps, nl), prepend=0) != sch.raw_ncols - 1):
            raise _FastPathRefused
        names = [f"c{i}" for i in range(sch.raw_ncols)]
        # Every column is read as raw bytes and converted by ``_convert`` with the exact path's
        # rules: Arrow's own number parsing trims spaces and takes ``0x50``, which the exact path
        # refuses, and a record's fate must not depend on the path its run took.
        col_types = {c: pa.binary() for c in names}
        bad_rows = []

        def on_invalid(row):
            bad_rows.append(row)
            return "skip"

        try:
            table = pacsv.read_csv(
                io.BytesIO(run),
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                               block_size=max(len(run) + 1, 1 << 20)),
                parse_options=pacsv.ParseOptions(
                    delimiter=h.separator.decode("latin-1"), quote_char=False,
                    escape_char=False, double_quote=False, newlines_in_values=False,
                    ignore_empty_lines=False, invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types=col_types, true_values=["T"], false_values=["F"],
                    null_values=[h.unset_field.decode("latin-1")], strings_can_be_null=True,
                    quoted_strings_can_be_null=False),
            )
        except (pa.ArrowException, ValueError) as e:
            raise _FastPathRefused from e
        if bad_rows or table.num_rows != nl.size:
            raise _FastPathRefused
        try:
            return self._fast_columns(table)
        except pa.ArrowException as e:
            raise _FastPathRefused from e

    def _fast_columns(self, table: pa.Table) -> pa.RecordBatch:
        h, sch = self.header, self._schema
        cols: list[pa.Array] = []
        for i in range(sch.raw_ncols):
            col = table.column(i).combine_chunks()
            if i == sch.packed_at:
                unset = _binary_scalar(h.unset_field)
                parts = pc.split_pattern(pc.fill_null(col, unset), PACKED_SEPARATOR)
                if pc.any(pc.not_equal(pc.list_value_length(parts),
                                       _int32_scalar(sch.packed_n))).as_py():
                    raise _FastPathRefused
                for j in range(sch.packed_n):
                    sub = pc.list_element(parts, _int32_scalar(j))
                    sub = pc.if_else(pc.equal(sub, unset), _NULL, sub)
                    cols.append(self._convert(sub, sch.types[i + j]))
            elif col.type != pa.binary():
                cols.append(col)
            else:
                k = i if sch.packed_at is None or i < sch.packed_at else i + sch.packed_n - 1
                cols.append(self._convert(col, sch.types[k]))
        return pa.RecordBatch.from_arrays(cols, schema=sch.arrow_schema())

    def _convert(self, col: pa.Array, zeek_type: str) -> pa.Array:
        h = self.header
        elem = container_element_type(zeek_type)
        if elem is not None:
            return self._convert_container(col, elem)
        target = arrow_type(zeek_type)
        if zeek_type == "time":
            masked = pc.match_substring_regex(col, r"^X+\.X+$")
            col = pc.if_else(masked, _NULL, col)
        if target in _STRING_ARROW:
            col = pc.if_else(pc.equal(col, _binary_scalar(h.empty_field)), _EMPTY_BYTES, col)
            col = _unescape_column(col)
            if target == pa.string():
                try:
                    return col.cast(pa.string())
                except pa.ArrowInvalid as e:
                    raise _FastPathRefused from e
            return col
        if target == pa.bool_():
            is_t = pc.equal(col, _T)
            ok = pc.or_(is_t, pc.equal(col, _F))
            if not pc.all(pc.fill_null(ok, _TRUE)).as_py():
                raise _FastPathRefused
            return is_t
        pattern = _INT_PATTERN if zeek_type == "int" else (
            _COUNT_PATTERN if pa.types.is_integer(target) else _FLOAT_PATTERN)
        if not pc.all(pc.fill_null(pc.match_substring_regex(col, pattern), _TRUE)).as_py():
            raise _FastPathRefused
        try:
            return col.cast(pa.string()).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise _FastPathRefused from e

    def _convert_container(self, col: pa.Array, elem: str) -> pa.Array:
        h = self.header
        empty, unset = _binary_scalar(h.empty_field), _binary_scalar(h.unset_field)
        is_empty = pc.fill_null(pc.equal(col, empty), _FALSE)
        parts = pc.split_pattern(pc.if_else(is_empty, _EMPTY_BYTES, col), h.set_separator)
        # "" split gives [""]; an (empty) container must be []
        lengths = pc.if_else(is_empty, _ZERO, pc.list_value_length(parts))
        flat = parts.flatten()
        if len(flat):
            # drop the single "" element of (empty) rows
            parent = pc.list_parent_indices(parts)
            flat = pc.filter(flat, pc.invert(pc.take(is_empty, parent)))
            flat = pc.if_else(pc.equal(flat, unset), _NULL, flat)
            flat = pc.if_else(pc.equal(flat, empty), _EMPTY_BYTES, flat)
        values = self._convert_scalar_values(flat, elem)
        offsets = np.zeros(len(col) + 1, dtype=np.int32)
        np.cumsum(_int32_numpy(pc.fill_null(lengths, _ZERO)), out=offsets[1:])
        mask = pc.is_null(col)
        return pa.ListArray.from_arrays(_int32_array(offsets), values, mask=mask,
                                        type=pa.list_(arrow_type(elem)))

    def _convert_scalar_values(self, flat: pa.Array, elem: str) -> pa.Array:
        target = arrow_type(elem)
        if target in _STRING_ARROW:
            flat = _unescape_column(flat)
            if target == pa.string():
                try:
                    return flat.cast(pa.string())
                except pa.ArrowInvalid as e:
                    raise _FastPathRefused from e
            return flat
        if pc.any(pc.fill_null(pc.match_substring(flat, "\\"), _FALSE)).as_py():
            raise _FastPathRefused
        return self._convert(flat, elem)

    # exact path ----------------------------------------------------------------------------

    def _slow(self, run: bytes, first_line: int) -> pa.RecordBatch:
        sch = self._schema
        columns: list[list] = [[] for _ in sch.fields]
        offset = self.offset
        for i, line in enumerate(_lines(run)):
            line_no = first_line + i
            line_offset = offset
            offset += len(line) + 1
            values = self._parse_line(line, line_no, line_offset)
            if values is None:
                continue
            for c, v in zip(columns, values):
                c.append(v)
        arrays = []
        for _name, zt, values in zip(sch.fields, sch.types, columns):
            arrays.append(pa.array(values, type=arrow_type(zt)))
        return pa.RecordBatch.from_arrays(arrays, schema=sch.arrow_schema())

    def _parse_line(self, line: bytes, line_no: int, line_offset: int) -> list | None:
        h, sch = self.header, self._schema

        def reject(reason: str) -> None:
            self.quarantine.reject(self.source, line_no, line_offset, reason, line)

        if not line:
            reject("empty line")
            return None
        if len(line) > self.max_line_bytes:
            reject(f"line longer than {self.max_line_bytes} bytes")
            return None
        if b"\x00" in line:  # Zeek writes bytes < 0x20 as \xHH: a raw NUL is not Zeek's output
            reject("raw NUL byte")
            return None
        parts = line.split(h.separator)
        if len(parts) != sch.raw_ncols:
            reject(f"field count: expected {sch.raw_ncols}, got {len(parts)}")
            return None
        if sch.packed_at is not None:
            sub = parts[sch.packed_at].split(PACKED_SEPARATOR)
            if len(sub) != sch.packed_n:
                reject(f"packed column: expected {sch.packed_n} parts, got {len(sub)}")
                return None
            parts = parts[:sch.packed_at] + sub + parts[sch.packed_at + 1:]
        values = []
        for name, zt, raw in zip(sch.fields, sch.types, parts):
            try:
                v = parse_field(raw, zt, h)
                values.append(_to_arrow_value(v, zt))
            except (ValueError, UnicodeDecodeError) as e:
                reject(f"bad value in {name} ({zt}): {e}")
                return None
        return values


def _lines(run: bytes) -> list[bytes]:
    lines = run.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _to_arrow_value(v, zeek_type: str):
    """Bytes of addr/enum types become str (strict UTF-8), as the Arrow schema says."""
    if v is None:
        return None
    elem = container_element_type(zeek_type)
    if elem is not None:
        return [_to_arrow_value(x, elem) for x in v]
    if isinstance(v, bytes) and arrow_type(zeek_type) == pa.string():
        return v.decode("utf-8")
    return v


def _unescape_column(col: pa.Array) -> pa.Array:
    """Apply ``unescape`` to the values that hold a backslash; the others pass untouched."""
    if len(col) == 0:
        return col
    needs = pc.fill_null(pc.match_substring(col, "\\"), _FALSE)
    if not pc.any(needs).as_py():
        return col
    idx = np.flatnonzero(needs.to_numpy(zero_copy_only=False))
    values = col.to_pylist()
    for i in idx:
        values[i] = unescape(values[i])
    return pa.array(values, type=pa.binary())


__all__ = ["ZeekTsvParser", "EMPTY"]

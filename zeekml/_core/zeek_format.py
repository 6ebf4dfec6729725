"""Zeek ASCII log format: escaping, header lines and typed values.

Shared by the reader (``zeekml.parse``) and the writers (``zeekml.sinks``) so that both sides
agree byte for byte. The rules follow Zeek's ``src/threading/formatters/Ascii.cc`` and
``src/logging/writers/ascii/Ascii.cc`` (see ZEEK-FORMAT.md in the shared docs).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

UNSET = b"-"
EMPTY = b"(empty)"
DEFAULT_SEPARATOR = b"\t"
DEFAULT_SET_SEPARATOR = b","

_HEX = b"0123456789abcdef"
_UNESCAPE_RE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def unescape(raw: bytes) -> bytes:
    """Undo Zeek's escaping left to right: ``\\\\`` -> ``\\``, ``\\xHH`` -> byte; anything else stays."""
    if b"\\" not in raw:
        return raw

    def repl(m: re.Match) -> bytes:
        tok = m.group(1)
        if tok == b"\\":
            return b"\\"
        return bytes((int(tok[1:], 16),))

    return _UNESCAPE_RE.sub(repl, raw)


def _hex(b: int) -> bytes:
    return b"\\x" + bytes((_HEX[b >> 4], _HEX[b & 15]))


def _invalid_utf8_spans(value: bytes) -> list[tuple[int, int]]:
    """Byte ranges of ``value`` that are not part of a valid UTF-8 sequence."""
    spans = []
    pos = 0
    while pos < len(value):
        try:
            value[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            spans.append((pos + e.start, pos + e.end))
            pos += e.end
    return spans


_NEEDS_ESCAPE = re.compile(rb"[\x00-\x1f\x7f\\]")
"""A byte ``escape`` never leaves as it is: control bytes and the backslash."""


def escape(value: bytes | str, separator: bytes = DEFAULT_SEPARATOR,
           set_separator: bytes | None = None, first_field: bool = False) -> bytes:
    """Escape one string value for a Zeek TSV field.

    ``set_separator`` is given for container elements (then ``,`` becomes ``\\x2c``).
    ``first_field`` marks the first column of a line, where a leading ``#`` must be escaped so
    the record is not read as a meta line.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if value == b"":
        return EMPTY
    if value == UNSET or value == EMPTY:
        return _hex(value[0]) + value[1:]
    if (value.isascii() and _NEEDS_ESCAPE.search(value) is None
            and (not separator or separator not in value)
            and (not set_separator or set_separator not in value)):
        # nothing to escape (most values: addresses, uids, a notice's msg): the byte loop
        # below was most of the time of writing a notice
        return b"\\x23" + value[1:] if first_field and value[:1] == b"#" else value
    invalid = _invalid_utf8_spans(value) if not value.isascii() else []
    bad_pos = set()
    for a, b in invalid:
        bad_pos.update(range(a, b))
    out = bytearray()
    sep0 = separator[0] if separator else None
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == 0x5C:  # backslash
            out += b"\\\\"
        elif c < 0x20 or c == 0x7F or i in bad_pos:
            out += _hex(c)
        elif sep0 is not None and c == sep0 and value.startswith(separator, i):
            out += _hex(c)
        elif set_separator and value.startswith(set_separator, i):
            out += _hex(c)
        else:
            out.append(c)
        i += 1
    if first_field and out[:1] == b"#":
        out[0:1] = b"\\x23"
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# header

@dataclass
class ZeekHeader:
    """The ``#`` meta lines of a Zeek TSV log."""

    separator: bytes = DEFAULT_SEPARATOR
    set_separator: bytes = DEFAULT_SET_SEPARATOR
    empty_field: bytes = EMPTY
    unset_field: bytes = UNSET
    path: str = ""
    open: str | None = None
    fields: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    def is_complete(self) -> bool:
        return bool(self.fields)


def parse_separator_line(line: bytes) -> bytes:
    """``#separator \\x09`` -> ``b"\\t"``. The value is hex-escaped and may be several bytes."""
    value = line[len(b"#separator "):].rstrip(b"\n")
    return unescape(value)


def apply_meta_line(header: ZeekHeader, line: bytes) -> None:
    """Update ``header`` with one ``#key<sep>value`` line (``#separator`` handled by the caller)."""
    body = line[1:].rstrip(b"\n")
    sep = header.separator
    key, _, rest = body.partition(sep)
    key_s = key.decode("utf-8", "replace")
    if key_s == "set_separator":
        header.set_separator = unescape(rest)
    elif key_s == "empty_field":
        header.empty_field = unescape(rest)
    elif key_s == "unset_field":
        header.unset_field = unescape(rest)
    elif key_s == "path":
        header.path = rest.decode("utf-8", "replace")
    elif key_s == "open":
        header.open = rest.decode("utf-8", "replace")
    elif key_s == "fields":
        header.fields = [f.decode("utf-8", "replace") for f in rest.split(sep)]
    elif key_s == "types":
        header.types = [t.decode("utf-8", "replace") for t in rest.split(sep)]


def zeek_timestamp(ts: float | None = None) -> str:
    """Zeek's ``#open``/``#close`` stamp (local time, ``%Y-%m-%d-%H-%M-%S``)."""
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(time.time() if ts is None else ts))


def format_header(path: str, fields: Sequence[str], types: Sequence[str],
                  separator: bytes = DEFAULT_SEPARATOR, set_separator: bytes = DEFAULT_SET_SEPARATOR,
                  open_ts: float | None = None) -> bytes:
    """The header block Zeek writes at the top of a TSV log."""
    sep = separator
    sep_hex = b"".join(_hex(b) for b in sep)
    lines = [
        b"#separator " + sep_hex,
        b"#set_separator" + sep + set_separator,
        b"#empty_field" + sep + EMPTY,
        b"#unset_field" + sep + UNSET,
        b"#path" + sep + path.encode(),
        b"#open" + sep + zeek_timestamp(open_ts).encode(),
        b"#fields" + sep + sep.join(f.encode() for f in fields),
        b"#types" + sep + sep.join(t.encode() for t in types),
    ]
    return b"\n".join(lines) + b"\n"


def format_close(close_ts: float | None = None, separator: bytes = DEFAULT_SEPARATOR) -> bytes:
    return b"#close" + separator + zeek_timestamp(close_ts).encode() + b"\n"


# ---------------------------------------------------------------------------------------------
# typed values

CONTAINER_RE = re.compile(r"^(set|vector|table)\[(.+)\]$")


def container_element_type(zeek_type: str) -> str | None:
    """``set[string]`` -> ``string``; ``None`` for scalar types."""
    m = CONTAINER_RE.match(zeek_type.strip())
    return m.group(2) if m else None


_COUNT_RE = re.compile(rb"[0-9]{1,20}")
_INT_RE = re.compile(rb"-?[0-9]{1,19}")
_FLOAT_RE = re.compile(rb"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?nan|-?inf")
_MASKED_TIME_RE = re.compile(rb"X+\.X+")  # btest's canonifier masks ts this way


def parse_scalar(raw: bytes, zeek_type: str) -> Any:
    """Convert an already-unescaped scalar field to a Python value.

    time/interval/double -> float, count/int/port -> int, bool -> bool, everything else
    (string, addr, enum, subnet, pattern, func) -> bytes. Raises ``ValueError`` when the text
    does not fit the type.
    """
    t = zeek_type
    if t in ("time", "interval", "double"):
        if not _FLOAT_RE.fullmatch(raw):
            raise ValueError(f"not a number: {raw[:40]!r}")
        return float(raw)
    if t in ("count", "counter", "port"):
        if not _COUNT_RE.fullmatch(raw):
            raise ValueError(f"not a count: {raw[:40]!r}")
        v = int(raw)
        if v >= (1 << 16 if t == "port" else 1 << 64):
            raise ValueError(f"{t} out of range: {raw[:40]!r}")
        return v
    if t == "int":
        if not _INT_RE.fullmatch(raw):
            raise ValueError(f"not an int: {raw[:40]!r}")
        v = int(raw)
        if not -(1 << 63) <= v < 1 << 63:
            raise ValueError(f"int out of range: {raw[:40]!r}")
        return v
    if t == "bool":
        if raw == b"T":
            return True
        if raw == b"F":
            return False
        raise ValueError(f"not a bool: {raw[:40]!r}")
    return raw


def parse_field(raw: bytes, zeek_type: str, header: ZeekHeader) -> Any:
    """Raw (still escaped) field text -> typed Python value; ``None`` for unset.

    Containers become lists of typed elements; ``(empty)`` becomes ``[]`` or ``b""``.
    """
    if raw == header.unset_field:
        return None
    if zeek_type == "time" and _MASKED_TIME_RE.fullmatch(raw):
        return None
    elem = container_element_type(zeek_type)
    if elem is not None:
        if raw == header.empty_field:
            return []
        out = []
        for part in raw.split(header.set_separator):
            if part == header.unset_field:
                out.append(None)
            elif part == header.empty_field:
                if parse_scalar_kind(elem) != "bytes":
                    raise ValueError(f"(empty) as a {elem} element")
                out.append(b"")
            else:
                out.append(parse_scalar(unescape(part), elem))
        return out
    if raw == header.empty_field:
        if parse_scalar_kind(zeek_type) == "bytes":
            return b""
        raise ValueError(f"(empty) in a {zeek_type} field")
    return parse_scalar(unescape(raw), zeek_type)


def parse_scalar_kind(zeek_type: str) -> str:
    if zeek_type in ("time", "interval", "double"):
        return "float"
    if zeek_type in ("count", "counter", "port", "int"):
        return "int"
    if zeek_type == "bool":
        return "bool"
    return "bytes"


def format_value(value: Any, zeek_type: str, separator: bytes = DEFAULT_SEPARATOR,
                 set_separator: bytes = DEFAULT_SET_SEPARATOR, first_field: bool = False) -> bytes:
    """Python value -> escaped field text, as Zeek's ASCII writer would print it."""
    if value is None:
        return UNSET
    elem = container_element_type(zeek_type)
    if elem is not None:
        items = list(value)
        if not items:
            return EMPTY
        # An empty string element is written as nothing, so that a one-element set holding ""
        # is not confused with the empty set "(empty)".
        return set_separator.join(
            UNSET if v is None else b"" if v in (b"", "") else
            _format_scalar(v, elem, separator, set_separator) for v in items)
    return _format_scalar(value, zeek_type, separator, None, first_field)


def _format_scalar(value: Any, zeek_type: str, separator: bytes, set_separator: bytes | None,
                   first_field: bool = False) -> bytes:
    t = zeek_type
    if t in ("time", "interval"):
        return b"%.6f" % float(value)
    if t == "double":
        v = float(value)
        if math.isnan(v):
            return b"nan"
        if math.isinf(v):
            return b"inf" if v > 0 else b"-inf"
        return b"%.6f" % v
    if t == "bool":
        return b"T" if value else b"F"
    if t in ("count", "counter", "port", "int"):
        return b"%d" % int(value)
    return escape(value, separator, set_separator, first_field)


def format_record(values: Iterable[Any], types: Sequence[str], separator: bytes = DEFAULT_SEPARATOR,
                  set_separator: bytes = DEFAULT_SET_SEPARATOR) -> bytes:
    """One whole TSV line (with its ``\\n``) for the given values in ``#fields`` order."""
    parts = [format_value(v, t, separator, set_separator, first_field=(i == 0))
             for i, (v, t) in enumerate(zip(values, types))]
    return separator.join(parts) + b"\n"

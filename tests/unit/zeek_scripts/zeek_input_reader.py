"""Zeek's Input framework ASCII reader, emulated in Python for tests (no Zeek needed).

The rules are Zeek's own (zeek/zeek src/input/readers/ascii/Ascii.cc and
src/threading/formatters/Ascii.cc), as a real Zeek 8.2.2 applied them to zeekml's verdict file:

- a data line is split on the separator the way ``std::getline`` splits it: an empty field
  between two separators is the empty string, but an empty LAST field is not a field at all, so
  such a line has too few fields and is ignored ("Not enough fields in line ...");
- the unset marker ``-`` makes a field unset, in every type; an unset field that the record does
  not declare ``&optional`` makes Zeek drop the line;
- a string (or enum) field is unescaped for ``\\xHH`` only (``get_unescaped_string``): ``\\\\``
  stays two backslashes, and ``(empty)`` is the literal text ``(empty)``;
- only a set or vector field equal to ``(empty)`` is empty; otherwise its elements are split on
  the set separator.

``read`` returns the records Zeek would build and the lines it would drop.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

UNSET = object()
"""The value of an unset field (Zeek: the field is absent, ``v?$f`` is false)."""

_HEX = re.compile(rb"\\x([0-9a-fA-F]{2})")


def get_unescaped_string(raw: bytes) -> bytes:
    """Zeek's ``util::get_unescaped_string``: ``\\xHH`` to the byte, nothing else."""
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def getline_split(line: bytes, sep: bytes) -> list[bytes]:
    """Fields as ``while (getline(stream, s, sep))`` yields them: no trailing empty field."""
    parts = line.split(sep)
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def parse_value(raw: bytes, zeek_type: str, empty_field: bytes = b"(empty)",
                unset_field: bytes = b"-", set_separator: bytes = b",") -> object:
    """One field as Zeek's ASCII formatter parses it (``Ascii::ParseValue``)."""
    if raw == unset_field:
        return UNSET
    if zeek_type.startswith(("set[", "vector[")):
        if raw == empty_field:
            return []
        elem = zeek_type[zeek_type.index("[") + 1:-1]
        return [parse_value(x, elem, empty_field, unset_field, set_separator)
                for x in raw.split(set_separator)]
    if zeek_type in ("string", "enum"):
        return get_unescaped_string(raw)
    if zeek_type == "addr":
        return get_unescaped_string(raw).strip().decode()
    if zeek_type in ("time", "interval", "double"):
        return float(raw)
    if zeek_type in ("count", "int", "port"):
        return int(raw.split(b"/")[0])
    if zeek_type == "bool":
        return raw == b"T"
    raise ValueError(f"no emulation for Zeek type {zeek_type}")


@dataclass
class ZeekRead:
    records: list[dict[str, object]] = field(default_factory=list)
    dropped: list[tuple[bytes, str]] = field(default_factory=list)


def read(data: bytes, columns: list[tuple[str, str]], optional: set[str]) -> ZeekRead:
    """Read ``data`` (a whole file) as Zeek's Input framework reads it for a record of
    ``columns`` (``(name, type)``, dotted names for nested records), ``optional`` naming the
    ``&optional`` ones."""
    out = ZeekRead()
    sep = b"\t"
    positions: dict[str, int] = {}
    for line in data.split(b"\n"):
        if line.startswith(b"#separator "):
            sep = get_unescaped_string(line.split(b" ", 1)[1])
            continue
        if line.startswith(b"#fields"):
            names = [n.decode() for n in line.split(sep)[1:]]
            positions = {n: i for i, n in enumerate(names)}
            continue
        if not line or line.startswith(b"#"):
            continue
        fields = getline_split(line, sep)
        rec: dict[str, object] = {}
        why = ""
        for name, typ in columns:
            pos = positions[name]
            if pos >= len(fields):
                why = "not enough fields"
                break
            value = parse_value(fields[pos], typ)
            if value is UNSET and name not in optional:
                why = f"{name} is not optional but unset"
                break
            rec[name] = value
        if why:
            out.dropped.append((line, why))
        else:
            out.records.append(rec)
    return out

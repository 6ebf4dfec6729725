"""Read declarations out of Zeek scripts with zeekscript's parse tree (no Zeek needed).

Used by the tests to compare the Zeek side (record declarations, notice types) with the Python
side (``VERDICT_FIELDS``, ``FLOW_FEATURES_FIELDS``, ``NOTE_TYPES``), so the two cannot drift.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

import zeekscript

REPO = pathlib.Path(__file__).resolve().parents[3]
SCRIPTS = REPO / "zeek-scripts" / "scripts"

# Zeek's built-in record types, as their loggable fields (what the ASCII writer prints).
BUILTIN_RECORDS: dict[str, list[tuple[str, str]]] = {
    "conn_id": [("orig_h", "addr"), ("orig_p", "port"), ("resp_h", "addr"), ("resp_p", "port")],
}

# Zeek type spelling in a script -> spelling in a log's #types line.
SCALAR_TYPES = {"time", "interval", "string", "addr", "port", "count", "int", "double", "bool",
                "subnet", "pattern"}
BUILTIN_ENUMS = {"transport_proto", "Notice::Type", "Log::ID"}


class ZeekParseError(Exception):
    pass


def parse(path: pathlib.Path | str) -> zeekscript.Script:
    """Parse a Zeek script; raise ``ZeekParseError`` with the line when it does not parse."""
    script = zeekscript.Script(pathlib.Path(path))
    if not script.parse():
        line, lineno, msg = script.get_error()
        raise ZeekParseError(f"{path}:{lineno}: {msg}: {line!r}")
    return script


def zeek_script_cli_parse(path: pathlib.Path | str) -> subprocess.CompletedProcess:
    """Run ``zeek-script parse FILE`` (exit 0 when it parses, non-zero on a syntax error)."""
    code = "import sys; from zeekscript.zeek_script import zeek_script; sys.exit(zeek_script())"
    return subprocess.run([sys.executable, "-c", code, "parse", str(path)],
                          capture_output=True, text=True, timeout=60)


def _text(script: zeekscript.Script, node) -> str:
    return script.get_content(node.start_byte, node.end_byte).decode()


def _child(node, typ: str):
    for ch in node.nonerr_children:
        if ch.type == typ:
            return ch
    return None


def record_decls(script: zeekscript.Script) -> dict[str, list[tuple[str, str, bool]]]:
    """``type X: record {...}`` declarations: name -> [(field, zeek type text, has &log)]."""
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for node, _ in script.traverse():
        if node.type != "type_decl":
            continue
        name_node = _child(node, "id")
        # the first "type" child is the keyword itself; the record body is the one with a
        # "record" child
        type_node = next((ch for ch in node.nonerr_children
                          if ch.type == "type" and _child(ch, "record") is not None), None)
        if name_node is None or type_node is None:
            continue
        fields = []
        for spec in type_node.nonerr_children:
            if spec.type != "type_spec":
                continue
            fname = _text(script, _child(spec, "id"))
            ftype = _text(script, _child(spec, "type"))
            attrs = _child(spec, "attr_list")
            has_log = attrs is not None and "&log" in _text(script, attrs).split()
            fields.append((fname, ftype, has_log))
        out[_text(script, name_node)] = fields
    return out


def optional_fields(script: zeekscript.Script, record: str) -> set[str]:
    """Names of the ``&optional`` fields of ``type <record>: record {...}``."""
    out: set[str] = set()
    for node, _ in script.traverse():
        if node.type != "type_decl" or _text(script, _child(node, "id")) != record:
            continue
        type_node = next((ch for ch in node.nonerr_children
                          if ch.type == "type" and _child(ch, "record") is not None), None)
        for spec in type_node.nonerr_children if type_node is not None else []:
            attrs = _child(spec, "attr_list") if spec.type == "type_spec" else None
            if attrs is not None and "&optional" in _text(script, attrs).split():
                out.add(_text(script, _child(spec, "id")))
    return out


def enum_redefs(script: zeekscript.Script, enum_name: str) -> list[str]:
    """Names added by ``redef enum <enum_name> += { ... }``, in order."""
    names: list[str] = []
    for node, _ in script.traverse():
        if node.type != "redef_enum_decl":
            continue
        if _text(script, _child(node, "id")) != enum_name:
            continue
        body = _child(node, "enum_body")
        for elem in body.nonerr_children if body else []:
            if elem.type == "enum_body_elem":
                names.append(_text(script, _child(elem, "id")))
    return names


def module_name(script: zeekscript.Script) -> str | None:
    for node, _ in script.traverse():
        if node.type == "module_decl":
            return _text(script, _child(node, "id"))
    return None


def log_type(zeek_type: str, enums: set[str]) -> str:
    """A script's type spelling -> the log's ``#types`` spelling (``vector of count`` ->
    ``vector[count]``, enum types -> ``enum``)."""
    t = " ".join(zeek_type.split())
    if t.startswith("vector of "):
        return f"vector[{log_type(t[len('vector of '):], enums)}]"
    if t.startswith("set[") and t.endswith("]"):
        return f"set[{log_type(t[4:-1], enums)}]"
    if t in SCALAR_TYPES:
        return t
    if t in enums or t in BUILTIN_ENUMS:
        return "enum"
    raise ValueError(f"no log type for Zeek type {zeek_type!r}")


def flatten(record: str, records: dict[str, list[tuple[str, str, bool]]], logged_only: bool,
            enums: set[str] = frozenset(), prefix: str = "") -> list[tuple[str, str]]:
    """The columns a record becomes: nested records expand to ``id.orig_h`` and so on.

    ``logged_only``: only ``&log`` fields (a log stream); otherwise every field (an Input
    framework record, which maps every field to a column).
    """
    if record in records:
        fields = records[record]
    elif record in BUILTIN_RECORDS:
        fields = [(n, t, True) for n, t in BUILTIN_RECORDS[record]]
    else:
        raise KeyError(record)
    out: list[tuple[str, str]] = []
    for name, typ, has_log in fields:
        if logged_only and not has_log:
            continue
        t = " ".join(typ.split())
        if t in records or t in BUILTIN_RECORDS:
            # a nested record: its own fields; a nested builtin record logs all its fields
            inner_logged = logged_only and t in records
            out.extend(flatten(t, records, inner_logged, enums, prefix + name + "."))
        else:
            out.append((prefix + name, log_type(t, enums)))
    return out

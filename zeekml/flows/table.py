"""Conn records of every source (Zeek TSV/JSON of any version, IoT-23, Suricata flows) in one schema.

Column names stay Zeek's. Text columns become UTF-8 ``string`` here (invalid bytes replaced:
features need text, the exact bytes stay in the parser's output); missing columns (``local_resp``
in Bro 2.x, ``ip_proto`` before Zeek 7.1, labels) are null.
"""
from __future__ import annotations

from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.errors import UnreadableInput
from zeekml.parse.batch import LogBatch

CONN_SCHEMA = pa.schema([
    ("ts", pa.float64()), ("uid", pa.string()),
    ("id.orig_h", pa.string()), ("id.orig_p", pa.uint16()),
    ("id.resp_h", pa.string()), ("id.resp_p", pa.uint16()),
    ("proto", pa.string()), ("service", pa.string()), ("duration", pa.float64()),
    ("orig_bytes", pa.uint64()), ("resp_bytes", pa.uint64()), ("conn_state", pa.string()),
    ("local_orig", pa.bool_()), ("local_resp", pa.bool_()), ("missed_bytes", pa.uint64()),
    ("history", pa.string()), ("orig_pkts", pa.uint64()), ("orig_ip_bytes", pa.uint64()),
    ("resp_pkts", pa.uint64()), ("resp_ip_bytes", pa.uint64()), ("ip_proto", pa.uint64()),
    ("label", pa.string()), ("detailedlabel", pa.string()),
])

# Other spellings of conn columns seen in real logs (Zeek's field-name-map test, IoT-23).
ALIASES = {
    "src": "id.orig_h", "src_port": "id.orig_p", "dst": "id.resp_h", "dst_port": "id.resp_p",
    "detailed-label": "detailedlabel", "detailed_label": "detailedlabel",
}
_REQUIRED = ("id.orig_h", "id.resp_h", "proto")


def is_conn_batch(batch: LogBatch) -> bool:
    """A batch of conn records: Zeek's conn log (any version) or Suricata flows."""
    names = {ALIASES.get(n, n) for n in batch.batch.schema.names}
    if batch.log_path not in ("conn", "") and not batch.log_path.startswith("conn"):
        return False
    return all(r in names for r in _REQUIRED) and ("conn_state" in names or "orig_pkts" in names)


def _text(v: object) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        # a lone surrogate (lossless bytes of ``cat``) cannot become Arrow UTF-8
        return v.encode("utf-8", "replace").decode("utf-8")
    if isinstance(v, (list, tuple)):
        return ",".join(_text(x) for x in v)
    return str(v)


def _to_string(col: pa.Array) -> pa.Array:
    """Any column as text: invalid UTF-8 replaced, containers joined by ``,``."""
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_binary(col.type):
        try:
            return col.cast(pa.string())
        except pa.ArrowInvalid:
            pass
    elif not pa.types.is_list(col.type) and not pa.types.is_nested(col.type):
        try:
            return pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return pa.array([None if v is None else _text(v) for v in col.to_pylist()], pa.string())


def _cast(col: pa.Array, field: pa.Field, source: str | None, line: int | None) -> pa.Array:
    """A non-text conn column in its schema type.

    The parsers only hand on conn columns of the right kind (JSON conn fields are strict, a TSV
    header declaring them otherwise is refused), so a failure here is a batch built elsewhere:
    a one-line error naming its file, never an Arrow traceback.
    """
    if col.type == field.type:
        return col
    try:
        # unsafe between floats only: a float column (time) needs no exactness check
        safe = not (pa.types.is_floating(field.type) and pa.types.is_integer(col.type))
        return pc.cast(col, field.type, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise UnreadableInput(f"conn field {field.name}: {col.type} values do not fit "
                              f"{field.type} ({str(e).splitlines()[0]})", source, line) from None


def conn_table(batches: Iterable[LogBatch | pa.RecordBatch | pa.Table]) -> pa.Table:
    """Normalise conn batches into one ``CONN_SCHEMA`` table, in input order.

    Raises ``UnreadableInput`` (naming the batch's file and first line) for a column that
    cannot take its conn type, which the parsers never produce.
    """
    parts = []
    for b in batches:
        rb = b.batch if isinstance(b, LogBatch) else b
        source = (b.source or None) if isinstance(b, LogBatch) else None
        line = (b.first_line or None) if isinstance(b, LogBatch) and source else None
        t = pa.Table.from_batches([rb]) if isinstance(rb, pa.RecordBatch) else rb
        cols = {}
        for name in t.column_names:
            canon = ALIASES.get(name, name)
            if canon in CONN_SCHEMA.names and canon not in cols:
                cols[canon] = t.column(name).combine_chunks()
        arrays = []
        for field in CONN_SCHEMA:
            col = cols.get(field.name)
            if col is None:
                arrays.append(pa.nulls(t.num_rows, field.type))
            elif field.type == pa.string():
                arrays.append(_to_string(col))
            else:
                arrays.append(_cast(col, field, source, line))
        parts.append(pa.Table.from_arrays(arrays, schema=CONN_SCHEMA))
    if not parts:
        return CONN_SCHEMA.empty_table()
    return pa.concat_tables(parts)

"""``verdicts.jsonl``: the one renderer of verdict lines, for batch, Dask and live scoring.

A line is the compact JSON (``json.dumps(..., separators=(",", ":"))``, non-finite floats as
``null``) of ``verdict_record(v)``. ``render_verdicts`` makes the same bytes column by column from
a ``VerdictBatch``: each field's text made column by column, the lines by one Arrow join (a
large batch) or one ``%``-format per conn, instead of a ``Verdict`` object and a ``json.dumps``
walk each conn (what lets ``zeekml watch`` keep up with a busy sensor).
``verdict_line`` renders one ``Verdict`` the general way; a test keeps the two byte-equal.

Every line has the same keys, in the same order, unset values ``null`` (``community_id`` of a
conn without one included); two keys are added at the end only where they apply:
``suricata_alerts`` (the Suricata alerts on the conn, ``scoring.evidence``) and then
``suppressed_by`` (``sinks.triage.mark_suppressed``). docs/triage.md has the format.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.outfile import OutputFile
from zeekml.scoring.verdict import Verdict, VerdictBatch
from zeekml.sinks.jsonl import clean_floats

VERDICTS_FILE = "verdicts.jsonl"

_enc_str = json.encoder.encode_basestring_ascii     # what json.dumps uses for str (ensure_ascii)
_frepr = float.__repr__                             # what json.dumps uses for a finite float
_irepr = int.__repr__

# A character ``encode_basestring_ascii`` escapes: anything outside space..tilde, ``"`` and ``\``.
_ESCAPED = r'[^ !#-\[\]-~]'

_LINE = ('{"verdict_id":"%s","uid":%s,"ts":%s,"id.orig_h":%s,"id.orig_p":%s,"id.resp_h":%s,'
         '"id.resp_p":%s,"proto":%s,"community_id":%s,"scores":{SCORES},"score":%s,"alert":%s,'
         '"note":%s,"model":%s}\n')

JOIN_MIN_ROWS = 2048
"""Batches of at least this many conns are rendered by one Arrow join of their fields' columns,
smaller ones by a ``%``-format per conn: the join's ~0.6 ms of fixed cost a batch made 100 conns
2.5x slower, and it pays from ~2,000 conns on (thread CPU per batch, the two ways: 1,000 conns
6.3 / 7.0 ms, 10,000 66 / 52 ms, 100,000 0.87 / 0.67 s)."""


def _line_format(names: list[str]) -> str:
    """``_LINE`` with one ``"name":%s`` per detector in ``scores`` (a ``%`` of a name escaped), so
    that a line is one ``%``-format with no per-conn join of its scores."""
    scores = ",".join(_enc_str(k).replace("%", "%%") + ":%s" for k in names)
    return _LINE.replace("{SCORES}", "{" + scores + "}")


def verdict_record(v: Verdict) -> dict:
    """The JSON object of one ``verdicts.jsonl`` line (``note`` only when it alerts,
    ``suricata_alerts`` only when there are some)."""
    rec = {
        "verdict_id": v.verdict_id, "uid": v.uid, "ts": v.ts,
        "id.orig_h": v.orig_h, "id.orig_p": v.orig_p, "id.resp_h": v.resp_h,
        "id.resp_p": v.resp_p, "proto": v.proto, "community_id": v.community_id,
        "scores": v.scores, "score": v.score,
        "alert": v.alert, "note": v.note if v.alert else None, "model": v.model,
    }
    if v.suricata_alerts:
        rec["suricata_alerts"] = v.suricata_alerts
    return rec


def verdict_line(v: Verdict) -> bytes:
    """The ``verdicts.jsonl`` line of one verdict, the general way."""
    return (json.dumps(clean_floats(verdict_record(v)), separators=(",", ":")) + "\n").encode()


@dataclass
class RenderedVerdicts:
    """Verdicts as ``verdicts.jsonl`` lines: ids and lines in order, alerting verdicts by row
    (as objects: only where asked for) and the alerts' notes, counted."""

    ids: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    alerts: list[tuple[int, Verdict]] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.lines)

    def data(self) -> bytes:
        """All lines, joined."""
        return b"".join(self.lines)


def _floats(a: np.ndarray) -> list[str]:
    """``json.dumps`` of each float (a non-finite one ``null``), each distinct value formatted
    once: ``float.__repr__`` was the largest cost of rendering, and scores repeat (the 100k-conn
    log of bench/score_speed.py: 121k distinct values in its 500k scores). Distinct by bits, so
    ``-0.0`` and ``0.0`` keep their own text."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    if len(a) < 64:
        return [_frepr(x) if x - x == 0.0 else "null" for x in a.tolist()]
    bits, inverse = np.unique(a.view(np.int64), return_inverse=True)
    text = [_frepr(x) if x - x == 0.0 else "null" for x in bits.view(np.float64).tolist()]
    return list(map(text.__getitem__, inverse.reshape(-1).tolist()))


# Arrow casts a float64 to the shortest digits that read back as it, as ``float.__repr__``
# does, in its own notation: "1" for 1.0, "0.00001" or "1e-7" where repr writes "1e-05", "1e-07",
# an exponent from ~16 digits on. Where the value is non-integral, 1e-4 <= |x| < 1e15 and Arrow's
# text has no exponent, repr is positional too and the digits are the same: both give the
# closest of the shortest strings, and below 2**53 no two of those can tie. Every other value
# is formatted by repr.
_ARROW_FLOAT_LOW, _ARROW_FLOAT_HIGH = 1e-4, 1e15


def _float_texts(a: np.ndarray) -> pa.Array:
    """``_floats`` as an Arrow string array: the same text (``json.dumps`` of each float, a
    non-finite one ``null``), by Arrow's cast where it is repr's, by ``_floats`` elsewhere."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    text = pc.cast(pa.array(a, pa.float64()), pa.string())
    mag = np.abs(a)
    with np.errstate(invalid="ignore"):
        other = ~((mag >= _ARROW_FLOAT_LOW) & (mag < _ARROW_FLOAT_HIGH) & (a != np.trunc(a)))
    other |= pc.match_substring(text, "e").to_numpy(zero_copy_only=False)
    if not other.any():
        return text
    rows = np.flatnonzero(other)
    return pc.replace_with_mask(text, pa.array(other), pa.array(_floats(a[rows]), pa.string()))


def _json_values(values: list, arrow_type: pa.DataType) -> list[str]:
    """``json.dumps`` of each value of one column (fast for the conn schema's types)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        enc = _enc_str
        return [enc(x) if x is not None else "null" for x in values]
    if pa.types.is_integer(arrow_type):
        return [_irepr(x) if x is not None else "null" for x in values]
    return [json.dumps(clean_floats(x)) for x in values]


def _text(values: list[str]) -> pa.Array:
    return pa.array(values, pa.string())


def _json_strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``json.dumps`` of each string of ``arr`` (``ensure_ascii``; null as ``null``), in Arrow:
    quoted as they are when no value holds a character JSON escapes, else each value by
    ``encode_basestring_ascii`` (exact either way)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    if pc.any(pc.match_substring_regex(arr, _ESCAPED)).as_py():
        return _text([_enc_str(x) if x is not None else "null" for x in arr.to_pylist()])
    return pc.fill_null(pc.binary_join_element_wise('"', arr, '"', ""), "null")


def _json_column(batch: VerdictBatch, name: str) -> pa.Array:
    """``_json_values`` of a conn column the verdict carries as the table holds it (the
    ``id.*`` fields and ``proto``), in Arrow for the conn schema's string and integer types."""
    col = batch.table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return _json_strings(col)
    if pa.types.is_integer(col.type):
        # Arrow writes an integer in decimal as int.__repr__ does
        return pc.fill_null(pc.cast(col.combine_chunks(), pa.string()), "null")
    return _text(_json_values(batch.column(name), col.type))


def render_verdicts(batch: VerdictBatch, alerts: bool = True) -> RenderedVerdicts:
    """The ``verdicts.jsonl`` lines of ``batch``: byte for byte ``verdict_line(batch.verdict(i))``
    for every row, column by column. ``alerts=False`` leaves ``RenderedVerdicts.alerts`` empty,
    for a batch whose alerts are not explained yet (a line holds no explanation; the caller
    sets ``batch.alerts()`` once they are), or whose alerts are wanted only counted by note
    (``RenderedVerdicts.notes``, always set: a Python object per alert is costly where most
    conns alert).

    A large batch's lines are one element-wise join (``binary_join_element_wise``) of its
    fields' JSON text as Arrow columns with the keys between them, a small one's a ``%``-format
    per conn (``JOIN_MIN_ROWS``); the fields' text is made alike for both."""
    n = len(batch)
    if n == 0:
        return RenderedVerdicts()
    ids = batch.ids()
    names = batch.names
    notes = ["null"] * n
    alert_s = ["false"] * n
    alert_rows = np.flatnonzero(batch.alert).tolist()
    note_of = [_enc_str(x) for x in batch.notes]
    top = batch.top
    for r in alert_rows:
        alert_s[r] = "true"
        notes[r] = note_of[int(top[r])]
    counted = batch.alert_notes()
    if n >= JOIN_MIN_ROWS:
        lines = _joined_lines(batch, ids, alert_s, notes)
    else:
        t = batch.table
        ts_s = _ts_json(batch.column("ts"))
        score_cols = [_floats(np.asarray(batch.scores[k], np.float64)) for k in names]
        score = _floats(np.asarray(batch.score, np.float64))

        def col(name: str) -> list[str]:
            return _json_values(batch.column(name), t.schema.field(name).type)

        line = _line_format(names)
        lines = [(line % row).encode() for row in zip(
            ids, map(_enc_str, batch.column("uid")), ts_s, col("id.orig_h"), col("id.orig_p"),
            col("id.resp_h"), col("id.resp_p"), col("proto"),
            [_enc_str(x) if x is not None else "null" for x in batch.column("community_id")], *score_cols,
            score, alert_s, notes, map(_enc_str, batch.models()))]
    add_suricata_alerts(lines, batch.suricata_alerts)
    return RenderedVerdicts(ids, lines, batch.alerts() if alerts else [], counted)


def _ts_json(values: list) -> list[str]:
    """``json.dumps`` of each ``ts`` as ``VerdictBatch.column("ts")`` gives it."""
    return [_frepr(x) if type(x) is float and x - x == 0.0 else json.dumps(clean_floats(x)) for x in values]


def _ts_texts(batch: VerdictBatch) -> pa.Array:
    """``_ts_json`` of the batch's ``ts`` as an Arrow string array (float64 by ``_float_texts``,
    an unset ts as 0.0, as ``VerdictBatch.column`` has it)."""
    col = batch.table.column("ts")
    if not pa.types.is_float64(col.type):
        return _text(_ts_json(batch.column("ts")))
    return _float_texts(pc.fill_null(col.combine_chunks(), 0.0).to_numpy(zero_copy_only=False))


def _joined_lines(batch: VerdictBatch, ids: list[str], alert_s: list[str], notes: list[str]) -> list[bytes]:
    """``render_verdicts``' lines of a large batch, by one Arrow join of its fields' columns
    between ``_LINE``'s own literal pieces (the same template as the ``%``-format path)."""
    # uid, ts and community_id with the stand-ins ``VerdictBatch.column`` gives (a missing
    # uid's, an unset ts's 0.0, a computed Community ID); in _LINE's field order
    columns = [_text(ids), _json_strings(_text(batch.column("uid"))), _ts_texts(batch),
              *(_json_column(batch, name) for name in ("id.orig_h", "id.orig_p", "id.resp_h",
                                                       "id.resp_p", "proto")),
              _json_strings(pa.array(batch.column("community_id"), pa.string())),
              _float_texts(batch.score), _text(alert_s), _text(notes), _json_strings(_text(batch.models()))]
    literals = _LINE.split("%s")
    parts: list = []
    for literal, column in zip(literals, columns):
        if "{SCORES}" in literal:
            before, after = literal.split("{SCORES}")
            parts.append(before + "{")
            for i, k in enumerate(batch.names):
                parts += [("," if i else "") + _enc_str(k) + ":", _float_texts(batch.scores[k])]
            literal = "}" + after
        parts += [literal, column]
    parts.append(literals[-1])
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary()).to_pylist()


_SUPPRESSED = b',"suppressed_by":'


def add_suricata_alerts(lines: list[bytes], joined: dict[int, list[dict]]) -> None:
    """Add ``"suricata_alerts": [...]`` to the verdict lines of the rows of ``joined``, in
    place: as the last key, or before ``suppressed_by`` when the line has it (the key order
    ``render_verdicts`` gives; ``zeekml watch`` adds the alerts to lines rendered elsewhere)."""
    for row, alerts in joined.items():
        if not alerts:
            continue
        line = lines[row]
        if not line.endswith(b"}\n"):
            raise ValueError(f"verdict line {row} is not a JSON object line")
        add = b',"suricata_alerts":' + json.dumps(alerts, separators=(",", ":")).encode()
        # a '"' inside a JSON string is escaped, so the key's bytes occur only as the key
        at = line.rfind(_SUPPRESSED)
        at = len(line) - 2 if at < 0 else at
        lines[row] = line[:at] + add + line[at:]


class VerdictWriter:
    """``verdicts.jsonl``: uid, ts, id fields, each detector's score, the combined score, alert.
    Opened with ``_core.outfile`` (no symlinks, mode 0640); failures are ``OutputError``."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.count = 0
        self._f = OutputFile(self.path)

    def write_lines(self, data: bytes, n: int) -> None:
        """``n`` verdicts already rendered (``RenderedVerdicts.data()``)."""
        self._f.write(data)
        self.count += n

    def write(self, verdicts: Iterable[Verdict]) -> None:
        """Verdict objects, rendered one by one."""
        lines = [verdict_line(v) for v in verdicts]
        self.write_lines(b"".join(lines), len(lines))

    def close(self) -> None:
        """Flush, fsync and close the file (closed even when that fails: ``OutputError``)."""
        self._f.close()

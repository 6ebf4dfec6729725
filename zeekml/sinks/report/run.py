"""What a report reads from a run's output directory (``zeekml score``/``replay``/``watch``).

``verdicts.jsonl`` is required; ``summary.json``, ``quarantine.jsonl``, ``incidents.jsonl`` and
``baseline.json`` are used when present. Without ``incidents.jsonl`` the incidents are computed from the verdicts
(the report says so: conns' bytes are not in the verdicts, so no volume statements then).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from zeekml._core.errors import InputNotFound, UnreadableInput
from zeekml.scoring.incidents import OPTIONAL, build_incidents, verdict_table

log = logging.getLogger(__name__)

QUARANTINE_SAMPLES = 20
# the columns of verdicts.jsonl a report uses, as verdict_table types them
VERDICT_COLUMNS = {"ts": pa.float64(), "uid": pa.string(), "id.orig_h": pa.string(),
                   "id.resp_h": pa.string(), "id.resp_p": pa.int64(), "proto": pa.string(),
                   "score": pa.float64(), "alert": pa.bool_(), "model": pa.string()}


@dataclass
class RunData:
    """Everything a report shows; ``verdicts`` holds the columns of ``verdict_table`` plus one
    ``score.<detector>`` column per detector."""

    out_dir: str
    summary: dict
    verdicts: pa.Table
    detectors: list[str]
    incidents: list[dict]
    incidents_source: str                # "incidents.jsonl" or "computed from verdicts.jsonl"
    quarantine_total: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    quarantine_samples: list[dict] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)   # baseline.json: inputs, period, conns


def run_warnings(run: RunData) -> list[str]:
    """The run's warnings (``summary.json``'s ``warnings``: a baseline too small for the FPR
    asked, a baseline that looks infected, a trained cut used), as text."""
    w = run.summary.get("warnings")
    return [str(x) for x in w] if isinstance(w, list) else []


def suricata_text(inc: dict, limit: int = 3) -> str:
    """The Suricata alerts joined onto an incident's alerting conns, in words ("" without any):
    how many, then its ``limit`` most frequent signatures with their ids and counts. One wording
    for the HTML page and the terminal view."""
    n = inc.get("suricata_alerts")
    sigs = inc.get("suricata_signatures")
    if not isinstance(n, int) or n <= 0:
        return ""
    parts = []
    for sig in (sigs if isinstance(sigs, list) else [])[:limit]:
        if not isinstance(sig, dict):
            continue
        sid = sig.get("signature_id")
        name = sig.get("signature") or "?"
        parts.append(f"{name} (sid {sid if sid is not None else '?'}, {sig.get('alerts', '?')}x)")
    more = len(sigs) - limit if isinstance(sigs, list) and len(sigs) > limit else 0
    listed = "; ".join(parts) + (f"; +{more} more signature{'s' if more > 1 else ''}" if more else "")
    head = f"Suricata: {n:,} alert{'s' if n != 1 else ''} on its conns"
    return f"{head}: {listed}" if listed else head


def _json_lines(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-empty line; a bad line is a one-line error naming it."""
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise UnreadableInput(f"cannot read: {e.strerror}", path) from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise UnreadableInput(f"not a JSON object: {e.msg}", path, n) from None
            if not isinstance(obj, dict):
                raise UnreadableInput("not a JSON object", path, n)
            yield n, obj


def _read_verdicts_arrow(vpath: str) -> tuple[pa.Table, list[str]]:
    """Arrow's JSON reader: ~50x faster than json.loads per line on a big run."""
    raw = pa_json.read_json(vpath)
    n = raw.num_rows
    cols: dict[str, pa.Array] = {}
    for name, typ in VERDICT_COLUMNS.items():
        cols[name] = pc.cast(raw.column(name), typ) if name in raw.column_names else pa.nulls(n, typ)
    cols["alert"] = pc.fill_null(cols["alert"], False)
    for name, typ in OPTIONAL.items():
        if name in raw.column_names:
            cols[name] = pc.cast(raw.column(name), typ)
    detectors: list[str] = []
    if "scores" in raw.column_names and pa.types.is_struct(raw.schema.field("scores").type):
        scores = raw.column("scores").combine_chunks()
        for k in range(scores.type.num_fields):
            name = scores.type.field(k).name
            detectors.append(name)
            cols[f"score.{name}"] = pc.cast(scores.field(k), pa.float64())
    table = pa.table(cols)
    table.validate(full=True)   # Arrow's reader lets invalid UTF-8 (raw log bytes) into strings
    return table, detectors


def _read_verdicts_python(vpath: str) -> tuple[pa.Table, list[str]]:
    """Line by line: slower, but names the line of any damage and copes with undecodable bytes."""
    records: list[dict] = []
    detector_scores: dict[str, list] = {}
    detectors: list[str] = []
    for n, (line, rec) in enumerate(_json_lines(vpath)):
        records.append(rec)
        scores = rec.get("scores") or {}
        if not isinstance(scores, dict):
            raise UnreadableInput("'scores' is not an object", vpath, line)
        for name in scores:
            if name not in detector_scores:
                detector_scores[name] = [None] * n
                detectors.append(name)
        for name, col in detector_scores.items():
            v = scores.get(name)
            col.append(float(v) if isinstance(v, (int, float)) else None)
    try:
        table = verdict_table(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise UnreadableInput(f"verdict fields of the wrong type: {e}", vpath) from None
    for name in detectors:
        table = table.append_column(f"score.{name}", pa.array(detector_scores[name], pa.float64()))

    return table, detectors


def _read_verdicts(vpath: str) -> tuple[pa.Table, list[str]]:
    try:
        return _read_verdicts_arrow(vpath)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        # not a silent fallback: the line reader gives the same table or a one-line error
        # naming the damaged line
        log.debug("%s: Arrow's JSON reader failed (%s); reading line by line", vpath, e)
        return _read_verdicts_python(vpath)


def _json_object(path: str, what: str) -> dict:
    """The JSON object in ``path``, or ``{}`` when the run wrote no such file (older runs)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise UnreadableInput(f"not a readable {what}: {e}", path) from None
    if not isinstance(obj, dict):
        raise UnreadableInput("not a JSON object", path)
    return obj


def load_run(out_dir: str | os.PathLike) -> RunData:
    """Read a run's output directory. Raises ``InputNotFound`` when it holds no ``verdicts.jsonl``."""
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise InputNotFound("no such output directory", out_dir)
    vpath = os.path.join(out_dir, "verdicts.jsonl")
    if not os.path.exists(vpath):
        raise InputNotFound("no verdicts.jsonl here: give the --out directory of a zeekml run", out_dir)

    summary = _json_object(os.path.join(out_dir, "summary.json"), "summary")

    table, detectors = _read_verdicts(vpath)

    ipath = os.path.join(out_dir, "incidents.jsonl")
    if os.path.exists(ipath):
        incidents = [obj for _, obj in _json_lines(ipath)]
        source = "incidents.jsonl"
    else:
        incidents = [i.to_dict() for i in build_incidents(table)]
        source = "computed from verdicts.jsonl"

    baseline = _json_object(os.path.join(out_dir, "baseline.json"), "baseline file")

    by_reason: Counter[str] = Counter()
    samples: list[dict] = []
    qpath = os.path.join(out_dir, "quarantine.jsonl")
    total = 0
    if os.path.exists(qpath):
        for _, q in _json_lines(qpath):
            total += 1
            by_reason[str(q.get("reason", "?")).split(":")[0]] += 1
            if len(samples) < QUARANTINE_SAMPLES:
                samples.append(q)
    return RunData(out_dir=out_dir, summary=summary, verdicts=table, detectors=detectors,
                   incidents=incidents, incidents_source=source, quarantine_total=total,
                   quarantine_by_reason=dict(by_reason.most_common()), quarantine_samples=samples,
                   baseline=baseline)

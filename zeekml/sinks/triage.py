"""Outputs of triage: ``incidents.jsonl``, incident notices, and the mark an allowlist rule
leaves on the verdict lines it suppressed."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

from zeekml._core.errors import OutputError
from zeekml.scoring.incidents import Incident

INCIDENTS_FILE = "incidents.jsonl"
INCIDENT_NOTE = "ZeekML::Suspicious_Host"


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def incident_line(inc: Incident | dict) -> bytes:
    """One ``incidents.jsonl`` line (compact JSON, non-finite floats as null)."""
    d = inc.to_dict() if isinstance(inc, Incident) else inc
    return (json.dumps(_finite(d), separators=(",", ":")) + "\n").encode()


def write_incidents(path: str | os.PathLike, incidents: Iterable[Incident | dict]) -> str:
    """Write ``incidents.jsonl`` (ranked, as given) in one go; returns its path."""
    path = os.fspath(path)
    data = b"".join(incident_line(i) for i in incidents)
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", path) from None
    return path


def mark_suppressed(lines: list[bytes], labels: dict[int, str]) -> None:
    """Add ``"suppressed_by": "<rule label>"`` as the last key of the verdict lines of the
    suppressed rows, in place; every other line stays byte for byte what it was."""
    enc = json.encoder.encode_basestring_ascii
    for row, label in labels.items():
        line = lines[row]
        if not line.endswith(b"}\n"):
            raise ValueError(f"verdict line {row} is not a JSON object line")
        lines[row] = line[:-2] + b',"suppressed_by":' + enc(label).encode() + b"}\n"

"""incidents.jsonl lines and the suppressed_by mark on verdict lines."""
import json

import pytest

from zeekml.sinks.triage import incident_line, mark_suppressed, write_incidents


def test_mark_suppressed_touches_only_those_lines():
    lines = [b'{"verdict_id":"V1","alert":false}\n', b'{"verdict_id":"V2","alert":false}\n']
    before = list(lines)
    mark_suppressed(lines, {1: 'allowlist rule 2: "lab" \u00e9'})
    assert lines[0] == before[0]
    assert lines[1] == b'{"verdict_id":"V2","alert":false,"suppressed_by":"allowlist rule 2: \\"lab\\" \\u00e9"}\n'
    assert json.loads(lines[1])["suppressed_by"] == 'allowlist rule 2: "lab" \u00e9'
    with pytest.raises(ValueError):
        mark_suppressed([b"not json"], {0: "x"})


def test_incidents_file(tmp_path):
    p = write_incidents(tmp_path / "incidents.jsonl",
                        [{"incident_id": "I1", "score": float("nan"), "peers": [1.0, float("inf")]}])
    assert open(p, "rb").read() == b'{"incident_id":"I1","score":null,"peers":[1.0,null]}\n'
    assert incident_line({"a": 1}) == b'{"a":1}\n'

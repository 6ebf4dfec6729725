"""Per-conn notices are opt-in (``--conn-notices``); with ``--zeek-feedback`` the incidents go to
Zeek's incident file (issue 16): ``ScoreOutputs`` (score) and ``OutputFiles`` (watch)."""
from __future__ import annotations

import json
import os

import pytest

from zeekml.pipeline.live.options import INCIDENTS, NOTICES, OUTPUTS
from zeekml.pipeline.live.outputs import OutputFiles
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.run_outputs import ScoreOutputs
from zeekml.sinks.zeek_input import read_verdict_file

ALERT = Verdict(ts=1700000001.5, uid="C2", orig_h="10.0.0.3", orig_p=40000, resp_h="10.0.0.4",
                resp_p=22, proto="tcp", score=2.0, alert=True, model="gnn", msg="odd", sub="x=1")
INCIDENT = {"incident_id": "I0123456789abcdef", "host": "10.0.0.3", "role": "orig",
            "first_ts": 1700000001.5, "last_ts": 1700000001.5, "conns": 1, "alerts": 1,
            "peak_alerts": 1, "score": 2.0, "peers": ["10.0.0.4"], "n_peers": 1,
            "resp_ports": ["22/tcp"], "services": [], "detectors": ["gnn"],
            "detector_alerts": {"gnn": 1}, "max_score": 2.0,
            "description": "1 alerting conn to 10.0.0.4:22", "top_conns": [{"uid": "C2"}]}


def _run(out, conn_notices: bool, feedback=None) -> dict:
    """A score run's outputs: one alert, one incident in the run's incidents.jsonl."""
    o = ScoreOutputs(str(out), zeek_feedback=str(feedback) if feedback else None,
                     conn_notices=conn_notices)
    o.write([ALERT])
    inc = out / "incidents.jsonl"
    inc.write_text(json.dumps(INCIDENT) + "\n")
    return o.finish({"outputs": {"incidents": str(inc)}})


def test_default_run_writes_no_conn_notices_and_sends_incidents_to_zeek(tmp_path):
    out, fb = tmp_path / "out", tmp_path / "fb" / "verdicts.log"
    fb.parent.mkdir()
    paths = _run(out, conn_notices=False, feedback=fb)
    assert not (out / "zeekml_notice.log").exists()
    assert "notices" not in paths
    assert paths["zeek_feedback"] == str(fb)
    assert paths["zeek_incidents"] == str(tmp_path / "fb" / "verdicts.incidents.log")
    _, verdicts = read_verdict_file(fb)
    assert verdicts == []                # no per-conn rows for Zeek ...
    _, incidents = read_verdict_file(paths["zeek_incidents"])
    assert [(r["incident_id"], r["host"], r["msg"]) for r in incidents] == [
        (b"I0123456789abcdef", b"10.0.0.3", b"1 alerting conn to 10.0.0.4:22")]   # ... one per incident


def test_conn_notices_write_the_notice_log_and_the_verdict_rows(tmp_path):
    out, fb = tmp_path / "out", tmp_path / "verdicts.log"
    paths = _run(out, conn_notices=True, feedback=fb)
    assert paths["notices"] == str(out / "zeekml_notice.log")
    rows = [ln for ln in (out / "zeekml_notice.log").read_bytes().splitlines()
            if not ln.startswith(b"#")]
    assert len(rows) == 1 and b"\tC2\t" in rows[0]
    _, verdicts = read_verdict_file(fb)
    assert [r["uid"] for r in verdicts] == [b"C2"]
    _, incidents = read_verdict_file(paths["zeek_incidents"])
    assert len(incidents) == 1


def test_an_earlier_runs_notice_log_is_removed_by_a_default_run(tmp_path):
    out = tmp_path / "out"
    _run(out, conn_notices=True)
    assert (out / "zeekml_notice.log").exists()
    _run(out, conn_notices=False)
    assert not (out / "zeekml_notice.log").exists()


def test_a_link_at_the_notice_log_is_removed_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "zeekml_notice.log").symlink_to(victim)
    _run(out, conn_notices=False)
    assert not os.path.lexists(out / "zeekml_notice.log")
    assert victim.read_bytes() == b"secret\n"


def test_no_incidents_output_means_an_empty_incident_file_and_a_warning(tmp_path, caplog):
    o = ScoreOutputs(str(tmp_path / "out"), zeek_feedback=str(tmp_path / "v.log"))
    o.write([ALERT])
    paths = o.finish({})
    assert read_verdict_file(paths["zeek_incidents"])[1] == []
    assert "no incidents were made in this run" in caplog.text


# -- watch's append-only outputs ---------------------------------------------------------------

def test_watch_without_conn_notices_creates_no_notice_log(tmp_path):
    f = OutputFiles(str(tmp_path), {}, conn_notices=False)
    f.append({NOTICES: b"", INCIDENTS: b'{"incident_id":"I1"}\n'})
    f.close()
    assert not (tmp_path / NOTICES).exists()
    assert NOTICES not in f.lengths
    assert {n for n in OUTPUTS if (tmp_path / n).exists()} == set(OUTPUTS) - {NOTICES}
    assert f.lengths[INCIDENTS] == len(b'{"incident_id":"I1"}\n')


def test_watch_keeps_a_notice_log_of_an_earlier_run_cut_to_its_commit(tmp_path):
    (tmp_path / NOTICES).write_bytes(b"#header\ncommitted\nnot committed")
    f = OutputFiles(str(tmp_path), {NOTICES: len(b"#header\ncommitted\n")}, conn_notices=False)
    f.append({NOTICES: b"", INCIDENTS: b"x\n"})
    f.close()
    assert (tmp_path / NOTICES).read_bytes() == b"#header\ncommitted\n"
    assert f.lengths[NOTICES] == len(b"#header\ncommitted\n")   # stays in the checkpoint


def test_a_failed_append_cuts_back_the_opened_files_only(tmp_path):
    calls = []

    def failing(fd: int, data: bytes, offset: int) -> int:
        calls.append(data)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return os.pwrite(fd, data, offset)

    from zeekml._core.errors import OutputError
    f = OutputFiles(str(tmp_path), {}, write=failing, conn_notices=False)
    with pytest.raises(OutputError, match="No space left"):
        f.append({"verdicts.jsonl": b"v\n", NOTICES: b"", INCIDENTS: b"i\n"})
    f.close()
    assert (tmp_path / "verdicts.jsonl").read_bytes() == b""
    assert (tmp_path / INCIDENTS).read_bytes() == b""

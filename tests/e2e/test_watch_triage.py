"""Triage in ``zeekml watch`` and ``zeekml replay`` (issue 16): ``--allowlist`` gives the same
verdict bytes and notices as ``zeekml score --allowlist`` on the same log."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from zeekml.cli import main

HERE = os.path.dirname(__file__)
REAL_CONN = os.path.join(HERE, "..", "data", "real", "zat", "data", "conn.log")
WIKI = os.path.join(HERE, "..", "data", "zeek-btest", "Traces", "wikipedia.pcap")


def _lines(path):
    with open(path, "rb") as f:
        return sorted(line for line in f if not line.startswith(b"#"))


def _alerting_host(tmp_path) -> str:
    """A responder that alerts in `score` on the real log (so the allowlist has work to do)."""
    out = tmp_path / "plain"
    r = CliRunner().invoke(main, ["score", REAL_CONN, "--out", str(out), "--baseline", REAL_CONN,
                                  "--no-progress", "--no-models"])
    assert r.exit_code == 0, r.output
    alerts = [v for v in map(json.loads, open(out / "verdicts.jsonl")) if v["alert"]]
    assert alerts, "the real log should alert without an allowlist"
    return alerts[0]["id.resp_h"]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_watch_allowlist_equals_score_allowlist(tmp_path, workers):
    """An allowlisted host raises no alert in watch; its verdicts name the rule; every verdict
    and notice line is the one `score --allowlist` writes (in-process and forked scoring)."""
    host = _alerting_host(tmp_path)
    allow = tmp_path / "allow.toml"
    allow.write_text(f'[[rule]]\nhost = "{host}"\nreason = "lab box"\n')
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    r = CliRunner().invoke(main, ["watch", str(root), "--out", str(tmp_path / "live"), "--once",
                                  "--baseline", REAL_CONN, "--window-records", "50", "--quiet",
                                  "--no-models", "--allowlist", str(allow),
                                  "--score-workers", workers])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["score", REAL_CONN, "--out", str(tmp_path / "batch"),
                                  "--baseline", REAL_CONN, "--no-progress", "--no-models",
                                  "--allowlist", str(allow)])
    assert r.exit_code == 0, r.output
    live = _lines(tmp_path / "live" / "verdicts.jsonl")
    assert live == _lines(tmp_path / "batch" / "verdicts.jsonl")
    assert _lines(tmp_path / "live" / "zeekml_notice.log") == \
        _lines(tmp_path / "batch" / "zeekml_notice.log")
    verdicts = [json.loads(x) for x in live]
    mine = [v for v in verdicts if host in (v["id.orig_h"], v["id.resp_h"])]
    assert mine and all(v["suppressed_by"] == "allowlist rule 1: lab box" and not v["alert"]
                        for v in mine)
    assert not any("suppressed_by" in v for v in verdicts if v not in mine)
    assert any(v["alert"] for v in verdicts), "other hosts still alert"
    notices = b"".join(_lines(tmp_path / "live" / "zeekml_notice.log")).decode()
    assert host not in notices


def test_watch_bad_allowlist_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "allow.toml"
    bad.write_text('[[rule]]\nhost = "1.2.3"\nreason = "x"\n')
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    out = tmp_path / "live"
    r = CliRunner().invoke(main, ["watch", str(root), "--out", str(out), "--once", "--baseline",
                                  REAL_CONN, "--quiet", "--no-models", "--allowlist", str(bad)])
    assert r.exit_code == 1, r.output
    assert f"{bad}: rule 1: host: '1.2.3' is not an IP address or CIDR" in r.output
    assert "Traceback" not in r.output
    assert not (out / "verdicts.jsonl").exists() and not (out / "checkpoint.json").exists()


def test_replay_allowlist(tmp_path):
    """`replay --allowlist` scores through `score` with the rules: the allowlisted host's
    verdicts name the rule and never alert; a bad file fails before the capture is read."""
    allow = tmp_path / "allow.toml"
    allow.write_text('[[rule]]\nproto = "udp"\nreason = "dns is fine"\n')
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out), "--engine", "builtin",
                                  "--fpr", "0.1", "--no-models", "--allowlist", str(allow)])
    assert r.exit_code == 0, r.output
    verdicts = [json.loads(x) for x in open(out / "verdicts.jsonl")]
    udp = [v for v in verdicts if v["proto"] == "udp"]
    assert udp and all(v["suppressed_by"] == "allowlist rule 1: dns is fine" and not v["alert"]
                       for v in udp)
    assert all("suppressed_by" not in v for v in verdicts if v["proto"] != "udp")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nreason = "nothing to match"\n')
    out2 = tmp_path / "out2"
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out2), "--engine", "builtin",
                                  "--fpr", "0.1", "--no-models", "--allowlist", str(bad)])
    assert r.exit_code == 1 and str(bad) in r.output and "Traceback" not in r.output, r.output
    assert not (out2 / "conn.log").exists()

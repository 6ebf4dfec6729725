"""One notice per incident by default, per-conn notices with ``--conn-notices``, and the
incidents sent to Zeek with ``--zeek-feedback`` by ``score``, ``watch`` and ``replay`` (issue 16).
The Zeek files are read as Zeek's Ascii Input reader reads them (tests/unit/zeek_scripts)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.sinks.zeek_input import INCIDENT_FIELDS, read_verdict_file

HERE = Path(__file__).parent
IOT23 = HERE.parent.parent / "examples" / "iot23" / "conn.log.labeled"
WIKI = HERE.parent / "data" / "zeek-btest" / "Traces" / "wikipedia.pcap"


def _module(name: str):
    """A helper module of tests/unit/zeek_scripts (the same one its tests import)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "unit" / "zeek_scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod     # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


zr = _module("zeek_input_reader")


def invoke(*args) -> None:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def zeek_incident_ids(path: Path) -> list[str]:
    """The incident ids Zeek's Input reader takes from the incident file (none dropped)."""
    optional = {"uid", "p", "proto", "msg", "sub"}
    view = zr.read(path.read_bytes(), INCIDENT_FIELDS, optional)
    assert view.dropped == []
    return [r["incident_id"].decode() for r in view.records]


def incident_ids(out: Path) -> list[str]:
    return [json.loads(x)["incident_id"] for x in (out / "incidents.jsonl").read_text().splitlines()]


def notice_rows(path: Path) -> list[bytes]:
    return [x for x in path.read_bytes().splitlines() if not x.startswith(b"#")]


def test_score_default_sends_one_notice_per_incident_to_zeek(tmp_path):
    out, fb = tmp_path / "out", tmp_path / "zeek" / "verdicts.log"
    fb.parent.mkdir()
    invoke("score", IOT23, "--out", out, "--no-models", "--no-progress", "--fpr", "0.01",
           "--zeek-feedback", fb)
    summary = json.loads((out / "summary.json").read_text())
    assert not (out / "zeekml_notice.log").exists() and "notices" not in summary["outputs"]
    ids = incident_ids(out)
    assert 0 < len(ids) < summary["alerts"]
    assert len(notice_rows(out / "zeekml_incident.log")) == len(ids)
    incidents = tmp_path / "zeek" / "verdicts.incidents.log"
    assert summary["outputs"]["zeek_incidents"] == str(incidents)
    assert sorted(zeek_incident_ids(incidents)) == sorted(ids)
    assert read_verdict_file(fb)[1] == []      # no per-conn rows for Zeek
    # the same run again: every incident is already in the file, which stays as it was, so
    # Zeek's REREAD sees no change and raises nothing twice
    before, st = incidents.read_bytes(), os.stat(incidents)
    invoke("score", IOT23, "--out", out, "--no-models", "--no-progress", "--fpr", "0.01",
           "--zeek-feedback", fb)
    assert incidents.read_bytes() == before and os.stat(incidents).st_ino == st.st_ino


def test_score_conn_notices_adds_the_conn_notices_everywhere(tmp_path):
    out, fb = tmp_path / "out", tmp_path / "verdicts.log"
    invoke("score", IOT23, "--out", out, "--no-models", "--no-progress", "--fpr", "0.01",
           "--zeek-feedback", fb, "--conn-notices")
    summary = json.loads((out / "summary.json").read_text())
    assert len(notice_rows(out / "zeekml_notice.log")) == summary["alerts"]
    assert len(read_verdict_file(fb)[1]) == summary["alerts"]
    assert sorted(zeek_incident_ids(tmp_path / "verdicts.incidents.log")) == sorted(incident_ids(out))
    # and the verdicts are those of a default run
    invoke("score", IOT23, "--out", tmp_path / "default", "--no-models", "--no-progress",
           "--fpr", "0.01")
    assert (tmp_path / "default" / "verdicts.jsonl").read_bytes() == \
        (out / "verdicts.jsonl").read_bytes()
    assert (tmp_path / "default" / "incidents.jsonl").read_bytes() == \
        (out / "incidents.jsonl").read_bytes()


def test_watch_default_sends_each_closed_incident_once(tmp_path):
    logs, out, fb = tmp_path / "logs", tmp_path / "out", tmp_path / "verdicts.log"
    logs.mkdir()
    shutil.copy(IOT23, logs / "conn.log")
    args = ["watch", logs, "--out", out, "--once", "--no-models", "--baseline", IOT23,
            "--fpr", "0.01", "--quiet", "--zeek-feedback", fb, "--window-records", "300"]
    invoke(*args)
    assert not (out / "zeekml_notice.log").exists()
    ids = incident_ids(out)
    assert ids and len(notice_rows(out / "zeekml_incident.log")) == len(ids)
    incidents = tmp_path / "verdicts.incidents.log"
    assert sorted(zeek_incident_ids(incidents)) == sorted(ids)
    assert read_verdict_file(fb)[1] == []
    # a restart reads nothing new: nothing is added for Zeek
    before = incidents.read_bytes()
    invoke(*args)
    assert incident_ids(out) == ids and incidents.read_bytes() == before


def test_watch_conn_notices(tmp_path):
    logs, out, fb = tmp_path / "logs", tmp_path / "out", tmp_path / "verdicts.log"
    logs.mkdir()
    shutil.copy(IOT23, logs / "conn.log")
    invoke("watch", logs, "--out", out, "--once", "--no-models", "--baseline", IOT23, "--fpr",
           "0.01", "--quiet", "--zeek-feedback", fb, "--conn-notices")
    stats = json.loads((out / "stats.json").read_text())
    assert len(notice_rows(out / "zeekml_notice.log")) == stats["alerts"] > 0
    assert len(read_verdict_file(fb)[1]) == stats["alerts"]


@pytest.mark.parametrize("flag", [[], ["--conn-notices"]])
def test_replay_notices(tmp_path, flag):
    out = tmp_path / "out"
    invoke("replay", WIKI, "--out", out, "--engine", "builtin", "--fpr", "0.1", *flag)
    assert (out / "zeekml_incident.log").exists()
    assert (out / "zeekml_notice.log").exists() == bool(flag)


@pytest.mark.parametrize("command", ["score", "watch", "replay"])
def test_the_option_is_documented(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0 and "--conn-notices" in r.output


def test_a_full_disk_at_the_incident_file_is_exit_6_and_one_line(tmp_path, monkeypatch):
    import errno
    real = os.write
    zeek_dir = (tmp_path / "zeek").resolve()
    zeek_dir.mkdir()

    def full(fd, data):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if path.startswith(str(zeek_dir) + "/") and "incidents" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    r = CliRunner().invoke(main, ["score", str(IOT23), "--out", str(tmp_path / "out"),
                                  "--no-models", "--no-progress", "--fpr", "0.01",
                                  "--zeek-feedback", str(zeek_dir / "verdicts.log")])
    assert r.exit_code == 6, r.output
    assert "Traceback" not in r.output
    errors = [x for x in r.output.splitlines() if x.startswith("zeekml: error:")]
    assert len(errors) == 1 and "verdicts.incidents.log: cannot write the incident file: No space " \
        "left on device" in errors[0], r.output
    # no temporary file is left beside it
    assert sorted(p.name for p in zeek_dir.iterdir()) == ["verdicts.log"]


def test_watch_crash_after_the_zeek_write_sends_each_incident_once(tmp_path, monkeypatch):
    """A crash after the incident file was rewritten but before the window's checkpoint: the
    restart scores the window again and closes the same incidents, with the same ids, so the
    file Zeek reads ends holding exactly the incidents of incidents.jsonl, none twice."""
    from zeekml.pipeline import ScoreOptions, Watcher, WatchOptions
    from zeekml.sinks import zeek_input
    from zeekml.sources.checkpoint import CheckpointStore

    logs, out, fb = tmp_path / "logs", tmp_path / "out", tmp_path / "verdicts.log"
    logs.mkdir()
    shutil.copy(IOT23, logs / "conn.log")
    state = {"armed": False, "crashed": False, "sent": []}
    real_write, real_commit = zeek_input.ZeekFeedback.write, CheckpointStore.commit

    def write(self, alerts=(), incidents=()):
        incidents = list(incidents)
        if incidents and not state["crashed"]:
            state["armed"] = True
            state["sent"] += [i.incident_id for i in incidents]
        return real_write(self, alerts, incidents)

    def commit(self, cp):
        if state["armed"] and not state["crashed"]:
            state["crashed"] = True
            raise RuntimeError("killed before the checkpoint")
        return real_commit(self, cp)

    monkeypatch.setattr(zeek_input.ZeekFeedback, "write", write)
    monkeypatch.setattr(CheckpointStore, "commit", commit)

    def run():
        opts = WatchOptions(score=ScoreOptions(baseline=[str(IOT23)], fpr=0.01,
                                               zeek_feedback=str(fb)),
                            once=True, rescan_seconds=0.2, use_events=False, window_records=200)
        return Watcher(str(logs), str(out), opts).run()

    with pytest.raises(RuntimeError, match="killed before the checkpoint"):
        run()
    assert state["crashed"] and state["sent"]
    incidents = tmp_path / "verdicts.incidents.log"
    assert sorted(zeek_incident_ids(incidents)) == sorted(state["sent"])
    run()      # cuts incidents.jsonl back to its checkpoint, then scores the window again
    ids = incident_ids(out)
    assert set(state["sent"]) <= set(ids)
    assert sorted(zeek_incident_ids(incidents)) == sorted(ids) and len(set(ids)) == len(ids)


def test_watch_resumed_on_a_notice_log_with_other_columns_says_so(tmp_path):
    """A watch resumed on a zeekml_notice.log an older zeekml wrote (no community_id column)
    stops with one line naming the file (exit 6) instead of appending lines its header does
    not describe; the file is left as it was."""
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    shutil.copy(IOT23, logs / "conn.log")
    args = ["watch", logs, "--out", out, "--once", "--no-models", "--baseline", IOT23, "--fpr",
            "0.01", "--quiet", "--conn-notices"]
    invoke(*args)
    notices = out / "zeekml_notice.log"
    text = notices.read_text()
    assert "\tcommunity_id" in text
    old = text.replace("\tcommunity_id", "").replace("\tstring\n", "\n", 1)   # the old header
    notices.write_text(old)          # same length less the column names: under the commit
    with open(logs / "conn.log", "a") as f:      # something new to read
        f.write(IOT23.read_text().splitlines()[-1] + "\n")
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 6, r.output
    assert "zeekml_notice.log" in r.output and "other columns" in r.output
    assert "Traceback" not in r.output and notices.read_text() == old

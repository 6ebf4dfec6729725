"""Exit codes decided at the CLI layer agree with the README's list (4 unreadable input, 6 output
not writable, ...) and with each command's --help: click's own Path checks would answer 2 (usage)
for an unreadable input or an --out that is a file; replay refuses a file that is no capture
before it writes or scores anything."""
from __future__ import annotations

import builtins
import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

ROOT = Path(__file__).parent.parent.parent
CONN = ROOT / "examples" / "zeek" / "conn.log"
WIKI = ROOT / "tests" / "data" / "zeek-btest" / "Traces" / "wikipedia.pcap"
DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
            "--inh-caps", "-dac_override,-dac_read_search"]


def _errors(r) -> list[str]:
    assert "Traceback" not in r.output, r.output
    return [line for line in r.output.splitlines() if line.startswith("zeekml: error:")]


def _unreadable_in_process(monkeypatch, path: Path) -> None:
    """Make ``path`` read as a file without read permission would, whoever runs the tests:
    ``os.access`` says no (what click's Path(readable=True) asks) and opening it fails with
    EACCES (what the readers meet)."""
    target = str(path)
    real_access, real_open = os.access, builtins.open

    def access(p, mode, *a, **kw):
        if os.fspath(p) == target and mode & os.R_OK:
            return False
        return real_access(p, mode, *a, **kw)

    def fake_open(p, *a, **kw):
        if isinstance(p, (str, os.PathLike)) and os.fspath(p) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real_open(p, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize("where", ["input", "--baseline"])
def test_score_unreadable_input_is_exit_4(tmp_path, monkeypatch, where):
    log = tmp_path / "conn.log"
    shutil.copy(CONN, log)
    _unreadable_in_process(monkeypatch, log)
    args = [str(log)] if where == "input" else [str(CONN), "--baseline", str(log)]
    r = CliRunner().invoke(main, ["score", *args, "--out", str(tmp_path / "out"), "--no-models",
                                  "--no-progress"])
    assert r.exit_code == 4, r.output
    errors = _errors(r)
    assert len(errors) == 1 and str(log) in errors[0] and "Permission denied" in errors[0]


def test_score_unreadable_among_others_is_reported_and_the_rest_scored(tmp_path, monkeypatch):
    log = tmp_path / "conn.log"
    shutil.copy(CONN, log)
    _unreadable_in_process(monkeypatch, log)
    r = CliRunner().invoke(main, ["score", str(log), str(CONN), "--out", str(tmp_path / "out"),
                                  "--no-models", "--no-progress"])
    assert r.exit_code == 7, r.output
    assert f"zeekml: failed: {log}: cannot open: Permission denied" in r.stderr


def _can_drop_dac() -> bool:
    """Whether a file with mode 000 is unreadable to a child process: always when not root;
    as root only with setpriv and the right to drop the capabilities that bypass it."""
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    p = subprocess.run([*DROP_DAC, "true"], capture_output=True)
    return p.returncode == 0


@pytest.mark.skipif(not _can_drop_dac(), reason="root without setpriv/CAP_SETPCAP: cannot make "
                                                "a file unreadable to ourselves")
@pytest.mark.parametrize("command", ["score", "replay"])
def test_file_without_read_permission_is_exit_4(tmp_path, command):
    # the real thing, not a simulation: mode 000, the capabilities that bypass it dropped
    src = tmp_path / ("conn.log" if command == "score" else "wiki.pcap")
    shutil.copy(CONN if command == "score" else WIKI, src)
    src.chmod(0)
    cmd = [sys.executable, "-m", "zeekml", command, str(src), "--out", str(tmp_path / "out"),
           "--no-models"]
    if os.geteuid() == 0:
        cmd = DROP_DAC + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("zeekml: error:")]
    assert len(errors) == 1 and f"{src}: cannot open: Permission denied" in errors[0], p.stderr


@pytest.mark.parametrize("command", ["score", "watch", "replay"])
def test_out_that_is_a_file_is_exit_6(tmp_path, command):
    out = tmp_path / "out"
    out.write_text("not a directory\n")
    src = {"score": CONN, "watch": CONN.parent, "replay": WIKI}[command]
    extra = ["--once", "--quiet"] if command == "watch" else []
    r = CliRunner().invoke(main, [command, str(src), "--out", str(out), "--no-models", *extra])
    assert r.exit_code == 6, r.output
    assert _errors(r) == [f"zeekml: error: {out}: is not a directory: --out names the "
                          "directory the outputs go to"]
    assert out.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", ["score", "watch", "replay"])
def test_help_lists_exit_5_for_model_files(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0
    assert "5 model files missing or altered" in " ".join(r.output.split())


def test_score_bad_models_dir_is_exit_5(tmp_path):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["score", str(CONN), "--out", str(tmp_path / "out"),
                                  "--models", str(tmp_path / "empty"), "--no-progress"])
    assert r.exit_code == 5, r.output
    assert len(_errors(r)) == 1


def test_feedback_help_and_usage_errors_agree():
    text = " ".join(CliRunner().invoke(main, ["feedback", "--help"]).output.split())
    assert "1 bad request" not in text
    assert "2 a usage error (none or several of --benign/--host/--incident, a --host that is " \
           "not an IP or CIDR)" in text


@pytest.mark.parametrize("args", [[], ["--host", "10.0.0.1", "--benign", "V1"],
                                  ["--host", "not-an-ip"]])
def test_feedback_bad_request_is_usage_exit_2_before_out_is_read(tmp_path, args):
    # OUT does not exist: the request itself is refused first, by the option at fault
    r = CliRunner().invoke(main, ["feedback", str(tmp_path / "nothing"), *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "--host" in err[0] and "nothing" not in err[0], r.output


@pytest.mark.parametrize("engine", ["builtin", "auto"])
def test_replay_of_a_file_that_is_no_capture_fails_up_front(tmp_path, engine):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", str(CONN), "--out", str(out), "--no-models",
                                  "--engine", engine])
    assert r.exit_code == 4, r.output
    assert _errors(r) == [f"zeekml: error: {CONN}: not a pcap or pcapng file (unknown magic)"]
    assert r.stdout == ""                 # no engine line, no score table
    assert not out.exists()               # no empty conn.log written


def test_replay_damaged_capture_is_reported_once(tmp_path, caplog):
    pcap = tmp_path / "cut.pcap"
    data = WIKI.read_bytes()
    pcap.write_bytes(data[: len(data) - 7])       # the last record cut short
    r = CliRunner().invoke(main, ["replay", str(pcap), "--out", str(tmp_path / "out"),
                                  "--engine", "builtin", "--no-models", "--fpr", "0.2"])
    assert r.exit_code == 4, r.output
    assert r.output.count("truncated") == 1, r.output
    assert _errors(r)[-1].startswith(f"zeekml: error: {pcap}: packet ")
    # not logged as a warning as well (the log goes to stderr beside the error line)
    assert not [rec for rec in caplog.records
                if rec.levelno >= logging.WARNING and "truncated" in rec.getMessage()]


def test_cat_unreadable_file_is_exit_4(tmp_path, monkeypatch):
    log = tmp_path / "conn.log"
    shutil.copy(CONN, log)
    _unreadable_in_process(monkeypatch, log)
    r = CliRunner().invoke(main, ["cat", str(log)])
    assert r.exit_code == 4, r.output
    errors = _errors(r)
    assert len(errors) == 1 and str(log) in errors[0] and "Permission denied" in errors[0]


def test_score_models_directory_that_cannot_be_listed_is_exit_5(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    real_listdir = os.listdir

    def listdir(p="."):
        if os.fspath(p) == str(models):
            raise PermissionError(errno.EACCES, "Permission denied", str(models))
        return real_listdir(p)

    monkeypatch.setattr(os, "listdir", listdir)
    r = CliRunner().invoke(main, ["score", str(CONN), "--out", str(tmp_path / "out"),
                                  "--models", str(models), "--no-progress"])
    assert r.exit_code == 5, r.output
    assert _errors(r) == [f"zeekml: error: {models}: --models: cannot list: Permission denied"]

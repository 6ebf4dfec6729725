"""Output errors end in exit 6 and one line naming the output, never a traceback: a full disk
(ENOSPC injected into ``os.write``, ``os.fsync`` or ``os.close`` for files in ``--out``) for
``score`` and ``watch``, and ``watch`` on a read-only ``--out``."""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _fail_in(monkeypatch, name: str, out: Path, pattern: str = "") -> None:
    """``os.<name>`` raises ENOSPC for descriptors of files under ``out`` matching ``pattern``."""
    real = getattr(os, name)
    prefix = str(out.resolve()) + "/"

    def full(fd, *args, **kwargs):
        path = _fd_path(fd)
        if path.startswith(prefix) and re.search(pattern, path):
            if name == "close":
                real(fd)        # the descriptor is gone, as after a failed close(2)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, name, full)


def _one_line_exit_6(r, names: str) -> None:
    assert r.exit_code == 6, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("zeekml: error:")]
    assert len(errors) == 1 and re.search(names, errors[0]), r.output


def _score(tmp_path: Path, *extra: str):
    return CliRunner().invoke(main, ["score", str(EXAMPLES / "zeek" / "conn.log"), "--out",
                                     str(tmp_path / "out"), "--no-models", "--no-progress",
                                     *extra])


@pytest.mark.parametrize("call", ["write", "fsync", "close"])
def test_score_on_a_full_disk_exits_6_with_one_line(tmp_path, monkeypatch, call):
    (tmp_path / "out").mkdir()
    _fail_in(monkeypatch, call, tmp_path / "out")
    r = _score(tmp_path)
    _one_line_exit_6(r, r"out/(verdicts\.jsonl|zeekml_notice\.log|quarantine\.jsonl|summary\.json)"
                        r": cannot write: No space left on device")


def test_score_full_disk_while_writing_the_summary(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    _fail_in(monkeypatch, "write", tmp_path / "out", r"summary\.json$")
    _one_line_exit_6(_score(tmp_path), r"summary\.json: cannot write: No space left")


def test_score_full_disk_at_the_zeek_feedback_file(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    _fail_in(monkeypatch, "write", tmp_path / "out", r"feedback")
    r = _score(tmp_path, "--zeek-feedback", str(tmp_path / "out" / "feedback.log"))
    _one_line_exit_6(r, r"feedback\.log: cannot write the verdict file")
    assert [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")] == []


def test_score_zeek_feedback_into_a_missing_directory_is_refused_before_scoring(tmp_path):
    fb = tmp_path / "nowhere" / "feedback.log"
    r = _score(tmp_path, "--zeek-feedback", str(fb))
    _one_line_exit_6(r, rf"{fb}: cannot write the --zeek-feedback file: its directory does not "
                        "exist")
    assert not (tmp_path / "out" / "verdicts.jsonl").exists()      # refused before scoring


def _watch(tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    shutil.copy(EXAMPLES / "zeek" / "conn.log", src / "conn.log")
    return CliRunner().invoke(main, ["watch", str(src), "--out", str(tmp_path / "out"), "--once",
                                     "--no-models", "--baseline-records", "100", "--fpr", "0.05",
                                     "--quiet"])


def _read_only(monkeypatch, out: Path) -> None:
    """What a read-only file system answers for ``out`` (root passes permission checks, so a
    chmod cannot stand in for it here)."""
    prefix = str(out.resolve()) + "/"
    real_open, real_replace, real_link = os.open, os.replace, os.link
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

    def inside(p) -> bool:
        return os.path.abspath(os.fspath(p)).startswith(prefix)

    def ro_open(path, flags, mode=0o777, *args, **kwargs):
        if inside(path) and flags & writing:
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, flags, mode, *args, **kwargs)

    def ro_two(real):
        def call(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                raise OSError(errno.EROFS, "Read-only file system")
            return real(src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "replace", ro_two(real_replace))
    monkeypatch.setattr(os, "link", ro_two(real_link))


def test_watch_on_a_read_only_out_exits_6_with_one_line(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    _read_only(monkeypatch, tmp_path / "out")
    _one_line_exit_6(_watch(tmp_path), r"out/watch\.lock: cannot write: Read-only file system")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode 0555 directory")
def test_watch_on_a_read_only_directory_exits_6(tmp_path):
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", 0o555)
    try:
        _one_line_exit_6(_watch(tmp_path), r"watch\.lock: cannot write: Permission denied")
    finally:
        os.chmod(tmp_path / "out", 0o755)


def test_watch_full_disk_while_calibrating_exits_6(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    _fail_in(monkeypatch, "write", tmp_path / "out", r"calibration")
    _one_line_exit_6(_watch(tmp_path), r"cannot write the calibration: No space left on device")
    assert [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")] == []


def test_watch_full_disk_at_the_checkpoint_exits_6(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    _fail_in(monkeypatch, "write", tmp_path / "out", r"checkpoint")
    _one_line_exit_6(_watch(tmp_path), r"checkpoint\.json: cannot write checkpoint: No space")

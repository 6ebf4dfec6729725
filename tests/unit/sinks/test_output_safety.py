"""Outputs and planted links: every writer refuses a symbolic link, a FIFO or a hard link where
its output goes (the target stays as it was), and creates its file 0640 (quarantine 0600)."""
from __future__ import annotations

import os
import stat

import pytest

from zeekml._core.errors import OutputError
from zeekml._core.outfile import OutputFile, open_output
from zeekml.parse.reject import RejectedRecord
from zeekml.pipeline.live.journal import ContextJournal
from zeekml.pipeline.live.options import (INCIDENT_NOTICES, INCIDENTS, NOTICES, OUTPUTS,
                                          QUARANTINE, VERDICTS)
from zeekml.pipeline.live.outputs import OutputFiles
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.jsonl import QUARANTINE_FILE, JsonLinesWriter, QuarantineWriter
from zeekml.sinks.run_outputs import ScoreOutputs
from zeekml.sinks.verdicts import VERDICTS_FILE, VerdictWriter
from zeekml.sinks.zeek_log import JsonLogWriter, ZeekLogWriter
from zeekml.sinks.zeek_notice import NOTICE_FILE, NoticeWriter

SECRET = b"root's secret\n"


def _verdict() -> Verdict:
    return Verdict(ts=1.0, uid="C1", orig_h="10.0.0.1", orig_p=1, resp_h="10.0.0.2", resp_p=2,
                   proto="tcp", score=2.0, alert=True, model="iforest", note="ZeekML::X")


WRITERS = {
    "verdicts": lambda p: VerdictWriter(p),
    "jsonl": lambda p: JsonLinesWriter(p),
    "quarantine": lambda p: QuarantineWriter(p),
    "notice": lambda p: NoticeWriter(p),
    "zeek-tsv": lambda p: ZeekLogWriter(p, "conn", [("ts", "time")]),
    "zeek-json": lambda p: JsonLogWriter(p, [("ts", "time")]),
    "output-file": lambda p: OutputFile(p),
}


@pytest.fixture
def victim(tmp_path):
    """A file outside the output directory that a planted link points at."""
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    return path


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path, victim, kind):
    out = tmp_path / "out"
    out.mkdir()
    link = out / "output"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link") as e:
        WRITERS[kind](link)
    assert str(link) in str(e.value) and "\n" not in str(e.value)
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_dangling_symlink_creates_nothing(tmp_path, kind):
    link = tmp_path / "output"
    link.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(OutputError, match="symbolic link"):
        WRITERS[kind](link)
    assert not (tmp_path / "would-be-created").exists()


def test_a_planted_hard_link_is_refused_and_its_target_untouched(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    os.link(victim, out / VERDICTS_FILE)
    with pytest.raises(OutputError, match="hard link"):
        VerdictWriter(out / VERDICTS_FILE)
    assert victim.read_bytes() == SECRET


def test_a_planted_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / VERDICTS_FILE
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        VerdictWriter(fifo)            # O_WRONLY on a FIFO without a reader would block forever
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:                               # with a reader the open succeeds: still refused
        with pytest.raises(OutputError, match="not a regular file"):
            open_output(fifo)
    finally:
        os.close(r)


@pytest.mark.parametrize("kind, mode", [("verdicts", 0o640), ("notice", 0o640),
                                        ("quarantine", 0o600), ("zeek-json", 0o640)])
def test_new_outputs_are_not_world_readable(tmp_path, kind, mode):
    old = os.umask(0o022)
    try:
        w = WRITERS[kind](tmp_path / "f")
        w.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == mode


def test_an_existing_world_readable_quarantine_is_tightened(tmp_path):
    path = tmp_path / QUARANTINE_FILE
    path.write_bytes(b"old\n")
    os.chmod(path, 0o644)
    w = QuarantineWriter(path)
    w.write(RejectedRecord(path="x.log", line=1, offset=0, reason="bad", sample=b"raw"))
    w.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"old" not in path.read_bytes() and b'"raw"' in path.read_bytes()


def test_score_outputs_refuse_a_link_planted_at_any_of_their_files(tmp_path, victim):
    for name in (QUARANTINE_FILE, VERDICTS_FILE, NOTICE_FILE, "summary.json"):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).symlink_to(victim)
        with pytest.raises(OutputError, match="symbolic link"):
            outputs = ScoreOutputs(str(out), conn_notices=True)
            outputs.write([_verdict()])
            outputs.finish({})
        assert victim.read_bytes() == SECRET


def test_watch_outputs_refuse_a_planted_link_and_close_what_they_opened(tmp_path, victim):
    for name in OUTPUTS:
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).symlink_to(victim)
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(OutputError, match="symbolic link") as e:
            OutputFiles(str(out), {})
        assert name in str(e.value)
        assert set(os.listdir("/proc/self/fd")) <= before
        assert victim.read_bytes() == SECRET


def test_watch_outputs_modes(tmp_path):
    old = os.umask(0o022)
    try:
        OutputFiles(str(tmp_path), {}).close()
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE(os.stat(tmp_path / n).st_mode) for n in OUTPUTS}
    assert modes == {VERDICTS: 0o640, NOTICES: 0o640, QUARANTINE: 0o600, INCIDENTS: 0o640,
                     INCIDENT_NOTICES: 0o640}


def test_context_journal_refuses_a_planted_link(tmp_path, victim):
    (tmp_path / "context.000001.journal").symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        ContextJournal(str(tmp_path), {})
    assert victim.read_bytes() == SECRET


def test_allowlist_append_refuses_a_planted_link(tmp_path, victim):
    from zeekml.scoring.allowlist import append_rule

    victim.write_bytes(b"# an allowlist elsewhere\n")
    link = tmp_path / "allowlist.toml"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="allowlist.toml: is a symbolic link"):
        append_rule(link, {"host": "10.0.0.1", "reason": "lab"})
    assert victim.read_bytes() == b"# an allowlist elsewhere\n"


def test_output_file_full_disk_is_one_output_error_and_the_descriptor_is_released(
        tmp_path, monkeypatch):
    import errno

    f = OutputFile(tmp_path / "v.jsonl")
    f.write(b"x" * 100)
    fds = set(os.listdir("/proc/self/fd"))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OutputError, match=r"v\.jsonl: cannot write: No space left on device"):
        f.close()
    assert f.failed and f.closed and len(os.listdir("/proc/self/fd")) == len(fds) - 1
    f.close()                         # a second close: nothing, no second error
    with pytest.raises(OutputError, match="an earlier write failed"):
        f.write(b"y")

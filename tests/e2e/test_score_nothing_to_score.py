"""``zeekml score`` on inputs that hold little or nothing to score: a damaged archive alone keeps
its records before the damage, a run that read nothing exits with its files' own code, and an
input without a conn record says so (exit 2) instead of "succeeding" with nothing scored."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from click.testing import CliRunner

from zeekml.cli import main

CONN = Path(__file__).parent.parent.parent / "examples" / "zeek" / "conn.log"


def _score(*args: str):
    return CliRunner().invoke(main, ["score", *args, "--no-models"])


def _header() -> bytes:
    return b"".join(line for line in CONN.read_bytes().splitlines(keepends=True)
                    if line.startswith(b"#") and not line.startswith(b"#close"))


def test_a_truncated_archive_alone_is_scored_up_to_the_damage_and_exits_7(tmp_path):
    whole = gzip.compress(CONN.read_bytes())
    cut = tmp_path / "conn.log.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    r = _score(str(cut), "-o", str(tmp_path / "out"), "--fpr", "0.05")
    assert r.exit_code == 7, r.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert 0 < summary["scored"] < 360 and summary["files"] == 0
    assert [p for p, _ in summary["files_failed"]] == [str(cut)]
    assert "records before byte" in summary["files_failed"][0][1]
    verdicts = (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    assert len(verdicts) == summary["scored"]


def _corrupt_archive(path: Path) -> None:
    """A gzip header, then a deflate stream damaged from its first byte: nothing decompresses."""
    whole = gzip.compress(CONN.read_bytes())
    path.write_bytes(whole[:10] + b"\xff" * 64 + whole[74:])


def test_a_run_that_read_nothing_exits_with_the_code_its_files_share(tmp_path):
    junk, other_junk, bad = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log.gz"
    junk.write_text("hello\nworld\n")
    other_junk.write_text("not a log either\n")
    _corrupt_archive(bad)
    unknown = _score(str(junk), str(other_junk), "-o", str(tmp_path / "o1"))
    assert unknown.exit_code == 3, unknown.output          # unknown format, every one
    assert "no input file could be read" in unknown.stderr
    unreadable = _score(str(bad), "-o", str(tmp_path / "o2"))
    assert unreadable.exit_code == 4, unreadable.output    # unreadable input
    mixed = _score(str(junk), str(bad), "-o", str(tmp_path / "o3"))
    assert mixed.exit_code == 1, mixed.output              # nothing in common: a plain error
    assert str(junk) in mixed.stderr and str(bad) in mixed.stderr
    assert "Traceback" not in unknown.output + unreadable.output + mixed.output


def test_an_empty_or_header_only_log_is_nothing_to_score_exit_2(tmp_path):
    empty, header = tmp_path / "empty.log", tmp_path / "conn.log"
    empty.write_bytes(b"")
    header.write_bytes(_header())
    for path in (empty, header):
        r = _score(str(path), "-o", str(tmp_path / f"out-{path.stem}"))
        assert r.exit_code == 2, r.output
        assert r.stderr.strip().splitlines()[-1] == (
            "zeekml: error: no conn records in any input (no records: empty, or a header alone): "
            "nothing to score")


def test_a_log_of_malformed_lines_only_is_quarantined_and_nothing_to_score(tmp_path):
    bad = tmp_path / "conn.log"
    bad.write_bytes(_header() + b"only\ttwo fields\n" + b"three\tshort\tfields\n")
    out = tmp_path / "out"
    r = _score(str(bad), "-o", str(out))
    assert r.exit_code == 2, r.output
    assert "(2 malformed lines, quarantined)" in r.stderr
    lines = (out / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 2                                   # lost nothing: both kept there


def test_a_baseline_no_conn_of_which_scores_out_of_sample_is_one_line_not_a_traceback(tmp_path):
    rows = [line for line in CONN.read_bytes().splitlines(keepends=True)
            if not line.startswith(b"#")][:3]
    tiny = tmp_path / "conn.log"
    tiny.write_bytes(_header() + b"".join(rows))
    r = _score(str(tiny), "-o", str(tmp_path / "out"), "--fpr", "1", "--baseline-fraction", "1")
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert r.stderr.strip().splitlines()[-1] == (
        "zeekml: error: the baseline is too small to calibrate iforest: none of its 3 conns could "
        "be scored out of sample; give a larger baseline (--baseline, --baseline-fraction, "
        "--baseline-until or --baseline-range)")

"""``zeekml score``/``watch`` baseline hygiene through the CLI: a baseline period
(``--baseline-until``, ``--baseline-range``, epoch or ISO-8601), refusal of a baseline too small
for ``--fpr`` (one line, exit 1), the effective FPR in summary.json and in the notices."""
from __future__ import annotations

import json
import os

from click.testing import CliRunner

from zeekml.cli import main

HERE = os.path.dirname(__file__)
CONN = os.path.join(HERE, "..", "..", "examples", "zeek", "conn.log")   # 360 conns, 2013-09-15
# the file's ts span 1379288650.69 .. 1379288902.88: 187 conns before 1379288750,
# 117 from 1379288700 to 1379288800
UNTIL, UNTIL_ISO = "1379288750", "2013-09-15T23:45:50Z"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def summary(out) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def read(out, name: str) -> bytes:
    with open(os.path.join(out, name), "rb") as f:
        return f.read()


def notices(out) -> list[list[str]]:
    return [line.split("\t") for line in read(out, "zeekml_notice.log").decode().splitlines()
            if not line.startswith("#")]


def test_baseline_until_epoch_and_iso_choose_the_same_conns(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, until in ((a, UNTIL), (b, UNTIL_ISO)):
        r = run("score", CONN, "--out", str(out), "--no-models", "--fpr", "0.06",
                "--baseline-until", until, "--no-progress")
        assert r.exit_code == 0, r.output
    assert summary(a)["baseline_records"] == 187
    assert read(a, "verdicts.jsonl") == read(b, "verdicts.jsonl")
    s = summary(a)
    assert s["effective_fpr"] == 0.06 and s["warnings"] == []
    # every baseline conn calibrates (scored out of bag); the search keeps 11 of 187 (<= 0.06)
    assert s["calibration"]["calibration_alert_rate"] == 11 / 187
    assert s["calibration"]["calibration_conns"] == 187


def test_baseline_range(tmp_path):
    out = tmp_path / "o"
    r = run("score", CONN, "--out", str(out), "--no-models", "--fpr", "0.1", "--no-progress",
            "--baseline-range", "2013-09-15T23:45:00+00:00,1379288800")
    assert r.exit_code == 0, r.output
    assert summary(out)["baseline_records"] == 117


def test_small_baseline_runs_with_the_effective_fpr_in_summary_and_notices(tmp_path):
    out = tmp_path / "o"
    r = run("score", CONN, "--out", str(out), "--no-models", "--fpr", "0.01", "--no-progress",
            "--baseline-until", UNTIL, "--conn-notices")
    assert r.exit_code == 0, r.output
    s = summary(out)
    assert s["effective_fpr"] == 0.01
    assert s["warnings"] == [
        "baseline small for --fpr 0.01: 187 calibration conns, 1.9 expected beyond the threshold "
        "(the smallest FPR they support is 0.0053); 1,000 baseline conns give a stable threshold"]
    rows = notices(out)
    assert len(rows) == s["alerts"]
    assert all(row[11].endswith("(1.0 = threshold at fpr 0.01)") for row in rows)

    out2 = tmp_path / "o2"
    r = run("score", CONN, "--out", str(out2), "--no-models", "--fpr", "0.002", "--no-progress",
            "--baseline-until", UNTIL, "--conn-notices")
    assert r.exit_code == 0, r.output
    assert summary(out2)["effective_fpr"] == 1 / 187
    # each threshold is its detector's largest calibration score, which no later conn of this
    # log passes; the notice text at an effective FPR is tests/unit/pipeline/test_fitted.py's
    rows = notices(out2)
    assert len(rows) == summary(out2)["alerts"]
    assert all(row[11].endswith("(1.0 = threshold at effective fpr 0.00535, asked 0.002)")
               for row in rows)


def test_a_tiny_log_is_refused_with_one_line(tmp_path):
    lines = read(os.path.dirname(CONN), "conn.log").splitlines(keepends=True)
    head = [x for x in lines if x.startswith(b"#") and not x.startswith(b"#close")]
    tiny = tmp_path / "conn.log"
    tiny.write_bytes(b"".join(head + [x for x in lines if not x.startswith(b"#")][:7]))
    r = run("score", str(tiny), "--out", str(tmp_path / "o"), "--no-models", "--no-progress")
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        "zeekml: error: the baseline is too small for --fpr 0.001: its 2 calibration conns "
        "support an FPR of 0.5 at the least; give a baseline of at least 1,000 conns "
        "(--baseline, --baseline-fraction, --baseline-until or --baseline-range) or raise --fpr "
        "to 0.5"]


def test_baseline_choices_exclude_each_other(tmp_path):
    for extra in (["--baseline-fraction", "0.2"], ["--baseline", CONN],
                  ["--baseline-range", "1,2"]):
        r = run("score", CONN, "--out", str(tmp_path / "o"), "--baseline-until", UNTIL, *extra)
        assert r.exit_code == 2, r.output
        assert "each sets the baseline" in r.output


def test_bad_times_are_usage_errors(tmp_path):
    r = run("score", CONN, "--out", str(tmp_path / "o"), "--baseline-until", "yesterday")
    assert r.exit_code == 2 and "not a time: 'yesterday'" in r.output
    r = run("score", CONN, "--out", str(tmp_path / "o"), "--baseline-range", "5,2")
    assert r.exit_code == 2 and "the range ends before it starts" in r.output


def test_an_empty_period_names_the_inputs_span(tmp_path):
    r = run("score", CONN, "--out", str(tmp_path / "o"), "--no-models", "--no-progress",
            "--baseline-until", "2001-01-01")
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        "zeekml: error: no conns before 2001-01-01T00:00:00Z to take as baseline: the input "
        "spans 2013-09-15T23:44:10Z to 2013-09-15T23:48:22Z"]


def test_watch_once_with_baseline_until_equals_score(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "conn.log").write_bytes(read(os.path.dirname(CONN), "conn.log"))
    w, s = tmp_path / "w", tmp_path / "s"
    r = run("watch", str(logs), "--out", str(w), "--once", "--no-models", "--fpr", "0.06",
            "--baseline-until", UNTIL_ISO, "--quiet", "--conn-notices")
    assert r.exit_code == 0, r.output
    r = run("score", str(logs), "--out", str(s), "--no-models", "--fpr", "0.06",
            "--baseline-until", UNTIL, "--no-progress")
    assert r.exit_code == 0, r.output
    with open(w / "calibration.json") as f:
        cal = json.load(f)
    assert cal["records"] == 187
    assert cal["options"]["baseline_period"] == [None, 1379288750.0]
    assert read(w, "verdicts.jsonl") == read(s, "verdicts.jsonl")
    assert read(w, "zeekml_notice.log").count(b"\n") > 8


def test_watch_refuses_a_tiny_baseline(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "conn.log").write_bytes(read(os.path.dirname(CONN), "conn.log"))
    r = run("watch", str(logs), "--out", str(tmp_path / "w"), "--once", "--no-models",
            "--baseline-records", "50", "--quiet")
    assert r.exit_code == 1
    assert r.output.splitlines()[-1].startswith(
        "zeekml: error: the baseline is too small for --fpr 0.001: its 50 calibration conns")


def test_watch_baseline_range_and_the_choice_rules(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "conn.log").write_bytes(read(os.path.dirname(CONN), "conn.log"))
    w = tmp_path / "w"
    r = run("watch", str(logs), "--out", str(w), "--once", "--no-models", "--fpr", "0.1",
            "--baseline-range", "1379288700,2013-09-15T23:46:40Z", "--quiet")
    assert r.exit_code == 0, r.output
    with open(w / "calibration.json") as f:
        cal = json.load(f)
    assert cal["records"] == 117
    assert cal["options"]["baseline_period"] == [1379288700.0, 1379288800.0]
    r = run("watch", str(logs), "--out", str(tmp_path / "x"), "--once", "--baseline-until", UNTIL,
            "--baseline-records", "50")
    assert r.exit_code == 2 and "each sets the baseline" in r.output
    r = run("watch", str(logs), "--out", str(tmp_path / "y"), "--once", "--no-models",
            "--baseline-until", "2001-01-01", "--quiet")
    assert r.exit_code == 1
    assert r.output.splitlines()[-1].endswith("no conn records to calibrate on in the baseline "
                                              "period")

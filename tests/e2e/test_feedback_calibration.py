"""Feedback into calibration (issue 16 item 4): `score --feedback FILE` adds the input's conns
that `zeekml feedback` labeled benign to the baseline before fitting, and says how many joined."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from zeekml.cli import main

HERE = os.path.dirname(__file__)
REAL_CONN = os.path.join(HERE, "..", "data", "real", "zat", "data", "conn.log")
# 360 conns: the earliest half is the baseline, and fpr 0.05 alerts on some of the later half
ARGS = ["--no-models", "--no-progress", "--fpr", "0.05", "--baseline-fraction", "0.5"]


def _score(out, *extra, args=ARGS):
    r = CliRunner().invoke(main, ["score", REAL_CONN, "--out", str(out), *args, *extra])
    assert r.exit_code == 0, r.output
    verdicts = [json.loads(x) for x in open(out / "verdicts.jsonl")]
    return verdicts, json.loads((out / "summary.json").read_text())


def _feedback(run, tmp_path, verdict_ids):
    fb = tmp_path / "feedback.jsonl"
    for vid in verdict_ids:
        r = CliRunner().invoke(main, ["feedback", str(run), "--benign", vid, "--allowlist",
                                      str(tmp_path / "allow.toml"), "--feedback-file", str(fb)])
        assert r.exit_code == 0, r.output
    return fb


def test_benign_feedback_conns_join_the_baseline_and_stop_alerting(tmp_path):
    before, s1 = _score(tmp_path / "a")
    assert "feedback_baseline" not in s1
    cut = sorted(v["ts"] for v in before)[s1["baseline_records"] - 1]
    late = [v for v in before if v["alert"] and v["ts"] > cut][:3]
    assert len(late) == 3, "the later half should alert at fpr 0.05"
    fb = _feedback(tmp_path / "a", tmp_path, [v["verdict_id"] for v in late])
    after, s2 = _score(tmp_path / "b", "--feedback", str(fb))
    assert s2["feedback_baseline"] == 3
    assert s2["baseline_records"] == s1["baseline_records"] + 3
    again = {v["uid"]: v for v in after}
    for v in late:
        assert not again[v["uid"]]["alert"], (v["uid"], again[v["uid"]]["score"])
        assert "suppressed_by" not in again[v["uid"]]   # not allowlisted: scored lower
        assert again[v["uid"]]["score"] < v["score"]


def test_feedback_on_conns_already_in_the_baseline_changes_nothing(tmp_path):
    """Conns drawn into the baseline stay where the draw put them (the calibration stays a
    random sample of normal traffic): 0 join, every verdict line as without --feedback."""
    before, s1 = _score(tmp_path / "a")
    cut = sorted(v["ts"] for v in before)[s1["baseline_records"] - 1]
    early = [v for v in before if v["alert"] and v["ts"] <= cut][:2]
    assert early, "the baseline half should hold an alert at fpr 0.05"
    fb = _feedback(tmp_path / "a", tmp_path, [v["verdict_id"] for v in early])
    after, s2 = _score(tmp_path / "b", "--feedback", str(fb))
    assert s2["feedback_baseline"] == 0 and s2["baseline_records"] == s1["baseline_records"]
    assert (tmp_path / "a" / "verdicts.jsonl").read_bytes() == \
        (tmp_path / "b" / "verdicts.jsonl").read_bytes()


@pytest.mark.parametrize("content,code,message", [
    (None, 2, "feedback file not found"),
    ('{"label":"benign","conns":[]}\nnot json\n', 4, "feedback.jsonl:2: not a feedback record"),
    ('{"label":"benign"}\n', 4, "feedback.jsonl:1: benign record without a conns list"),
])
def test_bad_feedback_file_is_one_line(tmp_path, content, code, message):
    fb = tmp_path / "feedback.jsonl"
    if content is not None:
        fb.write_text(content)
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["score", REAL_CONN, "--out", str(out), *ARGS, "--feedback", str(fb)])
    assert r.exit_code == code and message in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()


@pytest.mark.parametrize("given_baseline", [False, True])
def test_feedback_with_dask_equals_one_process(tmp_path, given_baseline):
    """`--dask` finds the feedback conns in its workers' tables and adds the same ones to the
    baseline as one process does (the input split into several tasks): the same verdict
    bytes and count. With a `--baseline` file, feedback conns already in it by uid stay out."""
    before, s1 = _score(tmp_path / "a")
    cut = sorted(v["ts"] for v in before)[s1["baseline_records"] - 1]
    picked = ([v for v in before if v["alert"] and v["ts"] > cut][:3]
              + [v for v in before if v["alert"] and v["ts"] <= cut][:1])
    fb = _feedback(tmp_path / "a", tmp_path, [v["verdict_id"] for v in picked])
    extra = ["--feedback", str(fb)]
    args = ARGS
    if given_baseline:
        # the input's first 200 lines: the early alert is in it by uid, the late ones are not
        base = tmp_path / "base.log"
        with open(REAL_CONN) as f:
            base.write_text("".join(line for _, line in zip(range(200), f)))
        extra += ["--baseline", str(base)]
        args = [a for a in ARGS if a not in ("--baseline-fraction", "0.5")]
    one, s_one = _score(tmp_path / "one", *extra, args=args)
    dask, s_dask = _score(tmp_path / "dask", *extra, "--dask", "local:2", "--dask-split-bytes", "8192", args=args)
    assert s_one["feedback_baseline"] == s_dask["feedback_baseline"] == 3
    assert s_one["baseline_records"] == s_dask["baseline_records"]
    assert (tmp_path / "one" / "verdicts.jsonl").read_bytes() == \
        (tmp_path / "dask" / "verdicts.jsonl").read_bytes()
    assert any(v["alert"] for v in one) and one == dask

"""The model commands lose no input silently: a malformed conn line given to pretrain, predict,
eval or embed is written to a quarantine file with its file and line, and a warning says so."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from zeekml.cli import main

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")     # CTU-Normal-40 head, 900 conns


@pytest.fixture()
def damaged(tmp_path):
    """The slice with two broken records: line 20 cut short, line 31 a bad count."""
    lines = open(SLICE, "rb").read().split(b"\n")
    lines[19] = b"\t".join(lines[19].split(b"\t")[:5])
    f = lines[30].split(b"\t")
    f[9] = b"12x"                                     # orig_bytes: count
    lines[30] = b"\t".join(f)
    p = tmp_path / "conn.log"
    p.write_bytes(b"\n".join(lines))
    return p


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def quarantined(path):
    return [(json.loads(x)["line"], json.loads(x)["path"]) for x in open(path).read().splitlines()]


def test_pretrain_predict_eval_quarantine_bad_lines(damaged, tmp_path):
    out = run("pretrain", "--model", "dense", damaged, "--out", tmp_path / "m", "--epochs", "1",
              "--device", "cpu")
    assert "2 malformed record(s) quarantined" in out and f"{damaged}:20" in out
    assert quarantined(tmp_path / "m" / "quarantine.jsonl") == [(20, str(damaged)), (31, str(damaged))]
    assert json.loads(out[out.index("{"):])["rows"] == 898                 # 900 - 2: none lost silently

    preds = tmp_path / "p.jsonl"
    out = run("predict", "--model", tmp_path / "m", damaged, "--out", preds, "--device", "cpu")
    assert "898 predictions" in out and "2 malformed record(s)" in out
    assert [n for n, _ in quarantined(str(preds) + ".quarantine.jsonl")] == [20, 31]

    run("eval", "--model", tmp_path / "m", damaged, "--out", tmp_path / "ev", "--device", "cpu")
    assert [n for n, _ in quarantined(tmp_path / "ev" / "quarantine.jsonl")] == [20, 31]


def test_clean_input_writes_no_quarantine_file(tmp_path):
    out = run("pretrain", "--model", "dense", SLICE, "--out", tmp_path / "m", "--epochs", "1", "--device", "cpu")
    assert "malformed" not in out and not (tmp_path / "m" / "quarantine.jsonl").exists()

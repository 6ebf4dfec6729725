"""`zeekml predict` and `zeekml eval` end in one line and their exit code, never a traceback: an
output that cannot be written is exit 6 (as `zeekml embed`), logs without labels to evaluate
against are refused as finetune refuses them (exit 1), before the model runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

ROOT = Path(__file__).parent.parent.parent
CONN = ROOT / "examples" / "zeek" / "conn.log"                  # unlabeled
LABELED = ROOT / "examples" / "iot23" / "conn.log.labeled"
MODEL = ROOT / "models" / "moe-malicious"


def _one_error(r, code: int, pattern: str) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    errors = [line for line in r.stderr.splitlines() if line.startswith("zeekml: error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), r.output
    return errors[0]


@pytest.fixture(scope="module")
def a_file(tmp_path_factory) -> Path:
    """A regular file: a path under it cannot be created, whoever runs the tests (root too)."""
    f = tmp_path_factory.mktemp("f") / "plain"
    f.write_text("x\n")
    return f


def test_predict_into_a_missing_directory_is_exit_6(tmp_path):
    out = tmp_path / "nodir" / "sub" / "p.jsonl"
    r = CliRunner().invoke(main, ["predict", "--model", str(MODEL), str(CONN), "-o", str(out)])
    _one_error(r, 6, re.escape(str(out)) + ": cannot write predictions: No such file or directory")


def test_predict_to_an_unwritable_path_is_exit_6(a_file):
    out = a_file / "p.jsonl"
    r = CliRunner().invoke(main, ["predict", "--model", str(MODEL), str(CONN), "-o", str(out)])
    _one_error(r, 6, re.escape(str(out)) + ": cannot write predictions: Not a directory")


def test_predict_still_writes_one_line_per_conn(tmp_path):
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(main, ["predict", "--model", str(MODEL), str(CONN), "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 360 and rows[0]["uid"] and "proba" in rows[0]


@pytest.mark.parametrize("model", ["moe-malicious", "moe-base"])
def test_eval_on_unlabeled_logs_names_them(tmp_path, model):
    # a classifier and an anomaly scorer alike: nothing to judge the model against
    r = CliRunner().invoke(main, ["eval", "--model", str(ROOT / "models" / model), str(CONN),
                                  "-o", str(tmp_path / "ev")])
    _one_error(r, 1, re.escape(str(CONN)) + r": no labeled conns \('label' field\) among the 108 "
                     r"conns of the latest 30% by time")
    assert not (tmp_path / "ev").exists()


def test_eval_into_an_output_that_cannot_be_made_is_exit_6(a_file):
    out = a_file / "ev"
    r = CliRunner().invoke(main, ["eval", "--model", str(MODEL), str(LABELED), "-o", str(out)])
    _one_error(r, 6, re.escape(str(out)) + ": cannot create output directory: Not a directory")

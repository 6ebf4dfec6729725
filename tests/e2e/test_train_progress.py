"""`zeekml pretrain` and `zeekml finetune` say how training goes, one line per epoch on stderr:
epoch i/n, train loss, the validation metric (or, for finetuning, which holds no validation share,
the accuracy on the batches trained), seconds; for every model kind (issue 16 item 5)."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from zeekml.cli import main  # noqa: E402

LOG = str(Path(__file__).parent.parent / "data" / "gnn" / "iot23-ctu-34-1-head400.conn.log.labeled")
NUM = r"(\d+\.\d{4}|n/a)"
METRIC = {"gnn": "held-out link AUROC", "moe": "validation masked-token loss",
          "dense": "validation masked-token loss", "mae": "validation loss"}


def epoch_lines(text: str, what: str) -> list[re.Match]:
    return list(re.finditer(rf"{what} epoch (\d+)/(\d+): train loss {NUM}(?:, ([a-zA-Z -]+) "
                            rf"{NUM})?, (\d+\.\d) s", text))


def test_pretrain_prints_epochs_on_stderr(tmp_path):
    """The real CLI in a subprocess: the lines are on stderr, stdout stays the JSON metrics."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "zeekml", "pretrain", "--model", "gnn", LOG, "--out",
                        str(tmp_path / "g"), "--epochs", "2", "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = epoch_lines(r.stderr, "gnn pretrain")
    assert [(m.group(1), m.group(2)) for m in lines] == [("1", "2"), ("2", "2")], r.stderr
    assert all(m.group(4) == "held-out link AUROC" for m in lines)
    assert float(lines[1].group(6)) >= float(lines[0].group(6))          # seconds grow
    assert " epoch 1/2" not in r.stdout and r.stdout.lstrip().startswith("{")


def _run(caplog, *args) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zeekml.train.progress"):
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return "\n".join(rec.getMessage() for rec in caplog.records
                     if rec.name == "zeekml.train.progress")


@pytest.mark.parametrize("kind", ["gnn", "moe", "dense", "mae"])
def test_every_kind_reports_each_epoch(kind, tmp_path, caplog):
    base = tmp_path / "base"
    text = _run(caplog, "pretrain", "--model", kind, LOG, "--out", base, "--epochs", "3",
                "--device", "cpu")
    lines = epoch_lines(text, f"{kind} pretrain")
    assert [m.group(1) for m in lines] == ["1", "2", "3"], text
    assert {m.group(2) for m in lines} == {"3"}
    assert all(m.group(4) == METRIC[kind] and m.group(5) != "n/a" for m in lines), text
    assert all(m.group(3) != "n/a" for m in lines)
    # the losses reported are the ones the model directory records
    if kind != "gnn":
        import json
        rec = json.loads((base / "manifest.json").read_text())["metrics"]
        by_epoch = rec.get("loss_by_epoch")
        assert [float(m.group(3)) for m in lines] == pytest.approx(by_epoch, abs=1.5e-4)

    text = _run(caplog, "finetune", "--model", kind, "--base", base, "--train", LOG,
                "--label-field", "label", "--shots", "20", "--epochs", "2", "--out",
                tmp_path / "ft", "--device", "cpu")
    lines = epoch_lines(text, f"{kind} finetune")
    assert lines, text
    n = int(lines[0].group(2))
    assert [int(m.group(1)) for m in lines] == list(range(1, n + 1)), text
    for m in lines:
        assert m.group(4) == "train accuracy"
        assert 0.0 <= float(m.group(5)) <= 1.0

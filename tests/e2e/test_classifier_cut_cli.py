"""Issue 14: ``zeekml finetune`` stores a classifier's trained cut, and ``zeekml score`` uses it
on a baseline that looks infected, saying so in the summary and in the notices' text. The slice
(CTU-Normal-40 head, 900 conns) is 60% inbound attacks labeled Malicious, so its default
baseline (the earliest 30%) looks infected to a classifier finetuned on it."""
from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.train.data import labels_of, load_conns, temporal_split

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")


def invoke(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_finetune_stores_the_cut_and_score_uses_it_on_an_infected_baseline(tmp_path):
    invoke("pretrain", "--model", "moe", SLICE, "--out", tmp_path / "base", "--epochs", "1", "--device", "cpu")
    ft = tmp_path / "clf"
    invoke("finetune", "--model", "moe", "--base", tmp_path / "base", "--train", SLICE, "--label-field",
           "label", "--shots", "20", "--epochs", "3", "--fpr-train", "0.05", "--out", ft, "--device", "cpu")
    op = json.loads((ft / "config.json").read_text())["operating_point"]
    # the validation conns: the training share's benign conns minus the 20 drawn
    t = load_conns(SLICE)
    early, _ = temporal_split(t)
    n_benign = int(np.sum([str(v) == "Benign" for v in labels_of(t, "label")[early]]))
    assert op["validation_benign"] == n_benign - 20 > 0 and op["fpr"] == 0.05
    assert op["cut"] >= 0.5 and op["validation_fpr"] <= 0.05
    assert json.loads((ft / "manifest.json").read_text())["metrics"]["operating_point"] == op
    invoke("models", "verify", "--dir", ft)                  # config rehashed in the manifest

    invoke("score", SLICE, "--out", tmp_path / "s", "--models", ft, "--no-progress")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["calibration"]["trained_cuts"]["clf-clf"]["cut"] == op["cut"]
    assert summary["thresholds"]["clf-clf"]["threshold"] == op["cut"]
    assert summary["thresholds"]["clf-clf"]["trained_cut"] is True
    assert any(w.startswith("your baseline looks infected") for w in summary["warnings"])
    assert any(w.startswith("clf-clf: threshold is its trained cut, P >= ") for w in summary["warnings"])
    v = [json.loads(x) for x in (tmp_path / "s" / "verdicts.jsonl").read_text().splitlines()]
    clf = [x for x in v if x["alert"] and x["model"] == "clf-clf"]
    assert clf and all(x["scores"]["clf-clf"] >= 1.0 for x in clf)

"""`zeekml pretrain|finetune|predict|eval|score|models list` with `--model gnn`, end to end on a
400-conn IoT-23 slice (tests/data/gnn), through click's CliRunner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch_geometric")

from zeekml.cli import main  # noqa: E402
from zeekml.train.data import load_conns  # noqa: E402

LOG = str(Path(__file__).parent.parent / "data" / "gnn" / "iot23-ctu-34-1-head400.conn.log.labeled")


def invoke(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_gnn_pretrain_finetune_predict_eval_score(tmp_path):
    models = tmp_path / "models"
    base = models / "gnn-tiny"
    invoke("pretrain", "--model", "gnn", LOG, "--out", base, "--epochs", "2", "--device", "cpu")
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["kind"] == "gnn" and cfg["detector"] is True and cfg["n_params"] > 0
    manifest = json.loads((base / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "weights.pt"}
    assert "link_auroc" in manifest["metrics"]

    ft = tmp_path / "ft"
    out = invoke("finetune", "--model", "gnn", "--base", base, "--train", LOG, "--label-field", "label",
                 "--shots", "10", "--seed", "1", "--epochs", "5", "--out", ft, "--device", "cpu")
    assert json.loads(out)["classes"] == ["Benign", "Malicious"]
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["label_field"] == "label" and cfg["classes"] == ["Benign", "Malicious"]
    assert json.loads((ft / "manifest.json").read_text())["metrics"]["train_rows"] == 20

    preds = tmp_path / "preds.jsonl"
    assert "400 predictions" in invoke("predict", "--model", ft, LOG, "--out", preds, "--device", "cpu")
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [r["uid"] for r in lines] == load_conns([LOG]).column("uid").to_pylist()
    for rec in lines:
        assert rec["pred"] in ("Benign", "Malicious")
        assert abs(sum(rec["proba"].values()) - 1.0) < 1e-4

    out = invoke("eval", "--model", ft, LOG, "--out", tmp_path / "eval", "--device", "cpu")
    report = json.loads(out[: out.index("\nclass")])
    assert report["test_rows"] == 120 and 0.0 <= report["macro_f1"] <= 1.0
    assert (tmp_path / "eval" / "confusion.png").exists()

    # from scratch, the IoT-23 family label (written detailed-label in the log)
    scratch = tmp_path / "scratch"
    invoke("finetune", "--model", "gnn", "--scratch", "--train", LOG, "--label-field", "detailed-label",
           "--shots", "5", "--epochs", "3", "--out", scratch, "--device", "cpu")
    assert json.loads((scratch / "config.json").read_text())["classes"] == ["Benign", "C&C"]

    # the pretrained base is an anomaly scorer: eval ranks its score against the labels
    out = invoke("eval", "--model", base, LOG, "--out", tmp_path / "eval-base", "--device", "cpu")
    assert "auroc" in json.loads(out)

    assert "gnn-tiny" in invoke("models", "list", "--dir", models)
    score_out = tmp_path / "score"
    invoke("score", LOG, "--out", score_out, "--models", models, "--no-progress")
    verdicts = [json.loads(x) for x in (score_out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 400
    assert all("gnn" in v["scores"] for v in verdicts)

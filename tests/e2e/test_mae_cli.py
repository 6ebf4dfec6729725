"""``--model mae`` end to end through click's CliRunner on a 900-conn real slice:
pretrain -> finetune -> predict -> eval -> embed -> similar, and the autoencoder as a detector in score."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.parse import read_table

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae") / "base"
    r = CliRunner().invoke(main, ["pretrain", "--model", "mae", SLICE, "--out", str(out), "--epochs", "2",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    yield out, json.loads(r.output)


def test_pretrain_writes_a_self_contained_model_dir(base):
    out, metrics = base
    assert metrics["seq_source"] == "host" and metrics["rows"] == 900
    assert len(metrics["loss_by_epoch"]) == 2 and np.isfinite(metrics["train_loss"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "mae" and cfg["detector"] is True and cfg["mae"]["embed_dim"] == 64
    assert cfg["n_params"] == metrics["n_params"] > 100_000
    assert cfg["featurizer"]["w2v_tokens"] and cfg["featurizer"]["flow"]["mean"]
    r = CliRunner().invoke(main, ["models", "verify", "--dir", str(out.parent)])
    assert r.exit_code == 0, r.output


def test_finetune_predict_eval(base, tmp_path):
    out, _ = base
    ft = tmp_path / "ft"
    r = CliRunner().invoke(main, ["finetune", "--model", "mae", "--base", str(out), "--train", SLICE,
                                  "--label-field", "label", "--shots", "20", "--out", str(ft),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["classes"] == ["Background", "Benign", "Malicious"]
    # LP-FT, mae's default: the encoder and a linear head are trained (docs/results/fewshot.md)
    base_cfg = json.loads((out / "config.json").read_text())
    assert cfg["finetune"]["procedure"] == "lp-ft" and cfg["head"]["hidden"] == 0
    assert cfg["n_params"] == base_cfg["n_params"] + 64 * 3 + 3
    preds = tmp_path / "p.jsonl"
    r = CliRunner().invoke(main, ["predict", "--model", str(ft), SLICE, "--out", str(preds), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    conn = read_table([SLICE])
    assert [x["uid"] for x in lines] == [u.decode() if isinstance(u, bytes) else u
                                         for u in conn.column("uid").to_pylist()]
    assert all(x["pred"] in cfg["classes"] and abs(sum(x["proba"].values()) - 1) < 1e-4 for x in lines)
    assert all(x["score"] >= 0 for x in lines)
    r = CliRunner().invoke(main, ["eval", "--model", str(ft), SLICE, "--out", str(tmp_path / "ev"),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[: r.output.index("\nclass")])
    assert rep["test_rows"] == 270 and 0 <= rep["macro_f1"] <= 1
    assert (tmp_path / "ev" / "confusion.png").exists()
    # the pretrained dir ranks its reconstruction error against the labels
    r = CliRunner().invoke(main, ["eval", "--model", str(out), SLICE, "--out", str(tmp_path / "ev2"),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert 0 <= rep["auroc"] <= 1 and (tmp_path / "ev2" / "roc_pr.png").exists()


def test_finetune_service_hides_service_and_ports(base, tmp_path):
    out, _ = base
    ft = tmp_path / "svc"
    r = CliRunner().invoke(main, ["finetune", "--model", "mae", "--base", str(out), "--train", SLICE,
                                  "--label-field", "service", "--out", str(ft), "--epochs", "5",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["hide_service"] is True and "ssl" in cfg["classes"]


def test_embed_and_similar(base, tmp_path):
    out, _ = base
    emb = tmp_path / "emb.parquet"
    r = CliRunner().invoke(main, ["embed", SLICE, "--model", str(out), "--out", str(emb), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(emb)
    assert t.num_rows == 900 and t.column_names == ["uid"] + [f"e{j:02d}" for j in range(64)]
    z = np.stack([t.column(f"e{j:02d}").to_numpy() for j in range(64)], axis=1)
    assert np.isfinite(z).all() and z.std(axis=0).max() > 0
    uid = t.column("uid")[0].as_py()
    r = CliRunner().invoke(main, ["similar", "--model", str(out), "--uid", uid, SLICE, "--top", "5", "--json",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.splitlines()]
    assert [x["rank"] for x in rows] == [1, 2, 3, 4, 5] and uid not in {x["uid"] for x in rows}
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sims = zn @ zn[0]
    sims[0] = -np.inf
    assert rows[0]["cosine"] == pytest.approx(float(sims.max()), abs=1e-4)
    assert [x["cosine"] for x in rows] == sorted((x["cosine"] for x in rows), reverse=True)
    r = CliRunner().invoke(main, ["similar", "--model", str(out), "--uid", uid, SLICE, "--top", "3",
                                  "--device", "cpu"])
    assert r.exit_code == 0 and r.output.startswith(f"query {uid}:"), r.output
    r = CliRunner().invoke(main, ["similar", "--model", str(out), "--uid", "Cnope", SLICE])
    assert r.exit_code == 1 and "Cnope" in r.output


def test_autoencoder_joins_score_as_a_detector(base, tmp_path):
    out, _ = base
    models = tmp_path / "models"
    shutil.copytree(out, models / "mae-base")
    r = CliRunner().invoke(main, ["score", SLICE, "--out", str(tmp_path / "s"), "--models", str(models),
                                  "--no-progress", "--conn-notices"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert "mae" in summary["thresholds"]
    v = [json.loads(x) for x in (tmp_path / "s" / "verdicts.jsonl").read_text().splitlines()]
    assert len(v) == 900 and all("mae" in x["scores"] for x in v)
    mae_alerts = [x for x in v if x["alert"] and x["model"] == "mae"]
    notices = (tmp_path / "s" / "zeekml_notice.log").read_text()
    assert notices.count("\tmae anomaly score") == len(mae_alerts)
    # in words: the nearest baseline conns (issue 16)
    assert (notices.count("\tnearest baseline conns (") + notices.count("\tunlike any of the "
            "baseline's")) == len(mae_alerts)


def test_packet_sequences_from_a_replayed_capture(tmp_path):
    """conn.log + zeekml_flow.log from the built-in flow meter: the sequence modality is packets."""
    wiki = os.path.join(DATA, "zeek-btest", "Traces", "wikipedia.pcap")
    logs = tmp_path / "logs"
    r = CliRunner().invoke(main, ["replay", wiki, "--out", str(logs), "--engine", "builtin", "--no-score"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["pretrain", "--model", "mae", str(logs / "conn.log"), "--out",
                                  str(tmp_path / "m"), "--epochs", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["seq_source"] == "packets"
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["mae"]["seq_channels"] == 9
    r = CliRunner().invoke(main, ["embed", str(logs / "conn.log"), "--model", str(tmp_path / "m"),
                                  "--out", str(tmp_path / "e.parquet"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 34

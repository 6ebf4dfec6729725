"""``--model moe`` and ``--model dense`` end to end through click's CliRunner on a 900-conn real slice:
pretrain -> finetune -> predict -> eval, the service task with service and ports hidden, the MoE base
as a detector in ``score``, and packet tokens from a capture replayed by the built-in flow meter."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.parse import read_table

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")     # CTU-Normal-40 head, 900 conns


def invoke(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    out = {}
    for kind in ("moe", "dense"):
        metrics = json.loads(invoke("pretrain", "--model", kind, SLICE, "--out", root / kind, "--epochs", "1",
                                    "--device", "cpu"))
        out[kind] = (root / kind, metrics)
    return out


def test_pretrain_writes_tokenizer_and_parameter_counts(bases):
    moe_dir, m = bases["moe"]
    dense_dir, d = bases["dense"]
    assert m["token_source"] == "host" and m["rows"] == 900 and len(m["loss_by_epoch"]) == 1
    cfg = json.loads((moe_dir / "config.json").read_text())
    dcfg = json.loads((dense_dir / "config.json").read_text())
    assert cfg["kind"] == "moe" and cfg["detector"] is True and dcfg["detector"] is False
    assert cfg["tokenizer"]["fields"] and cfg["tokenizer"]["fields"][5]["edges"]     # bucket edges saved
    assert cfg["schema_version"] == 1 and cfg["encoder"]["n_experts"] == 8
    # same active parameters per token (the routers' 2 x 64 x 8 weights apart), more in total
    assert cfg["n_params_active"] - dcfg["n_params_active"] == 2 * 64 * 8
    assert cfg["n_params_encoder"] > 2.5 * dcfg["n_params_encoder"]
    assert dcfg["encoder"]["d_ff_alt"] == cfg["encoder"]["top_k"] * cfg["encoder"]["d_expert"]
    r = m["val_routing"]
    assert [x["layer"] for x in r] == [1, 3] and all(len(x["tokens_per_expert"]) == 8 for x in r)
    assert all(sum(x["tokens_per_expert"]) + x["dropped"] == x["routed"] for x in r)
    assert "val_routing" not in d
    invoke("models", "verify", "--dir", moe_dir.parent)


def test_finetune_predict_eval(bases, tmp_path):
    moe_dir, _ = bases["moe"]
    ft = tmp_path / "ft"
    invoke("finetune", "--model", "moe", "--base", moe_dir, "--train", SLICE, "--label-field", "label",
           "--shots", "20", "--epochs", "40", "--out", ft, "--device", "cpu")
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["classes"] == ["Background", "Benign", "Malicious"] and cfg["hide_service"] is False
    preds = tmp_path / "p.jsonl"
    invoke("predict", "--model", ft, SLICE, "--out", preds, "--device", "cpu")
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    uids = [u.decode() if isinstance(u, bytes) else u for u in read_table([SLICE]).column("uid").to_pylist()]
    assert [x["uid"] for x in lines] == uids
    assert all(x["pred"] in cfg["classes"] and abs(sum(x["proba"].values()) - 1) < 1e-4 for x in lines)
    out = invoke("eval", "--model", ft, SLICE, "--out", tmp_path / "ev", "--device", "cpu")
    rep = json.loads(out[: out.index("\nclass")])
    assert rep["test_rows"] == 270 and rep["macro_f1"] > 0.5 and rep["accuracy"] > 0.8
    usage = rep["expert_usage"]            # every conn: at least its own token, at most 16
    assert [u["layer"] for u in usage] == [1, 3]
    assert all(sum(u["tokens_per_expert"]) + u["dropped"] == u["routed"] for u in usage)
    assert usage[0]["routed"] == usage[1]["routed"] and 900 <= usage[0]["routed"] <= 900 * 16
    assert (tmp_path / "ev" / "confusion.png").exists()
    # a base of the other kind is refused
    r = CliRunner().invoke(main, ["finetune", "--model", "dense", "--base", str(moe_dir), "--train", SLICE,
                                  "--label-field", "label", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "not 'dense'" in r.output


def test_dense_service_task_hides_service_and_ports(bases, tmp_path):
    dense_dir, _ = bases["dense"]
    ft = tmp_path / "svc"
    invoke("finetune", "--model", "dense", "--base", dense_dir, "--train", SLICE, "--label-field", "service",
           "--epochs", "2", "--out", ft, "--device", "cpu")
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["hide_service"] is True and "ssl" in cfg["classes"] and "none" in cfg["classes"]
    out = invoke("eval", "--model", ft, SLICE, "--out", tmp_path / "ev", "--device", "cpu")
    assert 0 <= json.loads(out[: out.index("\nclass")])["macro_f1"] <= 1


def test_moe_predict_reports_expert_usage(bases):
    from zeekml.train.data import load_conns
    from zeekml.train.registry import get_trainer

    moe_dir, _ = bases["moe"]
    pred = get_trainer("moe").predict(str(moe_dir), load_conns(SLICE))
    assert pred.proba is None and len(pred.score) == 900 and (pred.score >= 0).all()
    assert [r["layer"] for r in pred.routing] == [1, 3]
    assert all(sum(r["tokens_per_expert"]) + r["dropped"] == r["routed"] for r in pred.routing)


def test_moe_base_joins_score_as_a_detector(bases, tmp_path):
    moe_dir, _ = bases["moe"]
    models = tmp_path / "models"
    shutil.copytree(moe_dir, models / "moe-base")
    invoke("score", SLICE, "--out", tmp_path / "s", "--models", models, "--no-progress",
           "--conn-notices")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert "moe" in summary["thresholds"]
    v = [json.loads(x) for x in (tmp_path / "s" / "verdicts.jsonl").read_text().splitlines()]
    assert len(v) == 900 and all("moe" in x["scores"] for x in v)
    alerts = [x for x in v if x["alert"] and x["model"] == "moe"]
    notices = (tmp_path / "s" / "zeekml_notice.log").read_text()
    # in words: the nearest baseline conns, then the host's least expected conn (issue 16)
    assert (notices.count("\tnearest baseline conns (") + notices.count("\tunlike any of the "
            "baseline's")) == len(alerts)
    assert notices.count(" conns the least expected: ") == len(alerts)


def test_a_finetuned_classifier_joins_score_and_watch(bases, tmp_path):
    """Issue 14: ``--models`` naming a finetuned directory makes it a known-bad detector in
    ``score`` and ``watch``: P(Malicious) calibrated on the baseline, ZeekML::Intrusion notices."""
    moe_dir, _ = bases["moe"]
    ft = tmp_path / "moe-ft"
    invoke("finetune", "--model", "moe", "--base", moe_dir, "--train", SLICE, "--label-field", "label",
           "--shots", "20", "--epochs", "3", "--out", ft, "--device", "cpu")
    invoke("score", SLICE, "--out", tmp_path / "s", "--models", ft, "--no-progress",
           "--conn-notices")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(summary["thresholds"]) == {"iforest", "clf-moe-ft"}
    v = [json.loads(x) for x in (tmp_path / "s" / "verdicts.jsonl").read_text().splitlines()]
    assert len(v) == 900 and all("clf-moe-ft" in x["scores"] for x in v)
    alerts = [x for x in v if x["alert"] and x["model"] == "clf-moe-ft"]
    assert all(x["note"] == "ZeekML::Intrusion" for x in alerts)
    notices = (tmp_path / "s" / "zeekml_notice.log").read_text()
    assert notices.count("\tZeekML::Intrusion\t") == len(alerts)
    assert notices.count("p_Malicious=") == len(alerts)
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(SLICE, logs / "conn.log")
    invoke("watch", logs, "--out", tmp_path / "w", "--once", "--models", ft, "--baseline", SLICE, "--quiet")
    w = [json.loads(x) for x in (tmp_path / "w" / "verdicts.jsonl").read_text().splitlines()]
    assert len(w) == 900 and all("clf-moe-ft" in x["scores"] for x in w)


def test_packet_tokens_from_a_replayed_capture(tmp_path):
    wiki = os.path.join(DATA, "zeek-btest", "Traces", "wikipedia.pcap")
    logs = tmp_path / "logs"
    invoke("replay", wiki, "--out", logs, "--engine", "builtin", "--no-score")
    m = json.loads(invoke("pretrain", "--model", "moe", logs / "conn.log", "--out", tmp_path / "m",
                          "--epochs", "2", "--device", "cpu"))
    assert m["token_source"] == "packets" and m["rows"] == 34
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [f["name"] for f in cfg["tokenizer"]["fields"]] == ["dir", "ip_len", "iat", "flags"]
    assert cfg["tokenizer"]["fields"][1]["edges"]


def test_pretrain_attention_option(tmp_path):
    """``--attention causal_window`` pretrains the stream model (what models/moe-causal is), stored
    in its config and left out of the detectors until its flag says so; other kinds refuse it in
    one line."""
    out = tmp_path / "causal"
    invoke("pretrain", "--model", "moe", SLICE, "--out", out, "--epochs", "1", "--attention", "causal_window",
           "--device", "cpu")
    with open(out / "config.json") as f:
        cfg = json.load(f)
    assert cfg["encoder"]["attention"] == "causal_window" and cfg["detector"] is False
    r = CliRunner().invoke(main, ["pretrain", "--model", "mae", SLICE, "--out", str(tmp_path / "m"),
                                  "--attention", "causal_window"])
    assert r.exit_code == 2 and "--attention applies to the token models (moe, dense), not mae" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "m").exists()


def test_a_causal_base_finetuned_with_lp_joins_score_and_watch(tmp_path):
    """Issue 14: ``finetune --procedure lp`` on a ``causal_window`` base (what the committee's
    causal member is) writes a classifier whose head reads the stream embedding; ``score`` and
    ``watch`` use it as a known-bad detector. Any other procedure is refused in one line."""
    base = tmp_path / "causal"
    invoke("pretrain", "--model", "moe", SLICE, "--out", base, "--epochs", "1", "--attention", "causal_window",
           "--device", "cpu")
    r = CliRunner().invoke(main, ["finetune", "--model", "moe", "--base", str(base), "--train", SLICE,
                                  "--label-field", "label", "--procedure", "lp-ft", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "a causal_window base is finetuned with procedure lp" in r.output
    assert "Traceback" not in r.output
    ft = tmp_path / "cmoe-ft"
    m = json.loads(invoke("finetune", "--model", "moe", "--base", base, "--train", SLICE, "--label-field", "label",
                          "--shots", "20", "--procedure", "lp", "--out", ft, "--device", "cpu"))
    assert m["steps"] == 0 and m["val_rows"] == 0
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["encoder"]["attention"] == "causal_window" and cfg["head"]["hidden"] == 0
    assert 0.5 <= cfg["operating_point"]["cut"] <= 1.0
    invoke("score", SLICE, "--out", tmp_path / "s", "--models", ft, "--no-progress", "--conn-notices")
    v = [json.loads(x) for x in (tmp_path / "s" / "verdicts.jsonl").read_text().splitlines()]
    assert len(v) == 900 and all("clf-cmoe-ft" in x["scores"] for x in v)
    assert all(x["note"] == "ZeekML::Intrusion" for x in v if x["alert"] and x["model"] == "clf-cmoe-ft")
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(SLICE, logs / "conn.log")
    invoke("watch", logs, "--out", tmp_path / "w", "--once", "--models", ft, "--baseline", SLICE, "--quiet")
    w = {x["uid"]: x for x in map(json.loads, (tmp_path / "w" / "verdicts.jsonl").read_text().splitlines())}
    assert len(w) == 900
    # a conn's probability is the same in watch's windows as in the whole log
    assert all(w[x["uid"]]["scores"]["clf-cmoe-ft"] == x["scores"]["clf-cmoe-ft"] for x in v)

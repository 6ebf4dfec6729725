"""The shared half of the model commands: data loading, k-shot draws, metrics, output files."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError, ZeekmlError
from zeekml.features.modality import load_flow_table
from zeekml.parse import Quarantine
from zeekml.scoring.detectors.base import read_config
from zeekml.train.artifact import load_model_dir, update_metrics
from zeekml.train.data import (canonical_label_field, labels_of, load_conns, sample_shots,
                               temporal_split)
from zeekml.train.metrics import (binary_auroc, classification_report, precision_at_fpr,
                                  save_confusion_png, save_roc_pr_png)
from zeekml.train.registry import get_trainer as get_kind


def model_kind_of(model_dir: str) -> str:
    """The ``kind`` in ``model_dir``'s config.json (a ``ModelError`` when there is none)."""
    kind = read_config(model_dir).get("kind")
    if not isinstance(kind, str):
        raise ModelError("config.json has no \"kind\"", model_dir)
    return kind


def load_inputs(logs: list[str], quarantine: Quarantine | None = None) -> tuple[pa.Table, pa.Table | None]:
    """The conn records of ``logs`` and the ``zeekml_flow`` records beside them (None when there
    are none); malformed lines of either go to ``quarantine``."""
    return load_conns(logs, quarantine), load_flow_table(logs, quarantine)


def run_pretrain(model: str, logs: list[str], out: str, seed: int = 0,
                 quarantine: Quarantine | None = None, **opts) -> dict:
    table, flows = load_inputs(logs, quarantine)
    if table.num_rows == 0:
        raise ZeekmlError("no conn records in the pretraining logs")
    return get_kind(model).pretrain(table, out, sources=logs, seed=seed, flows=flows, **opts)


def run_finetune(model: str, base: str | None, train: list[str], label_field: str,
                 shots: int | None, fraction: float | None, seed: int, out: str,
                 quarantine: Quarantine | None = None, **opts) -> dict:
    field = canonical_label_field(label_field)
    table, flows = load_inputs(train, quarantine)
    labels = labels_of(table, field)
    if all(x is None for x in labels):
        raise ZeekmlError(f"no {label_field!r} labels in the training logs")
    early, _ = temporal_split(table)
    rows = sample_shots(labels, early, k=shots, fraction=fraction, seed=seed)
    if len({labels[i] for i in rows}) < 2:
        raise ZeekmlError("the training share holds fewer than two classes; nothing to learn")
    metrics = get_kind(model).finetune(base, table, labels, rows, hide_service=(field == "service"),
                                       seed=seed, out=out, sources=train, label_field=field,
                                       flows=flows, **opts)
    update_metrics(out, {"label_field": field, "shots": shots, "fraction": fraction, "seed": seed,
                         "train_rows": int(len(rows))})
    return metrics


def run_predict(model_dir: str, logs: list[str], out: str, device: str = "cpu",
                quarantine: Quarantine | None = None) -> int:
    """Write one JSON object per input conn, in input order; returns the count."""
    table, flows = load_inputs(logs, quarantine)
    kind = get_kind(model_kind_of(model_dir))
    pred = kind.predict(model_dir, table, device=device, flows=flows)
    labels = pred.pred()
    uids = table.column("uid").to_pylist()
    ts = table.column("ts").to_pylist()
    with open(out, "w") as f:
        for i in range(table.num_rows):
            rec = {"uid": uids[i], "ts": ts[i], "pred": labels[i] if labels else None}
            if pred.proba is not None:
                rec["proba"] = {c: round(float(p), 6) for c, p in zip(pred.classes, pred.proba[i])}
            if pred.score is not None:
                rec["score"] = float(pred.score[i])
            if pred.reason is not None and pred.reason[i]:
                rec["pred"] = None
                rec["reason"] = pred.reason[i]
            f.write(json.dumps(rec) + "\n")
    return table.num_rows


def run_eval(model_dir: str, logs: list[str], out_dir: str | None = None,
             device: str = "cpu", quarantine: Quarantine | None = None) -> dict:
    """Metrics on the latest 30% by time of ``logs``, plus PNGs of the confusion matrix and
    (binary) ROC and precision-recall curves."""
    config, _ = load_model_dir(model_dir)
    field = config.get("label_field")
    table, flows = load_inputs(logs, quarantine)
    kind = get_kind(model_kind_of(model_dir))
    pred = kind.predict(model_dir, table, device=device, flows=flows)
    _, test = temporal_split(table)
    out_dir = out_dir or model_dir
    os.makedirs(out_dir, exist_ok=True)
    report: dict = {"model": model_dir, "test_rows": int(len(test))}
    if getattr(pred, "routing", None):
        # a collapsed router shows here: one expert taking most tokens, or many dropped
        report["expert_usage"] = pred.routing
    if field is None:
        # a pretrained (unsupervised) model: rank its anomaly score against the labels
        if pred.score is None:
            raise ZeekmlError("this model is neither a classifier nor an anomaly scorer", model_dir)
        y = labels_of(table, "label")
        keep = np.array([i for i in test if y[i] is not None], dtype=np.int64)
        mal = np.array([str(y[i]).lower().startswith("malicious") for i in keep])
        report["auroc"] = binary_auroc(mal, pred.score[keep])
        report["precision_at_1pct_fpr"] = precision_at_fpr(mal, pred.score[keep], 0.01)
        if report["auroc"] is not None:
            save_roc_pr_png(os.path.join(out_dir, "roc_pr.png"), mal, pred.score[keep],
                            title=os.path.basename(model_dir.rstrip("/")))
        return report
    y = labels_of(table, field)
    keep = np.array([i for i in test if y[i] is not None], dtype=np.int64)
    y_true = [y[i] for i in keep]
    all_pred = pred.pred()
    y_pred = [all_pred[i] for i in keep]
    proba = pred.proba[keep] if pred.proba is not None else None
    rep = classification_report(y_true, y_pred, pred.classes, proba,
                                positive="Malicious" if field == "label" else None)
    report.update(rep)
    save_confusion_png(os.path.join(out_dir, "confusion.png"), y_true, y_pred,
                       title=f"{os.path.basename(model_dir.rstrip('/'))} ({field})")
    if "auroc" in rep and rep["auroc"] is not None and proba is not None:
        labels_sorted = sorted(set(y_true))
        pos = "Malicious" if "Malicious" in labels_sorted else labels_sorted[-1]
        save_roc_pr_png(os.path.join(out_dir, "roc_pr.png"), np.array([t == pos for t in y_true]),
                        proba[:, pred.classes.index(pos)], title=field)
    return report

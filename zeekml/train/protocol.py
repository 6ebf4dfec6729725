"""The shared half of the model commands: data loading, k-shot draws, metrics, output files."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError, OutputError, ZeekmlError
from zeekml._core.outfile import OutputFile
from zeekml.features.modality import load_flow_table
from zeekml.parse import Quarantine
from zeekml.scoring.detectors.base import read_config
from zeekml.train.artifact import load_model_dir, update_config, update_metrics
from zeekml.train.data import (canonical_label_field, labels_of, load_conns, sample_shots,
                               temporal_split)
from zeekml.train.metrics import (CUT_FLOOR, CUT_FPR, binary_auroc, classification_report,
                                  precision_at_fpr, save_confusion_png, save_roc_pr_png,
                                  trained_cut)
from zeekml.train.registry import get_trainer as get_kind

log = logging.getLogger(__name__)


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


# validation benign conns scored for the trained cut: a random draw of at most this many keeps
# the extra pass short on large logs and still resolves a 1% cut with 50 conns past it
VALIDATION_MAX = 5000


def validation_benign_rows(labels: np.ndarray, early: np.ndarray, train_rows: np.ndarray,
                           seed: int = 0, limit: int = VALIDATION_MAX) -> np.ndarray:
    """The benign conns of the training share ``early`` not drawn into ``train_rows`` (at most
    ``limit``, drawn with ``seed``), sorted: conns like the training data never trained on."""
    from zeekml.scoring.detectors.classifier import NOT_BAD

    drawn = set(np.asarray(train_rows).tolist())
    cand = np.array([i for i in early if i not in drawn and labels[i] is not None
                     and str(labels[i]).lower().startswith(NOT_BAD)], dtype=np.int64)
    if len(cand) > limit:
        cand = np.random.default_rng(seed).choice(cand, size=limit, replace=False)
    return np.sort(cand)


def store_trained_cut(out: str, table: pa.Table, val_rows: np.ndarray, fpr: float = CUT_FPR,
                      device: str = "cpu") -> dict:
    """Score ``table``'s ``val_rows`` with the classifier in ``out`` (as ``zeekml score`` would:
    the ``classifier`` detector, the other rows as context), choose its cut (``trained_cut``) and
    store it in the directory's config (``"operating_point"``) and manifest metrics."""
    from zeekml.scoring.registry import classifier_detector

    det = classifier_detector(out, device)
    p = det.score_rows(table, val_rows) if len(val_rows) else np.zeros(0)
    op = trained_cut(p, fpr=fpr, floor=CUT_FLOOR)
    if op["chosen_by"].startswith("floor: no"):
        log.warning("%s: no benign conns left out of training to choose the cut on; the cut is "
                    "the floor P >= %g", out, CUT_FLOOR)
    update_config(out, {"operating_point": op})
    update_metrics(out, {"operating_point": op})
    log.info("%s: trained cut P >= %.4g (%s; %s of %d validation benign conns reach it)", out,
             op["cut"], op["chosen_by"], op["validation_fpr"], op["validation_benign"])
    return op


def training_draw(table: pa.Table, labels: np.ndarray, shots: int | None, fraction: float | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training share (earliest 70% by time) and the rows ``finetune`` trains on."""
    early, _ = temporal_split(table)
    return early, sample_shots(labels, early, k=shots, fraction=fraction, seed=seed)


def refit_trained_cut(model_dir: str, train: list[str], fpr: float = CUT_FPR,
                      device: str = "cpu") -> dict:
    """Choose and store the trained cut of a classifier finetuned before cuts were stored, as
    ``run_finetune`` would have: the same logs, draw (its manifest's ``shots``/``fraction``/
    ``seed``) and validation conns. The weights are not touched."""
    from zeekml.scoring.detectors.base import read_manifest

    config = read_config(model_dir)
    field = config.get("label_field")
    if field not in ("label", "detailedlabel"):
        raise ZeekmlError(f"a {field!r} head has no known-bad cut", model_dir)
    m = read_manifest(model_dir).get("metrics", {})
    table, _ = load_inputs(train)
    labels = labels_of(table, field)
    early, rows = training_draw(table, labels, m.get("shots"), m.get("fraction"), m.get("seed", 0))
    if len(rows) != m.get("train_rows", len(rows)):
        raise ZeekmlError(f"these logs give {len(rows)} training rows, the manifest says "
                          f"{m.get('train_rows')}: not the logs it was finetuned on", model_dir)
    return store_trained_cut(model_dir, table, validation_benign_rows(labels, early, rows,
                                                                      m.get("seed", 0)), fpr, device)


def run_finetune(model: str, base: str | None, train: list[str], label_field: str,
                 shots: int | None, fraction: float | None, seed: int, out: str,
                 quarantine: Quarantine | None = None, fpr_train: float = CUT_FPR, **opts) -> dict:
    """Finetune ``model`` on shots of ``train``'s earliest 70% (``sample_shots``) into ``out``.
    A known-bad classifier (``label``/``detailedlabel``) also gets its trained cut at
    ``fpr_train`` on the benign conns of that share it did not train on (``store_trained_cut``)."""
    field = canonical_label_field(label_field)
    table, flows = load_inputs(train, quarantine)
    labels = labels_of(table, field)
    if all(x is None for x in labels):
        raise ZeekmlError(f"no {label_field!r} labels in the training logs")
    early, rows = training_draw(table, labels, shots, fraction, seed)
    if len({labels[i] for i in rows}) < 2:
        raise ZeekmlError("the training share holds fewer than two classes; nothing to learn")
    metrics = get_kind(model).finetune(base, table, labels, rows, hide_service=(field == "service"),
                                       seed=seed, out=out, sources=train, label_field=field,
                                       flows=flows, **opts)
    update_metrics(out, {"label_field": field, "shots": shots, "fraction": fraction, "seed": seed,
                         "train_rows": int(len(rows))})
    if field in ("label", "detailedlabel"):
        val = validation_benign_rows(labels, early, rows, seed)
        metrics["operating_point"] = store_trained_cut(out, table, val, fpr_train,
                                                       opts.get("device", "cpu"))
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
    # OutputFile: a path that cannot be written (no such directory, no permission, a link
    # planted there) is an OutputError naming it (exit 6), never a traceback
    with OutputFile(out, what="predictions") as f:
        for i in range(table.num_rows):
            rec = {"uid": uids[i], "ts": ts[i], "pred": labels[i] if labels else None}
            if pred.proba is not None:
                rec["proba"] = {c: round(float(p), 6) for c, p in zip(pred.classes, pred.proba[i])}
            if pred.score is not None:
                rec["score"] = float(pred.score[i])
            if pred.reason is not None and pred.reason[i]:
                rec["pred"] = None
                rec["reason"] = pred.reason[i]
            f.write((json.dumps(rec) + "\n").encode())
    return table.num_rows


def run_eval(model_dir: str, logs: list[str], out_dir: str | None = None,
             device: str = "cpu", quarantine: Quarantine | None = None) -> dict:
    """Metrics on the latest 30% by time of ``logs``, plus PNGs of the confusion matrix and
    (binary) ROC and precision-recall curves."""
    config, _ = load_model_dir(model_dir)
    field = config.get("label_field")
    table, flows = load_inputs(logs, quarantine)
    _, test = temporal_split(table)
    # the labels the model is judged against (an anomaly scorer's: malicious or not), checked
    # before predicting: without any there is nothing to evaluate, as finetune without labels
    y = labels_of(table, field or "label")
    keep = np.array([i for i in test if y[i] is not None], dtype=np.int64)
    if len(keep) == 0:
        raise ZeekmlError(f"no labeled conns ({field or 'label'!r} field) among the "
                          f"{len(test):,} conns of the latest 30% by time: nothing to evaluate "
                          "against (eval needs labeled logs, such as IoT-23's conn.log.labeled)",
                          ", ".join(logs))
    out_dir = out_dir or model_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory: {e.strerror}", out_dir) from e
    kind = get_kind(model_kind_of(model_dir))
    pred = kind.predict(model_dir, table, device=device, flows=flows)
    report: dict = {"model": model_dir, "test_rows": int(len(test))}
    if getattr(pred, "routing", None):
        # a collapsed router shows here: one expert taking most tokens, or many dropped
        report["expert_usage"] = pred.routing
    if field is None:
        # a pretrained (unsupervised) model: rank its anomaly score against the labels
        if pred.score is None:
            raise ZeekmlError("this model is neither a classifier nor an anomaly scorer", model_dir)
        mal = np.array([str(y[i]).lower().startswith("malicious") for i in keep])
        report["auroc"] = binary_auroc(mal, pred.score[keep])
        report["precision_at_1pct_fpr"] = precision_at_fpr(mal, pred.score[keep], 0.01)
        if report["auroc"] is not None:
            _save_png(save_roc_pr_png, os.path.join(out_dir, "roc_pr.png"), mal,
                      pred.score[keep], title=os.path.basename(model_dir.rstrip("/")))
        return report
    y_true = [y[i] for i in keep]
    all_pred = pred.pred()
    y_pred = [all_pred[i] for i in keep]
    proba = pred.proba[keep] if pred.proba is not None else None
    rep = classification_report(y_true, y_pred, pred.classes, proba,
                                positive="Malicious" if field == "label" else None)
    report.update(rep)
    _save_png(save_confusion_png, os.path.join(out_dir, "confusion.png"), y_true, y_pred,
              title=f"{os.path.basename(model_dir.rstrip('/'))} ({field})")
    if "auroc" in rep and rep["auroc"] is not None and proba is not None:
        labels_sorted = sorted(set(y_true))
        pos = "Malicious" if "Malicious" in labels_sorted else labels_sorted[-1]
        _save_png(save_roc_pr_png, os.path.join(out_dir, "roc_pr.png"),
                  np.array([t == pos for t in y_true]), proba[:, pred.classes.index(pos)],
                  title=field)
    return report


def _save_png(save, path: str, *args, **kwargs) -> None:
    """``save(path, ...)`` with a write failure as an ``OutputError`` naming the plot (exit 6)."""
    try:
        save(path, *args, **kwargs)
    except OSError as e:
        raise OutputError(f"cannot write plot: {e.strerror or e}", path) from e

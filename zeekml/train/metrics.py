"""Evaluation metrics and plots shared by every model (and its baselines)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score,
                             precision_recall_curve, precision_recall_fscore_support, roc_auc_score,
                             roc_curve)


def classification_report(y_true: list, y_pred: list, classes: list[str],
                          proba: np.ndarray | None = None, positive: str | None = None) -> dict:
    """macro-F1, weighted F1, accuracy, per-class P/R/F1/support and, for two classes, AUROC.

    Rows with no prediction (``None``) count as wrong.
    """
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(["<none>" if p is None else p for p in y_pred], dtype=object)
    labels = sorted(set(y_true.tolist()))
    out = {
        "n": int(len(y_true)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = {c: {"precision": float(pi), "recall": float(ri), "f1": float(fi), "support": int(si)}
                        for c, pi, ri, fi, si in zip(labels, p, r, f, s)}
    if proba is not None and len(labels) == 2 and len(classes) >= 2:
        pos = positive if positive in labels else labels[-1]
        if pos in classes:
            score = proba[:, classes.index(pos)]
            out["auroc"] = binary_auroc(y_true == pos, score)
    return out


def binary_auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    y = np.asarray(y, dtype=bool)
    if y.all() or (~y).all():
        return None
    return float(roc_auc_score(y, score))


def precision_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float = 0.01) -> float | None:
    """Precision when the threshold lets through ``fpr`` of the negatives."""
    y = np.asarray(y, dtype=bool)
    if y.all() or (~y).all():
        return None
    thr = np.quantile(score[~y], 1 - fpr)
    flagged = score > thr
    if not flagged.any():
        return 0.0
    return float((flagged & y).sum() / flagged.sum())


def save_confusion_png(path: str, y_true, y_pred, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_pred = ["<none>" if p is None else p for p in y_pred]
    labels = sorted(set(list(y_true)) | set(y_pred))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    fig, ax = plt.subplots(figsize=(max(4, len(labels) * 0.7 + 2), max(3.5, len(labels) * 0.6 + 1.5)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_roc_pr_png(path: str, y: np.ndarray, score: np.ndarray, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(y, dtype=bool)
    if y.all() or (~y).all():
        return
    fpr, tpr, _ = roc_curve(y, score)
    prec, rec, _ = precision_recall_curve(y, score)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.plot(fpr, tpr)
    a.plot([0, 1], [0, 1], ls="--", c="grey")
    a.set_xlabel("false positive rate")
    a.set_ylabel("true positive rate")
    a.set_title(f"ROC (AUROC {roc_auc_score(y, score):.3f})")
    b.plot(rec, prec)
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_title(f"PR (AP {average_precision_score(y, score):.3f})")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

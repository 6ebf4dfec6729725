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


# The operating point a known-bad classifier keeps from its training (issue 14): the cut on its
# probability of the malicious classes at which at most ``fpr`` of its validation benign conns
# (benign conns of the training logs' training share that were not drawn to train on) reach it,
# never below CUT_FLOOR. Calibration uses it instead of the baseline quantile when the baseline
# looks infected (``zeekml.scoring.calibrate.apply_trained_cuts``), so an infected baseline does
# not raise the bar above the malware's probabilities.
CUT_FLOOR = 0.5
CUT_FPR = 0.01


def trained_cut(p_benign: np.ndarray, fpr: float = CUT_FPR, floor: float = CUT_FLOOR) -> dict:
    """The lowest cut ``c >= floor`` with ``mean(p_benign >= c) <= fpr``, and how it was chosen.

    Args:
        p_benign: the classifier's P(malicious) of validation benign conns, ``[n]``.
        fpr: the largest share of them allowed at or above the cut (default ``CUT_FPR``).
        floor: the lowest cut (default ``CUT_FLOOR``: below it the head says "benign").

    Returns ``{"cut", "fpr", "validation_benign", "validation_fpr", "floor", "chosen_by"}``:
    ``validation_fpr`` is the share of ``p_benign`` at or above the cut; ``chosen_by`` is
    ``"validation"`` (the FPR bound set it above the floor), ``"floor"`` (the floor was stricter
    already), ``"floor: no validation benign conns"``, or ``"1.0: ..."`` when more than ``fpr``
    of them sit at P = 1.0 (``validation_fpr`` then exceeds ``fpr``).
    """
    p = np.asarray(p_benign, dtype=np.float64)
    p = np.sort(p[np.isfinite(p)])[::-1]
    n = len(p)
    out = {"fpr": float(fpr), "validation_benign": int(n), "floor": float(floor)}
    if n == 0:
        return out | {"cut": float(floor), "validation_fpr": None,
                      "chosen_by": "floor: no validation benign conns"}
    allowed = int(np.floor(fpr * n + 1e-9))
    # the cut sits just above the (allowed + 1)-th largest score, so at most `allowed` reach it
    bound = float(np.nextafter(p[allowed], np.inf)) if allowed < n else -np.inf
    cut = max(float(floor), bound)
    chosen = "validation" if bound > floor else "floor"
    if cut > 1.0:
        # more than `fpr` of the benign conns sit at P = 1.0 (a saturated head): no cut reaches
        # the rate; 1.0 is the strictest one that still flags anything, and validation_fpr says
        # what it delivers
        cut, chosen = 1.0, f"1.0: no cut reaches fpr {fpr:g} on these conns"
    return out | {"cut": cut, "validation_fpr": float((p >= cut).mean()), "chosen_by": chosen}

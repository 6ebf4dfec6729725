"""Rules for combining the detectors' scores into one, evaluated offline (issue 14: "combined >=
the best single detector"; docs/results/detection.md, "Combining the detectors").

Reads the per-conn scores ``bench/detect_eval.py --scores DIR`` saves (``CAPTURE.SETTING.npz``:
raw scores of the calibration half, of the scored conns and, in the deployment setting, of the
held-out third of the clean baseline; labels of the scored conns), one directory per
``detect_eval`` seed. Each rule turns the raw scores into one combined score from the
calibration conns alone (no labels) and alerts at a threshold set on them; on the scored conns
it reports, per capture, AUROC and average precision with their shortfall from the best single
detector of the same run (averaged over the runs), and, pooled over captures and runs, alert
precision and recall, the false-alert rate on benign scored conns and on held-out clean conns.
The five captures of all five seeds take seconds.

Rules (``RULES``). The first three keep ``calibrate_combined``'s thresholds; the others alert
at the ``1 - fpr`` quantile (``"higher"``) of their combined score over the calibration conns:

- ``max``: the largest calibrated score ``(s - median) / (threshold - median)``, alert at 1.0
  (what zeekml runs).
- ``tippett_cal``: the largest ``-log p(s)`` (``Tail``), each detector's divided by its value at
  its ``calibrate_combined`` threshold: the same alerts as ``max``, ranked by tail probability.
- ``tippett_bonf``: the largest ``-log p(s)``, alert at ``p <= fpr / n`` (the union bound on the
  fitted tails, no quantile of the combined score).
- ``mean``: the mean of the calibrated scores of ``max``.
- ``tippett``: the smallest tail probability (``-log min p``).
- ``fisher``: ``-sum log p``.
- ``hmp``: the harmonic mean of the tail probabilities (as ``-log``).
- ``stouffer``: the sum of ``Phi^-1(1 - p)``.
- ``top2``: the second smallest tail probability (two detectors must agree).

Tail probabilities ``p(s)``: ``Tail`` (``--kind``, ``--tail``).

Usage::

    for s in 0 1 2 3 4; do OMP_NUM_THREADS=1 python bench/detect_eval.py --seed $s \\
        --out /tmp/de$s --scores /tmp/de$s/scores; done
    python bench/combine_eval.py /tmp/de{0,1,2,3,4}/scores [--kind logexp] [--tail 0.2] \\
        [--rules max mean tippett] [--verbose] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from zeekml.scoring.calibrate import calibrate_combined  # noqa: E402

CAPTURES = ["ctu-21-1", "ctu-34-1", "ctu-8-1", "strato-008", "strato-010"]


def load(path: str) -> dict:
    """One ``CAPTURE.SETTING.npz`` as ``{"y": labels, "cal"|"test"|"hold": {detector: raw}}``."""
    z = np.load(path)
    out: dict = {"y": z["y"], "cal": {}, "test": {}, "hold": {}}
    for k in z.files:
        part, _, name = k.partition("/")
        if part in ("cal", "test", "hold"):
            out[part][name] = z[k].astype(np.float64)
    return out


class Tail:
    """``-log p(s)`` of one detector: ``p(s)`` is the share of its calibration conns scoring at
    least ``s`` (no labels), with a fitted tail so that scores beyond every calibration conn
    still rank. ``kind`` (``KINDS``):

    - ``exp``: empirical (interpolated between order statistics) below ``u``, the score with a
      ``tail`` share of the calibration conns above it; above ``u`` an exponential tail whose
      mean excess is that of those conns (``-log p`` grows linearly in ``s``).
    - ``logexp``: ``exp`` on ``log(s - c)``, ``c`` a thousandth of the range below the smallest
      calibration score: a Pareto (power-law) tail, Hill's estimator on the top ``tail`` share.
    - ``medpareto``: as ``logexp`` with the median as the origin (the zero of the calibrated
      scale): above ``u``, ``p`` falls as a power of ``(s - median) / (u - median)`` (``exp``
      where ``u`` is not above the median).
    - ``gpd``: a generalised Pareto tail fitted to the excesses over ``u`` (shape clipped to
      [-0.5, 1]).
    - ``emp_exp``: empirical up to the largest calibration score (``p >= 1/m``), an exponential
      decay beyond it with the mean excess of the top ``tail`` share.
    - ``emp_pareto``: as ``emp_exp`` with a power-law decay of the distance from the median
      (Hill's estimator on the top ``tail`` share; ``emp_exp`` where that share is not above
      the median).
    """

    def __init__(self, cal: np.ndarray, tail: float, kind: str = "exp") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown tail kind {kind!r} (one of {', '.join(KINDS)})")
        x = np.sort(cal[np.isfinite(cal)])
        if len(x) < 3:
            raise ValueError("fewer than 3 finite calibration scores")
        self.kind, self.shift, self.origin = kind, None, None
        k = max(int(np.ceil(tail * len(x))), 2)
        if kind.startswith("emp_"):
            self.x, self.m, self.xmax = x, len(x), float(x[-1])
            self.surv = (len(x) - np.arange(len(x))) / len(x)
            top, u, med = x[-k:], x[-k - 1] if len(x) > k else x[0], float(np.median(x))
            if kind == "emp_pareto" and u > med:
                self.origin = med
                self.rate = 1.0 / max(float(np.log((top - med) / (u - med)).mean()), 1e-12)
            else:
                self.rate = 1.0 / max(float((top - u).mean()), 1e-12)
            return
        if kind == "logexp":
            self.shift = float(x[0]) - 1e-3 * max(float(x[-1] - x[0]), 1e-12)
            x = np.log(x - self.shift)
        if kind == "medpareto":
            self.origin = float(np.median(x))
            if x[len(x) - k - 1] <= self.origin:
                self.kind, self.origin = "exp", None
        self.m = m = len(x)
        self.x = x
        self.u = x[m - k - 1] if m > k else x[0]
        exc = x[x > self.u] - self.u
        self.log_pu = np.log(max(len(exc), 1) / m)
        self.beta = float(exc.mean()) if len(exc) and exc.mean() > 0 else 1e-9
        if self.kind == "medpareto":     # Hill's estimator from the median
            o = self.origin
            self.beta = max(float(np.log((x[x > self.u] - o) / (self.u - o)).mean()), 1e-12)
        self.xi = 0.0
        if kind == "gpd" and len(exc) >= 5:
            from scipy.stats import genpareto

            xi, _, beta = genpareto.fit(exc, floc=0.0)
            self.xi, self.beta = float(np.clip(xi, -0.5, 1.0)), float(beta)
        self.surv = (m - np.arange(m)) / m     # share of calibration conns >= x[i]

    def neglogp(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)
        out = np.zeros(len(s))
        if self.kind.startswith("emp_"):
            fin = np.isfinite(s)
            body = fin & (s <= self.xmax)
            out[body] = -np.log(np.interp(s[body], self.x, self.surv))
            hi = fin & (s > self.xmax)
            if self.origin is None:
                out[hi] = np.log(self.m) + self.rate * (s[hi] - self.xmax)
            else:
                o = self.origin
                out[hi] = np.log(self.m) + self.rate * np.log((s[hi] - o) / (self.xmax - o))
            out[np.isposinf(s)] = np.inf
            return out
        pos_inf = np.isposinf(s)
        if self.shift is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(s > self.shift, np.log(np.maximum(s - self.shift, 1e-300)), -np.inf)
        fin = np.isfinite(s)
        body = fin & (s <= self.u)
        out[body] = -np.log(np.clip(np.interp(s[body], self.x, self.surv), 1.0 / self.m, 1.0))
        hi = fin & (s > self.u)
        e = s[hi] - self.u
        if self.kind == "medpareto":
            out[hi] = -self.log_pu + np.log((s[hi] - self.origin) / (self.u - self.origin)) / self.beta
        elif self.kind == "gpd" and self.xi != 0.0:
            out[hi] = -self.log_pu + np.log(np.maximum(1 + self.xi * e / self.beta, 1e-300)) / self.xi
        else:
            out[hi] = -self.log_pu + e / self.beta
        out[pos_inf] = np.inf
        return out


KINDS = ("exp", "logexp", "medpareto", "gpd", "emp_exp", "emp_pareto")


def rule_scores(d: dict, rule: str, fpr: float, tail: float, kind: str) -> dict[str, np.ndarray]:
    """The combined score of ``rule`` on the calibration, scored and held-out conns."""
    names = list(d["cal"])
    parts = ("cal", "test", "hold")
    if rule in ("max", "mean"):
        cals = calibrate_combined(d["cal"], fpr).calibrators
        out = {}
        for part in parts:
            if not d[part]:
                continue
            st = np.stack([np.nan_to_num(cals[n].calibrate(d[part][n]), nan=-np.inf) for n in names])
            out[part] = st.max(axis=0) if rule == "max" else st.mean(axis=0)
        return out
    tails = {n: Tail(d["cal"][n], tail, kind) for n in names}
    out = {}
    if rule == "tippett_cal":
        # each detector's -log p divided by -log p at its calibrate_combined threshold: 1.0 there
        # (the same alerts as "max"), ranked by tail probability above and below it
        cals = calibrate_combined(d["cal"], fpr).calibrators
        ref = {n: float(tails[n].neglogp(np.array([cals[n].threshold]))[0]) for n in names}
        for part in parts:
            if d[part]:
                out[part] = np.stack([tails[n].neglogp(d[part][n]) / ref[n] for n in names]).max(axis=0)
        return out
    for part in parts:
        if not d[part]:
            continue
        L = np.stack([tails[n].neglogp(d[part][n]) for n in names])
        if rule in ("tippett", "tippett_bonf"):
            out[part] = L.max(axis=0)
        elif rule == "fisher":
            out[part] = L.sum(axis=0)
        elif rule == "hmp":
            # -log(n / sum(1/p)) = logsumexp(L) - log n
            mx = L.max(axis=0)
            out[part] = mx + np.log(np.exp(L - mx).sum(axis=0)) - np.log(len(names))
        elif rule == "stouffer":
            from scipy.stats import norm

            out[part] = norm.isf(np.exp(-L)).sum(axis=0)
        elif rule == "top2":
            out[part] = np.sort(L, axis=0)[-2]
        else:
            raise ValueError(rule)
    return out


RULES = ("max", "tippett_cal", "tippett_bonf", "mean", "tippett", "fisher", "hmp", "stouffer", "top2")


def ranking(s: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = y >= 0
    s = np.nan_to_num(s[keep], nan=-1e300, posinf=1e300, neginf=-1e300)
    yy = y[keep]
    if len(np.unique(yy)) < 2:
        return None, None
    return float(roc_auc_score(yy, s)), float(average_precision_score(yy, s))


def evaluate(d: dict, rule: str, fpr: float, tail: float, kind: str) -> dict:
    """``rule``'s ranking and alerts on one setting of one capture (``load``'s ``d``)."""
    sc = rule_scores(d, rule, fpr, tail, kind)
    cal = sc["cal"]
    if rule in ("max", "tippett_cal"):
        thr = 1.0
    elif rule == "tippett_bonf":
        # the union bound on the fitted tail probabilities: min p <= fpr / n
        thr = -np.log(fpr / len(d["cal"]))        # calibrate_combined's own bar
    else:
        thr = float(np.quantile(cal[np.isfinite(cal)], 1 - fpr, method="higher"))
    y = d["y"]
    alert = sc["test"] >= thr
    tp, fp = int((alert & (y == 1)).sum()), int((alert & (y == 0)).sum())
    auroc, ap = ranking(sc["test"], y)
    return {"auroc": auroc, "ap": ap, "alerts": int(alert.sum()), "tp": tp, "fp": fp,
            "malicious": int((y == 1).sum()), "benign": int((y == 0).sum()),
            "cal_rate": float((cal >= thr).mean()),
            "held": (int((sc["hold"] >= thr).sum()), len(sc["hold"])) if "hold" in sc else None}


def summarise(dirs: list[str], rules: list[str], fpr: float, tail: float, kind: str,
              verbose: bool) -> dict:
    """Every rule on every capture of every ``--scores`` directory (one per detect_eval seed):
    per capture the mean AUROC/AP and their shortfall from the best single detector of the same
    run, and pooled alert precision/recall/false-alert rates over all runs."""
    res: dict = {}
    for setting in ("deployment", "archive"):
        rows: dict = {r: {} for r in rules}
        pooled = {r: np.zeros(6) for r in rules}
        for cap in CAPTURES:
            for run_dir in dirs:
                path = os.path.join(run_dir, f"{cap}.{setting}.npz")
                if not os.path.exists(path):
                    continue
                d = load(path)
                single = {n: ranking(d["test"][n], d["y"]) for n in d["test"]}
                best_auc = max(v[0] for v in single.values())
                best_ap = max(v[1] for v in single.values())
                for rule in rules:
                    r = evaluate(d, rule, fpr, tail, kind)
                    rows[rule].setdefault(cap, []).append(
                        (r["auroc"], r["ap"], r["auroc"] - best_auc, r["ap"] - best_ap))
                    pooled[rule] += (r["tp"], r["fp"], r["malicious"], r["benign"],
                                     *(r["held"] or (0, 0)))
                    if verbose:
                        print(f"{setting} {cap} {os.path.basename(run_dir.rstrip('/'))} {rule}: "
                              f"AUROC {r['auroc']:.4f} ({r['auroc'] - best_auc:+.4f}) AP "
                              f"{r['ap']:.3f} ({r['ap'] - best_ap:+.3f}) alerts {r['alerts']} "
                              f"tp {r['tp']} fp {r['fp']} held {r['held']}")
        print(f"\n## {setting}: fpr {fpr}, tail {tail} ({kind}), {len(dirs)} run(s); per capture "
              "mean AUROC (shortfall from the best single detector) / AP (shortfall)")
        print("| rule | " + " | ".join(CAPTURES) + " | precision | recall | benign alert rate "
              "| held-out clean alert rate |")
        print("|---" * (len(CAPTURES) + 5) + "|")
        for rule in rules:
            cells = []
            for cap in CAPTURES:
                v = np.array(rows[rule].get(cap, []), dtype=float)
                if not len(v):
                    cells.append("-")
                    continue
                m = v.mean(axis=0)
                cells.append(f"{m[0]:.4f} ({m[2]:+.4f}) / {m[1]:.3f} ({m[3]:+.3f})")
            tp, fp, pos, neg, hf, hn = pooled[rule]
            held = f"{hf / hn:.4f}" if hn else "-"
            print(f"| {rule} | " + " | ".join(cells) + f" | {tp / max(tp + fp, 1):.4f} | "
                  f"{tp / max(pos, 1):.4f} | {fp / max(neg, 1):.4f} | {held} |")
            res.setdefault(setting, {})[rule] = {
                # per capture, means over the runs: AUROC, AP, their shortfalls from the best
                # single detector
                "captures": {c: dict(zip(("auroc", "ap", "auroc_vs_best", "ap_vs_best"),
                                         np.round(np.mean(v, axis=0), 5).tolist()))
                             for c, v in rows[rule].items()},
                "precision": tp / max(tp + fp, 1), "recall": tp / max(pos, 1),
                "benign_alert_rate": fp / max(neg, 1), "heldout_clean_alert_rate": hf / hn if hn else None}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scores", nargs="+", help="detect_eval.py --scores directories (one per seed)")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--tail", type=float, default=0.2, help="share of calibration conns in the fitted tail")
    ap.add_argument("--kind", choices=KINDS, default="exp")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--verbose", action="store_true", help="one line per capture, run and rule")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = summarise(args.scores, args.rules, args.fpr, args.tail, args.kind, args.verbose)
    if args.json:
        # one file holds several tail models: this one's entry is added or replaced
        doc = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                doc = json.load(f)
        doc[f"{args.kind} tail {args.tail} fpr {args.fpr}"] = res | {
            "command": "python bench/combine_eval.py " + " ".join(sys.argv[1:]),
            "runs": len(args.scores), "rules": args.rules}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

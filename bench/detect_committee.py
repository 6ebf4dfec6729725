"""Committees of known-bad classifiers, leave-one-capture-out (issue 14, archive target), from the
per-conn probabilities ``bench/detect_classifiers.py --probs DIR`` wrote (no model is run here).

For each held-out capture, the classifiers of several bases (moe, mae, gnn) finetuned on the
other captures (the same draw: their validation benign conns are the same rows) are combined:

- ``any`` / ``k-of-n`` / ``all``: alert when at least k members reach their own trained cut
  (``all`` = the minimum of P/cut >= 1);
- ``mean`` / ``min`` / ``geo``: the mean, minimum or geometric mean of the members'
  P(malicious), cut chosen as ``zeekml finetune`` chooses a single classifier's
  (``train.metrics.trained_cut``: the lowest P >= 0.5 that at most ``--fpr-train`` of the
  validation benign conns reach);
- each single member at its trained cut, for comparison.

Cells: recall on the held-out capture's malicious conns / false-alert rate on its benign conns,
and the share of the unlabeled presumed-benign logs of other networks flagged (``zat``: zat's
conn.log, one ordinary host; ``btest``: the conn.logs of Zeek's and suricata-verify's test
traces). Target (issue 14): recall >= 0.8 at <= 1% of benign conns.

Usage::

    python bench/detect_committee.py --probs /tmp/p300 --out /tmp/committee.json [--members moe mae gnn]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from detect_eval import CAPTURES  # noqa: E402

from zeekml.train.metrics import CUT_FLOOR, trained_cut  # noqa: E402

OTHERS = ("zat", "btest")


def load_fold(probs: str, base: str, held: str, member_fpr: float | None = None) -> dict | None:
    """One fold's arrays (``detect_classifiers.py --probs``), or None when it was not run. With
    ``member_fpr``, the member's cut is chosen again on its validation benign conns at that rate
    (``train.metrics.trained_cut``) instead of the one it was trained with."""
    path = os.path.join(probs, f"{base}-{held}.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        f = {k: z[k] for k in z.files}
    if member_fpr is not None:
        f["cut"] = np.float64(trained_cut(f["val_p"], fpr=member_fpr, floor=CUT_FLOOR)["cut"])
    return f


def rates(alert: dict[str, np.ndarray], y: np.ndarray) -> dict:
    """Recall and benign flag rate on the held-out capture, flag rates on the other logs."""
    held = alert["held"]
    out = {"recall": float(held[y == 1].mean()) if (y == 1).any() else None,
           "benign_flagged": float(held[y == 0].mean()) if (y == 0).any() else None}
    for k in OTHERS:
        out[f"{k}_flagged"] = float(alert[k].mean()) if len(alert[k]) else None
    out["target_met"] = bool(out["recall"] is not None and out["recall"] >= 0.8
                             and out["benign_flagged"] is not None and out["benign_flagged"] <= 0.01)
    return out


def combine(rule: str, ps: list[np.ndarray], cuts: list[float]) -> np.ndarray:
    """The committee's score of each conn from its members' P(malicious) ``ps``: a vote count of
    members at or above their cut (``k-of-n`` rules), or a pooled probability."""
    if rule == "vote":
        return np.sum([p >= c for p, c in zip(ps, cuts)], axis=0).astype(np.float64)
    stack = np.vstack(ps)
    if rule == "mean":
        return stack.mean(axis=0)
    if rule == "min":
        return stack.min(axis=0)
    if rule == "geo":
        return np.exp(np.log(np.clip(stack, 1e-12, 1.0)).mean(axis=0))
    raise ValueError(f"unknown rule {rule!r}")


def committee_rows(folds: dict[str, dict], members: tuple[str, ...], fpr_train: float) -> dict:
    """Every rule of ``members`` on one held-out capture."""
    f0 = folds[members[0]]
    y = f0["held_y"]
    for m in members[1:]:
        if len(folds[m]["val_p"]) != len(f0["val_p"]) or not np.array_equal(folds[m]["held_y"], y):
            raise SystemExit(f"{m} and {members[0]} were not scored on the same conns")
    cuts = [float(folds[m]["cut"]) for m in members]
    parts = ("held", "val") + OTHERS
    p = {k: [folds[m][f"{k}_p"] for m in members] for k in parts}
    out: dict = {}
    n = len(members)
    votes = {k: combine("vote", p[k], cuts) for k in parts}
    for k in range(1, n + 1):
        name = "any" if k == 1 else "all" if k == n else f"{k}-of-{n}"
        out[name] = rates({part: votes[part] >= k for part in parts}, y)
        out[name]["val_flagged"] = float((votes["val"] >= k).mean())
    for rule in ("mean", "min", "geo"):
        s = {k: combine(rule, p[k], cuts) for k in parts}
        op = trained_cut(s["val"], fpr=fpr_train, floor=CUT_FLOOR)
        out[rule] = rates({part: s[part] >= op["cut"] for part in parts}, y) | {"cut": op["cut"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probs", required=True, help="detect_classifiers.py --probs DIR")
    ap.add_argument("--members", nargs="+", default=["moe", "mae", "gnn"])
    ap.add_argument("--fpr-train", type=float, default=0.01,
                    help="the rate on validation benign conns the pooled rules' cuts are chosen at")
    ap.add_argument("--member-fpr", type=float, default=None,
                    help="choose every member's cut again at this rate (default: as trained)")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--markdown", nargs="*", default=None, metavar="RULE",
                    help="print these rows (e.g. moe 'moe+mae+gnn:2-of-3') as a markdown table")
    args = ap.parse_args()
    results: dict = {"command": "python bench/detect_committee.py " + " ".join(sys.argv[1:]), "folds": {}}
    for held in CAPTURES:
        folds = {m: load_fold(args.probs, m, held, args.member_fpr) for m in args.members}
        have = tuple(m for m in args.members if folds[m] is not None)
        if not have:
            continue
        row: dict = {}
        for m in have:
            f = folds[m]
            cut = float(f["cut"])
            row[m] = rates({k: f[f"{k}_p"] >= cut for k in ("held",) + OTHERS}, f["held_y"]) | {"cut": cut}
        for r in range(2, len(have) + 1):
            for combo in itertools.combinations(have, r):
                for rule, v in committee_rows(folds, combo, args.fpr_train).items():
                    row[f"{'+'.join(combo)}:{rule}"] = v
        results["folds"][held] = row
    names = sorted({k for row in results["folds"].values() for k in row})
    caps = list(results["folds"])
    print(f"{'rule':28s} " + " ".join(f"{c:>26s}" for c in caps) + "  met")
    for name in names:
        cells, met = [], 0
        for c in caps:
            v = results["folds"][c].get(name)
            if v is None:
                cells.append(f"{'-':>26s}")
                continue
            met += v["target_met"]
            cell = f"{v['recall']:.3f}/{v['benign_flagged']:.4f} z{v['zat_flagged']:.2f} b{v['btest_flagged']:.2f}"
            cells.append(cell.rjust(26))
        print(f"{name:28s} " + " ".join(cells) + f"  {met}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if args.markdown:
        print(markdown(results, args.markdown))


def markdown(results: dict, rules: list[str]) -> str:
    """Rows ``rules`` of ``results`` as a markdown table: per held-out capture recall / benign
    flagged (bold where the target is met), then the captures met and the range of the shares
    of the presumed-benign logs flagged."""
    caps = list(results["folds"])
    lines = ["| rule | " + " | ".join(caps) + " | target met | zat flagged | btest flagged |",
             "|---" * (len(caps) + 4) + "|"]
    for rule in rules:
        cells, met, other = [], 0, {k: [] for k in OTHERS}
        for c in caps:
            v = results["folds"][c].get(rule)
            if v is None:
                cells.append("-")
                continue
            cell = f"{v['recall']:.3f} / {v['benign_flagged']:.4f}"
            cells.append(f"**{cell}**" if v["target_met"] else cell)
            met += v["target_met"]
            for k in OTHERS:
                other[k].append(v[f"{k}_flagged"])
        rng = [f"{min(x):.3f}-{max(x):.3f}" if x else "-" for x in other.values()]
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {met} of {len(caps)} | " + " | ".join(rng) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Known-bad classifiers leave-one-capture-out (issue 14, archive target): for each labeled
capture of ``../shared/data`` and each base, finetune on the other captures and score the one
left out, as ``zeekml score --models DIR`` would (the ``classifier`` detector).

Training rows: ``--shots`` conns per class (Benign, Malicious) drawn from each training capture's
own earliest 70% by time (``zeekml finetune`` splits the pooled logs, which leaves a later
capture out entirely: Stratosphere's 2022 days lie after IoT-23's 2018-19 ones). The trained cut
is chosen as ``zeekml finetune`` chooses it (``train.protocol.store_trained_cut``: the lowest
P >= 0.5 that at most ``--fpr-train`` of the benign conns of those shares not trained on reach).

On the capture left out (every conn, no baseline: the archive setting): AUROC and average
precision of P(malicious), malicious recall and benign flag rate at the trained cut and at 0.5,
and the recall an oracle cut reaches at <= 1% of the benign conns (the archive target: >= 80% of
malicious conns at <= 1% false alerts on benign conns); and the share of zat's unlabeled conn.log
(another network: one ordinary host, presumed benign) flagged at the trained cut.

Usage::

    OMP_NUM_THREADS=1 python bench/detect_classifiers.py --out /tmp/clf.json [--bases moe mae gnn]

Writes ``--out`` after every fold. ``--keep DIR`` keeps the finetuned directories.

``--extra-benign zat btest`` adds presumed-benign logs of other networks to every training set
as Benign conns (drawn like a capture's); a fold that trains on ``btest`` still measures ``zat``
honestly, and the other way round.

``--final PREFIX`` instead trains the same recipe on every capture, one model directory per base
(``PREFIX-BASE``) to ship: its trained cut as above, the leave-one-capture-out numbers of
``--loco JSON...`` (this script's ``--out`` of earlier runs of the same recipe), the commit it
was trained at and the share of the presumed-benign logs it flags at its cut in the manifest;
``--vote K`` also writes their committee ``PREFIX-committee`` (K members must agree; its LOCO
numbers from ``--committee-loco``, ``bench/detect_committee.py``'s ``--out``)::

    OMP_NUM_THREADS=1 python bench/detect_classifiers.py --bases moe mae gnn --extra-benign btest \
        --final models/malicious --vote 2 --loco LOCO.json --committee-loco COMMITTEE.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from detect_eval import CAPTURES, load  # noqa: E402
from eval_data import DATA, FILES  # noqa: E402

from zeekml.train.data import sample_shots, temporal_split  # noqa: E402
from zeekml.train.artifact import update_manifest, update_metrics  # noqa: E402
from zeekml.train.data import load_conns  # noqa: E402
from zeekml.train.protocol import store_trained_cut, validation_benign_rows  # noqa: E402
from zeekml.train.registry import get_trainer  # noqa: E402

log = logging.getLogger("detect_classifiers")
ROOT = os.path.dirname(HERE)


def git_commit() -> str | None:
    """The checkout's commit (the code the classifiers were trained with), or None."""
    import subprocess

    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def training_set(names: list[str], shots: int, seed: int, benign_shots: int | None = None):
    """The pooled table of ``names``, labels (Benign/Malicious/None), the rows drawn to train on
    (``shots`` per class from each capture's earliest 70%; ``benign_shots`` Benign ones instead
    when given) and every capture's earliest 70%."""
    tables, labels, rows, early_all = [], [], [], []
    off = 0
    for i, name in enumerate(names):
        t, y = load_any(name)
        lab = np.array(["Malicious" if v == 1 else "Benign" if v == 0 else None for v in y], dtype=object)
        early, _ = temporal_split(t)
        drawn = sample_shots(lab, early, k=shots, seed=seed + i)
        if benign_shots is not None and benign_shots != shots:
            # the malicious draw as with --shots; the benign one redrawn at its own size
            ben = early[np.array([lab[j] == "Benign" for j in early], dtype=bool)]
            drawn = drawn[np.array([lab[j] != "Benign" for j in drawn], dtype=bool)]
            n = min(benign_shots, len(ben))
            drawn = np.sort(np.concatenate([drawn, np.random.default_rng(seed + i).choice(ben, n, replace=False)]))
        rows.append(drawn + off)
        early_all.append(early + off)
        tables.append(t)
        labels.append(lab)
        off += t.num_rows
    table = pa.concat_tables(tables, promote_options="permissive")
    return table, np.concatenate(labels), np.concatenate(rows), np.concatenate(early_all)


def held_out_metrics(p: np.ndarray, y: np.ndarray, cut: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = y >= 0
    p, y = p[keep], y[keep]
    mal, ben = p[y == 1], p[y == 0]
    out = {"malicious": int(len(mal)), "benign": int(len(ben))}
    if len(mal) and len(ben):
        out["auroc"] = float(roc_auc_score(y, p))
        out["ap"] = float(average_precision_score(y, p))
        # the oracle: the lowest cut that flags at most 1% of this capture's benign conns
        b = np.sort(ben)[::-1]
        k = int(np.floor(0.01 * len(b)))
        oc = float(np.nextafter(b[k], np.inf)) if k < len(b) else -np.inf
        out["oracle_recall_at_1pct"] = float((mal >= oc).mean())
    for name, c in (("trained_cut", cut), ("p_0.5", 0.5)):
        out[name] = {"cut": c, "recall": float((mal >= c).mean()) if len(mal) else None,
                     "benign_flagged": float((ben >= c).mean()) if len(ben) else None}
    return out


# A base name -> (model kind, its directory under models/, the procedure it always takes). cmoe:
# the shipped causal_window detector, whose one finetune procedure is lp (a linear head on its
# frozen stream embedding), whatever --procedure says for the others.
BASES = {"moe": ("moe", "moe-base", None), "mae": ("mae", "mae-base", None), "gnn": ("gnn", "gnn-base", None),
         "cmoe": ("moe", "moe-causal", "lp")}


def finetune(base: str, names: list[str], shots: int, seed: int, fpr_train: float, out: str,
             benign_shots: int | None = None, procedure: str | None = None) -> tuple[dict, dict]:
    """Finetune ``base`` (``BASES``) on ``names`` (``training_set``) into ``out`` and store its
    trained cut. Returns the fold's record and the validation benign conns' P(malicious)
    (``val_p``) with the index in ``names`` of the capture each comes from (``val_capture``)."""
    table, labels, rows, early = training_set(names, shots, seed, benign_shots)
    kind, base_dir, own = BASES[base]
    procedure = own or procedure
    get_trainer(kind).finetune(os.path.join(ROOT, "models", base_dir), table, labels, rows,
                               hide_service=False, seed=seed, out=out,
                               sources=[f for c in names for f in sources_of(c)],
                               label_field="label", device="cpu",
                               **({"procedure": procedure} if procedure else {}))
    val = validation_benign_rows(labels, early, rows, seed)
    op = store_trained_cut(out, table, val, fpr_train)
    from zeekml.scoring.registry import classifier_detector

    # scored again as store_trained_cut scored them, kept so a committee's cut can be chosen on
    # the same conns (bench/detect_committee.py)
    sizes = np.cumsum([0] + [n for n in _capture_sizes(names)])
    val_p = classifier_detector(out).score_rows(table, val) if len(val) else np.zeros(0)
    return ({"train": names, "train_rows": int(len(rows)), "operating_point": op, "procedure": procedure},
            {"val_p": np.asarray(val_p), "val_capture": np.searchsorted(sizes, val, side="right") - 1})


_SIZES: dict[str, int] = {}


def _capture_sizes(names: list[str]) -> list[int]:
    for n in names:
        if n not in _SIZES:
            _SIZES[n] = load_any(n)[0].num_rows
    return [_SIZES[n] for n in names]


# zeek-8.2.2-package-runs: real Zeek conn.logs of the protocol test traces of Zeek's btest suite
# and suricata-verify (another set of networks, presumed benign; the Slips malware captures left
# out). Each log is scored on its own, as a user would score it.
BTEST_RUNS = "zeek-8.2.2-package-runs"


def sources_of(name: str) -> list[str]:
    """The conn logs of a capture (``CAPTURES``) or of a presumed-benign set (``zat``, ``btest``)."""
    if name == "btest":
        runs = os.path.join(DATA, BTEST_RUNS)
        return [os.path.join(runs, d, "conn.log") for d in sorted(os.listdir(runs))
                if d.startswith(("zeek-btest__", "suricata-verify__"))
                and os.path.exists(os.path.join(runs, d, "conn.log"))]
    return [os.path.join(DATA, FILES[name])]


def presumed_benign() -> dict[str, list[pa.Table]]:
    """Unlabeled logs of other networks, presumed benign: ``zat`` (zat's conn.log, one ordinary
    host) and ``btest`` (the conn.logs of Zeek's and suricata-verify's test traces), each log a
    table of its own."""
    out = {}
    for name in ("zat", "btest"):
        tables = [load_conns(f) for f in sources_of(name)]
        out[name] = [t for t in tables if t.num_rows]
    return out


def load_any(name: str) -> tuple[pa.Table, np.ndarray]:
    """A labeled capture's conns and labels (``detect_eval.load``), or a presumed-benign set's
    conns (its logs one after another) all labeled 0 (Benign): ``--extra-benign``."""
    if name in CAPTURES:
        return load(name, None)
    t = pa.concat_tables(presumed_benign()[name], promote_options="permissive")
    return t, np.zeros(t.num_rows, dtype=np.int64)


def score_logs(det, tables: list[pa.Table]) -> np.ndarray:
    """P(malicious) of every conn of ``tables``, each table scored on its own."""
    return np.concatenate([np.asarray(det.score(t), dtype=np.float64) for t in tables])


def vote_name(k: int, n: int) -> str:
    """``bench/detect_committee.py``'s name of the rule "k of n members at their cut"."""
    return "any" if k == 1 else "all" if k == n else f"{k}-of-{n}"


def final(args: argparse.Namespace) -> None:
    """``--final PREFIX``: the recipe on every capture, one model directory per base to ship
    (``PREFIX-BASE``), and with ``--vote K`` their committee (``PREFIX-committee``: K members
    must agree, ``zeekml.scoring.detectors.committee``)."""
    from zeekml.scoring.detectors.committee import committee_config
    from zeekml.scoring.registry import classifier_detector
    from zeekml.train.artifact import save_model_dir

    names = list(args.captures) + list(args.extra_benign)
    others = presumed_benign()
    loco: dict = {}
    for path in args.loco or []:
        with open(path) as f:
            run = json.load(f)
        for key in ("shots", "benign_shots", "extra_benign", "procedure"):
            if run.get(key, [] if key == "extra_benign" else None) != getattr(args, key):
                raise SystemExit(f"{path} ran with {key} {run.get(key)!r}, not {getattr(args, key)!r}")
        for k, v in run["folds"].items():
            loco[k] = v | {"by": run["command"], "commit": run.get("commit")}
    recipe = {"train": names, "shots_per_class_per_capture": args.shots, "benign_shots": args.benign_shots,
              "procedure": args.procedure,
              "seed": args.seed, "label_field": "label", "trained_at_commit": git_commit(),
              "command": "python bench/detect_classifiers.py " + " ".join(sys.argv[1:])}
    dirs, vals, dets = [], [], []
    for base in args.bases:
        out = f"{args.final}-{base}"
        r, val = finetune(base, names, args.shots, args.seed, args.fpr_train, out, args.benign_shots,
                          args.procedure)
        det = classifier_detector(out)
        metrics = recipe | {"train_rows": r["train_rows"], "presumed_benign_flagged_at_cut": {
            k: {"conns": int(sum(t.num_rows for t in v)), "trained_on": k in names,
                "flagged": round(float((score_logs(det, v) >= det.decision_threshold).mean()), 4)}
            for k, v in others.items()}}
        folds = {k.split("/", 1)[1]: {m: v.get(m) for m in LOCO_KEYS} for k, v in loco.items()
                 if k.startswith(base + "/")}
        if folds:
            metrics["leave_one_capture_out"] = folds
        update_metrics(out, metrics)
        update_manifest(out, {"command": recipe["command"]})
        log.info("%s: %s", out, json.dumps(metrics))
        dirs.append(out)
        vals.append(val["val_p"])
        dets.append(det)
    if args.vote is None:
        return
    if len(dirs) < 2 or not 1 <= args.vote <= len(dirs):
        raise SystemExit(f"--vote takes a count from 1 to the number of --bases ({len(dirs)})")
    # the members drew the same rows (same captures and seed), so their validation benign conns
    # are the same conns: the committee's rate on them is its trained operating point
    agree = np.sum([p >= d.decision_threshold for p, d in zip(vals, dets)], axis=0)
    rate = float((agree >= args.vote).mean()) if len(agree) else None
    op = {"cut": 0.5, "fpr": args.fpr_train, "validation_benign": int(len(agree)), "validation_fpr": rate,
          "floor": 0.5, "chosen_by": f"vote: {args.vote} of {len(dirs)} members at their own trained cuts"}
    out = f"{args.final}-committee"
    save_model_dir(out, "committee", committee_config(dirs, args.vote, op), None,
                   [f for c in names for f in sources_of(c)])
    det = classifier_detector(out)
    metrics = recipe | {"operating_point": op, "members": [os.path.basename(d) for d in dirs],
                        "presumed_benign_flagged_at_cut": {
                            k: {"conns": int(sum(t.num_rows for t in v)), "trained_on": k in names,
                                "flagged": round(float((score_logs(det, v) >= det.decision_threshold).mean()), 4)}
                            for k, v in others.items()}}
    if args.committee_loco:
        with open(args.committee_loco) as f:
            com = json.load(f)
        rule = f"{'+'.join(args.bases)}:{vote_name(args.vote, len(dirs))}"
        metrics["leave_one_capture_out"] = {c: row[rule] for c, row in com["folds"].items() if rule in row}
        metrics["leave_one_capture_out_by"] = com["command"]
    update_metrics(out, metrics)
    update_manifest(out, {"command": recipe["command"]})
    log.info("%s: %s", out, json.dumps(metrics))


LOCO_KEYS = ("auroc", "ap", "oracle_recall_at_1pct", "trained_cut", "zat_flagged_at_cut",
             "btest_flagged_at_cut", "by", "commit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="the leave-one-capture-out JSON (not with --final)")
    ap.add_argument("--bases", nargs="+", default=["moe", "mae", "gnn"], choices=list(BASES),
                    help="moe, mae, gnn: models/BASE-base with --procedure; cmoe: models/moe-causal "
                         "with procedure lp (its one procedure)")
    ap.add_argument("--captures", nargs="+", default=CAPTURES, choices=CAPTURES)
    ap.add_argument("--shots", type=int, default=300, help="per class per training capture")
    ap.add_argument("--benign-shots", type=int, default=None,
                    help="Benign conns per training capture (default: --shots)")
    ap.add_argument("--probs", default=None,
                    help="write each fold's P(malicious) (held-out capture, validation benign "
                         "conns, presumed-benign logs) here as BASE-CAPTURE.npz, for "
                         "bench/detect_committee.py")
    ap.add_argument("--extra-benign", nargs="*", default=[], choices=["zat", "btest"],
                    help="presumed-benign logs of other networks added to every training set "
                         "as Benign conns (drawn like a capture's)")
    ap.add_argument("--procedure", default=None,
                    help="zeekml finetune's --procedure (lp-ft, full; default: finetune's default)")
    ap.add_argument("--fpr-train", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the finetuned dirs under this directory")
    ap.add_argument("--final", default=None,
                    help="train on every capture into PREFIX-BASE directories (one per --bases)")
    ap.add_argument("--vote", type=int, default=None,
                    help="with --final: also PREFIX-committee, where this many members must agree")
    ap.add_argument("--loco", nargs="*", default=None,
                    help="with --final: this script's --out files of the same recipe")
    ap.add_argument("--committee-loco", default=None,
                    help="with --final --vote: bench/detect_committee.py's --out of those runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("zeekml").setLevel(logging.WARNING)
    if args.final:
        final(args)
        return
    if not args.out:
        ap.error("--out is required (or --final)")
    from zeekml.scoring.registry import classifier_detector

    others = presumed_benign()
    results: dict = {"command": "python bench/detect_classifiers.py " + " ".join(sys.argv[1:]),
                     "commit": git_commit(), "shots": args.shots, "benign_shots": args.benign_shots,
                     "extra_benign": args.extra_benign, "procedure": args.procedure,
                     "fpr_train": args.fpr_train, "folds": {}}
    if args.probs:
        os.makedirs(args.probs, exist_ok=True)
    for base in args.bases:
        for held in args.captures:
            train_names = [c for c in CAPTURES if c != held] + list(args.extra_benign)
            t0 = time.perf_counter()
            out = (os.path.join(args.keep, f"{base}-loco-{held}") if args.keep
                   else tempfile.mkdtemp(prefix=f"clf-{base}-{held}-"))
            r, val = finetune(base, train_names, args.shots, args.seed, args.fpr_train, out,
                              args.benign_shots, args.procedure)
            t, y = load(held, None)
            det = classifier_detector(out)
            p = np.asarray(det.score(t))
            r |= held_out_metrics(p, y, r["operating_point"]["cut"])
            # other networks, unlabeled, presumed benign: zat's conn.log (one ordinary host) and
            # the btest/suricata-verify test traces' conn.logs
            other_p = {k: score_logs(det, v) for k, v in others.items()}
            for k, v in other_p.items():
                r[f"{k}_flagged_at_cut"] = float((v >= det.decision_threshold).mean())
                r[f"{k}_conns"] = int(len(v))
            r["seconds"] = round(time.perf_counter() - t0, 1)
            results["folds"][f"{base}/{held}"] = r
            if args.probs:
                np.savez_compressed(os.path.join(args.probs, f"{base}-{held}.npz"), held_p=p, held_y=y,
                                    cut=r["operating_point"]["cut"], train=np.array(train_names),
                                    **val, **{f"{k}_p": v for k, v in other_p.items()})
            log.info("%s held out %s: %s", base, held, json.dumps(r))
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

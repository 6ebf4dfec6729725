"""Few-shot evaluation of the GNN (docs/models.md section 1): pretrained base vs scratch vs a
gradient-boosted tree on the same flow features and the same shots.

Tasks (real labels only, ../shared/data):
  service   Zeek's DPI service from everything but service and ports (all labeled conn logs)
  botnet    IoT-23 detailed-label families (the three IoT-23 logs)
  malicious Benign vs Malicious (all labeled conn logs; Background rows dropped)

Per file, the earliest 70% by ts is the shot pool and the latest 30% the test set (the protocol of
zeekml.train.data); the files are concatenated (their time ranges do not overlap) so one graph
holds them all. A class is kept when it has at least --min-class conns in both the pool and the
test set. k shots per class are drawn with zeekml.train.data.sample_shots; all three models get the
same rows. Macro-F1 on the test rows; results are appended to --out as each run finishes.

    python bench/gnn_fewshot.py --base models/gnn-base --seeds 0 1 2 --out docs/results/gnn_fewshot.json
    python bench/gnn_fewshot.py --report docs/results/gnn_fewshot*.json   # tables + plot only

Seeds can run in parallel processes (--seeds 1 --threads 1 --out ..._seed1.json), merged by --report.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA = os.environ.get("ZEEKML_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
IOT23 = ["iot23-ctu-34-1/conn.log.labeled", "iot23-csv-aucad/iot-23/CTU-Malware-Capture-21-1-labeled.csv",
         "iot23-csv-aucad/iot-23/CTU-Malware-Capture-8-1-labeled.csv"]
STRATO = sorted(os.path.relpath(p, DATA) for p in
                glob.glob(os.path.join(DATA, "stratosphere-security-datasets-for-testing/*/data/conn.log.labeled")))
TASKS = {
    "service": (IOT23 + STRATO, "service"),
    "botnet": (IOT23, "detailedlabel"),
    "malicious": (IOT23 + STRATO, "label"),
}


def load_task(name: str, min_class: int):
    from zeekml.train.data import labels_of, load_conns, temporal_split

    files, field = TASKS[name]
    tables, pool, test, off = [], [], [], 0
    for f in files:
        t = load_conns([os.path.join(DATA, f)])
        early, late = temporal_split(t)
        pool.append(early + off)
        test.append(late + off)
        off += t.num_rows
        tables.append(t)
    table = pa.concat_tables(tables)
    y = labels_of(table, field)
    if field == "label":
        y = np.array([v if v in ("Benign", "Malicious") else None for v in y], dtype=object)
    pool, test = np.concatenate(pool), np.concatenate(test)
    keep = []
    for c in sorted({v for v in y if v is not None}):
        if sum(y[i] == c for i in pool) >= min_class and sum(y[i] == c for i in test) >= min_class:
            keep.append(c)
    y = np.array([v if v in keep else None for v in y], dtype=object)
    pool = pool[np.array([y[i] is not None for i in pool], dtype=bool)]
    test = test[np.array([y[i] is not None for i in test], dtype=bool)]
    return table, y, pool, test, field == "service", files


def macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    labels = sorted(set(y_true))
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def run(args) -> None:
    import torch

    from zeekml.features.flow_features import FlowFeaturizer
    from zeekml.train import gnn as G
    from zeekml.train.data import sample_shots
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    base, base_cfg = G.load_bundle(args.base)
    done = set()
    results = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)["runs"]
        done = {(r["task"], r["k"], r["seed"], r["model"]) for r in results}
    meta = {"base": args.base, "base_n_params": base_cfg["n_params"], "epochs": args.epochs,
            "min_class": args.min_class, "threads": args.threads}
    for seed in args.seeds:
        for task in args.tasks:
            table, y, pool, test, hide, files = load_task(task, args.min_class)
            meta.setdefault("tasks", {})[task] = {
                "files": files, "classes": sorted({y[i] for i in test}), "pool": int(len(pool)),
                "test": int(len(test))}
            scratch_f = FlowFeaturizer(hide_service=hide).fit(table)
            gbt_x = scratch_x = scratch_f.transform(table)  # GBT and scratch GNN: the same features
            base_x = G.featurize(base.featurizer, table, hide)
            y_test = [y[i] for i in test]
            for k in args.shots:
                rows = sample_shots(y, pool, k=k, seed=seed)
                for model in args.models:
                    if (task, k, seed, model) in done:
                        continue
                    t0 = time.perf_counter()
                    if model == "gbt":
                        clf = HistGradientBoostingClassifier(min_samples_leaf=2, class_weight="balanced",
                                                             random_state=seed)
                        with threadpool_limits(1):  # OpenMP on a loaded 2-core box: 20x slower
                            clf.fit(gbt_x[rows], [y[i] for i in rows])
                            pred = clf.predict(gbt_x[test])
                    else:
                        pre = model == "pretrained"
                        x = base_x if pre else scratch_x
                        bundle, _ = G.finetune_bundle(base if pre else None, table, y, rows, hide,
                                                      seed=seed, epochs=args.epochs, hidden=args.hidden,
                                                      featurizer=None if pre else scratch_f, x=x)
                        proba = G.predict_proba(bundle, table, test, x=x)
                        pred = np.asarray(bundle.classes, dtype=object)[proba[test].argmax(1)]
                    f1 = macro_f1(y_test, list(pred))
                    rec = {"task": task, "k": k, "seed": seed, "model": model, "macro_f1": f1,
                           "train_rows": int(len(rows)), "seconds": round(time.perf_counter() - t0, 1)}
                    results.append(rec)
                    print(json.dumps(rec), flush=True)
                    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                    with open(args.out, "w") as f:
                        json.dump({"meta": meta, "runs": results}, f, indent=1)


def report(paths: list[str], png: str | None) -> str:
    """Tables (and a plot) of the merged result files. ``FILE:SUFFIX`` appends SUFFIX to the model
    names of that file's runs (``pretrained-clean``, ``scratch-h128``); a ``pretrainedSUFFIX`` model
    is compared with ``scratchSUFFIX`` when that exists, else with ``scratch``."""
    runs = []
    for spec in paths:
        path, _, suffix = spec.partition(":")
        with open(path) as f:
            for r in json.load(f)["runs"]:
                runs.append({**r, "model": r["model"] + suffix})
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    present = sorted({r["model"] for r in runs}, key=lambda m: (not m.startswith("pretrained"),
                                                                m.startswith("gbt"), m))
    pairs = [(m, "scratch" + m[len("pretrained"):]) for m in present if m.startswith("pretrained")]
    pairs = [(p, q if q in present else "scratch") for p, q in pairs]
    lines, gains, summary = [], {p: [] for p, _ in pairs}, {}
    for task in tasks:
        ks = sorted({r["k"] for r in runs if r["task"] == task})
        lines.append(f"\n**{task}**\n")
        lines.append("| k | " + " | ".join(present) + " | seeds | "
                     + " | ".join(f"gain {p} vs {q}" for p, q in pairs) + " |")
        lines.append("|---|" + "---|" * (len(present) + 1 + len(pairs)))
        for k in ks:
            cells, means, seeds = [], {}, None
            for m in present:
                v = np.array([r["macro_f1"] for r in runs if r["task"] == task and r["k"] == k and r["model"] == m])
                seeds = len(v) if seeds is None else min(seeds, len(v))
                means[m] = v.mean() if len(v) else np.nan
                summary[(task, k, m)] = (means[m], v.std() if len(v) else np.nan)
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if len(v) else "-")
            gcells = []
            for p, q in pairs:
                g = (means[p] - means[q]) / means[q] * 100 if means.get(q) else np.nan
                if np.isfinite(g):
                    gains[p].append(g)
                gcells.append(f"{g:+.2f}%")
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {seeds} | " + " | ".join(gcells) + " |")
    for p, q in pairs:
        lines.append(f"\nAverage relative gain of {p} over {q} (mean over task x k): "
                     f"**{np.mean(gains[p]):+.2f}%** (paper: +6.87%)")
    text = "\n".join(lines)
    if png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            ks = sorted({r["k"] for r in runs if r["task"] == task})
            for m in present:
                mu = [summary[(task, k, m)][0] for k in ks]
                sd = [summary[(task, k, m)][1] for k in ks]
                ax.errorbar(ks, mu, yerr=sd, marker="o", capsize=3, label=m)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlabel("shots per class")
            ax.set_ylabel("macro-F1 (test)")
            ax.set_title(task)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    return text


UNLABELED = ["zat/data/conn.log", "zat/data/json/conn.log", "slips-dataset/dataset/test6-malicious.suricata.json"]


def pretrain_clean(out: str, threads: int, hidden: int = 64) -> None:
    """The base of models/gnn-base without the labeled logs' latest 30% (the few-shot test sets)."""
    import torch

    from zeekml.train import gnn as G
    from zeekml.train.data import load_conns, temporal_split

    torch.set_num_threads(threads)
    parts, sources = [], []
    for f in IOT23 + STRATO:
        t = load_conns([os.path.join(DATA, f)])
        early, _ = temporal_split(t)
        parts.append(t.take(pa.array(early)))
        sources.append(os.path.join(DATA, f))
    extra = [os.path.join(DATA, f) for f in UNLABELED]
    extra += sorted(glob.glob(os.path.join(DATA, "zeek-btest/Baseline*/*/conn.log")))
    parts.append(load_conns(extra))
    table = pa.concat_tables(parts)
    bundle, metrics = G.pretrain_bundle(table, seed=0, hidden=hidden)
    G.save_bundle(bundle, out, sources + extra, metrics, seed=0, settings=("pretrain", G.PretrainConfig(hidden=hidden)),
                  detector=False, note="labeled logs: earliest 70% only")
    print(json.dumps({k: v for k, v in metrics.items() if k != "pretrain_loss"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/gnn-base")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--shots", nargs="+", type=int, default=[5, 10, 20, 50])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=None, help="finetuning epochs (default: the model's)")
    ap.add_argument("--min-class", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64, help="scratch model width (and --pretrain-clean's)")
    ap.add_argument("--out", default="docs/results/gnn_fewshot.json")
    ap.add_argument("--report", nargs="+", default=None,
                    help="only print the tables of these results files (merged)")
    ap.add_argument("--png", default="docs/results/gnn_fewshot.png")
    ap.add_argument("--models", nargs="+", default=["pretrained", "scratch", "gbt"],
                    choices=["pretrained", "scratch", "gbt"])
    ap.add_argument("--pretrain-clean", default=None, metavar="DIR",
                    help="only pretrain a base on the unlabeled logs plus the earliest 70%% of each "
                         "labeled log (never the test conns) into DIR")
    args = ap.parse_args()
    if args.pretrain_clean:
        pretrain_clean(args.pretrain_clean, args.threads, args.hidden)
        return
    if args.report:
        print(report(args.report, args.png))
        return
    run(args)
    print(report([args.out], args.png))


if __name__ == "__main__":
    main()

"""Few-shot evaluation of the MoE token transformer against its dense twin, a dense model as big in
total, and a gradient-boosted tree; then the same test sets after traffic-shaping perturbations.

    OMP_NUM_THREADS=1 python bench/moe_fewshot.py run --work /tmp/moe_eval --seeds 0 1 2 3 4 \
        --out docs/results/moe_fewshot.json
    python bench/moe_fewshot.py report docs/results/moe_fewshot*.json --plots docs/results

Protocol (docs/models.md): every file is split by time; the earliest 70% of each file is the only data
any model learns from: the encoders are pretrained on it (masked tokens, labels ignored) and k
shots per class are drawn from it; the latest 30% of each file is the test set.

    OMP_NUM_THREADS=1 python bench/moe_fewshot.py frontier --work /tmp/moe_frontier \
        --models moe dense moe-d32 dense-d32 --out docs/results/moe_frontier.json

``frontier``: each named candidate (``CANDIDATES``: the shipped configuration, its twin and other
widths, depths and expert layouts) pretrained on the whole corpus of ``models/moe-base`` (the six
files of ``eval_data.FILES``, 48,204 conns) as its README's command does, seed 0, 10 epochs; the
JSON holds each one's parameters (total / active per token) and masked-token validation loss on the
same 2,410 held-out sequences. ``run --models`` takes the same names.

Tasks: ``service`` (Zeek's DPI service from everything but service and ports), ``botnet``
(IoT-23 detailed-label) and ``malicious`` (label). Models:

- ``moe``: ``MoEEncoder`` (8 experts, top-1, every second feed-forward block);
- ``dense``: its twin, same active parameters per token;
- ``dense-wide``: the twin with the MoE-position blocks ``8 * 128`` wide, i.e. as many
  feed-forward parameters as the MoE holds in total (the "bigger dense model" of the speed claim);
- ``gbt``: HistGradientBoostingClassifier (100 rounds, balanced, min_samples_leaf 2) on the shared
  flow features (fitted scaling on the training share; service and ports left out for service).

Perturbations of the test conns (training conns untouched; models trained on clean shots, k=50):

- ``pad``: every packet padded by p ~ U{1..64} bytes, payload and IP bytes both grow by p per packet;
- ``split``: every packet split in two: packet counts double, IP bytes grow by one header per
  original packet (40 TCP, 28 UDP/ICMP), payload bytes unchanged;
- ``delay``: each packet delayed by up to 50 ms (duration grows by pkts * U(0, 50 ms)) and each conn
  starts up to 1 s later;
- ``decoy``: for half of the test conns, a decoy conn from the same originator 0-0.5 s before it
  (one small DNS-like UDP exchange to a random public address); decoys are not scored.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from zeekml.features.flow_features import FlowFeaturizer  # noqa: E402
from zeekml.flows.table import CONN_SCHEMA  # noqa: E402
from zeekml.train.data import labels_of, sample_shots  # noqa: E402
from zeekml.train.metrics import classification_report  # noqa: E402

from eval_data import DATA, FILES, TASKS, load_all  # noqa: E402  (bench/, the script's folder, is on sys.path)

log = logging.getLogger("moe_fewshot")

SHOTS = (5, 10, 20, 50)
NEURAL = ("moe", "dense", "dense-wide")

# name -> (trainer kind, ArchConfig fields of zeekml/train/moe.py). "moe" is models/moe-base's
# configuration, "dense" its twin (same active parameters per token), "dense-wide" the twin as big
# in total as the MoE. The others trade width or depth for speed (issue 15: an MoE has to beat the
# dense model *as accurate as it* on speed); widths are d_model / d_ff of the dense blocks /
# n_experts x d_expert at the MoE positions (blocks 1, 3, ...).
CANDIDATES: dict[str, tuple[str, dict]] = {
    "moe": ("moe", {}),
    "dense": ("dense", {}),
    "dense-wide": ("dense", {"dense_d_ff_alt": 8 * 128}),
    "moe-ff64-16x32": ("moe", {"d_ff": 64, "n_experts": 16, "d_expert": 32}),
    "dense-ff64": ("dense", {"d_ff": 64, "dense_d_ff_alt": 64}),
    "dense-d48": ("dense", {"d_model": 48, "d_ff": 96, "dense_d_ff_alt": 96}),
    "moe-d48-16x96": ("moe", {"d_model": 48, "d_ff": 96, "n_experts": 16, "d_expert": 96}),
    "moe-d32": ("moe", {"d_model": 32, "d_ff": 64, "n_experts": 16, "d_expert": 128}),
    "dense-d32": ("dense", {"d_model": 32, "d_ff": 64, "dense_d_ff_alt": 64}),
    "moe-l2": ("moe", {"n_layers": 2}),
    "moe-l2-16x128": ("moe", {"n_layers": 2, "n_experts": 16}),
    "dense-l2": ("dense", {"n_layers": 2}),
    "dense-l2-wide": ("dense", {"n_layers": 2, "dense_d_ff_alt": 8 * 128}),
}
PERTURBATIONS = ("pad", "split", "delay", "decoy")


# -- perturbations --------------------------------------------------------------------------------

def _col(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(pc.cast(table.column(name), pa.float64()), np.nan).to_numpy(zero_copy_only=False).copy()


def _set(cols: dict, name: str, values: np.ndarray) -> None:
    typ = CONN_SCHEMA.field(name).type
    mask = ~np.isfinite(values)
    if pa.types.is_integer(typ):
        cols[name] = pa.array(np.where(mask, 0, np.round(values)).astype(np.int64), mask=mask).cast(typ)
    else:
        cols[name] = pa.array(np.where(mask, 0.0, values), mask=mask, type=typ)


def perturb(table: pa.Table, rows: np.ndarray, kind: str, seed: int) -> pa.Table:
    """A copy of ``table`` with ``rows`` perturbed (``decoy``: with decoy conns appended at the end,
    so the first ``table.num_rows`` rows keep their indices)."""
    rng = np.random.default_rng(seed)
    cols = {n: table.column(n) for n in table.column_names}
    sel = np.zeros(table.num_rows, bool)
    sel[rows] = True
    opk, rpk = _col(table, "orig_pkts"), _col(table, "resp_pkts")
    opk0, rpk0 = np.nan_to_num(opk), np.nan_to_num(rpk)
    if kind == "pad":
        p = rng.integers(1, 65, table.num_rows) * sel
        for name, pk in (("orig_bytes", opk0), ("orig_ip_bytes", opk0), ("resp_bytes", rpk0),
                         ("resp_ip_bytes", rpk0)):
            _set(cols, name, _col(table, name) + p * pk)
    elif kind == "split":
        proto = np.asarray(pc.fill_null(table.column("proto"), "").to_pylist(), dtype=object)
        hdr = np.where(proto == "tcp", 40, 28) * sel
        _set(cols, "orig_pkts", np.where(sel, opk * 2, opk))
        _set(cols, "resp_pkts", np.where(sel, rpk * 2, rpk))
        _set(cols, "orig_ip_bytes", _col(table, "orig_ip_bytes") + hdr * opk0)
        _set(cols, "resp_ip_bytes", _col(table, "resp_ip_bytes") + hdr * rpk0)
    elif kind == "delay":
        per_pkt = rng.uniform(0, 0.05, table.num_rows) * sel
        dur = _col(table, "duration")
        _set(cols, "duration", np.where(np.isfinite(dur), dur + (opk0 + rpk0) * per_pkt, dur))
        _set(cols, "ts", _col(table, "ts") + rng.uniform(0, 1.0, table.num_rows) * sel)
    elif kind == "decoy":
        pass
    else:
        raise ValueError(kind)
    out = pa.table(cols, schema=table.schema)
    if kind != "decoy":
        return out
    pick = rows[rng.random(len(rows)) < 0.5]
    n = len(pick)
    src = table.take(pa.array(pick))
    dec = {
        "ts": pc.subtract(src.column("ts"), pa.array(rng.uniform(0, 0.5, n))),
        "uid": pa.array([f"Cdecoy{i}" for i in range(n)]),
        "id.orig_h": src.column("id.orig_h"),
        "id.orig_p": pa.array(rng.integers(1024, 65535, n), pa.uint16()),
        "id.resp_h": pa.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in rng.integers(1, 223, (n, 4))]),
        "id.resp_p": pa.array(np.full(n, 53), pa.uint16()),
        "proto": pa.array(["udp"] * n), "service": pa.array(["dns"] * n),
        "duration": pa.array(rng.uniform(0.001, 0.05, n)),
        "orig_bytes": pa.array(np.full(n, 40), pa.uint64()), "resp_bytes": pa.array(np.full(n, 120), pa.uint64()),
        "conn_state": pa.array(["SF"] * n), "history": pa.array(["Dd"] * n),
        "orig_pkts": pa.array(np.ones(n, np.int64)), "resp_pkts": pa.array(np.ones(n, np.int64)),
        "orig_ip_bytes": pa.array(np.full(n, 68)), "resp_ip_bytes": pa.array(np.full(n, 148)),
        "missed_bytes": pa.array(np.zeros(n, np.int64)),
    }
    dec_cols = {}
    for f in CONN_SCHEMA:
        v = dec.get(f.name)
        dec_cols[f.name] = (pa.nulls(n, f.type) if v is None else
                            (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v).cast(f.type))
    return pa.concat_tables([out, pa.table(dec_cols, schema=CONN_SCHEMA)])


# -- models ---------------------------------------------------------------------------------------

def pretrain(work: str, table: pa.Table, train: np.ndarray, epochs: int,
             models: tuple[str, ...] = NEURAL) -> dict[str, str]:
    """Pretrained bases on the training share (cached in ``work``)."""
    from zeekml.train.moe import KINDS

    sub = table.take(pa.array(train))
    dirs = {}
    for name in models:
        out = os.path.join(work, f"base-{name}")
        dirs[name] = out
        if os.path.exists(os.path.join(out, "manifest.json")):
            continue
        kind, opts = CANDIDATES[name]
        t0 = time.perf_counter()
        m = KINDS[kind].pretrain(sub, out, sources=[], seed=0, epochs=epochs, **opts)
        log.info("pretrained %s: val loss %s, %.0f s", name, m.get("val_loss"), time.perf_counter() - t0)
    return dirs


def gbt_f1(table, labels, shots, test, hide, seed, train_rows, pert_table=None) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier

    fz = FlowFeaturizer(hide_service=hide).fit(table.take(pa.array(train_rows)))
    x_tr = fz.transform(table.take(pa.array(shots)))
    y_tr = np.asarray([labels[i] for i in shots])
    # min_samples_leaf 2: the default 20 cannot split a 5-shot training set at all
    m = HistGradientBoostingClassifier(max_iter=100, random_state=seed, class_weight="balanced",
                                       min_samples_leaf=2)
    m.fit(x_tr, y_tr)
    src = pert_table if pert_table is not None else table
    pred = m.predict(fz.transform(src.take(pa.array(test))))
    y = [labels[i] for i in test]
    return classification_report(y, list(pred), sorted(set(y_tr)))["macro_f1"]


def run(args) -> None:
    import torch

    from zeekml.train.moe import KINDS, LoadedTokenModel, routing_summary

    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    table, file_of, train, test = load_all()
    log.info("%d conns, %d train, %d test", table.num_rows, len(train), len(test))
    bases = pretrain(args.work, table, train, args.epochs, tuple(args.models))
    if args.pretrain_only:
        return
    base_cfg = {n: json.load(open(os.path.join(d, "config.json"))) for n, d in bases.items()}
    results = {"runs": [], "robust": [], "bases": {
        n: {"n_params_encoder": c["n_params_encoder"], "n_params_active": c["n_params_active"]}
        for n, c in base_cfg.items()}}
    names = list(FILES)
    for task in args.tasks:
        field, files = TASKS[task]
        hide = field == "service"
        in_task = np.isin(file_of, [names.index(f) for f in files])
        labels = labels_of(table, field)
        tr = np.asarray([i for i in train if in_task[i] and labels[i] is not None])
        te = np.asarray([i for i in test if in_task[i] and labels[i] is not None])
        # every base fitted its tokenizer on the same rows with the same settings: any one serves
        tok = LoadedTokenModel.from_dir(bases[args.models[0]]).tokenizer
        test_ids = tok.transform(table, rows=te, hide_service=hide)
        y_te = [labels[i] for i in te]
        pert = {}
        if not args.no_robust:
            for p in PERTURBATIONS:
                pt = perturb(table, te, p, seed=123)
                pert[p] = (pt, tok.transform(pt, rows=te, hide_service=hide))
        log.info("%s: %d train candidates, %d test, classes %s", task, len(tr), len(te), sorted(set(y_te)))
        for seed in args.seeds:
            for k in args.shots:
                shots = sample_shots(labels, tr, k=k, seed=seed)
                classes = sorted({labels[i] for i in shots})
                rec = {"task": task, "seed": seed, "k": k, "train_rows": len(shots)}
                t0 = time.perf_counter()
                rec["gbt"] = gbt_f1(table, labels, shots, te, hide, seed, train)
                robust = (k == max(args.shots)) and not args.no_robust
                if robust:
                    for p, (pt, _) in pert.items():
                        results["robust"].append({"task": task, "seed": seed, "k": k, "model": "gbt",
                                                  "perturbation": p, "clean": rec["gbt"],
                                                  "f1": gbt_f1(table, labels, shots, te, hide, seed, train, pt)})
                for name in args.models:
                    kind = CANDIDATES[name][0]
                    out = os.path.join(args.work, f"ft-{name}-{task}-{k}-{seed}")
                    KINDS[kind].finetune(bases[name], table, labels, shots, hide, seed, out, sources=[],
                                         label_field=field, device="cpu")
                    loaded = LoadedTokenModel.from_dir(out)
                    res = loaded.run(test_ids, want=("proba", "routing"))
                    pred = [loaded.classes[j] for j in res["proba"].argmax(1)]
                    rec[name] = classification_report(y_te, pred, classes)["macro_f1"]
                    if name == "moe":            # the expert-usage table reads the shipped config's
                        rec["moe_routing"] = routing_summary(res["routing"])
                    if robust:
                        for p, (_, ids) in pert.items():
                            r2 = loaded.run(ids, want=("proba", "routing"))
                            f1 = classification_report(y_te, [loaded.classes[j] for j in r2["proba"].argmax(1)],
                                                       classes)["macro_f1"]
                            results["robust"].append({"task": task, "seed": seed, "k": k, "model": name,
                                                      "perturbation": p, "clean": rec[name], "f1": f1})
                    shutil.rmtree(out, ignore_errors=True)
                rec["seconds"] = round(time.perf_counter() - t0, 1)
                results["runs"].append(rec)
                log.info("%s k=%d seed=%d: %s", task, k, seed,
                         {m: round(rec[m], 3) for m in ("gbt",) + tuple(args.models)})
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)


# -- accuracy/speed frontier: pretraining on the whole corpus -----------------------------------

def frontier(args) -> None:
    """Pretrain each of ``args.models`` on the six files of ``FILES`` (``models/moe-base``'s corpus,
    in its README's order) as ``zeekml pretrain`` does, seed ``args.seed``; write the validation
    losses and parameter counts to ``args.out`` (kept between calls: a finished candidate is read
    back from its directory, not retrained)."""
    import torch

    from zeekml.train.moe import ArchConfig
    from zeekml.train.protocol import run_pretrain

    torch.set_num_threads(args.threads)
    logs = [os.path.join(DATA, rel) for rel in FILES.values()]
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    given = dict(x.split("=", 1) for x in args.take)
    for name in args.models:
        kind, opts = CANDIDATES[name]
        out = given.get(name, os.path.join(args.work, name))
        if name in given:
            # a directory made by the same pretraining elsewhere (the shipped bases, by their
            # README's command): only if it is this candidate
            cfg = json.load(open(os.path.join(out, "config.json")))
            want = {k: v for k, v in cfg["arch"].items() if v is not None}
            mine = {k: v for k, v in {**ArchConfig().__dict__, **opts}.items() if v is not None}
            if cfg["kind"] != kind or want != mine or cfg["seed"] != args.seed \
                    or cfg["pretrain"]["epochs"] != args.epochs:
                sys.exit(f"{out}: not candidate {name} ({kind} {opts}, seed {args.seed}, {args.epochs} epochs)")
        elif not os.path.exists(os.path.join(out, "manifest.json")):
            run_pretrain(kind, logs, out, seed=args.seed, epochs=args.epochs, device="cpu", **opts)
        m = json.load(open(os.path.join(out, "manifest.json")))["metrics"]
        cfg = json.load(open(os.path.join(out, "config.json")))
        results[name] = {"kind": kind, "arch": opts, "encoder": cfg["encoder"], "seed": args.seed,
                         "epochs": args.epochs, "n_params_encoder": m["n_params_encoder"],
                         "n_params_active": m["n_params_active"], "val_loss": m["val_loss"],
                         "train_loss": m["train_loss"], "seconds": m["seconds"], "dir": out,
                         "val_routing": m.get("val_routing")}
        log.info("%s: %s params, %s active, val loss %.4f (%.0f s)", name, f"{m['n_params_encoder']:,}",
                 f"{m['n_params_active']:,}", m["val_loss"], m["seconds"])
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


# -- report ---------------------------------------------------------------------------------------

def _ms(v: list[float]) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "n/a"


def report(paths: list[str], plots: str | None) -> str:
    # one record per (task, seed, k): a model's result found in two files counts once (the first),
    # and files that ran other models of the same draws add theirs to it
    merged: dict[tuple, dict] = {}
    robust_by: dict[tuple, dict] = {}
    bases = {}
    for p in paths:
        d = json.load(open(p))
        for r in d["runs"]:
            rec = merged.setdefault((r["task"], r["seed"], r["k"]), {})
            for key, v in r.items():
                rec.setdefault(key, v)
        for x in d["robust"]:
            robust_by.setdefault((x["task"], x["seed"], x["k"], x["model"], x["perturbation"]), x)
        bases.update(d.get("bases", {}))
    runs, robust = list(merged.values()), list(robust_by.values())
    models = [m for m in (*CANDIDATES, "gbt") if any(m in r for r in runs)]
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    lines = []
    for t in tasks:
        seeds = sorted({r["seed"] for r in runs if r["task"] == t})
        lines += [f"### {t} (seeds {', '.join(map(str, seeds))})", "",
                  "| k | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        for k in SHOTS:
            rs = [r for r in runs if r["task"] == t and r["k"] == k]
            if rs:
                lines.append(f"| {k} | " + " | ".join(_ms([r[m] for r in rs if m in r]) for m in models) + " |")
        lines.append("")
    if robust:
        lines += ["### Robustness: macro-F1 drop (clean - perturbed), k = 50, mean ± std over seeds", "",
                  "| task | perturbation | " + " | ".join(models) + " |", "|---|---" + "|---" * len(models) + "|"]
        for t in tasks:
            for p in PERTURBATIONS:
                cells = []
                for m in models:
                    v = [r["clean"] - r["f1"] for r in robust if r["task"] == t and r["perturbation"] == p
                         and r["model"] == m]
                    cells.append(_ms(v))
                lines.append(f"| {t} | {p} | " + " | ".join(cells) + " |")
        lines.append("")
    rr = [r for r in runs if "moe_routing" in r]
    if rr:
        lines += ["### MoE expert usage on the test sets (k = 50, summed over seeds)", "",
                  "| task | layer | tokens per expert | busiest expert share | dropped |", "|---|---|---|---|---|"]
        for t in tasks:
            agg: dict[int, dict] = {}
            for r in rr:
                if r["task"] != t or r["k"] != max(x["k"] for x in rr):
                    continue
                for lay in r["moe_routing"]:
                    a = agg.setdefault(lay["layer"], {"tpe": np.zeros(len(lay["tokens_per_expert"])),
                                                      "dropped": 0, "routed": 0})
                    a["tpe"] += lay["tokens_per_expert"]
                    a["dropped"] += lay["dropped"]
                    a["routed"] += lay["routed"]
            for layer, a in sorted(agg.items()):
                share = a["tpe"] / max(a["tpe"].sum(), 1)
                lines.append(f"| {t} | {layer} | {' '.join(f'{s:.1%}' for s in share)} | {share.max():.1%} | "
                             f"{a['dropped']:,} of {a['routed']:,} ({a['dropped'] / max(a['routed'], 1):.2%}) |")
        lines.append("")
    if plots:
        _plot(runs, tasks, models, plots)
        if robust:
            _plot_robust(robust, tasks, models, plots)
    return "\n".join(lines)


def _plot(runs, tasks, models, out_dir) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6))
    axes = np.atleast_1d(axes)
    for ax, t in zip(axes, tasks):
        for m in models:
            ks, mu, sd = [], [], []
            for k in SHOTS:
                v = [r[m] for r in runs if r["task"] == t and r["k"] == k and m in r]
                if v:
                    ks.append(k)
                    mu.append(np.mean(v))
                    sd.append(np.std(v))
            ax.errorbar(ks, mu, yerr=sd, marker="o", capsize=3, label=m)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(list(SHOTS), [str(k) for k in SHOTS])
        ax.set_title(t)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("macro-F1")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "moe_fewshot.png"), dpi=110)
    plt.close(fig)


def _plot_robust(robust, tasks, models, out_dir) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    w = 0.8 / len(models)
    for ax, t in zip(axes, tasks):
        for i, m in enumerate(models):
            drops = [[r["clean"] - r["f1"] for r in robust if r["task"] == t and r["perturbation"] == p
                      and r["model"] == m] for p in PERTURBATIONS]
            ax.bar(np.arange(len(PERTURBATIONS)) + i * w, [np.mean(d) if d else np.nan for d in drops], w,
                   yerr=[np.std(d) if d else 0 for d in drops], capsize=2, label=m)
        ax.set_xticks(np.arange(len(PERTURBATIONS)) + w * (len(models) - 1) / 2, list(PERTURBATIONS))
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(f"{t}: macro-F1 drop, k = 50")
    axes[0].set_ylabel("clean - perturbed macro-F1")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "moe_robustness.png"), dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--work", default="/tmp/moe_eval")
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    r.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    r.add_argument("--models", nargs="+", default=list(NEURAL), choices=list(CANDIDATES))
    r.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-robust", action="store_true")
    r.add_argument("--pretrain-only", action="store_true",
                   help="only pretrain the bases of --models (to run them in parallel first)")
    f = sub.add_parser("frontier", help="pretrain candidates on the whole corpus: validation loss")
    f.add_argument("--work", default="/tmp/moe_frontier")
    f.add_argument("--out", required=True)
    f.add_argument("--models", nargs="+", required=True, choices=list(CANDIDATES))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--take", nargs="+", default=[], metavar="NAME=DIR",
                   help="read candidate NAME from DIR, pretrained the same way (e.g. moe=models/moe-base)")
    p = sub.add_parser("report")
    p.add_argument("paths", nargs="+")
    p.add_argument("--plots", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "run":
        run(args)
    elif args.cmd == "frontier":
        frontier(args)
    else:
        print(report(sorted({q for p in args.paths for q in glob.glob(p)}), args.plots))


if __name__ == "__main__":
    main()

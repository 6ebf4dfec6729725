"""Few-shot as the papers measure it (issue 14 item 4): leave-one-capture-out pretraining, label
budgets as fractions of a temporally ordered training share beside k shots per class, and every
pretrained base against its scratch twin, a frozen-encoder probe and gradient-boosted trees.

Task: intrusion detection, Benign vs Malicious (``label``; Background rows dropped), on the five
labeled captures of ``bench/eval_data.py``. For each target capture T and model kind K (gnn, mae,
moe):

1. Base: K pretrained with the library's entry point (``zeekml.train.protocol.run_pretrain``, the
   code of ``zeekml pretrain``) on the conns of the *other* four captures only, labels ignored;
   T was never seen in pretraining. Cached under ``--cache`` (one directory per kind, target and
   pretraining budget), so a rerun only pretrains what is missing.
2. Split of T: the earliest 70% by ts is the training share, the latest 30% the test set (the
   protocol of ``zeekml.train.data``). Budgets: the earliest 1%, 5%, 10%, 20% of the training share
   by ts (a contiguous stretch of early labels, as a deployment would get them), and k shots per
   class drawn at random from the whole training share (``sample_shots``). A budget whose rows hold
   one class only cannot train a classifier and is reported as skipped, not filled in.
3. Models, all on the same rows and seeds:
   - ``pretrained``: the library's finetune from the base (``Trainer.finetune``, as ``zeekml
     finetune --base``), with each kind's default procedure (``zeekml.train.common.LPFT``: LP-FT
     for mae, the full finetune for gnn and moe) unless ``--finetune procedure=...`` says otherwise.
   - ``scratch``: the same architecture and loop from random weights (``--scratch``).
   - ``probe``: logistic regression on the standardised embeddings of the frozen base.
   - ``gbt``: ``HistGradientBoostingClassifier`` on the shared flow features (fitted on T's training
     share; the same for every kind).
   - ``gbt+emb``: the same tree on [flow features + the frozen base's embedding].
   Metrics on the test set: macro-F1 over Benign and Malicious and AUROC of P(Malicious).

With fraction budgets the rows are fixed, so seeds vary only initialisation, batch order and the
tree's randomness (the GBT, deterministic at these sizes, has std 0 there); with k shots the seed
also draws the shots. Bases are pretrained once (seed 0).

    OMP_NUM_THREADS=1 nice -n 10 python bench/fewshot_eval.py --captures strato-008 ctu-8-1 \
        --seeds 0 1 2 --cache /tmp/fewshot_cache --out docs/results/fewshot.json
    python bench/fewshot_eval.py --report docs/results/fewshot.json      # the tables of fewshot.md
    python bench/fewshot_eval.py --compare docs/results/fewshot_lpft_full.json \
        docs/results/fewshot_lpft_lp-ft.json                              # its second round

Results are appended to ``--out`` as each run finishes; a rerun skips the runs already there.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from eval_data import DATA, FILES, TASKS  # noqa: E402  (bench/, this script's folder)

log = logging.getLogger("fewshot_eval")

CAPTURES = tuple(TASKS["malicious"][1])
KINDS = ("gnn", "mae", "moe")
FRACTIONS = (0.01, 0.05, 0.10, 0.20)
SHOTS = 10
MODELS = ("pretrained", "scratch", "probe", "gbt", "gbt+emb")
CLASSES = ("Benign", "Malicious")
POSITIVE = "Malicious"
MIN_TEST = 10                   # conns of each class the test set must hold (as bench/gnn_fewshot.py)
# Reduced pretraining budgets: the machine is two cores shared by several engineers. The shipped
# bases use gnn 8 epochs, mae 20 epochs, moe 8 epochs of up to 60,000 sequences.
PRETRAIN = {
    "gnn": {"epochs": 4},
    "mae": {"epochs": 8},
    "moe": {"epochs": 3, "max_sequences": 20000},
}


# ---------------------------------------------------------------------------------------------
# pure helpers (tests/unit/bench/test_fewshot_eval.py)


def budget_name(fraction: float | None = None, shots: int | None = None) -> str:
    """``"5%"`` for a fraction, ``"10-shot"`` for k shots per class."""
    if (fraction is None) == (shots is None):
        raise ValueError("give a fraction or a shot count, not both or neither")
    if fraction is not None:
        return f"{fraction * 100:g}%"
    return f"{shots}-shot"


def earliest_share(ts: np.ndarray, rows: np.ndarray, fraction: float) -> np.ndarray:
    """The earliest ``round(len(rows) * fraction)`` of ``rows`` by ``ts`` (at least one), sorted;
    ties keep row order, as ``zeekml.flows.select.earliest_rows`` does.

    Args:
        ts: per-row time of the whole table (``ts_sort_key``: unset ts is +inf).
        rows: the candidate rows (the training share).
        fraction: share in (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return rows
    n = max(1, int(round(len(rows) * fraction)))
    order = np.argsort(ts[rows], kind="stable")
    return np.sort(rows[order[:n]])


def binary_labels(labels: np.ndarray) -> np.ndarray:
    """``label`` values as Benign/Malicious, None for anything else (Background, unset)."""
    return np.array([v if v in CLASSES else None for v in labels], dtype=object)


def labeled(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` that carry a class."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[np.array([y[i] is not None for i in rows], dtype=bool)] if len(rows) else rows


def skip_reason(y_train: list[str], y_test: list[str], min_test: int = MIN_TEST) -> str | None:
    """Why a budget cannot be evaluated, else None: its rows hold one class (nothing to learn), or
    the test set holds fewer than ``min_test`` conns of a class (a score of one conn is noise)."""
    present = sorted(set(y_train))
    if len(present) < 2:
        return f"its {len(y_train)} labeled conns are all {present[0]}" if present else "no labeled conns"
    for c in CLASSES:
        if y_test.count(c) < min_test:
            return f"the test set holds {y_test.count(c)} {c} conns (fewer than {min_test})"
    return None


def scores(y_true: list[str], proba: np.ndarray, classes: list[str]) -> dict:
    """Macro-F1 over Benign and Malicious of the argmax class, and AUROC of P(Malicious)
    (None when the test set holds one class). ``proba``: ``[n, len(classes)]``."""
    from sklearn.metrics import f1_score, roc_auc_score

    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(y_true), len(classes)):
        raise ValueError(f"proba has shape {proba.shape}, expected {(len(y_true), len(classes))}")
    pred = [classes[i] for i in proba.argmax(1)]
    f1 = float(f1_score(y_true, pred, labels=list(CLASSES), average="macro", zero_division=0))
    pos = np.array([t == POSITIVE for t in y_true])
    p_pos = proba[:, classes.index(POSITIVE)] if POSITIVE in classes else np.zeros(len(y_true))
    auroc = float(roc_auc_score(pos, p_pos)) if 0 < pos.sum() < len(pos) else None
    return {"macro_f1": f1, "auroc": auroc}


def parse_pretrain(specs: list[str], defaults: dict[str, dict] = PRETRAIN) -> dict[str, dict]:
    """The pretraining budgets with ``KIND:KEY=INT`` overrides applied (``moe:epochs=1``)."""
    out = {k: dict(v) for k, v in defaults.items()}
    for spec in specs:
        kind, _, kv = spec.partition(":")
        key, eq, val = kv.partition("=")
        if kind not in out or not key or not eq or not val.isdigit():
            raise ValueError(f"--pretrain {spec!r}: expected KIND:KEY=INT with KIND one of {', '.join(out)}")
        out[kind][key] = int(val)
    return out


def parse_finetune(specs: list[str]) -> dict:
    """The finetune settings of ``KEY=VALUE`` specs (``procedure=full``, ``ft_lr_scale=0.05``),
    values as int, float or string, passed to every ``pretrained`` and ``scratch`` finetune."""
    out: dict = {}
    for spec in specs:
        key, eq, val = spec.partition("=")
        if not key or not eq or not val:
            raise ValueError(f"--finetune {spec!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(val)
                break
            except ValueError:
                continue
        else:
            out[key] = val
    return out


def compare(before: list[dict], after: list[dict]) -> list[str]:
    """Markdown: per kind, over the capture x budget cells both result files scored, macro-F1 of
    pretrained against its scratch twin and the GBT before and after (means over seeds
    compared; the median gain is the robust one), the stricter reading: the pretrained model of
    ``after`` against the better of the two scratch twins (``before``'s and ``after``'s), so a
    procedure cannot win by only making scratch worse, and ``after``'s pretrained model against
    ``before``'s (which procedure finetunes a base better)."""
    sb, sa = summarise(before, "macro_f1"), summarise(after, "macro_f1")
    out = ["| kind | cells | before: pre > scratch | before: median gain | before: pre > GBT | after: pre > scratch "
           "| after: median gain | after: mean gain | after: pre > GBT | after pre > best scratch "
           "| median gain vs best scratch | after pre > before pre | median after pre vs before pre |",
           "|---|" + "---|" * 12]
    for kind in KINDS:
        need = ("pretrained", "scratch", "gbt")
        cells = sorted({(c, b) for (k, c, b, m) in sa if k == kind and m == "pretrained"})
        cells = [cb for cb in cells if all((kind, *cb, m) in s for s in (sb, sa) for m in need)]
        if not cells:
            continue
        pb, scb = ([sb[(kind, *cb, m)][0] for cb in cells] for m in ("pretrained", "scratch"))
        pa_, sca, gbt = ([sa[(kind, *cb, m)][0] for cb in cells] for m in need)
        best = [max(a, b) for a, b in zip(scb, sca)]
        n = len(cells)

        def wins(a: list[float], b: list[float]) -> str:
            return f"{sum(x > y for x, y in zip(a, b))}/{n}"

        def med(a: list[float], b: list[float]) -> str:
            return f"{np.median([relative_gain(x, y) for x, y in zip(a, b)]):+.2f}%"

        out.append(f"| {kind} | {n} | {wins(pb, scb)} | {med(pb, scb)} | {wins(pb, gbt)} | {wins(pa_, sca)} "
                   f"| {med(pa_, sca)} | {np.mean([relative_gain(x, y) for x, y in zip(pa_, sca)]):+.2f}% "
                   f"| {wins(pa_, gbt)} | {wins(pa_, best)} | {med(pa_, best)} | {wins(pa_, pb)} | {med(pa_, pb)} |")
    return out


def compare_cells(before: list[dict], after: list[dict], metric: str = "macro_f1") -> list[str]:
    """Markdown: per kind and capture x budget cell scored in both files, ``metric`` (mean over
    seeds) of pretrained and scratch before and after, beside the GBT and the frozen probe."""
    sb, sa = summarise(before, metric), summarise(after, metric)
    out = ["| kind | capture | budget | pre before | scratch before | pre after | scratch after | gbt | probe |",
           "|---|---|---|" + "---|" * 6]
    for kind in KINDS:
        cells = sorted({(c, b) for (k, c, b, m) in sa if k == kind and m == "pretrained"},
                       key=lambda cb: (CAPTURES.index(cb[0]) if cb[0] in CAPTURES else 99, budget_order(cb[1])))
        for c, b in cells:
            got = [sb.get((kind, c, b, "pretrained")), sb.get((kind, c, b, "scratch")),
                   sa.get((kind, c, b, "pretrained")), sa.get((kind, c, b, "scratch")),
                   sa.get((kind, c, b, "gbt")), sa.get((kind, c, b, "probe"))]
            if all(got[:4]):
                out.append(f"| {kind} | {c} | {b} | " + " | ".join(f"{v[0]:.3f}" if v else "-" for v in got) + " |")
    return out


def relative_gain(a: float, b: float) -> float:
    """``(a - b) / b`` in percent (the paper's "+6.87% over scratch"); nan when ``b`` is 0."""
    return (a - b) / b * 100 if b else float("nan")


def summarise(runs: list[dict], metric: str = "macro_f1") -> dict:
    """``{(kind, capture, budget, model): (mean, std, n)}`` over seeds of the finished runs; the
    kind-free ``gbt`` runs count under every kind."""
    acc: dict = {}
    kinds = sorted({r["kind"] for r in runs if r["kind"] != "-"})
    for r in runs:
        if r.get(metric) is None:
            continue
        for k in (kinds if r["kind"] == "-" else [r["kind"]]):
            acc.setdefault((k, r["capture"], r["budget"], r["model"]), []).append(r[metric])
    return {key: (float(np.mean(v)), float(np.std(v)), len(v)) for key, v in acc.items()}


def budget_order(budget: str) -> tuple[int, float]:
    """Fractions first in size order, then shot budgets."""
    if budget.endswith("%"):
        return 0, float(budget[:-1])
    return 1, float(budget.split("-")[0])


def headline(runs: list[dict]) -> list[str]:
    """Markdown: per kind, over the capture x budget cells where pretrained, scratch and the GBT
    all ran, the mean macro-F1 gain of pretrained over scratch and how often each model built on
    the base beats the GBT (means over seeds compared)."""
    s = summarise(runs, "macro_f1")
    out = ["| kind | cells | pretrained vs scratch (mean gain) | pretrained > scratch | pretrained > GBT "
           "| probe > GBT | GBT+emb > GBT | GBT+emb vs GBT (mean gain) |", "|---|" + "---|" * 7]
    for kind in KINDS:
        cells = sorted({(c, b) for (k, c, b, m) in s if k == kind and m == "pretrained"})
        got = [{m: s.get((kind, c, b, m)) for m in MODELS} for c, b in cells]
        got = [g for g in got if g["pretrained"] and g["scratch"] and g["gbt"]]
        if not got:
            continue

        def beats(m: str, ref: str) -> str:
            n = sum(1 for g in got if g[m])
            return f"{sum(g[m][0] > g[ref][0] for g in got if g[m])}/{n}" if n else "-"

        gain = np.mean([relative_gain(g["pretrained"][0], g["scratch"][0]) for g in got])
        emb = [relative_gain(g["gbt+emb"][0], g["gbt"][0]) for g in got if g["gbt+emb"]]
        out.append(f"| {kind} | {len(got)} | {gain:+.2f}% | {beats('pretrained', 'scratch')} "
                   f"| {beats('pretrained', 'gbt')} | {beats('probe', 'gbt')} | {beats('gbt+emb', 'gbt')} "
                   f"| {f'{np.mean(emb):+.2f}%' if emb else '-'} |")
    return out


def render(runs: list[dict]) -> str:
    """Markdown: the headline (``headline``), then per kind a table of macro-F1 and one of AUROC
    (mean ± std over seeds) per capture and budget with the pretrained-vs-scratch gain, and the
    budgets that were skipped and why."""
    skipped = sorted({(r["capture"], r["budget"], r["reason"]) for r in runs if r.get("reason")})
    kinds = [k for k in KINDS if any(r["kind"] == k for r in runs)]
    cells = sorted({(r["capture"], r["budget"]) for r in runs if r.get("macro_f1") is not None},
                   key=lambda cb: (CAPTURES.index(cb[0]) if cb[0] in CAPTURES else 99, budget_order(cb[1])))
    out = headline(runs)
    for metric, title in (("macro_f1", "macro-F1"), ("auroc", "AUROC of P(Malicious)")):
        s = summarise(runs, metric)
        for kind in kinds:
            out.append(f"\n**{kind}: {title}** (mean ± std over seeds; gain = (pretrained - scratch) / scratch)\n")
            out.append("| capture | budget | " + " | ".join(MODELS) + " | seeds | gain pre vs scratch |")
            out.append("|---|---|" + "---|" * (len(MODELS) + 2))
            gains, wins_s, wins_g, n = [], 0, 0, 0
            for cap, bud in cells:
                row = [s.get((kind, cap, bud, m)) for m in MODELS]
                if all(v is None for v in row):
                    continue
                txt = [f"{v[0]:.3f} ± {v[1]:.3f}" if v else "-" for v in row]
                seeds = min((v[2] for v in row if v), default=0)
                pre, scr, gbt = row[0], row[1], row[3]
                g = relative_gain(pre[0], scr[0]) if pre and scr else float("nan")
                if np.isfinite(g):
                    gains.append(g)
                if pre and scr and gbt:
                    n += 1
                    wins_s += pre[0] > scr[0]
                    wins_g += pre[0] > gbt[0]
                out.append(f"| {cap} | {bud} | " + " | ".join(txt) + f" | {seeds} | {g:+.2f}% |")
            if gains:
                paper = " (paper: +6.87%)" if metric == "macro_f1" else ""
                out.append(f"\n{kind} ({title}): pretrained vs scratch **{np.mean(gains):+.2f}%** on average over "
                           f"{len(gains)} capture x budget cells{paper}; pretrained ahead of scratch "
                           f"in {wins_s}/{n} cells, ahead of the GBT in {wins_g}/{n}.")
    if skipped:
        out.append("\nSkipped budgets (no classifier can be trained or scored):\n")
        out.extend(f"- {c} {b}: {why}" for c, b, why in skipped)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# models


def capture_path(name: str, root: str = DATA) -> str:
    return os.path.join(root, FILES[name])


def loco_base(kind: str, target: str, cache: str, opts: dict, root: str = DATA) -> tuple[str, dict]:
    """The directory of ``kind`` pretrained with ``opts`` without ``target`` (made when missing)
    and its pretraining metrics."""
    from zeekml.scoring.detectors.base import verify_model_dir
    from zeekml.train.protocol import run_pretrain

    tag = "-".join(f"{k}{v}" for k, v in sorted(opts.items()))
    out = os.path.join(cache, f"{kind}-without-{target}-{tag}")
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out, verify_model_dir(out).get("metrics", {})
    others = [capture_path(c, root) for c in CAPTURES if c != target]
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    log.info("pretraining %s without %s on %d captures (%s)", kind, target, len(others), opts)
    metrics = run_pretrain(kind, others, tmp, seed=0, **opts)
    os.replace(tmp, out)            # a killed run leaves only .partial, never a half base
    log.info("pretrained %s without %s in %.0f s", kind, target, time.perf_counter() - t0)
    return out, metrics


def base_embedding(kind: str, base: str, table, flows) -> np.ndarray:
    """The frozen base's embedding of every conn of ``table``: gnn flow-node states, moe pooled
    (CLS, anchor) states, mae 64-d code."""
    if kind == "gnn":
        from zeekml.scoring.detectors.gnn import embed_rows, load_bundle

        bundle, _ = load_bundle(base)
        return embed_rows(bundle, table)
    if kind == "moe":
        from zeekml.scoring.detectors.token import LoadedTokenModel

        loaded = LoadedTokenModel.from_dir(base)
        return loaded.profile(loaded.tokens(table, flows), want=("embedding",))["embedding"]
    if kind == "mae":
        from zeekml.scoring.detectors.mae import LoadedMAE

        loaded = LoadedMAE.from_dir(base)
        return loaded.run(loaded.modalities(table, flows))["embedding"]
    raise ValueError(f"unknown kind {kind!r}")


def fit_tree(x: np.ndarray, y: list[str], seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    # the default min_samples_leaf=20 cannot split a 10-shot set at all (one leaf = a constant)
    leaf = max(2, min(20, len(y) // 20))
    return HistGradientBoostingClassifier(min_samples_leaf=leaf, class_weight="balanced",
                                          random_state=seed).fit(x, y)


def fit_probe(x: np.ndarray, y: list[str], seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                              random_state=seed)).fit(x, y)


def finetuned_proba(kind: str, base: str | None, table, flows, y: np.ndarray, rows: np.ndarray,
                    test: np.ndarray, seed: int, source: str,
                    settings: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """P(class) on ``test`` of ``kind`` finetuned (``base``) or trained from scratch (None) on
    ``rows`` through the library's trainer, as ``zeekml finetune`` would; ``settings`` are the
    finetune options (``--finetune``)."""
    from zeekml.train.registry import get_trainer

    trainer = get_trainer(kind)
    work = tempfile.mkdtemp(prefix=f"fewshot-{kind}-")
    try:
        out = os.path.join(work, "model")
        trainer.finetune(base, table, y, rows, hide_service=False, seed=seed, out=out, sources=[source],
                         label_field="label", flows=flows, **(settings or {}))
        pred = trainer.predict(out, table, flows=flows)
        return pred.proba[test], list(pred.classes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sklearn_proba(model, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    return model.predict_proba(x), [str(c) for c in model.classes_]


# ---------------------------------------------------------------------------------------------
# the run


def merge_runs(*files: list[dict]) -> list[dict]:
    """The runs of several result files, each (capture, kind, budget, seed, model) once (the
    first): runs of one capture split over processes each run the kind-free GBT."""
    seen, out = set(), []
    for runs in files:
        for r in runs:
            key = (r["capture"], r["kind"], r["budget"], r["seed"], r["model"])
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def load_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["runs"]


def save_results(path: str, meta: dict, runs: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from zeekml.features.flow_features import FlowFeaturizer
    from zeekml.features.modality import load_flow_table
    from zeekml.flows.select import ts_sort_key
    from zeekml.train.data import labels_of, load_conns, sample_shots, temporal_split

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    runs = load_results(args.out)
    done = {(r["capture"], r["kind"], r["budget"], r["seed"], r["model"]) for r in runs}
    meta = {"task": "malicious (label: Benign vs Malicious)", "pretrain": args.pretrain, "pretrain_seed": 0,
            "threads": args.threads, "fractions": list(args.fractions), "shots": args.shots,
            "finetune": args.finetune, "bases": {}}

    def record(rec: dict) -> None:
        runs.append(rec)
        log.info("%s", json.dumps(rec))
        save_results(args.out, meta, runs)

    for cap in args.captures:
        source = capture_path(cap, args.data)
        table = load_conns(source)
        flows = load_flow_table([source])
        y = binary_labels(labels_of(table, "label"))
        ts = ts_sort_key(table)
        share, test = temporal_split(table)
        test = labeled(test, y)
        y_test = [y[i] for i in test]
        budgets = [(budget_name(fraction=f), labeled(earliest_share(ts, share, f), y)) for f in args.fractions]
        meta.setdefault("captures", {})[cap] = {"conns": table.num_rows, "training_share": int(len(share)),
                                                "test": {c: y_test.count(c) for c in CLASSES}}
        why = skip_reason(list(CLASSES), y_test)
        if why:     # no budget can be scored: say so once, and pretrain nothing for it
            if (cap, "-", "all", None, "*") not in done:
                record({"capture": cap, "kind": "-", "budget": "all", "seed": None, "model": "*", "reason": why})
            continue
        # the tree's features are fitted on the training share only: the test conns stay unseen
        flow_x = FlowFeaturizer().fit(table.take(share)).transform(table)
        for kind in args.kinds:
            base, pmetrics = loco_base(kind, cap, args.cache, args.pretrain[kind], args.data)
            meta["bases"][f"{kind}/{cap}"] = {"dir": base, **{k: pmetrics.get(k) for k in (
                "seconds", "train_seconds", "epochs_run", "steps", "rows", "conns", "val_loss", "link_auroc")
                if k in pmetrics}}
            emb = None
            for seed in args.seeds:
                seed_budgets = budgets + [(budget_name(shots=args.shots), sample_shots(y, share, k=args.shots,
                                                                                      seed=seed))]
                for bud, rows in seed_budgets:
                    why = skip_reason([y[i] for i in rows], y_test)
                    if why:
                        if (cap, "-", bud, seed, "*") not in done:
                            done.add((cap, "-", bud, seed, "*"))
                            record({"capture": cap, "kind": "-", "budget": bud, "seed": seed, "model": "*",
                                    "reason": why, "train_rows": int(len(rows))})
                        continue
                    y_rows = [y[i] for i in rows]
                    for model in MODELS:
                        k = "-" if model == "gbt" else kind
                        if (cap, k, bud, seed, model) in done:
                            continue
                        t0 = time.perf_counter()
                        if model in ("pretrained", "scratch"):
                            proba, classes = finetuned_proba(kind, base if model == "pretrained" else None, table,
                                                             flows, y, rows, test, seed, source, args.finetune)
                        else:
                            if model != "gbt" and emb is None:
                                emb = base_embedding(kind, base, table, flows)
                            if model == "gbt":
                                proba, classes = sklearn_proba(fit_tree(flow_x[rows], y_rows, seed), flow_x[test])
                            elif model == "probe":
                                proba, classes = sklearn_proba(fit_probe(emb[rows], y_rows, seed), emb[test])
                            else:
                                both = np.hstack([flow_x, emb])
                                proba, classes = sklearn_proba(fit_tree(both[rows], y_rows, seed), both[test])
                        done.add((cap, k, bud, seed, model))
                        record({"capture": cap, "kind": k, "budget": bud, "seed": seed, "model": model,
                                **scores(y_test, proba, classes), "train_rows": int(len(rows)),
                                "train_malicious": int(y_rows.count(POSITIVE)),
                                "seconds": round(time.perf_counter() - t0, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captures", nargs="+", default=list(CAPTURES), choices=list(CAPTURES))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    ap.add_argument("--shots", type=int, default=SHOTS, help="shots per class of the k-shot budget (default 10)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=DATA, help="the labeled logs (default ../shared/data or $ZEEKML_DATA)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "zeekml-fewshot-bases"),
                    help="where the leave-one-capture-out bases are kept between runs")
    ap.add_argument("--pretrain", nargs="+", default=[], metavar="KIND:KEY=INT",
                    help="override a pretraining budget (default: %s)" % json.dumps(PRETRAIN).replace("%", "%%"))
    ap.add_argument("--finetune", nargs="+", default=[], metavar="KEY=VALUE",
                    help="finetune settings of the pretrained and scratch models (procedure=full, "
                         "ft_lr_scale=0.05: zeekml.train.common.LPFT); default: the library's")
    ap.add_argument("--out", default="docs/results/fewshot.json")
    ap.add_argument("--compare", nargs=2, default=None, metavar=("BEFORE", "AFTER"),
                    help="only print the before/after table of two result files (e.g. two finetune procedures)")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="only print the markdown tables of these result files (merged)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.compare:
        before, after = (load_results(p) for p in args.compare)
        print("\n".join(compare(before, after)))
        for metric in ("macro_f1", "auroc"):
            print(f"\n{metric}:\n")
            print("\n".join(compare_cells(before, after, metric)))
        return
    if args.report:
        runs = merge_runs(*(load_results(p) for p in args.report))
        if not runs:
            ap.error(f"no runs in {', '.join(args.report)}")
        print(render(runs))
        return
    for f in args.fractions:
        if not 0 < f <= 1:
            ap.error(f"--fractions: {f} is not in (0, 1]")
    try:
        args.pretrain = parse_pretrain(args.pretrain)
        args.finetune = parse_finetune(args.finetune)
    except ValueError as e:
        ap.error(str(e))
    if not os.path.isdir(args.data):
        ap.error(f"--data {args.data}: no such directory")
    run(args)


if __name__ == "__main__":
    main()

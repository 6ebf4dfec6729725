"""Learned detectors relative to the local baseline, and the shipped classifiers: AUROC and
average precision per detector and capture, beside a plain IsolationForest and a gradient-boosted
tree on the same split (issue 14 items 1 and 2). Run by hand; CPU, a few minutes:

    OMP_NUM_THREADS=1 python bench/detect_models.py --data ../shared/data --out /tmp/detect_models.json

Deployment setting: per capture, the baseline is the earliest half (by ts) of its benign conns
(``--baseline-share``); every other conn is scored (Background conns are context, not scored).
Per seed, each detector is fitted on a random half of the baseline, as ``zeekml score`` fits.

Rows printed per capture (mean +- std over ``--seeds``):

- ``<model>/raw``: the score the learned detectors had before issue 14 (reconstruction error,
  masked-token NLL: distance from the pretraining corpus; the same for every seed).
- ``<model>/knn``: mean cosine distance of the model's embedding to the 5 nearest baseline ones.
- ``<model>/zscore``: robust z-scores of per-part errors (modality, token field) against the
  baseline's, positive ones summed.
- ``gnn/knn``: the GNN detector as shipped (kNN over its flow embeddings; the whole baseline
  embedded in one graph, the fit half's embeddings cut from it, as ``GNNDetector.fit_split``).
- ``<model>/knn@N`` (``--max-reference N,...``): the kNN rows with the reference capped at ``N``
  baseline conns (a seeded draw, as ``KnnReference`` draws past its ``max_reference``): how
  detection depends on the reference size, the cost of the kNN being linear in it. Every
  capture's fit half is below the shipped cap (4,000; they hold 350-820 benign conns), so only
  caps below a capture's fit half change anything.
- ``iforest``: ``IsolationForestDetector`` fitted on the same half of the baseline.
- ``gbt-loco``: a gradient-boosted tree on the shared flow features, trained on the labels of
  every OTHER capture (leave-one-capture-out): a known-bad classifier without a learned model.
- ``classifier:<dir>`` (``--classifier DIR``, repeatable): a finetuned model directory through the
  ``classifier`` detector (probability of the malicious classes). Captures it was trained on are
  marked ``(trained on)`` from its manifest: those numbers are not held out.

Archive setting, for each ``--classifier`` (no baseline at all: the head's own verdict,
P(malicious) > 0.5): per capture, AUROC over every labeled conn, the share of malicious conns
flagged (recall) and of benign conns flagged (false-alert rate); and the share flagged of zat's
sample conn.log (2013 traffic of one ordinary host, unlabeled: presumed benign).

Labels: the captures' ``label`` column (Benign vs Malicious); ``SOURCES.md`` in the data folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from zeekml.features.flow_features import FlowFeaturizer
from zeekml.scoring.detectors.base import read_config, sha256_file
from zeekml.scoring.detectors.classifier import classifier_detector
from zeekml.scoring.detectors.iforest import IsolationForestDetector
from zeekml.scoring.detectors.reference import KnnReference, ZReference, knn_distance
from zeekml.scoring.registry import get_kind
from zeekml.train.data import labels_of, load_conns

log = logging.getLogger("detect_models")

# name -> path under --data (the labeled captures of SOURCES.md)
CAPTURES = {
    "iot23-34-1": "iot23-ctu-34-1/conn.log.labeled",
    "iot23-8-1": "iot23-csv-aucad/iot-23/CTU-Malware-Capture-8-1-labeled.csv",
    "iot23-21-1": "iot23-csv-aucad/iot-23/CTU-Malware-Capture-21-1-labeled.csv",
    "strat-008": "stratosphere-security-datasets-for-testing/008-zeek-mixed/data/conn.log.labeled",
    "strat-010": "stratosphere-security-datasets-for-testing/010-zeek-mixed/data/conn.log.labeled",
}
EMBEDDING_MODELS = ("mae-base", "moe-base", "dense-base")


def binary(labels: np.ndarray) -> np.ndarray:
    """1 = Malicious, 0 = Benign, -1 = anything else (Background, unlabeled)."""
    out = np.full(len(labels), -1, dtype=np.int8)
    for i, v in enumerate(labels):
        s = str(v).lower()
        if s.startswith("malicious"):
            out[i] = 1
        elif s.startswith("benign"):
            out[i] = 0
    return out


def deployment_split(table: pa.Table, y: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(baseline rows, scored rows), each in time order: the baseline is the earliest ``share``
    of the benign conns by ts; every other row is scored."""
    ts = np.nan_to_num(table.column("ts").to_numpy(zero_copy_only=False), nan=np.inf)
    order = np.argsort(ts, kind="stable")
    benign = order[y[order] == 0]
    base = np.sort(benign[:int(len(benign) * share)])
    rest = np.setdiff1d(order, base)
    rest = rest[np.argsort(ts[rest], kind="stable")]
    return order[np.isin(order, base)], rest


def fit_half(n: int, seed: int) -> np.ndarray:
    """A random half of the baseline, the rows a detector is fitted on here (zeekml fitted on
    such a half, and calibrated on the other, before it fitted and calibrated on the whole
    baseline out of sample: ``pipeline.fitted.calibration_scores``)."""
    idx = np.random.default_rng(seed).permutation(n)
    return idx if n < 200 else np.sort(idx[:n // 2])


def metrics(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = y >= 0
    if len(set(y[keep].tolist())) < 2:
        return float("nan"), float("nan")
    return float(roc_auc_score(y[keep], s[keep])), float(average_precision_score(y[keep], s[keep]))


def take(t: pa.Table, rows: np.ndarray) -> pa.Table:
    return t.take(pa.array(np.asarray(rows, dtype=np.int64)))


def gbt_loco(tables: dict, ys: dict, name: str, scored: pa.Table, seed: int) -> np.ndarray:
    """P(malicious) of a gradient-boosted tree trained on every other capture's labeled conns."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    train = [take(tables[c], np.flatnonzero(ys[c] >= 0)) for c in tables if c != name]
    y = np.concatenate([ys[c][ys[c] >= 0] for c in tables if c != name])
    feat = FlowFeaturizer()
    x = np.concatenate([feat.fit_transform(pa.concat_tables(train, promote_options="permissive"))])
    clf = HistGradientBoostingClassifier(random_state=seed, max_iter=200).fit(x, y)
    return clf.predict_proba(feat.transform(scored))[:, 1]


def trained_on(model_dir: str) -> set[str]:
    """sha256 of the files a model directory was trained on (its manifest)."""
    with open(os.path.join(model_dir, "manifest.json")) as f:
        return {d["sha256"] for d in json.load(f).get("training_data", [])}


def archive(args: argparse.Namespace, tables: dict, ys: dict, shas: dict) -> dict:
    """The classifiers on whole captures, no baseline: P(malicious) > 0.5 is an alert."""
    zat = os.path.join(args.data, "zat", "data", "conn.log")
    out: dict = {}
    print("\narchive setting (no baseline; alert = P(malicious) > 0.5)")
    print(f"  {'classifier':24s} {'capture':22s} {'AUROC':>6s} {'recall':>7s} {'false-alert':>11s}")
    for d in args.classifier:
        det = classifier_detector(d)
        name = os.path.basename(d.rstrip("/"))
        seen = trained_on(d)
        rows = {}
        for c, t in tables.items():
            s, y = det.score(t), ys[c]
            auroc, _ = metrics(y, s)
            rec = float((s[y == 1] > 0.5).mean()) if (y == 1).any() else float("nan")
            far = float((s[y == 0] > 0.5).mean()) if (y == 0).any() else float("nan")
            tag = c + (" (trained on)" if shas[c] in seen else "")
            rows[tag] = {"auroc": auroc, "recall": rec, "false_alert_rate": far,
                         "benign": int((y == 0).sum()), "malicious": int((y == 1).sum())}
            print(f"  {name:24s} {tag:22s} {auroc:6.3f} {rec:7.3f} {far:11.4f}")
        if os.path.exists(zat):
            s = det.score(load_conns([zat]))
            rows["zat-conn.log (unlabeled)"] = {"flagged": float((s > 0.5).mean()), "conns": len(s)}
            print(f"  {name:24s} {'zat conn.log (unlabeled)':22s} {'':6s} {'':7s} {(s > 0.5).mean():11.4f}")
        out[name] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(HERE), "..", "shared", "data"))
    ap.add_argument("--models", default=os.path.join(os.path.dirname(HERE), "models"))
    ap.add_argument("--captures", default=",".join(CAPTURES))
    ap.add_argument("--learned", default=",".join(EMBEDDING_MODELS + ("gnn-base",)),
                    help="shipped model directories to measure (comma list; '' = none)")
    ap.add_argument("--classifier", action="append", default=[], help="a classifier model dir")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--baseline-share", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="write every number as JSON here")
    ap.add_argument("--max-reference", default="",
                    help="comma list of kNN reference caps to measure beside the shipped one "
                         "(rows <model>/knn@N; '' = none)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    names = [c for c in args.captures.split(",") if c]
    tables, ys, shas = {}, {}, {}
    for c, rel in CAPTURES.items():         # every capture: the GBT trains on the others
        path = os.path.join(args.data, rel)
        tables[c] = load_conns([path])
        ys[c] = binary(labels_of(tables[c], "label"))
        shas[c] = sha256_file(path)
    learned = [m for m in args.learned.split(",") if m]
    try:
        caps = [int(c) for c in args.max_reference.split(",") if c.strip()]
    except ValueError:
        sys.exit(f"detect_models: --max-reference wants whole numbers, got {args.max_reference!r}")
    if any(c < 1 for c in caps):
        sys.exit("detect_models: --max-reference caps must be at least 1")
    results: dict = {"setting": {"baseline_share": args.baseline_share, "seeds": args.seeds,
                                 "max_reference": caps}, "captures": {}}
    for c in names:
        t, y = tables[c], ys[c]
        base_rows, rest_rows = deployment_split(t, y, args.baseline_share)
        base, scored, ys_ = take(t, base_rows), take(t, rest_rows), y[rest_rows]
        info = {"baseline": len(base_rows), "scored_benign": int((ys_ == 0).sum()),
                "scored_malicious": int((ys_ == 1).sum())}
        log.info("%s: baseline %d benign conns, scoring %d benign + %d malicious", c, info["baseline"],
                 info["scored_benign"], info["scored_malicious"])
        rows: dict[str, list[tuple[float, float]]] = {}

        def add(key: str, s: np.ndarray, rows: dict = rows, ys_: np.ndarray = ys_) -> None:
            rows.setdefault(key, []).append(metrics(ys_, s))

        fits = [fit_half(base.num_rows, seed) for seed in range(args.seeds)]
        info["fit_half"] = len(fits[0]) if fits else 0
        for seed, fi in enumerate(fits):
            add("iforest", IsolationForestDetector(seed=seed).fit(take(base, fi)).score(scored))
            add("gbt-loco", gbt_loco(tables, ys, c, scored, seed))
        for m in learned:
            d = os.path.join(args.models, m)
            kind = read_config(d)["kind"]
            det = get_kind(kind).detector(d)
            t0 = time.perf_counter()
            if kind == "gnn":
                e_scored = det._embed(scored)
                # as the detector fits (``GNNDetector.fit_split``): the whole baseline embedded
                # once, in its own graph, the fit half's rows cut from it
                e_base = det._reference_input(base)
                for seed, fi in enumerate(fits):
                    ref = e_base[fi]
                    add(f"{m}/knn", knn_distance(e_scored, ref[:4000], det.k))
                    for cap in caps:
                        add(f"{m}/knn@{cap}", KnnReference(k=det.k, max_reference=cap, seed=seed)
                            .fit(ref).score(e_scored))
                continue
            p = det.profile(scored)
            for seed, fi in enumerate(fits):
                pb = det.profile(take(base, fi))
                add(f"{m}/raw", p["raw"])
                add(f"{m}/knn", KnnReference(seed=seed).fit(pb["embedding"]).score(p["embedding"]))
                for cap in caps:
                    add(f"{m}/knn@{cap}", KnnReference(max_reference=cap, seed=seed)
                        .fit(pb["embedding"]).score(p["embedding"]))
                add(f"{m}/zscore", ZReference().fit(pb["parts"]).score(p["parts"]))
            log.info("%s %s: %.1f s", c, m, time.perf_counter() - t0)
        for d in args.classifier:
            det = classifier_detector(d)
            tag = " (trained on)" if shas[c] in trained_on(d) else ""
            for seed, fi in enumerate(fits):
                add(f"classifier:{os.path.basename(d.rstrip('/'))}{tag}", det.fit(take(base, fi)).score(scored))
        res = {k: {"auroc": [a for a, _ in v], "ap": [b for _, b in v]} for k, v in rows.items()}
        results["captures"][c] = info | {"detectors": res}
        print(f"\n{c}: baseline {info['baseline']} benign (fit half {info['fit_half']}), "
              f"scored {info['scored_benign']} benign + "
              f"{info['scored_malicious']} malicious")
        print(f"  {'detector':42s} {'AUROC':>15s} {'AP':>15s}")
        for k, v in res.items():
            print(f"  {k:42s} {np.mean(v['auroc']):7.3f} +-{np.std(v['auroc']):5.3f} "
                  f"{np.mean(v['ap']):7.3f} +-{np.std(v['ap']):5.3f}")
        sys.stdout.flush()
    if args.classifier:
        results["archive"] = archive(args, tables, ys, shas)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

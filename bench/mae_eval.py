"""Evaluate the multi-modal autoencoder's embedding against the raw concatenated features.

    OMP_NUM_THREADS=1 python bench/mae_eval.py --data /work/shared/data --work /tmp/mae_eval \
        --plots docs/results --json /tmp/mae_eval/results.json

Protocol (docs/models.md): every file is split by time; the earliest 70% of each file is the only data
any model learns from (the autoencoder is pretrained on it, labels ignored; classifiers are
trained on it, k shots per class or all of it); the latest 30% of each file is the test set.

1. Three tasks (service from everything but service and ports; IoT-23 detailed-label; label
   malicious vs benign): MLP, random forest and cosine kNN on the frozen 64-d embedding vs the same
   classifiers on the raw concatenated modality inputs, few-shot (10 per class, 3 seeds) and full;
   a gradient-boosted tree on the shared flow features beside them; macro-F1 and the size of
   each downstream classifier.
2. Cluster quality on the test set: silhouette (cosine, true labels) and ARI of k-means (k = number
   of classes) for embedding vs raw features; a t-SNE plot coloured by class.
3. Anomaly detection: reconstruction error vs IsolationForest (same training rows), AUROC and
   precision at 1% FPR, pretrained on all training rows and on benign training rows only.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zeekml.features.flow_features import FlowFeaturizer  # noqa: E402
from zeekml.scoring.detector import IsolationForestDetector  # noqa: E402
from zeekml.train.artifact import load_model_dir  # noqa: E402
from zeekml.train.data import labels_of, sample_shots  # noqa: E402
from zeekml.train.mae import KIND, LoadedMAE  # noqa: E402
from zeekml.train.metrics import binary_auroc, precision_at_fpr  # noqa: E402

from eval_data import DATA, FILES, TASKS, load_all  # noqa: E402  (bench/, the script's folder, is on sys.path)

log = logging.getLogger("mae_eval")

SHOTS = 10
SEEDS = (0, 1, 2)


def clf_size(model) -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    if isinstance(model, MLPClassifier):
        return int(sum(w.size for w in model.coefs_) + sum(b.size for b in model.intercepts_))
    if isinstance(model, RandomForestClassifier):
        return int(sum(e.tree_.node_count for e in model.estimators_))
    if isinstance(model, KNeighborsClassifier):
        return int(model.n_samples_fit_ * model.n_features_in_)
    if isinstance(model, HistGradientBoostingClassifier):
        return int(sum(p.nodes.shape[0] for row in model._predictors for p in row))
    return 0


def make(kind: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    if kind == "mlp":
        return MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=seed)
    if kind == "rf":
        return RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1,
                                      class_weight="balanced")
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=5, metric="cosine", weights="distance")
    if kind == "gbt":
        return HistGradientBoostingClassifier(max_iter=100, random_state=seed, class_weight="balanced")
    raise ValueError(kind)


def fit_score(kind: str, x: np.ndarray, y: np.ndarray, rows: np.ndarray, test: np.ndarray,
              seed: int) -> tuple[float, int]:
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x[rows])
    xtr, xte = sc.transform(x[rows]), sc.transform(x[test])
    if kind == "knn" and len(rows) < 5:
        return float("nan"), 0
    m = make(kind, seed)
    if kind == "knn":
        m.set_params(n_neighbors=min(5, len(rows)))
    m.fit(xtr, y[rows])
    pred = m.predict(xte)
    labels = sorted(set(y[test].tolist()))
    return float(f1_score(y[test], pred, labels=labels, average="macro", zero_division=0)), clf_size(m)


def tasks(table, train, test, loaded: LoadedMAE, out: dict, plots: str | None) -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    for task, (field, files) in TASKS.items():
        hide = field == "service"
        keep_files = [list(FILES).index(f) for f in files]
        in_task = np.isin(FILE_OF, keep_files)
        y = labels_of(table, field)
        if field == "label":
            y = np.array([v if v in ("Benign", "Malicious") else None for v in y], dtype=object)
        ok = np.array([v is not None for v in y]) & in_task
        tr = train[ok[train]]
        te = test[ok[test]]
        m = loaded.featurizer.transform(table, None, hide_service=hide)
        z = loaded.run(m)["embedding"]
        raw = m.concat()
        flow = FlowFeaturizer(hide_service=hide).fit(table.take(pa.array(tr))).transform(table)
        ys = np.array([str(v) for v in y], dtype=object)
        res = {"train_rows": int(len(tr)), "test_rows": int(len(te)),
               "classes": {c: int((ys[te] == c).sum()) for c in sorted(set(ys[te]))},
               "dims": {"embedding": int(z.shape[1]), "raw": int(raw.shape[1]), "flow": int(flow.shape[1])},
               "rows": []}
        for budget in ("10-shot", "full"):
            for feats, x in (("embedding", z), ("raw concat", raw)):
                for kind in ("mlp", "rf", "knn"):
                    t0 = time.perf_counter()
                    f1s, sizes = [], []
                    for seed in (SEEDS if budget == "10-shot" else (0,)):
                        rows = sample_shots(y, tr, k=SHOTS, seed=seed) if budget == "10-shot" else tr
                        f1, size = fit_score(kind, x, ys, rows, te, seed)
                        f1s.append(f1)
                        sizes.append(size)
                    res["rows"].append({"budget": budget, "features": feats, "clf": kind,
                                        "macro_f1": float(np.mean(f1s)), "macro_f1_std": float(np.std(f1s)),
                                        "size": int(np.mean(sizes)),
                                        "seconds": round(time.perf_counter() - t0, 1)})
                    log.info("%s %s %s %s: %.3f", task, budget, feats, kind, np.mean(f1s))
            f1s, sizes = [], []
            for seed in (SEEDS if budget == "10-shot" else (0,)):
                rows = sample_shots(y, tr, k=SHOTS, seed=seed) if budget == "10-shot" else tr
                f1, size = fit_score("gbt", flow, ys, rows, te, seed)
                f1s.append(f1)
                sizes.append(size)
            res["rows"].append({"budget": budget, "features": "flow features", "clf": "gbt",
                                "macro_f1": float(np.mean(f1s)), "macro_f1_std": float(np.std(f1s)),
                                "size": int(np.mean(sizes))})
        # cluster quality on (a sample of) the test rows
        rng = np.random.default_rng(0)
        sample = te if len(te) <= 4000 else np.sort(rng.choice(te, 4000, replace=False))
        k = len(set(ys[sample]))
        clusters = {}
        from sklearn.preprocessing import StandardScaler
        for feats, x in (("embedding", z), ("raw concat", raw)):
            xs = StandardScaler().fit(x[tr]).transform(x[sample])
            lab = KMeans(n_clusters=k, n_init=5, random_state=0).fit_predict(xs)
            clusters[feats] = {
                "silhouette_cosine_true_labels": float(silhouette_score(xs, ys[sample], metric="cosine"))
                if k > 1 else None,
                "ari_kmeans": float(adjusted_rand_score(ys[sample], lab)), "k": k}
        res["clusters"] = clusters
        out[task] = res
        if plots:
            plot_tsne(z, raw, ys, sample, task, plots)


def plot_tsne(z, raw, ys, sample, task, plots):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    pts = sample if len(sample) <= 2000 else np.sort(rng.choice(sample, 2000, replace=False))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    classes = sorted(set(ys[pts]), key=lambda c: -(ys[pts] == c).sum())
    for ax, (name, x) in zip(axes, (("64-d embedding", z), ("raw concatenated features", raw))):
        xy = TSNE(n_components=2, random_state=0, init="pca", perplexity=30).fit_transform(
            StandardScaler().fit_transform(x[pts]))
        for c in classes:
            sel = ys[pts] == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, label=f"{c} ({sel.sum()})", alpha=0.7)
        ax.set_title(f"t-SNE of {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(markerscale=3, fontsize=7, loc="best")
    fig.suptitle(f"{task}: test conns coloured by class")
    fig.tight_layout()
    fig.savefig(os.path.join(plots, f"mae_tsne_{task}.png"), dpi=100)
    plt.close(fig)


def anomaly(table, train, test, work: str, base_dir: str, epochs: int, out: dict,
            plots: str | None = None) -> None:
    y = labels_of(table, "label")
    labeled = np.array([v in ("Benign", "Malicious") for v in y])
    mal = np.array([v == "Malicious" for v in y])
    benign_train = train[labeled[train] & ~mal[train]]
    benign_dir = os.path.join(work, "mae-benign")
    if not os.path.exists(os.path.join(benign_dir, "manifest.json")):
        KIND.pretrain(table.take(pa.array(benign_train)), benign_dir, sources=[], seed=0, epochs=epochs)
    res = {}
    curves = []
    for setting, rows, d in (("all training rows", train, base_dir),
                             ("benign training rows", benign_train, benign_dir)):
        config, state = load_model_dir(d)
        loaded = LoadedMAE(config, state)
        score = loaded.run(loaded.featurizer.transform(table))["score"]
        iso = IsolationForestDetector(seed=0).fit(table.take(pa.array(rows)))
        iscore = iso.score(table)
        per = {}
        scopes = [("all labeled files", np.ones(len(y), bool))]
        scopes += [(name, FILE_OF == i) for i, name in enumerate(FILES) if name != "zat"]
        for scope, sel in scopes:
            te = test[labeled[test] & sel[test]]
            if mal[te].all() or (~mal[te]).all():
                continue
            per[scope] = {
                "test_rows": int(len(te)), "malicious_share": float(mal[te].mean()),
                "mae_auroc": binary_auroc(mal[te], score[te]),
                "mae_p_at_1pct_fpr": precision_at_fpr(mal[te], score[te], 0.01),
                "iforest_auroc": binary_auroc(mal[te], iscore[te]),
                "iforest_p_at_1pct_fpr": precision_at_fpr(mal[te], iscore[te], 0.01),
            }
        res[setting] = {"train_rows": int(len(rows)), "scopes": per}
        te = test[labeled[test]]
        curves.append((setting, mal[te], score[te], iscore[te]))
    out["anomaly"] = res
    if plots:
        plot_roc(curves, os.path.join(plots, "mae_anomaly_roc.png"))


def plot_roc(curves, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.5))
    for ax, (setting, y, s_mae, s_if) in zip(np.atleast_1d(axes), curves):
        for name, sc in (("mae reconstruction error", s_mae), ("IsolationForest", s_if)):
            fpr, tpr, _ = roc_curve(y, sc)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, sc):.3f})")
        ax.plot([0, 1], [0, 1], ls="--", c="grey")
        ax.set_xlabel("false positive rate (benign flagged)")
        ax.set_ylabel("true positive rate (malicious flagged)")
        ax.set_title(f"trained on {setting}")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("malicious vs benign, latest 30% of the five labeled files")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--work", default="/tmp/mae_eval")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--plots", default=None, help="Directory for mae_tsne_*.png.")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-tasks", action="store_true", help="Only the anomaly comparison.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    global FILE_OF
    t0 = time.perf_counter()
    table, FILE_OF, train, test = load_all(args.data)
    os.makedirs(args.work, exist_ok=True)
    base_dir = os.path.join(args.work, "mae-train70")
    if not os.path.exists(os.path.join(base_dir, "manifest.json")):
        metrics = KIND.pretrain(table.take(pa.array(train)), base_dir, sources=[], seed=0, epochs=args.epochs)
        log.info("pretrained: %s", {k: v for k, v in metrics.items() if k != "loss_by_epoch"})
    config, state = load_model_dir(base_dir)
    loaded = LoadedMAE(config, state)
    out: dict = {"pretrain": {"rows": int(len(train)), "n_params": config["n_params"],
                              "epochs": args.epochs, "seq_source": config["seq_source"]}}
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
    if not args.skip_tasks:
        tasks(table, train, test, loaded, out, args.plots)
    anomaly(table, train, test, args.work, base_dir, args.epochs, out, args.plots)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


FILE_OF = np.zeros(0)

if __name__ == "__main__":
    main()

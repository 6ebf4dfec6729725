"""Detection benchmark (issue 14 item 5): leave-one-capture-out over every labeled capture of
``../shared/data`` (IoT-23 CTU-34-1, 8-1, 21-1; Stratosphere CTU-Normal 008 and 010).

Two settings per capture:

- **deployment**: a clean baseline, the capture's benign conns among its earliest
  ``--clean-share`` by time (``zeekml score REST --baseline CLEAN``); the rest is scored.
- **archive**: the defaults, no clean period (``zeekml score CAPTURE``): the baseline is the
  earliest 30% of the capture, whatever it holds, and every conn is scored.

For each: per-detector AUROC and average precision of the raw scores (Malicious = 1, Benign = 0;
Background and unlabeled conns left out), the combined score's, alert precision/recall, false
alerts per host per day and the realised false-alert rate on the benign scored conns, with the
thresholds of the combined calibration (``scoring.calibrate.calibrate_combined``, what zeekml
runs) and of the union bound (``fpr / n`` per detector, what it ran before), side by side; in
the deployment setting a random third of the clean baseline is held out of fitting and
calibration, and the alert rate on it is the calibration's own false-alert rate.
Beside them, on the same rows: a plain IsolationForest (scikit-learn defaults on the flow
features, fitted on the scored conns themselves: no baseline) and a gradient-boosted tree
(``HistGradientBoostingClassifier`` on the flow features, trained on the labeled conns of the
other captures; alerts at probability 0.5).

``--classifier DIR`` adds a finetuned known-bad classifier (``zeekml score --models DIR``
beside the shipped models). Its threshold follows each rule of
``scoring.calibrate.CUT_RULES`` side by side: ``combined`` is what zeekml runs
(``CUT_RULE``: the trained cut when ``pipeline.fitted.baseline_infection`` fires), ``cut_min``
(always the lower of the trained cut and the baseline quantile) and ``cut_never`` (always the
baseline quantile: before issue 14's cut); each scheme also reports the classifier's own alerts.

Usage (numbers and plots in docs/results/detection.md)::

    OMP_NUM_THREADS=1 python bench/detect_eval.py --out docs/results
    OMP_NUM_THREADS=1 python bench/detect_eval.py --no-models --out /tmp/x   # IsolationForest only
    OMP_NUM_THREADS=1 python bench/detect_eval.py --models /tmp/m --out /tmp/y  # other model dirs
    OMP_NUM_THREADS=1 python bench/detect_eval.py --seed 1 --out /tmp/de1 --scores /tmp/de1/scores
    OMP_NUM_THREADS=1 python bench/detect_eval.py --gnn-k 10 --seed 1 --out /tmp/k10/s1   # another k
    python bench/detect_eval.py --markdown docs/results/detection.json      # the doc's tables
    python bench/detect_eval.py --compare /tmp/before /tmp/after   # runs in DIR/s<seed>, side by side
    python bench/detect_eval.py --compare /tmp/before /tmp/after --compare-detector gnn

``--scores DIR`` keeps each capture's and setting's per-conn scores and labels
(``save_scores``) for ``bench/combine_eval.py``, which evaluates rules for combining the
detectors offline; ``--seed`` draws the held-out third of the clean baseline
and seeds the IsolationForests.

``--gnn-k K`` scores the ``gnn`` detector with ``K`` nearest baseline neighbours instead of its
default (``GNNDetector``'s ``k``), to compare ``k`` over seeds; ``--compare-detector NAME`` (with
``--compare``) prints one detector's AUROC per capture and setting, mean and range over the seeds,
before and after. ``--gnn-features W`` gives the gnn detector each conn's own flow features
beside its embedding (``FeaturesBeside``: standardised by the baseline's statistics, at weight
``W`` of the embedding's norm).

``--max-conns N`` keeps each capture's earliest N conns by time (a quicker run; say so when
quoting it). Reads ``$ZEEKML_DATA`` (default ``../shared/data``); never reads the holdout.
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
sys.path.insert(0, HERE)

from eval_data import DATA, FILES  # noqa: E402

from zeekml._core.errors import ZeekmlError  # noqa: E402
from zeekml.features.flow_features import FlowFeaturizer  # noqa: E402
from zeekml.flows.select import earliest_rows, ts_sort_key  # noqa: E402
from zeekml.pipeline.fitted import (baseline_infection, baseline_judge,  # noqa: E402
                                    build_detectors, calibration_scores, check_baseline_size,
                                    is_known_bad)
from zeekml.pipeline.options import ScoreOptions  # noqa: E402
from zeekml.scoring.calibrate import CUT_RULE, ThresholdCalibrator, calibrate_with_cuts  # noqa: E402
from zeekml.train.data import labels_of, load_conns  # noqa: E402

log = logging.getLogger("detect_eval")

CAPTURES = ["ctu-34-1", "ctu-8-1", "ctu-21-1", "strato-008", "strato-010"]
DAY = 86400.0


def load(name: str, max_conns: int | None) -> tuple[pa.Table, np.ndarray]:
    """The capture's conns by time (earliest ``max_conns``) and labels: 1 Malicious, 0 Benign,
    -1 anything else (Background, unlabeled)."""
    t = load_conns(os.path.join(DATA, FILES[name]))
    order = np.argsort(ts_sort_key(t), kind="stable")
    if max_conns:
        order = order[:max_conns]
    t = t.take(pa.array(order))
    lab = labels_of(t, "label")
    y = np.array([1 if str(v).lower().startswith("malicious") else
                  0 if str(v).lower().startswith("benign") else -1 for v in lab])
    return t, y


def ranking(scores: np.ndarray, y: np.ndarray) -> dict:
    """AUROC and average precision on the labeled rows (None when one class is missing)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = (y >= 0) & np.isfinite(scores)
    yy, s = y[keep], scores[keep]
    if len(np.unique(yy)) < 2:
        return {"auroc": None, "ap": None}
    return {"auroc": float(roc_auc_score(yy, s)), "ap": float(average_precision_score(yy, s))}


def alert_metrics(alert: np.ndarray, y: np.ndarray, hosts: np.ndarray, ts: np.ndarray) -> dict:
    """Precision/recall of the alerts over labeled conns, false alerts per host per day, and the
    realised false-alert rate on benign conns."""
    tp = int((alert & (y == 1)).sum())
    fp = int((alert & (y == 0)).sum())
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    finite = ts[np.isfinite(ts)]
    days = max((finite.max() - finite.min()) / DAY, 1 / 24) if len(finite) else 1.0
    n_hosts = max(len(set(hosts.tolist())), 1)
    return {"alerts": int(alert.sum()), "tp": tp, "fp": fp, "malicious": pos, "benign": neg,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / pos if pos else None,
            "benign_alert_rate": fp / neg if neg else None,
            "false_alerts_per_host_day": fp / n_hosts / days, "hosts": n_hosts, "days": days}


def flow_x(featurizer: FlowFeaturizer, t: pa.Table, fit: bool = False) -> np.ndarray:
    return featurizer.fit_transform(t) if fit else featurizer.transform(t)


def save_scores(path: str, y: np.ndarray, cal: dict, test: dict, hold: dict,
                calibrated: dict[str, dict]) -> None:
    """Per-conn scores of one setting of one capture, for evaluating combination rules offline
    (``bench/combine_eval.py``): ``y`` (labels of the scored conns, as ``load``), per detector
    ``cal/NAME`` (raw scores of the calibration half), ``test/NAME`` (raw, scored conns),
    ``hold/NAME`` (raw, held-out clean conns; deployment only) and ``calibrated/SCHEME/NAME``
    (the scored conns' calibrated scores under each threshold scheme)."""
    arrays = {"y": y}
    for prefix, d in (("cal", cal), ("test", test), ("hold", hold)):
        arrays |= {f"{prefix}/{k}": v for k, v in d.items()}
    for scheme, d in calibrated.items():
        arrays |= {f"calibrated/{scheme}/{k}": v for k, v in d.items()}
    np.savez_compressed(path, **arrays)


# --gnn-features: each flow feature is standardised by the baseline's mean and std, the std
# floored at this share of the mean std over the features (a column the baseline never varies,
# a port it never used, would otherwise divide by zero)
FEATURE_FLOOR = 0.1


class FeaturesBeside:
    """A kNN reference over ``[embedding, scale * z]``: ``z`` the conn's own flow features (the
    model's scaling) standardised by the baseline's statistics (``FEATURE_FLOOR``), ``scale`` set
    at ``fit`` so that the features hold ``weight**2`` of the embedding's mean square norm.
    Delegates to ``inner`` (a ``KnnReference``), so ``fit_split``'s held-out scoring and the
    explanations run as they do for the embedding alone. Input rows: ``[embedding, features]``
    (``hidden`` embedding columns first)."""

    kind = "knn"

    def __init__(self, inner, hidden: int, weight: float, floor: float = FEATURE_FLOOR):
        self.inner, self.hidden, self.weight, self.floor = inner, hidden, weight, floor
        self.mean = self.std = None
        self.scale = 0.0

    @property
    def ref(self):
        return self.inner.ref

    @property
    def rows(self):
        return self.inner.rows

    def _t(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float32)
        z = ((v[:, self.hidden:] - self.mean) / self.std * self.scale).astype(np.float32)
        return np.hstack([v[:, :self.hidden], z])

    def fit(self, v: np.ndarray) -> FeaturesBeside:
        v = np.asarray(v, dtype=np.float32)
        if len(v) == 0:
            raise ZeekmlError("the baseline gave no conn to compare against")
        x = v[:, self.hidden:].astype(np.float64)
        sd = x.std(axis=0)
        self.mean = x.mean(axis=0).astype(np.float32)
        self.std = (sd + self.floor * max(sd.mean(), 1e-12)).astype(np.float32)
        self.scale = 1.0
        z = self._t(v)[:, self.hidden:].astype(np.float64)
        e = v[:, :self.hidden].astype(np.float64)
        self.scale = float(self.weight * np.sqrt((e ** 2).sum(1).mean() / max((z ** 2).sum(1).mean(), 1e-12)))
        self.inner.fit(self._t(v))
        return self

    def score(self, v: np.ndarray) -> np.ndarray:
        return self.inner.score(self._t(v))

    def held_out_differs(self, fit_rows: np.ndarray) -> np.ndarray:
        return self.inner.held_out_differs(fit_rows)

    def score_held_out(self, v: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
        return self.inner.score_held_out(self._t(v), fit_rows)

    def nearest(self, v: np.ndarray, k: int):
        return self.inner.nearest(self._t(v), k)

    def nearest_q99(self) -> float:
        return self.inner.nearest_q99()


def gnn_variant(det, k: int | None, features: float | None):
    """The gnn detector ``det`` with ``k`` neighbours (its own when None) and, with ``features``,
    its conns' flow features beside their embeddings (``FeaturesBeside`` at that weight)."""
    from zeekml.scoring.detectors.gnn import GNNDetector
    from zeekml.scoring.detectors.reference import MAX_REFERENCE, KnnReference

    k = det.k if k is None else k
    if features is None:
        return GNNDetector(det.bundle, k=k, device=det.device, seed=det.seed)

    class GNNWithFeatures(GNNDetector):
        def _embed(self, table: pa.Table, rows: np.ndarray | None = None, one_graph: bool = False,
                   live: bool = False) -> np.ndarray:
            e = super()._embed(table, rows, one_graph, live)
            x = self.bundle.features(table, None if rows is None else np.asarray(rows, dtype=np.int64))
            return np.hstack([e, x.astype(np.float32)])

    out = GNNWithFeatures(det.bundle, k=k, device=det.device, seed=det.seed)
    out.reference = FeaturesBeside(KnnReference(k, MAX_REFERENCE, det.seed), det.bundle.model.cfg.hidden, features)
    return out


def with_gnn_k(dets: list, k: int | None, features: float | None = None) -> list:
    """``dets`` with the ``gnn`` detector rebuilt to average ``k`` neighbours and, with
    ``features``, to compare flow features beside the embedding (``gnn_variant``); ``dets`` as
    they are when both are None. A run without a gnn detector cannot take ``--gnn-k`` or
    ``--gnn-features``."""
    if k is None and features is None:
        return dets
    from zeekml.scoring.detectors.gnn import GNNDetector

    if not any(isinstance(d, GNNDetector) for d in dets):
        raise ZeekmlError("--gnn-k/--gnn-features: the run has no gnn detector")
    return [gnn_variant(d, k, features) if isinstance(d, GNNDetector) else d for d in dets]


def evaluate(base: pa.Table, scored: pa.Table, y: np.ndarray, opts: ScoreOptions,
             gbt_p: np.ndarray, heldout: bool = False, classifiers: tuple[str, ...] = (),
             save: str | None = None, gnn_k: int | None = None,
             gnn_features: float | None = None) -> dict:
    """Fit the detectors on ``base`` and calibrate on it out of sample, score ``scored``; with
    ``heldout``, a random third of ``base`` is held out first and its alert rate measured.
    ``save``: an ``.npz`` path for the per-conn scores (``save_scores``); ``gnn_k``, ``gnn_features``:
    the gnn detector's neighbours and feature weight (``with_gnn_k``)."""
    from sklearn.ensemble import IsolationForest

    out: dict = {"baseline_conns": base.num_rows, "scored_conns": scored.num_rows,
                 "scored_malicious": int((y == 1).sum()), "scored_benign": int((y == 0).sum())}
    held = np.zeros(0, dtype=np.int64)
    if heldout:
        # a random third of the clean baseline is kept out of fitting and calibration: the
        # false-alert rate on it measures the calibration itself (same distribution), while the
        # later benign conns of the scored set add drift
        perm = np.random.default_rng(opts.seed + 1).permutation(base.num_rows)
        held, keep = np.sort(perm[: base.num_rows // 3]), np.sort(perm[base.num_rows // 3:])
        held_t, base = base.take(pa.array(held)), base.take(pa.array(keep))
        out["heldout_clean_conns"] = len(held)
    try:
        out["baseline_warning"] = check_baseline_size(base.num_rows, opts.fpr)
    except ZeekmlError as e:   # zeekml would refuse this run; the numbers are still measured
        out["baseline_warning"] = "REFUSED: " + e.message
    dets = with_gnn_k(build_detectors(opts.detectors, opts.seed, opts.models_dir, opts.device), gnn_k,
                      gnn_features)
    if classifiers:
        from zeekml.scoring.registry import classifier_detector

        dets += [classifier_detector(d, opts.device) for d in classifiers]
    cal, test, per, hold = {}, {}, {}, {}
    for det in dets:
        t0 = time.perf_counter()
        # as zeekml fits and calibrates (``pipeline.fitted.fit_calibrate``): fitted on the whole
        # baseline, each baseline conn scored out of sample
        cal[det.name] = np.asarray(calibration_scores([det], base)[0][det.name], dtype=np.float64)
        test[det.name] = np.asarray(det.score(scored), dtype=np.float64)
        if len(held):
            hold[det.name] = np.asarray(det.score(held_t), dtype=np.float64)
        per[det.name] = ranking(test[det.name], y) | {"seconds": time.perf_counter() - t0}
        log.info("  %s: %s", det.name, per[det.name])
    out["detectors"] = per
    hosts = np.asarray(scored.column("id.orig_h").to_pylist(), dtype=object)
    ts = ts_sort_key(scored)
    n = len(dets)
    # the baseline check zeekml runs: the run's known-bad detectors, else the shipped committee
    # on a random draw of the baseline (pipeline.fitted.baseline_judge)
    check: dict = {}
    judge = None if any(is_known_bad(d) for d in dets) else baseline_judge(opts, check)
    infection = baseline_infection(base, dets, judge, opts.seed, check)
    out["baseline_infected"] = infection
    out["baseline_check"] = check
    cuts = {d.name: d.trained_cut for d in dets if is_known_bad(d) and getattr(d, "trained_cut", None)}
    clf_names = [d.name for d in dets if is_known_bad(d)]
    infected = infection is not None
    schemes = {"combined": calibrate_with_cuts(cal, opts.fpr, cuts, infected, CUT_RULE)[0].calibrators,
               "union_bound": {k: ThresholdCalibrator(fpr=opts.fpr / n).fit(v) for k, v in cal.items()}}
    if cuts:
        for rule in ("min", "never"):
            schemes[f"cut_{rule}"] = calibrate_with_cuts(cal, opts.fpr, cuts, infected, rule)[0].calibrators
    out["calibration"] = {}
    if save:
        save_scores(save, y, cal, test, hold,
                    {scheme: {k: cals[k].calibrate(v) for k, v in test.items()}
                     for scheme, cals in schemes.items()})
    for scheme, cals in schemes.items():
        comb = np.max(np.stack([np.nan_to_num(cals[k].calibrate(test[k]), nan=-np.inf)
                                for k in test]), axis=0)
        cal_comb = np.max(np.stack([np.nan_to_num(cals[k].calibrate(cal[k]), nan=-np.inf)
                                    for k in cal]), axis=0)
        held_rate = None
        if hold:
            held_comb = np.max(np.stack([np.nan_to_num(cals[k].calibrate(hold[k]), nan=-np.inf)
                                         for k in hold]), axis=0)
            held_rate = float((held_comb >= 1.0).mean())
        out["calibration"][scheme] = {
            "per_detector_quantile": next(iter(cals.values())).fpr,
            "calibration_alert_rate": float((cal_comb >= 1.0).mean()),
            "heldout_clean_alert_rate": held_rate,
            "combined": ranking(comb, y),
            **alert_metrics(comb >= 1.0, y, hosts, ts)}
        for name in clf_names:
            # the classifier's own alerts under this scheme (the rest of the ensemble aside)
            own = np.nan_to_num(cals[name].calibrate(test[name]), nan=-np.inf) >= 1.0
            m = alert_metrics(own, y, hosts, ts)
            out["calibration"][scheme].setdefault("classifier", {})[name] = {
                "threshold": cals[name].threshold, "trained_cut": cals[name].center == 0.0 and name in cuts
                and cals[name].threshold == cuts[name]["cut"],
                **{k: m[k] for k in ("alerts", "tp", "fp", "precision", "recall", "benign_alert_rate")}}
    x_scored = flow_x(FlowFeaturizer(), scored, fit=True)
    plain = -IsolationForest(random_state=opts.seed).fit(x_scored).score_samples(x_scored)
    out["plain_iforest"] = ranking(plain, y)
    out["gbt"] = ranking(gbt_p, y) | alert_metrics(gbt_p >= 0.5, y, hosts, ts)
    return out


def gbt_scores(captures: dict, name: str, seed: int) -> np.ndarray:
    """P(malicious) of every conn of ``name`` from a tree trained on the other captures."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    feat = FlowFeaturizer()
    train = [(t, y) for other, (t, y) in captures.items() if other != name]
    xs, ys = [], []
    feat.fit_transform(pa.concat_tables([t for t, _ in train]))
    for t, y in train:
        keep = np.flatnonzero(y >= 0)
        xs.append(feat.transform(t.take(pa.array(keep))))
        ys.append(y[keep])
    clf = HistGradientBoostingClassifier(random_state=seed).fit(np.concatenate(xs), np.concatenate(ys))
    t, _ = captures[name]
    return clf.predict_proba(feat.transform(t))[:, 1]


def scores_path(args: argparse.Namespace, capture: str, setting: str) -> str | None:
    """Where ``--scores DIR`` keeps a setting's per-conn scores (None without it)."""
    if not args.scores:
        return None
    os.makedirs(args.scores, exist_ok=True)
    return os.path.join(args.scores, f"{capture}.{setting}.npz")


def run(args: argparse.Namespace) -> dict:
    opts = ScoreOptions(fpr=args.fpr, seed=args.seed,
                        models_dir=None if args.no_models else (args.models or ""))
    clfs = tuple(args.classifier or ())
    # every capture is read: the tree of a scored capture trains on all the others, whichever
    # --captures are scored
    captures = {name: load(name, args.max_conns) for name in CAPTURES}
    results: dict = {"fpr": args.fpr, "clean_share": args.clean_share, "max_conns": args.max_conns,
                     "models": not args.no_models, "models_dir": args.models, "classifiers": list(clfs),
                     "gnn_k": args.gnn_k, "gnn_features": args.gnn_features,
                     "captures": {}}
    for name in args.captures:
        t, y = captures[name]
        log.info("%s: %d conns (%d malicious, %d benign)", name, t.num_rows, (y == 1).sum(),
                 (y == 0).sum())
        p = gbt_scores(captures, name, args.seed)
        early = earliest_rows(ts_sort_key(t), args.clean_share)
        clean = early[y[early] == 0]
        rest = np.setdiff1d(np.arange(t.num_rows), clean)
        r = {"conns": t.num_rows, "malicious": int((y == 1).sum()), "benign": int((y == 0).sum())}
        t0 = time.perf_counter()
        log.info(" deployment: %d clean baseline conns, %d scored", len(clean), len(rest))
        r["deployment"] = evaluate(t.take(pa.array(clean)), t.take(pa.array(rest)), y[rest], opts,
                                   p[rest], heldout=True, classifiers=clfs,
                                   save=scores_path(args, name, "deployment"), gnn_k=args.gnn_k,
                                   gnn_features=args.gnn_features)
        base = earliest_rows(ts_sort_key(t), 0.3, min_rows=1)
        log.info(" archive: %d baseline conns (%d malicious), all scored", len(base),
                 (y[base] == 1).sum())
        r["archive"] = evaluate(t.take(pa.array(base)), t, y, opts, p, classifiers=clfs,
                                save=scores_path(args, name, "archive"), gnn_k=args.gnn_k,
                                gnn_features=args.gnn_features)
        r["archive"]["baseline_malicious"] = int((y[base] == 1).sum())
        r["seconds"] = time.perf_counter() - t0
        results["captures"][name] = r
    results["pooled"] = pooled(results["captures"])
    return results


def pooled(caps: dict) -> dict:
    """Alert precision/recall and benign alert rate summed over captures, per setting/scheme
    (and per classifier's own alerts, ``<setting>/<scheme>/<classifier>``)."""
    out = {}
    first = next(iter(caps.values()))
    for setting in ("deployment", "archive"):
        schemes = list(first[setting]["calibration"]) + ["gbt"]
        for scheme in schemes:
            tp = fp = pos = neg = 0
            for r in caps.values():
                m = r[setting]["gbt"] if scheme == "gbt" else r[setting]["calibration"][scheme]
                tp, fp, pos, neg = tp + m["tp"], fp + m["fp"], pos + m["malicious"], neg + m["benign"]
            out[f"{setting}/{scheme}"] = {
                "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / pos if pos else None,
                "benign_alert_rate": fp / neg if neg else None, "tp": tp, "fp": fp}
            if scheme == "gbt":
                continue
            for name in first[setting]["calibration"][scheme].get("classifier", {}):
                tp = fp = 0
                for r in caps.values():
                    m = r[setting]["calibration"][scheme]["classifier"][name]
                    tp, fp = tp + m["tp"], fp + m["fp"]
                out[f"{setting}/{scheme}/{name}"] = {
                    "precision": tp / (tp + fp) if tp + fp else None,
                    "recall": tp / pos if pos else None,
                    "benign_alert_rate": fp / neg if neg else None, "tp": tp, "fp": fp}
    for scheme in ("combined", "union_bound"):
        n = sum(r["deployment"]["heldout_clean_conns"] for r in caps.values())
        fp = sum(r["deployment"]["heldout_clean_conns"] *
                 r["deployment"]["calibration"][scheme]["heldout_clean_alert_rate"]
                 for r in caps.values())
        out[f"deployment/{scheme}"]["heldout_clean_alert_rate"] = fp / n if n else None
    return out


def plot(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = list(results["captures"])
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, setting in zip(axes, ("deployment", "archive")):
        names = list(results["captures"][caps[0]][setting]["detectors"])
        series = {n: [results["captures"][c][setting]["detectors"][n]["auroc"] for c in caps]
                  for n in names}
        series["combined"] = [results["captures"][c][setting]["calibration"]["combined"]["combined"]
                              ["auroc"] for c in caps]
        series["plain IF"] = [results["captures"][c][setting]["plain_iforest"]["auroc"] for c in caps]
        series["GBT (other captures)"] = [results["captures"][c][setting]["gbt"]["auroc"]
                                          for c in caps]
        w = 0.8 / len(series)
        for i, (n, v) in enumerate(series.items()):
            ax.bar(np.arange(len(caps)) + i * w, [np.nan if x is None else x for x in v], w,
                   label=n)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xticks(np.arange(len(caps)) + 0.4 - w / 2, caps, rotation=20)
        ax.set_title(f"{setting}: AUROC per capture")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(out_dir, "detection_auroc.png")
    fig.savefig(p, dpi=110)
    paths.append(p)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = [(scheme, key) for key in ("heldout_clean_alert_rate", "benign_alert_rate")
            for scheme in ("combined", "union_bound")]
    for k, (scheme, key) in enumerate(bars):
        v = [results["captures"][c]["deployment"]["calibration"][scheme][key] for c in caps]
        ax.bar(np.arange(len(caps)) + 0.2 * k, [np.nan if x is None else max(x, 1e-4) for x in v],
               0.2, label=f"{scheme}, {'held-out clean' if key.startswith('held') else 'later benign'}")
    ax.axhline(results["fpr"], color="k", ls="--", lw=1, label="--fpr")
    ax.axhline(2 * results["fpr"], color="r", ls=":", lw=1, label="2x --fpr")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(caps)) + 0.3, caps, rotation=20)
    ax.set_title("deployment: false-alert rate (held-out clean baseline, later benign conns)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "detection_fpr.png")
    fig.savefig(p, dpi=110)
    paths.append(p)
    plt.close(fig)
    return paths


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    """The tables docs/results/detection.md quotes, from a run's ``detection.json``."""
    caps = results["captures"]
    names = sorted(next(iter(caps.values()))["deployment"]["detectors"])
    out = []
    for setting in ("deployment", "archive"):
        out.append(f"### {setting}: AUROC / AP\n")
        base = "baseline conns" + (" (malicious)" if setting == "archive" else "")
        out.append(f"| capture | {base} | scored malicious / benign | " + " | ".join(names)
                   + " | combined | plain IF | GBT |")
        out.append("|---" * (5 + len(names)) + "|---|")
        for cap in sorted(caps):
            r = caps[cap][setting]
            comb = r["calibration"]["combined"]["combined"]
            n = f"{r['baseline_conns']:,}" + (f" ({r['baseline_malicious']:,})" if setting == "archive" else "")
            cells = [f"{_f(r['detectors'][k]['auroc'])} / {_f(r['detectors'][k]['ap'])}" for k in names]
            out.append(f"| {cap} | {n} | {r['scored_malicious']:,} / {r['scored_benign']:,} | " + " | ".join(cells)
                       + f" | {_f(comb['auroc'])} / {_f(comb['ap'])} | {_f(r['plain_iforest']['auroc'])} / "
                       f"{_f(r['plain_iforest']['ap'])} | {_f(r['gbt']['auroc'])} / {_f(r['gbt']['ap'])} |")
        out.append(f"\n### {setting}: alerts (combined calibration; GBT at p >= 0.5)\n")
        out.append("| capture | q | alerts | precision | recall | false-alert rate on benign scored conns | "
                   "held-out clean conns alerted | false alerts / host / day | GBT precision / recall | "
                   "union bound: precision / recall / benign rate |")
        out.append("|---" * 10 + "|")
        for cap in sorted(caps):
            r = caps[cap][setting]
            c, u, g = r["calibration"]["combined"], r["calibration"]["union_bound"], r["gbt"]
            out.append(f"| {cap} | {c['per_detector_quantile']:.4f} | {c['alerts']:,} | {_f(c['precision'])} | "
                       f"{_f(c['recall'])} | {_f(c['benign_alert_rate'], 4)} | "
                       f"{_f(c.get('heldout_clean_alert_rate'), 4)} | {_f(c['false_alerts_per_host_day'], 2)} | "
                       f"{_f(g['precision'])} / {_f(g['recall'])} | {_f(u['precision'])} / {_f(u['recall'])} / "
                       f"{_f(u['benign_alert_rate'], 4)} |")
        p, g, u = (results["pooled"][f"{setting}/{k}"] for k in ("combined", "gbt", "union_bound"))
        out.append(f"| **pooled** | | | **{_f(p['precision'])}** | **{_f(p['recall'])}** | "
                   f"{_f(p['benign_alert_rate'], 4)} | {_f(p.get('heldout_clean_alert_rate'), 4)} | | "
                   f"{_f(g['precision'])} / {_f(g['recall'])} | {_f(u['precision'])} / {_f(u['recall'])} / "
                   f"{_f(u['benign_alert_rate'], 4)} |\n")
    out.append("### baseline check (the shipped committee on a random draw of the baseline)\n")
    out.append("| capture | setting | baseline conns | judged | flagged | share | warned |")
    out.append("|---" * 7 + "|")
    for cap in sorted(caps):
        for setting in ("deployment", "archive"):
            r = caps[cap][setting]
            c = r.get("baseline_check") or {}
            if "conns" not in c:
                continue
            out.append(f"| {cap} | {setting} | {r['baseline_conns']:,} | {c['conns']:,} | {c['flagged']:,} | "
                       f"{c['flagged'] / max(c['conns'], 1):.3f} | {'yes' if r['baseline_infected'] else 'no'} |")
    return "\n".join(out)


def seed_runs(d: str) -> dict[int, dict]:
    """The runs ``DIR/s<seed>/detection.json`` of ``d``, by seed."""
    out = {}
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name, "detection.json")
        if name.startswith("s") and name[1:].isdigit() and os.path.exists(path):
            with open(path) as f:
                out[int(name[1:])] = json.load(f)
    return out


def compare_detector(before: str, after: str, name: str) -> str:
    """A Markdown table of one detector's AUROC per capture and setting over two sets of runs
    (``seed_runs``; seeds found in both): mean and range over the seeds, before and after, and
    the combined score's pooled alert precision / recall per setting."""
    a, b = seed_runs(before), seed_runs(after)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ZeekmlError(f"no seed found in both {before} and {after} (DIR/s<seed>/detection.json)")
    caps = [c for c in CAPTURES if c in a[seeds[0]]["captures"]]

    def cell(runs: dict, setting: str, cap: str) -> str:
        v = [runs[s]["captures"][cap][setting]["detectors"][name]["auroc"] for s in seeds]
        if any(x is None for x in v):
            return "-"
        return f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    def pooled_cell(runs: dict, setting: str) -> str:
        p = [runs[s]["pooled"][f"{setting}/combined"] for s in seeds]
        return (f"{np.mean([x['precision'] for x in p]):.3f} / {np.mean([x['recall'] for x in p]):.3f}")

    lines = [f"{name} AUROC, mean (min-max) over seeds {', '.join(map(str, seeds))}; pooled: the combined "
             "score's alert precision / recall, mean over the seeds\n",
             "| setting | run | " + " | ".join(caps) + " | pooled precision / recall |",
             "|---" * (3 + len(caps)) + "|"]
    for setting in ("deployment", "archive"):
        for label, runs in (("before", a), ("after", b)):
            lines.append(f"| {setting} | {label} | " + " | ".join(cell(runs, setting, c) for c in caps)
                         + f" | {pooled_cell(runs, setting)} |")
    return "\n".join(lines)


def compare_seeds(before: str, after: str) -> str:
    """A Markdown table of two sets of runs, ``DIR/s<seed>/detection.json`` each (seeds found in
    both), deployment setting pooled unless said: ``before -> after`` per seed and the mean."""
    def cells(r: dict) -> list[float]:
        p, a = r["pooled"]["deployment/combined"], r["pooled"]["archive/combined"]
        dep = {c: r["captures"][c]["deployment"]["calibration"]["combined"] for c in r["captures"]}
        return [p["precision"], p["recall"], p["benign_alert_rate"], p["heldout_clean_alert_rate"],
                dep["ctu-34-1"]["combined"]["auroc"], dep["ctu-21-1"]["combined"]["auroc"],
                dep["ctu-21-1"]["combined"]["ap"], dep["ctu-8-1"]["recall"], a["precision"], a["recall"],
                a["benign_alert_rate"]]

    a = {seed: cells(r) for seed, r in seed_runs(before).items()}
    b = {seed: cells(r) for seed, r in seed_runs(after).items()}
    seeds = sorted(set(a) & set(b))
    digits = [3, 3, 4, 4, 3, 3, 3, 3, 3, 3, 4]

    def row(label: str, x: list[float], y: list[float]) -> str:
        c = [f"{u:.{d}f} -> {v:.{d}f}" for u, v, d in zip(x, y, digits)]
        return (f"| {label} | {c[0]} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | {c[5]} / {c[6]} | {c[7]} | "
                f"{c[8]} / {c[9]} | {c[10]} |")
    lines = ["| seed | pooled precision | pooled recall | benign scored conns alerted | held-out clean "
             "alerted | combined AUROC ctu-34-1 | combined AUROC ctu-21-1 / AP | ctu-8-1 recall | "
             "archive pooled precision / recall | archive benign alerted |", "|---" * 10 + "|"]
    lines += [row(str(s), a[s], b[s]) for s in seeds]
    lines.append(row("mean", list(np.mean([a[s] for s in seeds], axis=0)),
                     list(np.mean([b[s] for s in seeds], axis=0))))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="directory for detection.json and the PNGs (required but with --markdown)")
    ap.add_argument("--captures", nargs="+", default=CAPTURES, choices=CAPTURES)
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--clean-share", type=float, default=0.5,
                    help="deployment: the benign conns of this earliest share are the baseline")
    ap.add_argument("--max-conns", type=int, default=None)
    ap.add_argument("--no-models", action="store_true", help="IsolationForest only")
    ap.add_argument("--models", default=None, metavar="DIR",
                    help="the learned detectors of this directory, as zeekml score --models DIR (default: "
                         "the shipped models); the baseline check's committee stays the shipped one")
    ap.add_argument("--classifier", action="append", default=None,
                    help="a finetuned classifier directory to add (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", default=None, metavar="DIR",
                    help="save each capture's and setting's per-conn scores and labels here "
                         "(CAPTURE.SETTING.npz; save_scores) for bench/combine_eval.py")
    ap.add_argument("--gnn-k", type=int, default=None, metavar="K",
                    help="score the gnn detector with K nearest baseline neighbours (default: its own)")
    ap.add_argument("--gnn-features", type=float, default=None, metavar="W",
                    help="the gnn detector compares each conn's flow features, standardised by the "
                         "baseline's, beside its embedding, at weight W (FeaturesBeside)")
    ap.add_argument("--compare-detector", default=None, metavar="NAME",
                    help="with --compare: that detector's AUROC per capture and setting over the seeds")
    ap.add_argument("--markdown", metavar="JSON", default=None,
                    help="print the tables of a run's detection.json as Markdown, and exit")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                    help="print a before -> after table of two sets of runs (DIR/s<seed>/detection.json "
                         "each), and exit")
    args = ap.parse_args()
    if args.compare_detector and not args.compare:
        ap.error("--compare-detector needs --compare BEFORE AFTER")
    if args.compare:
        try:
            print(compare_detector(*args.compare, args.compare_detector) if args.compare_detector
                  else compare_seeds(*args.compare))
        except ZeekmlError as e:
            ap.error(e.message)
        return
    if args.gnn_k is not None and args.gnn_k < 1:
        ap.error("--gnn-k must be at least 1")
    if args.gnn_features is not None and not args.gnn_features > 0:
        ap.error("--gnn-features must be above 0")
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return
    if args.models and args.no_models:
        ap.error("--models and --no-models: choose one")
    if not args.out:
        ap.error("--out is required (but with --markdown or --compare)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("zeekml").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - t0
    results["command"] = "python bench/detect_eval.py " + " ".join(sys.argv[1:])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "detection.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    for p in plot(results, args.out):
        log.info("wrote %s", p)
    log.info("pooled: %s", json.dumps(results["pooled"], indent=1))
    log.info("%.0f s", results["seconds"])


if __name__ == "__main__":
    main()

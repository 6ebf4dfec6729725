"""Why the GNN ranks CTU-34-1's later benign conns with its attack (issue 14; detect_eval.py's
deployment setting gives it AUROC ~0.5 there, 0.94-0.999 elsewhere).

Setting as ``detect_eval.py``'s deployment one (no held-out third): the baseline is the benign
conns among the capture's earliest 50% by time, fitted on all of it (as ``zeekml score``);
the rest is scored. Then the same conns scored in other graph contexts:

- benign and malicious scored conns each embedded in a table of their own class only;
- the baseline embedded in the capture's full graph (its real neighbours) instead of a table of
  the benign conns pulled out of it.

Prints who the later benign conns are and the score percentiles and AUROC of each variant.

    OMP_NUM_THREADS=1 python bench/detect_gnn_context.py [--capture ctu-34-1]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from detect_eval import CAPTURES, load  # noqa: E402

from zeekml.flows.select import earliest_rows, ts_sort_key  # noqa: E402
from zeekml.scoring.detectors.gnn import embed_rows  # noqa: E402
from zeekml.scoring.detectors.reference import knn_distance  # noqa: E402
from zeekml.scoring.registry import get_kind  # noqa: E402

ROOT = os.path.dirname(HERE)


def pct(x: np.ndarray) -> str:
    return " / ".join(f"{v:.3g}" for v in np.percentile(x, [10, 50, 90]))


def main() -> None:
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", default="ctu-34-1", choices=CAPTURES)
    args = ap.parse_args()
    t, y = load(args.capture, None)
    early = earliest_rows(ts_sort_key(t), 0.5)
    clean = early[y[early] == 0]
    rest = np.setdiff1d(np.arange(t.num_rows), clean)
    ben, mal = rest[y[rest] == 0], rest[y[rest] == 1]
    for name, rows in (("baseline", clean), ("later benign", ben), ("malicious", mal)):
        col = {c: collections.Counter(np.asarray(t.column(c).to_pylist(), dtype=object)[rows].tolist())
               .most_common(3) for c in ("id.orig_h", "id.resp_p", "proto")}
        print(f"{name}: {len(rows)} conns {col}")
    base = t.take(pa.array(clean))
    fit_idx = np.arange(base.num_rows)          # zeekml fits on the whole baseline
    det = get_kind("gnn").detector(os.path.join(ROOT, "models", "gnn-base"))
    det.fit(base.take(pa.array(fit_idx)))
    s = det.score(t.take(pa.array(rest)))
    yy = y[rest]
    keep = yy >= 0
    print(f"scored together (detect_eval): AUROC {roc_auc_score(yy[keep], s[keep]):.3f}; "
          f"p10/50/90 benign {pct(s[yy == 0])}, malicious {pct(s[yy == 1])}")
    sb, sm = det.score(t.take(pa.array(ben))), det.score(t.take(pa.array(mal)))
    print(f"each class in its own table: AUROC "
          f"{roc_auc_score(np.r_[np.zeros(len(sb)), np.ones(len(sm))], np.r_[sb, sm]):.3f}; "
          f"benign {pct(sb)}, malicious {pct(sm)}")
    e = embed_rows(det.bundle, t, device="cpu")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)
    s2 = knn_distance(e[rest], e[clean[fit_idx]], det.k)
    print(f"baseline embedded in the full capture: AUROC {roc_auc_score(yy[keep], s2[keep]):.3f}; "
          f"benign {pct(s2[yy == 0])}, malicious {pct(s2[yy == 1])}")


if __name__ == "__main__":
    main()

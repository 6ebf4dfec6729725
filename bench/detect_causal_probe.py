"""A linear probe on the shipped causal MoE's frozen stream embedding as a known-bad classifier,
leave-one-capture-out (issue 14, archive target): what a committee member that costs one token per
conn would catch, beside the full-attention ``malicious-moe`` member (most of the committee's time).

For each labeled capture left out, as ``bench/detect_classifiers.py`` does: 300 conns per class
from each other capture's earliest 70% by time, btest's conns (``--extra-benign btest``) as
Benign, the cut as ``zeekml finetune`` chooses it (``train.metrics.trained_cut``: the lowest
P >= 0.5 that at most 1% of the validation benign conns of those shares reach). The embedding is ``models/moe-causal``'s
(``LoadedTokenModel.stream_embedding``), each capture and each presumed-benign log embedded on
its own (a host's stream never runs across captures); the probe is scikit-learn's
``LogisticRegression``. Nothing is shipped from here: no model directory is written.

    OMP_NUM_THREADS=1 python bench/detect_causal_probe.py --seed 0 --probs /tmp/pc-s0 --out /tmp/cp-s0.json

``--probs DIR`` writes each fold's probabilities as ``cmoe-CAPTURE.npz`` in the layout of
``detect_classifiers.py --probs``, so that ``bench/detect_committee.py`` can vote it with the
other members (copy their ``.npz`` files into the same directory and pass ``--members cmoe mae gnn``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from detect_classifiers import ROOT, held_out_metrics, load_any, presumed_benign, training_set  # noqa: E402
from detect_eval import CAPTURES  # noqa: E402

from zeekml.train.metrics import trained_cut  # noqa: E402
from zeekml.train.protocol import validation_benign_rows  # noqa: E402

SHOTS = 300


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "moe-causal"))
    ap.add_argument("--probs", help="write each fold's probabilities here (cmoe-CAPTURE.npz)")
    ap.add_argument("--out", help="write the folds' metrics here as JSON")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    from zeekml.scoring.detectors.token import LoadedTokenModel

    model = LoadedTokenModel.from_dir(args.model, "cpu")
    if not model.causal:
        sys.exit(f"{args.model}: not a causal_window token model")
    cache: dict[str, list[np.ndarray]] = {}

    def embedded(name: str) -> list[np.ndarray]:
        if name not in cache:
            tables = presumed_benign()[name] if name in ("zat", "btest") else [load_any(name)[0]]
            cache[name] = [model.stream_embedding(t) for t in tables]
        return cache[name]

    results = {}
    for held in CAPTURES:
        train_names = [n for n in CAPTURES if n != held] + ["btest"]
        table, labels, rows, early = training_set(train_names, SHOTS, args.seed)
        emb = np.concatenate([e for n in train_names for e in embedded(n)])
        assert len(emb) == table.num_rows
        probe = LogisticRegression(max_iter=2000).fit(emb[rows], (labels[rows] == "Malicious").astype(int))
        val = validation_benign_rows(labels, early, rows, args.seed)
        p_val = probe.predict_proba(emb[val])[:, 1]
        cut = trained_cut(p_val)["cut"]      # as ``zeekml finetune`` chooses it
        _, y = load_any(held)
        p = probe.predict_proba(embedded(held)[0])[:, 1]
        other = {name: np.concatenate([probe.predict_proba(e)[:, 1] for e in embedded(name)])
                 for name in ("zat", "btest")}
        r = held_out_metrics(p, y, cut)
        r.update({f"{name}_flagged_at_cut": float((q >= cut).mean()) for name, q in other.items()})
        results[held] = r
        at = r["trained_cut"]
        print(f"{held}: cut {cut:.3f}, recall {at['recall']:.3f}, benign flagged {at['benign_flagged']:.4f}, "
              f"AUROC {r.get('auroc', float('nan')):.3f}, zat flagged {r['zat_flagged_at_cut']:.4f}", flush=True)
        if args.probs:
            os.makedirs(args.probs, exist_ok=True)
            starts = np.cumsum([0] + [load_any(n)[0].num_rows for n in train_names])
            np.savez_compressed(os.path.join(args.probs, f"cmoe-{held}.npz"), held_p=p, held_y=y, cut=cut,
                                train=np.array(train_names), val_p=p_val,
                                val_capture=np.searchsorted(starts, val, side="right") - 1,
                                **{f"{k}_p": v for k, v in other.items()})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seed": args.seed, "model": args.model, "folds": results}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

"""The shipped known-bad classifiers on attack captures no model was trained on (issue 14,
archive target: ">= 80% of malicious conns at <= 1% false alerts on captures they were not
trained on").

The leave-one-capture-out tables of docs/results/detection.md retrain each classifier without
the capture it is scored on. This scores the classifiers that ship (``models/malicious-*`` and
``models/moe-malicious``, each trained on all five labeled captures) as ``zeekml score --models
DIR`` does, at their trained cuts, on the conn.logs real Zeek 8.2.2 wrote for the Slips
project's scenario captures (``../shared/data/zeek-8.2.2-package-runs``, ``C/``: checksums
ignored; ``SOURCES.md``), none of which any shipped model saw:

- ``ssh-brute``: ``nmap -p 902 --script ssh-brute`` against one host (Slips' test19 README);
- ``icmp-scan``: an ICMP scan (test12);
- ``hide-and-seek``: test7, re-added by Slips as the "hide and seek" capture (the Hide'n'Seek
  IoT botnet's telnet scanning);
- ``test-cc``: a semi-periodic ``curl https://testing.com`` loop (Slips' docs: a benign,
  C&C-beacon-like synthetic capture).

Labels are per capture, not per conn, so the table lists what each classifier flags per
(originator, responder port, proto) group, the largest first: the reader sees which groups are
the attack.

Usage::

    OMP_NUM_THREADS=1 python bench/classifiers_unseen.py [--json OUT] [--groups 4]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ZEEKML_DATA", os.path.normpath(os.path.join(ROOT, "..", "shared", "data")))
RUNS = "zeek-8.2.2-package-runs"
CAPTURES = {
    "ssh-brute": "slips-dataset__dataset__test19-malicious-ssh__malicious-ssh-bruteforce.pcap",
    "icmp-scan": "slips-dataset__dataset__test12-icmp-portscan.pcap",
    "hide-and-seek": "slips-dataset__dataset__test7-malicious.pcap",
    "test-cc": "slips-dataset__dataset__test-cc__test-cc-capture-2.pcap",
}
CLASSIFIERS = ["malicious-committee", "malicious-cmoe", "malicious-moe", "malicious-mae", "malicious-gnn",
               "moe-malicious"]


def flagged(det, table) -> np.ndarray:
    """Which conns of ``table`` the known-bad detector ``det`` flags at its trained cut (the
    committee by its vote), as the baseline check and ``zeekml score`` decide it."""
    rows = np.arange(table.num_rows, dtype=np.int64)
    vote = getattr(det, "flag_rows", None)
    if vote is not None:
        return np.asarray(vote(table, rows), dtype=bool)
    p = np.nan_to_num(np.asarray(det.score(table), dtype=np.float64), nan=0.0)
    return p >= float(getattr(det, "decision_threshold", 0.5))


def run(groups: int) -> dict:
    from zeekml.parse.reject import Quarantine
    from zeekml.pipeline.batch import load_conns
    from zeekml.pipeline.options import ScoreSummary
    from zeekml.scoring.registry import classifier_detector

    dets = {name: classifier_detector(os.path.join(ROOT, "models", name)) for name in CLASSIFIERS}
    out: dict = {"data": DATA, "classifiers": CLASSIFIERS, "captures": {}}
    for cap, run_dir in CAPTURES.items():
        path = os.path.join(DATA, RUNS, run_dir, "C", "conn.log")
        table = load_conns([path], Quarantine(), ScoreSummary())
        key = list(zip(table.column("id.orig_h").to_pylist(), table.column("id.resp_p").to_pylist(),
                       table.column("proto").to_pylist()))
        flags = {name: flagged(det, table) for name, det in dets.items()}
        out["captures"][cap] = {"conns": table.num_rows,
                                "flagged": {name: int(f.sum()) for name, f in flags.items()},
                                "groups": group_flags(key, flags, groups)}
    return out


def group_flags(key: list[tuple], flags: dict[str, np.ndarray], groups: int) -> list[dict]:
    """The ``groups`` largest (originator, responder port, proto) groups of ``key`` (one per
    conn; ties in first-seen order), each with its conns and how many of them each classifier
    of ``flags`` (name -> per-conn bool) flags."""
    top = [g for g, _ in Counter(key).most_common(groups)]
    out = []
    for g in top:
        member = np.array([k == g for k in key], dtype=bool)
        out.append({"orig_h": g[0], "resp_p": g[1], "proto": g[2], "conns": int(member.sum()),
                    "flagged": {name: int((f & member).sum()) for name, f in flags.items()}})
    return out


def markdown(r: dict) -> str:
    head = "| capture: conns, or group | " + " | ".join(r["classifiers"]) + " |"
    lines = [head, "|---|" + "---|" * len(r["classifiers"])]
    for cap, c in r["captures"].items():
        lines.append(f"| **{cap}**: {c['conns']:,} | " +
                     " | ".join(f"**{c['flagged'][n]}**" for n in r["classifiers"]) + " |")
        for g in c["groups"]:
            lines.append(f"| {g['orig_h']} -> {g['resp_p']}/{g['proto']}: {g['conns']:,} | " +
                         " | ".join(str(g["flagged"][n]) for n in r["classifiers"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--groups", type=int, default=4, help="(originator, port, proto) groups listed per capture")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, ROOT)
    r = run(args.groups)
    print(markdown(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()

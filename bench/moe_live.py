"""The causal MoE in ``zeekml watch``: each window's cone against per-host kept state (issue 15).

Runs ``bench/watch.py``'s ``--context-probe`` (``zeekml watch --once`` over real or synthetic conns
in live-sized windows, one torch thread, this process) and records every call ``watch`` makes to
the MoE detector (its context table and target rows). Then replays the calls in order, twice
side by side, call by call (alternating which goes first): without a state (each call computes
its targets' cone, as before) and with one (``zeekml.scoring.detectors.stream_state``), and
reports the CPU seconds of each (embedding alone, and embedding + kNN as ``score_rows``), the
hit rate, and whether every score has the same bits.

    OMP_NUM_THREADS=1 python bench/moe_live.py --conns 5000              # the real IoT-23 log
    OMP_NUM_THREADS=1 python bench/moe_live.py --conns 30000 --dense 0.005
    OMP_NUM_THREADS=1 python bench/moe_live.py --conns 5000 --loop 2     # + the whole watch loop

``--loop K``: also the whole ``watch`` loop K times each way (state on / off, alternating, this
process), loop CPU seconds as ``bench/watch.py`` reports them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from watch import context_probe  # noqa: E402  (bench/watch.py, used as it is)

from zeekml.scoring.detectors import token as token_mod  # noqa: E402
from zeekml.scoring.detectors.stream_state import StreamState  # noqa: E402


@contextlib.contextmanager
def recording(calls: list):
    """Record ``(detector, table, rows or None)`` of every MoE score call made meanwhile."""
    cls = token_mod.TokenDetector
    score_rows, score = cls.score_rows, cls.score

    def rec_rows(self, table, rows):
        if self.name == "moe":
            calls.append((self, table, np.asarray(rows, dtype=np.int64).copy()))
        return score_rows(self, table, rows)

    def rec_score(self, table):
        if self.name == "moe":
            calls.append((self, table, None))
        return score(self, table)

    cls.score_rows, cls.score = rec_rows, rec_score
    try:
        yield
    finally:
        cls.score_rows, cls.score = score_rows, score


@contextlib.contextmanager
def without_state():
    """Every TokenDetector made meanwhile keeps no per-host state (the path before it)."""
    cls = token_mod.TokenDetector
    init = cls.__init__

    def no_state(self, *a, **k):
        init(self, *a, **k)
        self._state = None

    cls.__init__ = no_state
    try:
        yield
    finally:
        cls.__init__ = init


def replay(calls: list) -> dict:
    det = calls[0][0]
    loaded = det.loaded
    state = StreamState(loaded.encoder.spans, det.context_seconds)
    cpu = {"embed_cold": 0.0, "embed_state": 0.0, "knn": 0.0}
    same = True
    conns = 0
    for i, (_, table, rows) in enumerate(calls):
        conns += table.num_rows if rows is None else len(rows)
        runs = [("embed_cold", None), ("embed_state", state)]
        if i % 2:
            runs.reverse()
        got = {}
        for name, st in runs:
            c0 = time.process_time()
            got[name] = loaded.stream_embedding(table, rows, st)
            cpu[name] += time.process_time() - c0
        c0 = time.process_time()
        det.reference.score(got["embed_cold"])
        cpu["knn"] += time.process_time() - c0
        same &= bool(np.array_equal(got["embed_cold"], got["embed_state"]))
    return {
        "calls": len(calls), "conns_scored": conns, "embeddings_same_bits": same,
        "state_hits": state.hits, "state_misses": state.misses, "hosts_kept": len(state),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "embed_conns_per_cpu_s": {"cold": round(conns / cpu["embed_cold"]),
                                  "state": round(conns / cpu["embed_state"])},
        "score_rows_conns_per_cpu_s": {"cold": round(conns / (cpu["embed_cold"] + cpu["knn"])),
                                       "state": round(conns / (cpu["embed_state"] + cpu["knn"]))},
        "embed_speedup": round(cpu["embed_cold"] / cpu["embed_state"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--dense", type=float, default=0.0, metavar="STEP",
                    help="bench/watch.py's synthetic conns STEP seconds of ts apart (default: real log)")
    ap.add_argument("--probe-window", type=int, default=0, metavar="N")
    ap.add_argument("--models", default=os.path.join(HERE, "..", "models"))
    ap.add_argument("--loop", type=int, default=0, metavar="K",
                    help="also the whole watch loop K times with and without the state")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    calls: list = []
    with recording(calls):
        probe = context_probe(args.conns, args.models, args.probe_window, args.dense)
    out = {"load": os.getloadavg(), "conns": args.conns, "dense_ts_step": args.dense,
           # the run that was recorded (with the state), before the replay
           "recorded_run_loop_conns_per_cpu_s": probe["loop_conns_per_cpu_s"],
           "watch_calls_replayed": replay(calls)}
    if args.loop:
        loops: dict[str, list] = {"state": [], "cold": []}
        for k in range(args.loop):
            for name in (("state", "cold") if k % 2 == 0 else ("cold", "state")):
                ctx = without_state() if name == "cold" else contextlib.nullcontext()
                with ctx:
                    p = context_probe(args.conns, args.models, args.probe_window, args.dense)
                loops[name].append(p["loop_conns_per_cpu_s"])
        out["watch_loop_conns_per_cpu_s"] = loops
        best = {k: max(v) for k, v in loops.items()}
        out["watch_loop_speedup_best"] = round(best["state"] / best["cold"], 3)
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()

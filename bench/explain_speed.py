"""Speed of the baseline explanations (``scoring.explain.BaselineProfile.explain``): what
``zeekml watch`` computes for every alert (``incidents.alert_evidence``) and ``zeekml score``
for the conns its incidents show.

Each real log is profiled on its earliest 30% of conns by ts (as ``score``'s default baseline)
and every conn of it explained in one call. With ``--against DIR`` the ``explain`` module of
another checkout runs on the same tables in the same process, alternated, and both outputs are
compared::

    python bench/explain_speed.py --against /tmp/wt-old --rounds 3
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np
import pyarrow.compute as pc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_data import DATA, FILES  # noqa: E402  (the labeled logs the detection benches read)

LOGS = ("ctu-34-1", "strato-008", "strato-010")


def _module_at(root: str, tag: str):
    """``zeekml.scoring.explain`` of the checkout at ``root``, loaded under another name."""
    path = os.path.join(root, "zeekml", "scoring", "explain.py")
    spec = importlib.util.spec_from_file_location(f"explain_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod       # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", default=",".join(LOGS), help=f"comma list of {', '.join(LOGS)}")
    ap.add_argument("--against", metavar="DIR", help="also the explain module of this checkout")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    from zeekml.train.data import load_conns

    sides = {"this": _module_at(ROOT, "this")}
    if a.against:
        sides = {"against": _module_at(os.path.abspath(a.against), "against"), **sides}
    for name in a.logs.split(","):
        table = load_conns([os.path.join(DATA, FILES[name])])
        ts = pc.fill_null(table.column("ts"), 0.0).to_numpy(zero_copy_only=False)
        base = table.take(np.argsort(ts, kind="stable")[: int(0.3 * table.num_rows)])
        rows = np.arange(table.num_rows)
        times: dict[str, list[float]] = {s: [] for s in sides}
        texts: dict[str, list[str]] = {}
        for _ in range(a.rounds):
            for side, mod in sides.items():
                profile = mod.BaselineProfile().fit(base)
                t0 = time.perf_counter()
                texts[side] = profile.explain(table, rows)
                times[side].append(time.perf_counter() - t0)
        line = ", ".join(f"{s} median {statistics.median(v):.3f} s ({' / '.join(f'{x:.2f}' for x in v)})"
                         for s, v in times.items())
        same = "" if len(texts) < 2 else (" same texts" if texts["this"] == texts["against"]
                                          else " TEXTS DIFFER")
        print(f"{name}: {table.num_rows:,} conns explained: {line}{same}", flush=True)


if __name__ == "__main__":
    main()

"""Scale-out: flows/s of `zeekml score` in one process against `--dask local:N`, same archive.

    python bench/dask_scale.py [--files 8] [--rows-per-file 250000] [--workers 2]

Generates a rotated archive (conn.*.log.gz, Zeek 9 columns; bench/ingest.py's generator), scores it
once in one process and once on a LocalCluster, checks that both wrote the same verdicts, and
prints flows/s, the speed-up and the parallel efficiency (speed-up / workers). The figures feed the
multi-node plan in bench/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import generate  # noqa: E402


def make_archive(d: str, files: int, rows: int) -> None:
    os.makedirs(d, exist_ok=True)
    for i in range(files):
        tsv = os.path.join(d, f"conn.2024-01-01-{i:02d}-00-00.log")
        # consecutive hours, as Zeek rotates them (~0.005 s between conns: 100k conns ~ 8 min)
        generate(tsv, os.devnull, rows, seed=i, start=1700000000.0 + i * rows * 0.0051)
        with open(tsv, "rb") as f, gzip.open(tsv + ".gz", "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g)
        os.remove(tsv)


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zeekml", *args], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rows-per-file", type=int, default=250_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", default=None)
    ap.add_argument("--models", action="store_true",
                    help="also run the shipped learned detectors (default: IsolationForest only)")
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="zeekml-dask-")
    arch = os.path.join(root, "archive")
    if not os.path.isdir(arch):
        print(f"generating {a.files} x {a.rows_per_file:,} conns in {arch} ...", flush=True)
        make_archive(arch, a.files, a.rows_per_file)
    n = a.files * a.rows_per_file
    extra = [] if a.models else ["--no-models"]
    one = run(["score", arch, "--out", os.path.join(root, "one"), "--no-progress", *extra])
    many = run(["score", arch, "--out", os.path.join(root, "dask"), "--no-progress",
                "--dask", f"local:{a.workers}", *extra])
    same = open(os.path.join(root, "one", "verdicts.jsonl"), "rb").read() == \
        open(os.path.join(root, "dask", "verdicts.jsonl"), "rb").read()
    print(f"1 process        {n:>10,} flows {one:7.1f} s {n / one:>10,.0f} flows/s")
    print(f"dask local:{a.workers}     {n:>10,} flows {many:7.1f} s {n / many:>10,.0f} flows/s")
    speedup = one / many
    print(f"speed-up {speedup:.2f}x, efficiency {speedup / a.workers:.0%}, identical verdicts: {same}")


if __name__ == "__main__":
    main()

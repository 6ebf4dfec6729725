"""Peak memory of ``zeekml score`` against the input's size (issue 17: "score peak RSS on 1M
conns within 1.5x of that on 100k conns").

Builds Zeek conn logs of the asked sizes from ``examples/iot23/conn.log.labeled`` (2,000 real
IoT-23 conns; copy k is shifted by k times the slice's time span and its uids get a suffix, so
every conn is distinct and the log stays in time order), then runs ``python -m zeekml score``
on each in a child process of its own and reads that child's peak resident set size
(``os.wait4``'s ``ru_maxrss``). Printed: one row per run, then the ratios of each size's peak to
the smallest size's, per code and detector set.

``--before REF`` runs a git worktree of REF beside the working tree (e.g. the commit before
chunked scoring) for a before/after table. ``--fixed-baseline`` gives every size the smallest
one's baseline, to separate what grows with the baseline from what grows with the input.

    nice -n 5 python bench/score_memory.py --sizes 100000,1000000 --modes no-models,models \\
        --before f6fcb6f~1

Runs are long (the learned detectors score about 1-3k conns/s on one thread): run by hand.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "examples", "iot23", "conn.log.labeled")


def build_log(path: str, n: int, source: str = SOURCE) -> None:
    """A Zeek TSV conn log of ``n`` conns: copies of ``source``'s records, copy k shifted by k
    times its time span, uids suffixed with k."""
    header, records = [], []
    with open(source, "rb") as f:
        for line in f:
            if line.startswith(b"#"):
                if not line.startswith(b"#close"):
                    header.append(line)
            elif line.strip():
                records.append(line.rstrip(b"\n").split(b"\t"))
    fields = next(h for h in header if h.startswith(b"#fields")).rstrip(b"\n").split(b"\t")[1:]
    i_ts, i_uid = fields.index(b"ts"), fields.index(b"uid")
    ts = [float(r[i_ts]) for r in records]
    span = max(ts) - min(ts) + 1.0
    with open(path, "wb") as out:
        out.writelines(header)
        k, written = 0, 0
        while written < n:
            shift = k * span
            suffix = b"x%x" % k
            chunk = []
            for r, t in zip(records[: n - written], ts):
                r = list(r)
                r[i_ts] = b"%.6f" % (t + shift)
                r[i_uid] = r[i_uid] + suffix
                chunk.append(b"\t".join(r) + b"\n")
            out.writelines(chunk)
            written += len(chunk)
            k += 1


def baseline_end(path: str, fraction: float = 0.3) -> float:
    """A time just after the earliest ``fraction`` of ``path``'s conns (``--baseline-until``)."""
    with open(path, "rb") as f:
        fields = next(line for line in f if line.startswith(b"#fields")).rstrip(b"\n").split(b"\t")[1:]
        i_ts = fields.index(b"ts")
        ts = sorted(float(line.split(b"\t")[i_ts]) for line in f if not line.startswith(b"#"))
    return ts[int(round(len(ts) * fraction)) - 1] + 1e-6


# ``python -m zeekml ARGS`` with the spill's chunk size forced (--chunk-rows: no CLI option sets
# it; ``batch`` hands ``spill_inputs`` the one chunk size the whole run then reads from the spill)
CHUNKED = """
import sys
import zeekml.pipeline.batch as batch
real = batch.spill_inputs
batch.spill_inputs = lambda files, quarantine, summary, rows, *a, **k: real(
    files, quarantine, summary, int(sys.argv[1]), *a, **k)
from zeekml.cli import main
main(sys.argv[2:], prog_name="zeekml")
"""


def peak_rss(args: list[str], pythonpath: str | None, cwd: str,
             chunk_rows: int | None = None) -> tuple[float, float, int]:
    """``(peak RSS in MiB, seconds, exit code)`` of ``python -m zeekml ARGS`` in a child (with
    ``chunk_rows`` conns per chunk, if given)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    run = (["-m", "zeekml"] if chunk_rows is None else ["-c", CHUNKED, str(chunk_rows)])
    p = subprocess.Popen([sys.executable, *run, *args], env=env, cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if p.returncode not in (0, 7):
        print(err[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="conns per log, comma-separated")
    ap.add_argument("--modes", default="no-models,models",
                    help="no-models (--no-models) and/or models (the shipped detectors)")
    ap.add_argument("--before", default=None, help="also run this git ref (a worktree of it)")
    ap.add_argument("--fixed-baseline", action="store_true",
                    help="every size gets the smallest size's baseline (--baseline-until the ts "
                         "ending its earliest 30%%) instead of the earliest 30%% of its own")
    ap.add_argument("--chunk-rows", type=int, default=None,
                    help="conns per chunk of the spilled input (default: zeekml's, 100k)")
    ap.add_argument("--work", default=None, help="directory for the logs and outputs (kept); "
                                                 "default a temporary one, removed")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    work = args.work or tempfile.mkdtemp(prefix="zeekml-score-memory-")
    os.makedirs(work, exist_ok=True)
    codes = [("after", ROOT)]
    tree = None
    if args.before:
        tree = os.path.join(work, "before")
        if not os.path.isdir(tree):
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, args.before],
                           check=True, capture_output=True)
        codes.insert(0, (f"before ({args.before})", tree))
    try:
        logs = {}
        for n in sizes:
            logs[n] = os.path.join(work, f"conn-{n}.log")
            if not os.path.exists(logs[n]):
                build_log(logs[n], n)
        until = []
        if args.fixed_baseline:
            # the same conns as the smallest log's default baseline: logs are in time order and
            # each starts with the smallest one's conns
            until = ["--baseline-until", f"{baseline_end(logs[sizes[0]]):.6f}"]
        results = {}
        print(f"{'code':24s} {'detectors':10s} {'conns':>9s} {'MB log':>7s} {'peak RSS MiB':>13s} "
              f"{'seconds':>8s} exit", flush=True)
        for name, path in codes:
            for mode in modes:
                for n in sizes:
                    out = os.path.join(work, f"out-{len(results)}")
                    cmd = ["score", logs[n], "--out", out, "--no-progress", *until]
                    if mode == "no-models":
                        cmd.append("--no-models")
                    elif mode == "models":   # the same weights for both codes
                        cmd += ["--models", os.path.join(ROOT, "models")]
                    else:
                        raise SystemExit(f"unknown mode {mode!r} (no-models, models)")
                    rss, secs, rc = peak_rss(cmd, path, work, args.chunk_rows)
                    shutil.rmtree(out, ignore_errors=True)
                    results[(name, mode, n)] = rss
                    print(f"{name:24s} {mode:10s} {n:9,d} {os.path.getsize(logs[n]) / 1e6:7.0f} "
                          f"{rss:13,.0f} {secs:8.0f} {rc}", flush=True)
        print()
        for name, _ in codes:
            for mode in modes:
                base = results[(name, mode, sizes[0])]
                for n in sizes[1:]:
                    print(f"{name}, {mode}: peak RSS at {n:,} / at {sizes[0]:,} conns = "
                          f"{results[(name, mode, n)] / base:.2f}x")
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree],
                           capture_output=True)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark of ``zeekml watch``: sustained records/s, line-written-to-verdict-written delay, RSS.

A writer process appends Zeek TSV conn records to ``conn.log`` at a steady rate (in ticks of
10 ms), stamping each record's ``ts`` with the wall time at which it is written. ``zeekml watch``
runs as its own process (the real CLI) on that directory. This script tails ``verdicts.jsonl``
(every 20 ms) and takes, for every verdict, the time it saw the verdict minus the record's
``ts``: the delay from the line being written to its verdict being written (plus up to 20 ms of
polling). RSS of the watch process is sampled every second.

    python bench/watch.py                       # 10k and 50k records/s, 20 s each
    python bench/watch.py --score-workers 1     # scoring in a forked process beside reading
    python bench/watch.py --rates 10000 --duration 600 --rotate-seconds 60   # the long run
    python bench/watch.py --context-probe 20000 --dense 0.1 --detector-calls   # per detector
    python bench/watch.py --release-replay 5000 --scores-out a.npz   # live-sized releases
    python bench/watch.py --models models --rates 5000 --duration 120 --baseline-conns 20000 \
        --score-workers 2 --watch-log w.log && python bench/watch.py --timeline w.log

All processes share the machine: on a 2-core box the writer, the watcher and this reader
compete for the CPU, so the numbers are a floor, not a ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
          "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "missed_bytes",
          "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents"]
TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count",
         "count", "string", "bool", "count", "string", "count", "count", "count", "count",
         "set[string]"]


def header(stamp: str) -> bytes:
    return ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
            f"#path\tconn\n#open\t{stamp}\n#fields\t" + "\t".join(FIELDS) + "\n#types\t"
            + "\t".join(TYPES) + "\n").encode()


def make_rest(rng: random.Random, n: int = 4096) -> list[str]:
    """Pre-built record tails (everything after ts and uid), so the writer stays cheap."""
    out = []
    for _ in range(n):
        ob, rb, op, rp = rng.randint(0, 5000), rng.randint(0, 50000), rng.randint(1, 40), rng.randint(0, 60)
        out.append("\t".join([
            f"10.0.{rng.randint(0, 3)}.{rng.randint(1, 254)}", str(rng.randint(1024, 65535)),
            f"192.168.1.{rng.randint(1, 20)}", str(rng.choice([53, 80, 443, 8080])),
            rng.choice(["tcp", "tcp", "udp"]), rng.choice(["http", "dns", "ssl", "-"]),
            f"{rng.random() * 3:.6f}", str(ob), str(rb), rng.choice(["SF", "S0", "REJ", "RSTO"]),
            "T", "0", rng.choice(["ShADadFf", "D", "S", "Dd"]), str(op), str(op * 40 + ob),
            str(rp), str(rp * 40 + rb), "(empty)"]))
    return out


def write_baseline(path: str, n: int = 5000, step: float = 1.0, seed: int = 1,
                   start: float = 1_600_000_000) -> None:
    """``n`` synthetic conns ``step`` seconds of ``ts`` apart (record tails drawn with ``seed``)."""
    rng = random.Random(seed)
    rest = make_rest(rng)
    with open(path, "wb") as f:
        f.write(header("2023-01-01-00-00-00"))
        for i in range(n):
            f.write(f"{start + i * step:.6f}\tCB{i:015d}\t{rest[i % len(rest)]}\n".encode())


def writer(root: str, rate: int, duration: float, rotate_seconds: float,
           trickle_seconds: float = 0.0) -> None:
    """Steady ``rate`` records/s for ``duration`` s in 10 ms ticks; ``ts`` = write time. Then,
    for ``trickle_seconds``, 10 records/s with uids ``CT...`` (not counted): with the learned
    detectors a conn is scored once newer conns show its forward context has passed, so the
    last ones of the steady phase need traffic after them."""
    rest = make_rest(random.Random(2))
    live = os.path.join(root, "conn.log")
    f = open(live, "ab")
    f.write(header(time.strftime("%Y-%m-%d-%H-%M-%S")))
    t0 = time.time()
    opened = t0
    i = 0
    tick = 0.01
    while True:
        now = time.time()
        if now - t0 >= duration:
            break
        due = int((now - t0) * rate)
        if due > i:
            lines = []
            ts = f"{time.time():.6f}"
            for k in range(i, due):
                lines.append(f"{ts}\tCW{k:015d}\t{rest[k % len(rest)]}\n")
            f.write("".join(lines).encode())
            f.flush()
            i = due
        if rotate_seconds and now - opened >= rotate_seconds:
            f.write(f"#close\t{time.strftime('%Y-%m-%d-%H-%M-%S')}\n".encode())
            f.close()
            os.rename(live, os.path.join(root, f"conn.{time.strftime('%Y-%m-%d-%H-%M-%S')}."
                                               f"{int(now * 1000) % 1000:03d}.log"))
            f = open(live, "ab")
            f.write(header(time.strftime("%Y-%m-%d-%H-%M-%S") + f".{i}"))
            opened = now
        time.sleep(max(0.0, tick - (time.time() - now)))
    t1 = time.time()
    k = 0
    while time.time() - t1 < trickle_seconds:
        f.write(f"{time.time():.6f}\tCT{k:015d}\t{rest[k % len(rest)]}\n".encode())
        f.flush()
        k += 1
        time.sleep(0.1)
    f.close()
    print(json.dumps({"written": i}), flush=True)


TS = re.compile(rb'"ts":([0-9.]+)')
UID_CT = re.compile(rb'"uid":"CT')


def run_rate(rate: int, duration: float, args) -> dict:
    work = tempfile.mkdtemp(prefix=f"zeekml-bench-watch-{rate}-")
    root, out = os.path.join(work, "logs"), os.path.join(work, "out")
    os.makedirs(root)
    base = os.path.join(work, "baseline.log")
    trickle = 0.0
    if args.models:
        # the link's own conns (other uids) at its rate as the baseline, so that host
        # histories are as long as the stream's and alerts as rare as calibrated
        write_baseline(base, args.baseline_conns, step=1.0 / rate, seed=2)
        # held back: the GNN's 20 s forward horizon plus the lateness; the trickle after the
        # steady phase moves the newest ts on past the last conns' hold-back
        trickle = 20.0 + args.context_lateness + 15.0
    else:
        write_baseline(base)
    code = "from zeekml.cli import main; main()"
    if args.profile_watch:      # cProfile on CPU time, written when watch exits
        code = ("import cProfile, time\nfrom zeekml.cli import main\n"
                "p = cProfile.Profile(time.process_time)\np.enable()\ntry:\n    main()\n"
                f"finally:\n    p.disable()\n    p.dump_stats({args.profile_watch!r})\n")
    cmd = [sys.executable, "-c", code, "watch", root, "--out", out,
           "--baseline", base, "--window-seconds", str(args.window_seconds),
           "--window-records", str(args.window_records), "--status-seconds", "1", "--quiet",
           "--score-workers", str(args.score_workers)]
    cmd += (["--models", args.models, "--context-lateness", str(args.context_lateness)]
            if args.models else ["--no-models"])
    load_start = os.getloadavg()
    err = subprocess.PIPE
    if args.watch_log:          # watch -v (which detector runs where, measured costs) to a file
        cmd.insert(3, "-vv")    # -vv: the releases' timeline (live.pool, live.watcher)
        err = open(args.watch_log, "ab")
    w = subprocess.Popen(cmd, stderr=err)
    stats_path = os.path.join(out, "stats.json")
    t_start = time.time()
    while time.time() - t_start < 600:           # wait until calibrated and running
        try:
            if json.load(open(stats_path)).get("state") == "running":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    if trickle:
        # the hold-back is the widest forward horizon of the detectors watch runs (the GNN's
        # 20 s; a committee with a gnn member 50 s), which watch states once calibrated: the
        # trickle must outlast it, or the last conns are never released
        forward = (json.load(open(stats_path)).get("context") or {}).get("forward_s", 20.0)
        trickle = max(trickle, forward + args.context_lateness + 15.0)
    proc = psutil.Process(w.pid)
    cpu0 = proc.cpu_times()
    wr = subprocess.Popen([sys.executable, __file__, "--writer", root, str(rate), str(duration),
                           str(args.rotate_seconds), str(trickle)], stdout=subprocess.PIPE)
    delays: list[float] = []
    rss: list[tuple[float, int]] = []
    kids_rss: list[list[int]] = []          # each scoring process's RSS, every second
    seen = 0
    pos = 0
    buf = b""
    vpath = os.path.join(out, "verdicts.jsonl")
    t0 = time.time()
    last_rss = 0.0
    writer_done_at = None
    expected = None
    last_main = t0
    while True:
        now = time.time()
        try:
            with open(vpath, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            buf += chunk
            cut = buf.rfind(b"\n") + 1
            block, buf = buf[:cut], buf[cut:]
            for m in TS.finditer(block):
                if not trickle or UID_CT.search(block, m.end(), m.end() + 40) is None:
                    delays.append(now - float(m.group(1)))
                    last_main = now
            seen += block.count(b"\n") - (len(UID_CT.findall(block)) if trickle else 0)
        if now - last_rss >= 1.0:
            rss.append((now - t0, proc.memory_info().rss))
            kids_rss.append([_rss(c) for c in proc.children()])
            last_rss = now
        if writer_done_at is None and wr.poll() is not None:
            writer_done_at = now
            expected = json.loads(wr.stdout.read().decode().strip().splitlines()[-1])["written"]
        if expected is not None and seen >= expected:
            break
        if writer_done_at is not None and now - writer_done_at > args.drain_timeout:
            break
        time.sleep(0.02)
    end = time.time()
    cpu1 = proc.cpu_times()
    kids = sum(c.cpu_times().user + c.cpu_times().system for c in proc.children())
    load_end = os.getloadavg()
    w.send_signal(signal.SIGTERM)
    w.wait(60)
    stats = json.load(open(stats_path))
    shutil.rmtree(work, ignore_errors=True)
    hold = (stats.get("context") or {}).get("forward_s", 0.0) + args.context_lateness
    delays.sort()
    q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))] if delays else float("nan")
    rss_mb = [r / 2**20 for _, r in rss]
    half = len(rss_mb) // 2
    return {
        "rate_offered": rate, "duration_s": duration, "score_workers": args.score_workers,
        "models": args.models or "none (iforest)",
        "load_at_start": [round(x, 2) for x in load_start],
        "load_at_end": [round(x, 2) for x in load_end],
        "watch_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system + kids, 1),
        "written": expected, "scored": seen,
        # with the learned detectors the last verdicts wait for their hold-back after the
        # steady phase: counted until the last one, less the hold-back
        "sustained_records_per_s": round(
            seen / ((last_main - t0 - hold) if trickle else (end - t0)), 1),
        # with the learned detectors: how long past their hold-back (the widest forward
        # horizon, 20 s for the GNN, + the lateness) the verdicts came
        "held_back_s": hold if trickle else 0.0,
        "delay_beyond_hold_back_p50_s": round(q(0.50) - hold, 3) if trickle else None,
        "delay_beyond_hold_back_p99_s": round(q(0.99) - hold, 3) if trickle else None,
        "drain_s_after_writer_stopped": (
            round(last_main - t0 - duration - hold, 2) if trickle
            else round(end - writer_done_at, 2) if writer_done_at else None),
        "delay_p50_s": round(q(0.50), 3), "delay_p99_s": round(q(0.99), 3),
        "delay_max_s": round(delays[-1], 3) if delays else None,
        "rss_mb_first": round(rss_mb[0], 1) if rss_mb else None,
        "rss_mb_max": round(max(rss_mb), 1) if rss_mb else None,
        "rss_mb_median_first_half": round(statistics.median(rss_mb[:half]), 1) if half else None,
        "rss_mb_median_second_half": round(statistics.median(rss_mb[half:]), 1) if half else None,
        "rss_mb_every_30s": [round(r / 2**20, 1) for t, r in rss[::30]],
        # the scoring processes (--score-workers), each: the detectors' own memory (the GNN's
        # kept node states among it)
        "scoring_rss_mb_every_30s": [[round(r / 2**20, 1) for r in k] for k in kids_rss[::30]],
        "scoring_rss_mb_max": round(max((max(k) for k in kids_rss if k), default=0) / 2**20, 1),
        "watch_commits": stats.get("commits"), "watch_quarantined": stats.get("quarantined"),
        "watch_duplicates_dropped": stats.get("duplicates_dropped"),
    }


def _rss(p) -> int:
    """``p``'s RSS in bytes (0 once it is gone)."""
    try:
        return p.memory_info().rss
    except psutil.Error:           # NoSuchProcess: exited between listing and asking
        return 0


def stages(n: int) -> dict:
    """Microseconds per record of each step of a window, in this process (no writer)."""
    from zeekml.flows.table import conn_table
    from zeekml.parse import Quarantine, read_log
    from zeekml.pipeline import ScoreOptions, ScoreSummary, fit_calibrate, load_conns, score_fitted
    from zeekml.pipeline.live import score_window
    from zeekml.sinks.verdicts import verdict_line
    work = tempfile.mkdtemp(prefix="zeekml-bench-stages-")
    base, path = os.path.join(work, "baseline.log"), os.path.join(work, "conn.log")
    write_baseline(base)
    rest = make_rest(random.Random(2))
    with open(path, "wb") as f:
        f.write(header("2024-01-01-00-00-00"))
        for k in range(n):
            f.write(f"{1_700_000_000 + k * 1e-3:.6f}\tCW{k:015d}\t{rest[k % len(rest)]}\n".encode())
    fitted = fit_calibrate(load_conns([base], Quarantine(), ScoreSummary()), ScoreOptions())
    det = fitted.detectors[0]
    t = [time.perf_counter()]
    batches = list(read_log(path))
    t.append(time.perf_counter())
    table = conn_table(batches)
    t.append(time.perf_counter())
    x = det.featurizer.transform(table)
    t.append(time.perf_counter())
    det.model.score_samples(x)
    t.append(time.perf_counter())
    verdicts = score_fitted(table, fitted)
    t.append(time.perf_counter())
    [verdict_line(v) for v in verdicts]
    t.append(time.perf_counter())
    score_window(table, fitted)
    t.append(time.perf_counter())
    shutil.rmtree(work, ignore_errors=True)
    names = ["parse", "conn_table", "features", "iforest", "score_fitted (features + iforest + "
             "verdicts)", "verdict json lines, one by one (verdict_line)",
             "watch's window scoring, columnar (features + iforest + lines)"]
    return {k: round((b - a) * 1e6 / n, 1) for k, a, b in zip(names, t, t[1:])}


def rss_probe(n: int) -> list[tuple[int, float]]:
    """RSS (MB) against records scored, ``--once`` over ``n`` records in 100k-record files."""
    from zeekml.pipeline import ScoreOptions, Watcher, WatchOptions
    work = tempfile.mkdtemp(prefix="zeekml-bench-rss-")
    root = os.path.join(work, "logs")
    os.makedirs(root)
    base = os.path.join(work, "baseline.log")
    write_baseline(base)
    rest = make_rest(random.Random(2))
    for j in range(max(1, n // 100_000)):
        with open(os.path.join(root, f"conn.{j:04d}.log"), "wb") as f:
            f.write(header(f"2024-01-01-00-00-00.{j}"))
            for k in range(j * 100_000, (j + 1) * 100_000):
                f.write(f"{1.7e9 + k / 1000:.6f}\tCW{k:015d}\t{rest[k % len(rest)]}\n".encode())
    samples: list[tuple[int, float]] = []
    opts = WatchOptions(score=ScoreOptions(baseline=[base]), once=True, use_events=False,
                        status_seconds=2.0)
    # RSS every 2 s; the id set of the verdict dedup is full after 200 000 records
    Watcher(root, os.path.join(work, "out"), opts,
            on_status=lambda d: samples.append((d["scored"], round(d["rss_bytes"] / 2**20, 1)))).run()
    shutil.rmtree(work, ignore_errors=True)
    return samples


# (file suffix, function) -> stage name, for --context-probe --profile: CPU seconds in each
STAGES = [
    (("live/watcher.py", "_loop"), "watch loop (all but model load and fit)"),
    (("live/calibration.py", "calibrate"), "model load, fit and calibrate"),
    (("sources/tail.py", "poll"), "read + parse"),
    (("live/context.py", "release"), "release (context cut + scoring)"),
    (("scoring/context.py", "detectors_in_context"), "  context cut (detectors_in_context)"),
    (("detectors/iforest.py", "score"), "  iforest score"),
    (("detectors/gnn.py", "score_rows"), "  gnn score_rows"),
    (("detectors/mae.py", "score_rows"), "  mae score_rows"),
    (("detectors/token.py", "score_rows"), "  token (moe) score_rows"),
    (("scoring/context.py", "explain"), "  explanations of alerts"),
    (("live/watcher.py", "_finish_window"), "finish window (outputs, incidents, commit)"),
    (("live/incidents.py", "update"), "  incidents"),
    (("sources/checkpoint.py", "commit"), "  checkpoint commit"),
]


def _cpu_timers() -> tuple[dict, callable]:
    """Wrap the watcher's steps (``CPU_STEPS``) with CPU-time counters, no profiler (cProfile
    inflates the Python-heavy steps several times): returns the counters (inclusive CPU
    seconds and calls per step, this process only; nested steps are counted in their parent
    too) and a function that unwraps them."""
    import importlib
    acc: dict = {}
    undo = []
    for mod, owner, attr, name in CPU_STEPS:
        m = importlib.import_module(mod)
        target = getattr(m, owner) if owner else m
        fn = getattr(target, attr, None)
        if fn is None:          # a step an older commit does not have (A/B runs)
            continue
        acc[name] = [0.0, 0]

        def timed(*a, _fn=fn, _slot=acc[name], **k):
            t0 = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                _slot[0] += time.process_time() - t0
                _slot[1] += 1

        setattr(target, attr, timed)
        undo.append((target, attr, fn))

    def restore() -> None:
        for target, attr, fn in reversed(undo):
            setattr(target, attr, fn)
    return acc, restore


# (module, class or "", attribute, step): what --cpu-steps times in the watcher process
CPU_STEPS = [
    ("zeekml.sources.tail", "DirectoryFollower", "poll", "read + parse (poll)"),
    ("zeekml.pipeline.live.watcher", "", "conn_table", "window conn table"),
    ("zeekml.pipeline.live.watcher", "Watcher", "_close_window", "close window (all below)"),
    ("zeekml.pipeline.live.context", "LiveContext", "add", "  context add"),
    ("zeekml.pipeline.live.context", "LiveContext", "due", "  context due (cut + evict)"),
    ("zeekml.pipeline.live.context", "", "detectors_in_context", "    detectors_in_context"),
    ("zeekml.pipeline.live.context", "LiveContext", "_evict", "    evict"),
    ("zeekml.pipeline.live.context", "LiveContext", "journal_delta", "  journal delta"),
    ("zeekml.pipeline.live.pool", "DetectorPool", "submit", "  send release (pickle)"),
    ("zeekml.pipeline.live.pool", "DetectorPool", "score_own", "watcher's own detectors"),
    ("zeekml.pipeline.live.watcher", "Watcher", "_finish_window", "finish window (all below)"),
    ("zeekml.pipeline.live.pool", "DetectorPool", "collect", "  collect (wait + unpickle)"),
    ("zeekml.pipeline.live.watcher", "", "score_due", "  calibrate, combine, explain"),
    ("zeekml.pipeline.live.watcher", "", "render_allowed", "  render verdict lines"),
    ("zeekml.pipeline.live.incidents", "LiveIncidents", "add", "  incidents add"),
    ("zeekml.pipeline.live.incidents", "LiveIncidents", "update", "  incidents update"),
    ("zeekml.pipeline.live.outputs", "OutputFiles", "append", "  outputs append + fsync"),
    ("zeekml.pipeline.live.journal", "ContextJournal", "append", "  journal append + fsync"),
    ("zeekml.sources.checkpoint", "CheckpointStore", "commit", "  checkpoint commit"),
    ("zeekml.pipeline.live.watcher", "", "trim_heap", "  malloc_trim"),
    ("zeekml.pipeline.live.watcher", "", "atomic_write", "  incidents-open view"),
]


def _detector_calls() -> tuple[dict, callable]:
    """Count each learned detector's ``score_rows`` calls in this process: calls, context rows
    (the table it is handed), scored rows and CPU seconds (``--detector-calls``; a detector a
    scoring process owns is counted there, not here: use it with ``--score-workers 0``).
    Returns the counters and a function that unwraps them."""
    from zeekml.scoring.detectors import gnn, mae, token
    acc: dict = {}
    undo = []
    for cls in (gnn.GNNDetector, mae.MAEDetector, token.TokenDetector):
        fn = cls.score_rows

        def timed(self, table, rows, _fn=fn):
            t0 = time.process_time()
            try:
                return _fn(self, table, rows)
            finally:
                a = acc.setdefault(self.name, {"calls": 0, "context_rows": 0, "scored_rows": 0,
                                               "cpu_s": 0.0})
                a["calls"] += 1
                a["context_rows"] += table.num_rows
                a["scored_rows"] += len(rows)
                a["cpu_s"] += time.process_time() - t0

        cls.score_rows = timed
        undo.append((cls, fn))

    def restore() -> None:
        for cls, fn in undo:
            cls.score_rows = fn
    return acc, restore


def _calls_summary(acc: dict) -> dict:
    return {k: {**v, "cpu_s": round(v["cpu_s"], 2),
                "context_rows_per_scored_row": round(v["context_rows"] / max(v["scored_rows"], 1), 2),
                "conns_per_cpu_s": round(v["scored_rows"] / max(v["cpu_s"], 1e-9))}
            for k, v in acc.items()}


WINDOW_LINE = re.compile(
    r"window of (\d+) conns closed at ([0-9.]+) \(watermark ([0-9.]+), \d+ pending\): release (\d+) "
    r"of (\d+) conns, ts ([0-9.]+) \.\. ([0-9.]+)")
RELEASE_LINE = re.compile(
    r"release (\d+): (\d+) conns (?:decided at [0-9.]+, )?sent at [0-9.]+.*?(?:done at ([0-9.]+)|"
    r"collected at ([0-9.]+))")
OWN_FAULTS = re.compile(r"own share [0-9.]+ s \((\d+) minor page faults\)")
RELEASE_CPU = re.compile(r"CPU s: (.*)$")


def timeline(path: str, hold: float) -> dict:
    """The releases of a ``--watch-log`` (``watch -vv``): per release its conns, when its window
    closed, how stale the newest ts read was then, how far past the hold-back its oldest conn
    was when it was decided and when its scores came in; and over the steady phase (releases of
    more than 1,000 conns, the last one left out) their spread. Times in seconds, ``ts`` being the
    writer's wall clock."""
    rows: dict[int, dict] = {}
    for line in open(path, errors="replace"):
        m = WINDOW_LINE.search(line)
        if m:
            closed, mark, lo = float(m.group(2)), float(m.group(3)), float(m.group(6))
            rows[int(m.group(4))] = {"conns": int(m.group(5)), "closed": closed,
                                     "stale_s": round(closed - mark, 2),
                                     "oldest_at_decision_s": round(closed - lo - hold, 2)}
            continue
        m = RELEASE_LINE.search(line)
        if m and int(m.group(2)) and int(m.group(1)) in rows:
            r = rows[int(m.group(1))]
            r["took_s"] = round(float(m.group(3) or m.group(4)) - r["closed"], 2)
            r["oldest_at_answer_s"] = round(r["oldest_at_decision_s"] + r["took_s"], 2)
            faults, cpu = OWN_FAULTS.search(line), RELEASE_CPU.search(line.rstrip())
            if faults:          # the watcher's own share's page faults (logged since session 34)
                r["own_faults"] = int(faults.group(1))
            if cpu and cpu.group(1).strip():
                r["cpu_s"] = {k: float(v) for k, v in
                              (part.rsplit(" ", 1) for part in cpu.group(1).split(", "))}
    done = [rows[k] for k in sorted(rows) if "took_s" in rows[k]]
    steady = [r for r in done if r["conns"] > 1000][:-1]
    t0 = done[0]["closed"] if done else 0.0
    for r in done:
        r["closed"] = round(r["closed"] - t0, 2)

    def spread(xs: list[float]) -> list[float]:
        return [round(min(xs), 2), round(statistics.median(xs), 2), round(max(xs), 2)] if xs else []

    return {"releases": done, "steady": {
        "releases": len(steady), "conns_min_median_max": spread([r["conns"] for r in steady]),
        "every_s_min_median_max": spread([b["closed"] - a["closed"] for a, b in zip(steady, steady[1:])]),
        "took_s_min_median_max": spread([r["took_s"] for r in steady]),
        "oldest_at_answer_s_min_median_max": spread([r["oldest_at_answer_s"] for r in steady])}}


def release_replay(rate: float, release_seconds: float, releases: int, models: str,
                   scores_out: str = "") -> dict:
    """Each detector's CPU on releases cut as ``watch`` cuts them at ``rate`` conns/s, in this
    process, one torch thread: this bench's synthetic conns ``1 / rate`` s apart (the baseline:
    20,000 more of them), 25 s of them read before the first release, then ``releases``
    releases of ``release_seconds`` of ``ts``, each scored among the conns around it
    (``scoring.context.detectors_in_context``, as ``LiveContext.due`` does; the MoE keeps its
    per-host state from one release to the next). ``scores_out``: every score saved there
    (``.npz``), to compare two checkouts bit for bit. The heap as ``watch`` sets it for releases
    (``live.malloc.RELEASE_MMAP_THRESHOLD``, its freed pages given back after each release)."""
    import numpy as np
    import pyarrow as pa
    import torch

    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreOptions, ScoreSummary, fit_calibrate, load_conns
    from zeekml.pipeline.live.malloc import thread_page_faults, trim_heap, use_release_heap
    from zeekml.scoring.context import InContext, detectors_in_context, ts_array
    torch.set_num_threads(1)
    use_release_heap()
    work = tempfile.mkdtemp(prefix="zeekml-bench-replay-")
    step, warm = 1.0 / rate, 25.0
    n = int((warm + release_seconds * releases + 25.0) * rate)
    rest = make_rest(random.Random(2))
    path, base = os.path.join(work, "conn.log"), os.path.join(work, "baseline.log")
    with open(path, "wb") as f:
        f.write(header("2024-01-01-00-00-00"))
        for k in range(n):
            f.write(f"{1.7e9 + k * step:.6f}\tCW{k:015d}\t{rest[k % len(rest)]}\n".encode())
    write_baseline(base, 20000, step=step, seed=2, start=1.7e9)
    fitted = fit_calibrate(load_conns([base], Quarantine(), ScoreSummary()),
                           ScoreOptions(baseline=[base], models_dir=models))
    table = load_conns([path], Quarantine(), ScoreSummary())
    shutil.rmtree(work, ignore_errors=True)
    ts = ts_array(table)
    acc: dict = {}
    scores = {}
    for r in range(releases):
        lo = 1.7e9 + warm + r * release_seconds
        targets = np.flatnonzero((ts >= lo) & (ts < lo + release_seconds))
        for d in detectors_in_context(fitted.detectors, table, targets, ts):
            t0, f0 = time.process_time(), thread_page_faults()
            got = d.score(None) if isinstance(d, InContext) else d.score(table.take(pa.array(targets)))
            a = acc.setdefault(d.name, {"calls": 0, "context_rows": 0, "scored_rows": 0, "cpu_s": 0.0,
                                        "cpu_s_per_release": [], "context_rows_per_release": [],
                                        "state_hits_misses_per_release": [],
                                        "page_faults_per_release": []})
            spent = time.process_time() - t0
            a["page_faults_per_release"].append(thread_page_faults() - f0)
            a["calls"] += 1
            a["context_rows"] += d.context.num_rows if isinstance(d, InContext) else len(targets)
            a["scored_rows"] += len(targets)
            a["cpu_s"] += spent
            # the first release finds nothing kept by an earlier one (the GNN's node states)
            a["cpu_s_per_release"].append(round(spent, 2))
            a["context_rows_per_release"].append(d.context.num_rows if isinstance(d, InContext)
                                                 else len(targets))
            # a causal token model's per-host state (stream_state): hits and misses so far
            state = getattr(getattr(d, "det", d), "_state", None)
            if state is not None:
                a["state_hits_misses_per_release"].append((state.hits, state.misses, len(state)))
            scores[f"{d.name}_{r}"] = np.asarray(got)
        trim_heap()
    if scores_out:
        np.savez(scores_out, **scores)
    return {"rate": rate, "release_seconds": release_seconds, "releases": releases,
            "detectors": _calls_summary(acc)}


def _stage_seconds(prof) -> dict:
    import pstats
    st = pstats.Stats(prof).stats
    out = {}
    for (suffix, fn), name in STAGES:
        out[name] = round(sum(v[3] for (f, _, n), v in st.items()
                              if n == fn and f.endswith(suffix)), 2)
    return out


def context_probe(n: int, models: str, window_records: int = 100, dense: float = 0.0,
                  catch_up: int = 1, profile: bool = False, threads: int = 1,
                  workers: int = 0, profile_dump: str = "", cpu_steps: bool = False,
                  detector_calls: bool = False) -> dict:
    """--once over the first ``n`` conns of the real IoT-23 CTU-34-1 log with learned detectors,
    read in windows of ``window_records`` as a live watcher would get them (in this process, one
    torch thread): the cost of the time-context path (hold back, release in 60 s batches, score
    among the kept conns). With ``dense`` > 0: instead this bench's synthetic conns (~1000
    originators) ``dense`` seconds of ``ts`` apart, 200-conn windows unless given, lateness
    10 s, with the same conns (other uids) as the baseline, so alerts are as rare as the
    calibration says, as on a real link (with a baseline of 3000 conns 1 s apart, as before, a
    third of the conns alerted, and notices and incidents cost more than the models).
    ``catch_up``: ``--window-records`` multiple while behind (``WatchOptions.catch_up_factor``;
    1 = every window ``window_records``). ``workers``: ``--score-workers`` (the detectors
    shared out to that many forked processes, ``live.pool.DetectorPool``). Reports wall and
    CPU seconds (the CPU seconds of this process and of its scoring processes: less sensitive
    to the machine's load) and, with ``profile``, the CPU seconds of each stage (``STAGES``,
    cProfile on CPU time; this process only; ``profile_dump``: its stats also written there);
    with ``cpu_steps`` the watcher's steps timed by CPU time without a profiler
    (``CPU_STEPS``)."""
    import gzip
    import resource

    import torch
    from zeekml.pipeline import ScoreOptions, Watcher, WatchOptions
    torch.set_num_threads(1)
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(here, "..", "tests", "data", "real", "iot23-ctu-34-1", "conn.log.labeled.gz")
    work = tempfile.mkdtemp(prefix="zeekml-bench-context-")
    os.makedirs(os.path.join(work, "logs"))
    base = os.path.join(work, "baseline.log")
    if dense > 0:
        rest = make_rest(random.Random(2))
        with open(os.path.join(work, "logs", "conn.log"), "wb") as f:
            f.write(header("2024-01-01-00-00-00"))
            for k in range(n):
                f.write(f"{1.7e9 + k * dense:.6f}\tCW{k:015d}\t{rest[k % len(rest)]}\n".encode())
        # the link's own conns as its baseline (uids apart): histories as long as the stream's
        write_baseline(base, n, step=dense, seed=2, start=1.7e9)
        window_records = window_records or 200
        lateness = 10.0
    else:
        lines = gzip.open(src, "rb").read().split(b"\n")
        head = [x for x in lines[:20] if x.startswith(b"#") and not x.startswith(b"#close")]
        recs = [x for x in lines if x and not x.startswith(b"#")][:n]
        with open(os.path.join(work, "logs", "conn.log"), "wb") as f:
            f.write(b"\n".join(head + recs) + b"\n")
        with open(base, "wb") as f:
            f.write(b"\n".join(head + recs[:2000]) + b"\n")
        window_records = window_records or 100
        lateness = 500.0
    opts = WatchOptions(score=ScoreOptions(baseline=[base], models_dir=models), once=True,
                        use_events=False, status_seconds=1000, window_records=window_records,
                        catch_up_factor=catch_up, context_lateness=lateness,
                        context_threads=threads, score_workers=workers)
    prof = None
    if profile or profile_dump:
        import cProfile
        prof = cProfile.Profile(time.process_time)
        prof.enable()
    import zeekml.pipeline.live.watcher as live_watcher
    calibrate = live_watcher.calibrate
    fit_done: list[tuple[float, float]] = []

    def kids_cpu() -> float:       # reaped scoring processes (closed at the end of run())
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def timed_calibrate(*a, **k):
        r = calibrate(*a, **k)
        fit_done.append((time.perf_counter(), time.process_time() + kids_cpu(),
                         time.process_time()))
        return r

    live_watcher.calibrate = timed_calibrate
    steps, unwrap = _cpu_timers() if cpu_steps else (None, lambda: None)
    calls, unwrap_calls = _detector_calls() if detector_calls else (None, lambda: None)
    t0, c0 = time.perf_counter(), time.process_time() + kids_cpu()
    try:
        s = Watcher(os.path.join(work, "logs"), os.path.join(work, "out"), opts).run()
    finally:
        live_watcher.calibrate = calibrate
        unwrap()
        unwrap_calls()
    t1, c1, own1 = time.perf_counter(), time.process_time() + kids_cpu(), time.process_time()
    dt, cpu = t1 - t0, c1 - c0
    if prof is not None:
        prof.disable()
        if profile_dump:
            prof.dump_stats(profile_dump)
    shutil.rmtree(work, ignore_errors=True)
    out = {"conns": n, "dense_ts_step": dense, "models": models, "window_records": window_records,
           "catch_up_factor": catch_up, "context_threads": threads, "score_workers": workers,
           "seconds_incl_model_load_and_fit": round(dt, 1), "cpu_seconds": round(cpu, 1),
           "conns_per_s": round(s.scored / dt),
           # after model load, fit and calibration: the live loop alone
           "loop_seconds": round(t1 - fit_done[0][0], 1),
           "loop_cpu_seconds": round(c1 - fit_done[0][1], 1),
           "loop_conns_per_s": round(s.scored / (t1 - fit_done[0][0])),
           "loop_conns_per_cpu_s": round(s.scored / (c1 - fit_done[0][1])),
           # of which the watcher's own; the rest is its scoring processes'. On a machine
           # with a core free for each, the loop takes about the larger of the two
           "loop_cpu_seconds_watcher": round(own1 - fit_done[0][2], 1),
           "alerts": s.alerts, "context": s.context}
    if prof is not None:
        out["cpu_seconds_by_stage (profiled)"] = _stage_seconds(prof)
    if calls is not None:
        # live releases only: fitting and calibrating score the baseline through fit_split
        out["detector_calls"] = _calls_summary(calls)
    if steps is not None:
        out["watcher_cpu_seconds_by_step [s, calls]"] = {k: [round(v[0], 2), v[1]]
                                                       for k, v in steps.items()}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
               float(sys.argv[6]) if len(sys.argv) > 6 else 0.0)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="10000,50000", help="offered records/s, comma separated")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of writing per rate")
    ap.add_argument("--rotate-seconds", type=float, default=0.0, help="rotate conn.log this often")
    ap.add_argument("--window-seconds", type=float, default=1.0)
    ap.add_argument("--window-records", type=int, default=10_000)
    ap.add_argument("--score-workers", type=int, default=0,
                    help="watch --score-workers (forked scoring processes; with --models or "
                         "--context-probe each owns some of the detectors)")
    ap.add_argument("--models", default="",
                    help="watch --models DIR (learned detectors); default: --no-models")
    ap.add_argument("--context-lateness", type=float, default=5.0,
                    help="with --models: watch --context-lateness (the writer is never late)")
    ap.add_argument("--baseline-conns", type=int, default=30_000,
                    help="with --models: baseline conns (the writer's own, at the rate)")
    ap.add_argument("--profile-watch", default="", metavar="FILE",
                    help="run watch under cProfile (CPU time) and write its stats to FILE")
    ap.add_argument("--watch-log", default="", metavar="FILE",
                    help="run watch with -vv, its log appended to FILE")
    ap.add_argument("--drain-timeout", type=float, default=120.0,
                    help="how long to wait for the backlog after the writer stops")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--stages", type=int, default=0, metavar="N",
                    help="instead: time each step of a window on N records (us/record)")
    ap.add_argument("--rss-probe", type=int, default=0, metavar="N",
                    help="instead: RSS against records scored over N records in this process")
    ap.add_argument("--context-probe", type=int, default=0, metavar="N",
                    help="instead: N real conns through the time-context path with --models "
                         "(default: the shipped models/)")
    ap.add_argument("--dense", type=float, default=0.0, metavar="STEP",
                    help="with --context-probe: synthetic conns STEP seconds of ts apart")
    ap.add_argument("--probe-window", type=int, default=0, metavar="N",
                    help="with --context-probe: records per window (default 100, dense 200)")
    ap.add_argument("--catch-up", type=int, default=1, metavar="K",
                    help="with --context-probe: windows of up to K x --probe-window while behind")
    ap.add_argument("--context-threads", type=int, default=1, metavar="N",
                    help="with --context-probe: detectors of a release side by side in N threads")
    ap.add_argument("--profile", action="store_true",
                    help="with --context-probe: CPU seconds per stage (cProfile, CPU time)")
    ap.add_argument("--cpu-steps", action="store_true",
                    help="with --context-probe: the watcher's CPU seconds per step, no profiler")
    ap.add_argument("--profile-dump", default="", metavar="FILE",
                    help="with --context-probe: write the watcher process's cProfile stats to FILE")
    ap.add_argument("--detector-calls", action="store_true",
                    help="with --context-probe: each learned detector's calls, context rows, "
                         "scored rows and CPU seconds (this process: use --score-workers 0)")
    ap.add_argument("--timeline", default="", metavar="FILE",
                    help="instead: the releases of a --watch-log FILE (its conns, when decided, "
                         "how stale, how long to score, the oldest conn past its hold-back)")
    ap.add_argument("--release-replay", type=float, default=0.0, metavar="RATE",
                    help="instead: each detector's CPU on live-sized releases at RATE conns/s")
    ap.add_argument("--release-seconds", type=float, default=5.0,
                    help="with --release-replay: seconds of ts per release (default 5)")
    ap.add_argument("--releases", type=int, default=3,
                    help="with --release-replay: how many releases (default 3)")
    ap.add_argument("--scores-out", default="", metavar="FILE.npz",
                    help="with --release-replay: save every score there")
    args = ap.parse_args()
    if args.timeline:
        try:
            print(json.dumps(timeline(args.timeline, 20.0 + args.context_lateness)))
        except OSError as e:
            sys.exit(f"bench/watch.py: cannot read the watch log {args.timeline}: {e.strerror}")
        return
    if args.release_replay:
        models = args.models or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")
        print(json.dumps({"load": os.getloadavg(),
                          **release_replay(args.release_replay, args.release_seconds, args.releases,
                                           models, args.scores_out)}))
        return
    if args.context_probe:
        models = args.models or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")
        print(json.dumps({"load": os.getloadavg(),
                          **context_probe(args.context_probe, models, args.probe_window, args.dense,
                                         args.catch_up, args.profile, args.context_threads,
                                         args.score_workers, args.profile_dump,
                                         args.cpu_steps, args.detector_calls)}))
        return
    if args.rss_probe:
        print(json.dumps({"load": os.getloadavg(), "scored_rss_mb": rss_probe(args.rss_probe)}))
        return
    if args.stages:
        print(json.dumps({"load": os.getloadavg(), "us_per_record": stages(args.stages)}))
        return
    results = []
    print(f"cpus={os.cpu_count()} load={os.getloadavg()}", flush=True)
    for rate in [int(r) for r in args.rates.split(",")]:
        r = run_rate(rate, args.duration, args)
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_at_start": os.getloadavg(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

"""Benchmark and accuracy report for zeekml's built-in flow meter.

Speed (default): packets/s of the flow meter (capture reading + connection tracking + conn.log
records) on the largest captures in ../shared/data, against dpkt's own iteration over the same
file (``dpkt.pcap.Reader``/``pcapng.Reader``: read only) and dpkt's full decode
(``dpkt.ethernet.Ethernet`` per frame), and ``tshark -q -z conv,tcp`` when tshark is installed.
Each file is replayed ``--repeat`` times (the captures are small) and the best of ``--rounds``
is kept.

Accuracy (``--compare``): replays every pcap + baseline pair of ../shared/data/zeek-btest and
prints, per trace, matched conns / baseline conns and the share of matched rows identical per
column (the table in docs/results/flowmeter.md).

    python bench/replay.py                # speed
    python bench/replay.py --compare      # accuracy table (markdown)
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dpkt  # noqa: E402

from zeekml.sources.flowmeter import FlowMeter  # noqa: E402
from zeekml.sources.pcap import iter_capture  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def largest_captures(n: int) -> list[str]:
    files = [p for p in glob.glob(os.path.join(SHARED, "**", "*"), recursive=True)
             if re.search(r"\.(pcap|pcapng|cap)$", p) and os.path.isfile(p)]
    return sorted(files, key=os.path.getsize, reverse=True)[:n]


def time_meter(path: str, repeat: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    pkts = 0
    for _ in range(repeat):
        m = FlowMeter()
        for ts, buf, lt in iter_capture(path):
            m.packet(ts, buf, lt)
        m.flush()
        for c in m.finished:
            c.record()
        pkts += m.stats.packets
    return time.perf_counter() - t0, pkts


def _dpkt_reader(f):
    head = f.read(4)
    f.seek(0)
    return dpkt.pcapng.Reader(f) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)


def time_dpkt(path: str, repeat: int, decode: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    pkts = 0
    for _ in range(repeat):
        with open(path, "rb") as f:
            for ts, buf in _dpkt_reader(f):
                if decode:
                    dpkt.ethernet.Ethernet(buf)
                pkts += 1
    return time.perf_counter() - t0, pkts


def time_tshark(path: str, repeat: int) -> tuple[float, int] | None:
    tshark = shutil.which("tshark")
    if not tshark:
        return None
    t0 = time.perf_counter()
    for _ in range(repeat):
        subprocess.run([tshark, "-n", "-q", "-r", path, "-z", "conv,tcp"], check=True,
                       capture_output=True)
    return time.perf_counter() - t0, 0


def synthetic_capture(path: str, n_packets: int, seed: int = 0) -> None:
    """Write a pcap of interleaved TCP sessions (handshake, data both ways, FIN) and DNS over UDP,
    ~1000 connections open at a time: a longer, busier capture than the small shared ones."""
    import random
    import socket
    import struct

    rng = random.Random(seed)

    def frame(src, dst, proto, l4):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst)) + l4
        return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip

    def tcp(sp, dp, seq, ack, flags, data=b""):
        return struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 0x50, flags, 8192, 0, 0) + data

    def session(i):
        c, s_ = "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255), "192.0.2.%d" % (i % 250 + 1)
        sp, cs, ss = 1024 + i % 60000, rng.getrandbits(32), rng.getrandbits(32)
        if i % 5 == 0:
            q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
            u = struct.pack("!HHHH", sp, 53, 8 + len(q), 0)
            yield frame(c, s_, 17, u + q)
            yield frame(s_, c, 17, struct.pack("!HHHH", 53, sp, 8 + len(q), 0) + q)
            return
        yield frame(c, s_, 6, tcp(sp, 443, cs, 0, 0x02))
        yield frame(s_, c, 6, tcp(443, sp, ss, cs + 1, 0x12))
        yield frame(c, s_, 6, tcp(sp, 443, cs + 1, ss + 1, 0x10))
        o, r = 1, 1
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(50, 1400)
            yield frame(c, s_, 6, tcp(sp, 443, cs + o, ss + r, 0x18, b"a" * n))
            o += n
            m = rng.randint(50, 1400)
            yield frame(s_, c, 6, tcp(443, sp, ss + r, cs + o, 0x18, b"b" * m))
            r += m
        yield frame(c, s_, 6, tcp(sp, 443, cs + o, ss + r, 0x11))
        yield frame(s_, c, 6, tcp(443, sp, ss + r, cs + o + 1, 0x11))
        yield frame(c, s_, 6, tcp(sp, 443, cs + o + 1, ss + r + 1, 0x10))

    live, nxt, t, written = [], 0, 1.6e9, 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        while written < n_packets:
            while len(live) < 1000:
                live.append(session(nxt))
                nxt += 1
            k = rng.randrange(len(live))
            try:
                fr = next(live[k])
            except StopIteration:
                live[k] = live[-1]
                live.pop()
                continue
            t += 0.0001
            sec = int(t)
            f.write(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(fr), len(fr)) + fr)
            written += 1


def best(fn, rounds: int):
    return min((fn() for _ in range(rounds)), key=lambda x: x[0])


def speed(args) -> None:
    files = largest_captures(args.files)
    if args.synthetic:
        import tempfile
        tmp = os.path.join(tempfile.mkdtemp(prefix="zeekml-bench-"), "synthetic.pcap")
        synthetic_capture(tmp, args.synthetic)
        files = [tmp]
    print(f"{'capture':48s} {'pkts':>7s} {'meter pkt/s':>12s} {'dpkt read pkt/s':>16s} "
          f"{'ratio':>6s} {'dpkt decode pkt/s':>18s} {'ratio':>6s} {'tshark s':>9s}")
    tot = defaultdict(float)
    for p in files:
        tm, n = best(lambda: time_meter(p, args.repeat), args.rounds)
        tr, _ = best(lambda: time_dpkt(p, args.repeat, False), args.rounds)
        td, _ = best(lambda: time_dpkt(p, args.repeat, True), args.rounds)
        ts = time_tshark(p, 1) if args.tshark else None
        tot["n"] += n
        tot["m"] += tm
        tot["r"] += tr
        tot["d"] += td
        name = os.path.relpath(p, SHARED) if p.startswith(SHARED) else os.path.basename(p)
        print(f"{name[-48:]:48s} {n // args.repeat:7d} {n / tm:12,.0f} {n / tr:16,.0f} {tr / tm:6.2f} "
              f"{n / td:18,.0f} {td / tm:6.2f} {ts[0] if ts else float('nan'):9.3f}")
    n = tot["n"]
    print(f"{'ALL':48s} {int(n // args.repeat):7d} {n / tot['m']:12,.0f} {n / tot['r']:16,.0f} "
          f"{tot['r'] / tot['m']:6.2f} {n / tot['d']:18,.0f} {tot['d'] / tot['m']:6.2f}")
    print("ratio = meter speed / baseline speed (1.0 = as fast as dpkt alone)")


# -- accuracy ---------------------------------------------------------------------------------

COLUMNS = ["duration", "orig_bytes", "resp_bytes", "conn_state", "history", "orig_pkts",
           "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "missed_bytes", "local_orig", "local_resp",
           "ip_proto", "service"]
RENAMED = {"src": "id.orig_h", "src_port": "id.orig_p", "dst": "id.resp_h", "dst_port": "id.resp_p"}
BARE_CONN_ONLY = {"scripts.base.frameworks.logging.field-name-map"}


def btest_pairs() -> list[tuple[str, str]]:
    src = open(os.path.join(SHARED, "SOURCES.md"), encoding="utf-8").read()
    return re.findall(r"### (\S+)\n\n- Test file:.*?\n(?:.*\n)*?- Trace: `zeek-btest/Traces/(\S+)`", src)


def compare(args) -> None:
    from zeekml.parse import read_table

    base_dir = os.path.join(SHARED, "zeek-btest")
    tot_b = tot_m = tot_ok = 0
    col_tot = defaultdict(int)
    print("| test (trace) | matched / baseline | all compared columns identical | differing columns |")
    print("|---|---|---|---|")
    for test, trace in btest_pairs():
        bl = os.path.join(base_dir, "Baseline", test, "conn.log")
        if not os.path.exists(bl):
            continue
        base = [{RENAMED.get(k, k): (v.decode() if isinstance(v, bytes) else v) for k, v in r.items()}
                for r in read_table([bl]).to_pylist()]
        lsp = (frozenset(), frozenset()) if test in BARE_CONN_ONLY else None
        opts = {"tcp_excessive_data_without_further_acks": 0} if test == "core.tcp.large-file-reassembly" else {}
        # the btest baselines ran with -C (checksums ignored)
        m = FlowMeter(seed=1, likely_server_ports=lsp, ignore_checksums=True, **opts)
        for ts, buf, lt in iter_capture(os.path.join(base_dir, "Traces", trace)):
            m.packet(ts, buf, lt)
        m.flush()
        pool = defaultdict(list)
        for c in m.finished:
            r = c.record()
            pool[(r["proto"], r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"])].append(r)
        cols = [c for c in COLUMNS if c != "service"]
        matched = ok = 0
        col_same = defaultdict(int)
        for b in base:
            k = (b["proto"], b["id.orig_h"], b["id.orig_p"], b["id.resp_h"], b["id.resp_p"])
            cands = pool.get(k)
            if not cands:
                continue
            best_r = min(cands, key=lambda r: sum(not _same(c, b.get(c), r.get(c)) for c in cols))
            cands.remove(best_r)
            matched += 1
            if all(_same(c, b.get(c), best_r.get(c)) for c in cols):
                ok += 1
            for c in COLUMNS:
                if _same(c, b.get(c), best_r.get(c)):
                    col_same[c] += 1
        for c in COLUMNS:
            col_tot[c] += col_same[c]
        tot_b += len(base)
        tot_m += matched
        tot_ok += ok
        differing = ", ".join(f"{c} {col_same[c]}/{matched}" for c in COLUMNS if col_same[c] < matched)
        print(f"| {test} (`{trace}`) | {matched}/{len(base)} | {ok}/{len(base)} | {differing or '-'} |")
    print(f"| **all traces** | **{tot_m}/{tot_b}** | **{tot_ok}/{tot_b} ({100 * tot_ok / tot_b:.1f}%)** | |")
    print()
    print("| column | identical among matched rows |")
    print("|---|---|")
    for c in COLUMNS:
        print(f"| {c} | {col_tot[c]}/{tot_m} ({100 * col_tot[c] / tot_m:.1f}%) |")


def _same(col, b, r) -> bool:
    if col == "duration":
        if b is None or r is None:
            return b is None and r is None
        return abs(b - r) < 1e-6
    return b == r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5, help="how many of the largest captures (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="replays of each file per round (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, best kept (default 3)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="time a generated capture of N packets instead of the shared ones")
    ap.add_argument("--tshark", action="store_true", help="also time tshark -z conv,tcp (if installed)")
    ap.add_argument("--compare", action="store_true", help="accuracy table against zeek-btest baselines")
    args = ap.parse_args()
    if not os.path.isdir(SHARED):
        sys.exit(f"no shared data at {SHARED}")
    compare(args) if args.compare else speed(args)


if __name__ == "__main__":
    main()

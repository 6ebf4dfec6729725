"""Reader throughput: zeekml's TSV and JSON readers against zat and pyarrow, in one run.

    python bench/ingest.py [--rows 2000000] [--keep DIR]

Generates a conn.log (Zeek 9 columns, realistic value mix incl. unset fields, sets and a few
escaped strings) as TSV and as JSON lines, then reads each with:
  - zeekml.parse.read_log (exact: unescaping, 64-bit counts, unset vs empty);
  - zat's LogToDataFrame (TSV) and JSONLogToDataFrame (JSON; zat's ZeekLogReader does not finish on
    JSON logs: it waits for a TSV header), on a prefix when --zat-rows is smaller, as rows/s;
  - pyarrow.csv.read_csv (TSV, no Zeek semantics: our ceiling) and pyarrow.json.read_json.
Prints rows/s and the ratios against zat and pyarrow measured in the same run.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time

import pyarrow.csv as pacsv
import pyarrow.json as pajson

from zeekml._core.zeek_format import format_header, format_record
from zeekml.parse import read_log

FIELDS = [("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
          ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"),
          ("duration", "interval"), ("orig_bytes", "count"), ("resp_bytes", "count"),
          ("conn_state", "string"), ("local_orig", "bool"), ("local_resp", "bool"),
          ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
          ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
          ("tunnel_parents", "set[string]"), ("ip_proto", "count")]


def generate(path_tsv: str, path_json: str, rows: int, seed: int = 0, start: float = 1700000000.0) -> None:
    import json

    rng = random.Random(seed)
    states = ["SF", "S0", "REJ", "RSTO", "OTH", "S1", "SH"]
    services = [None, "dns", "http", "ssl", "ssh", "ntp"]
    hist = ["ShADadFf", "S", "Dd", "ShR", "ShADadR", "D"]
    t = start
    names = [n for n, _ in FIELDS]
    types = [t_ for _, t_ in FIELDS]
    with open(path_tsv, "wb") as ft, open(path_json, "w") as fj:
        ft.write(format_header("conn", names, types, open_ts=t))
        for i in range(rows):
            t += rng.random() * 0.01
            proto = rng.choice(["tcp", "tcp", "udp", "icmp"])
            unset = rng.random() < 0.3
            rec = {
                "ts": round(t, 6), "uid": "C%016x" % rng.getrandbits(64),
                "id.orig_h": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                "id.orig_p": rng.randrange(1024, 65536),
                "id.resp_h": f"192.168.{rng.randrange(256)}.{rng.randrange(256)}",
                "id.resp_p": rng.choice([53, 80, 443, 22, 123, 8080]), "proto": proto,
                "service": rng.choice(services) if rng.random() > 0.001 else "we\tird\\svc",
                "duration": None if unset else round(rng.random() * 10, 6),
                "orig_bytes": None if unset else rng.randrange(0, 10 ** 6),
                "resp_bytes": None if unset else rng.randrange(0, 10 ** 7),
                "conn_state": rng.choice(states), "local_orig": rng.random() < 0.5,
                "local_resp": rng.random() < 0.5, "missed_bytes": 0, "history": rng.choice(hist),
                "orig_pkts": rng.randrange(1, 1000), "orig_ip_bytes": rng.randrange(40, 10 ** 6),
                "resp_pkts": rng.randrange(0, 1000), "resp_ip_bytes": rng.randrange(0, 10 ** 7),
                "tunnel_parents": [] if rng.random() < 0.99 else ["CabcDEF123"],
                "ip_proto": {"tcp": 6, "udp": 17, "icmp": 1}[proto],
            }
            ft.write(format_record([rec[n] for n in names], types))
            fj.write(json.dumps({k: v for k, v in rec.items() if v is not None}) + "\n")


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def ours(path: str) -> int:
    return sum(b.num_rows for b in read_log(path))


def zat_tsv(path: str) -> int:
    from zat.log_to_dataframe import LogToDataFrame
    return len(LogToDataFrame().create_dataframe(path))


def zat_json(path: str) -> int:
    from zat.json_log_to_dataframe import JSONLogToDataFrame
    return len(JSONLogToDataFrame().create_dataframe(path))


def pyarrow_csv(path: str) -> int:
    with open(path, "rb") as f:
        data = b"".join(line for line in f if not line.startswith(b"#"))
    t = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=[n for n, _ in FIELDS]),
                       parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
    return t.num_rows


def pyarrow_json(path: str) -> int:
    return pajson.read_json(path).num_rows


def head(path: str, rows: int, out: str, header_lines: int = 0) -> str:
    with open(path, "rb") as f, open(out, "wb") as g:
        for i, line in enumerate(f):
            if i >= rows + header_lines:
                break
            g.write(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--zat-rows", type=int, default=None, help="rows given to zat (default: all)")
    ap.add_argument("--keep", default=None, help="directory to keep the generated logs in")
    a = ap.parse_args()
    d = a.keep or tempfile.mkdtemp(prefix="zeekml-ingest-")
    os.makedirs(d, exist_ok=True)
    tsv, js = os.path.join(d, "conn.log"), os.path.join(d, "conn.json.log")
    if not (os.path.exists(tsv) and os.path.exists(js)):
        print(f"generating {a.rows:,} rows in {d} ...", flush=True)
        generate(tsv, js, a.rows)
    zr = a.zat_rows or a.rows
    zat_tsv_path = tsv if zr >= a.rows else head(tsv, zr, os.path.join(d, "zat.log"), header_lines=8)
    zat_json_path = js if zr >= a.rows else head(js, zr, os.path.join(d, "zat.json.log"))
    results = {}
    for name, fn, path in [("zeekml TSV", ours, tsv), ("pyarrow.csv TSV", pyarrow_csv, tsv),
                           ("zat LogToDataFrame TSV", zat_tsv, zat_tsv_path),
                           ("zeekml JSON", ours, js), ("pyarrow.json JSON", pyarrow_json, js),
                           ("zat JSONLogToDataFrame JSON", zat_json, zat_json_path)]:
        secs, n = timed(lambda: fn(path))
        results[name] = n / secs
        print(f"{name:26s} {n:>10,} rows {secs:8.2f} s {n / secs:>12,.0f} rows/s", flush=True)
    print()
    print(f"TSV:  zeekml / zat       = {results['zeekml TSV'] / results['zat LogToDataFrame TSV']:.2f}x")
    print(f"TSV:  zeekml / pyarrow   = {results['zeekml TSV'] / results['pyarrow.csv TSV']:.2f}x")
    print(f"JSON: zeekml / zat       = {results['zeekml JSON'] / results['zat JSONLogToDataFrame JSON']:.2f}x")
    print(f"JSON: zeekml / pyarrow   = {results['zeekml JSON'] / results['pyarrow.json JSON']:.2f}x")


if __name__ == "__main__":
    main()

"""Helpers for the ``zeekml watch`` scenarios: a Zeek-like log writer in the three rotation layouts,
a watcher run in a forked process (so it can be killed with SIGKILL), and uid counting.

No tests here; the scenario files import it.
"""
from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter

import zeekml.pipeline.live  # noqa: F401  (imported before forking, so a forked watcher starts at once)

FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
          "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "missed_bytes",
          "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents"]
TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count",
         "count", "string", "bool", "count", "string", "count", "count", "count", "count",
         "set[string]"]
STATES = ["SF", "S0", "REJ", "RSTO", "S1", "OTH"]
SERVICES = ["http", "dns", "ssl", "-", "-"]


def header(open_stamp: str) -> bytes:
    return ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
            f"#path\tconn\n#open\t{open_stamp}\n#fields\t" + "\t".join(FIELDS) + "\n#types\t"
            + "\t".join(TYPES) + "\n").encode()


def uid_of(i: int, tag: str = "W") -> str:
    return f"C{tag}{i:015d}"


def conn_line(i: int, tag: str = "W", ts: float | None = None) -> bytes:
    rng = random.Random(i * 7919 + len(tag))
    proto = rng.choice(["tcp", "tcp", "udp"])
    ob, rb = rng.randint(0, 5000), rng.randint(0, 50000)
    op, rp = rng.randint(1, 40), rng.randint(0, 60)
    vals = [f"{(ts if ts is not None else 1_700_000_000 + i * 0.01):.6f}", uid_of(i, tag),
            f"10.0.{rng.randint(0, 3)}.{rng.randint(1, 254)}", str(rng.randint(1024, 65535)),
            f"192.168.1.{rng.randint(1, 20)}", str(rng.choice([53, 80, 443, 8080])), proto,
            rng.choice(SERVICES), f"{rng.random() * 3:.6f}", str(ob), str(rb),
            rng.choice(STATES), "T", "0", rng.choice(["ShADadFf", "D", "S", "Dd"]),
            str(op), str(op * 40 + ob), str(rp), str(rp * 40 + rb), "(empty)"]
    return ("\t".join(vals) + "\n").encode()


def write_baseline(path: str, n: int = 300) -> str:
    with open(path, "wb") as f:
        f.write(header("2023-01-01-00-00-00"))
        for i in range(n):
            f.write(conn_line(10_000_000 + i, tag="B"))
    return path


def write_pieces(f, data: bytes, rng: random.Random, max_pieces: int = 3) -> None:
    """Write ``data`` in 1-3 pieces with a flush between them (a reader may see any prefix)."""
    cuts = sorted(rng.sample(range(1, len(data)), min(max_pieces - 1, len(data) - 1))) \
        if len(data) > 1 and rng.random() < 0.5 else []
    prev = 0
    for c in cuts + [len(data)]:
        f.write(data[prev:c])
        f.flush()
        prev = c


class ZeekWriter:
    """Writes conn records with unique uids and rotates like Zeek in one of three layouts.

    standalone: ``conn.log`` -> ``conn.<open>.log`` (rename) in ``root``.
    zeekctl:    ``current/conn.log`` -> ``current/conn-<yy-mm-dd_HH.MM.SS>.log``, then archive-log
                gzips it *in place, not atomically* to ``<date>/conn.<HH:MM:SS>-<HH:MM:SS>.log.gz``
                and deletes the plain file.
    supervisor: ``spool/logger/conn.log`` -> ``log-queue/conn__<open>__<close>__.log``, then
                zeek-archiver gzips it to a temp file renamed into
                ``logs/<date>/conn.<HH:MM:SS>-<HH:MM:SS>.log.gz`` and deletes the queue file.
    """

    def __init__(self, root: str, layout: str = "standalone", seed: int = 0, tag: str = "W",
                 ts_step: float = 0.01):
        self.root, self.layout, self.tag = root, layout, tag
        self.ts_step = ts_step
        self.rng = random.Random(seed)
        self.next_uid = 0
        self.rotations = 0
        self.hour = 0
        live_dir = {"standalone": root, "zeekctl": os.path.join(root, "current"),
                    "supervisor": os.path.join(root, "spool", "logger")}[layout]
        os.makedirs(live_dir, exist_ok=True)
        self.live = os.path.join(live_dir, "conn.log")
        self.f = None
        self.pending_archive: str | None = None
        self._open()

    def _stamp(self, hour: int) -> str:
        return f"2024-01-{1 + hour // 24:02d}-{hour % 24:02d}-00-00"

    def _open(self) -> None:
        self.f = open(self.live, "ab")
        self.f.write(header(self._stamp(self.hour)))
        self.f.flush()

    def write(self, n: int, pieces: bool = True) -> list[str]:
        uids = []
        for _ in range(n):
            line = conn_line(self.next_uid, self.tag, 1_700_000_000 + self.next_uid * self.ts_step)
            uids.append(uid_of(self.next_uid, self.tag))
            self.next_uid += 1
            if pieces:
                write_pieces(self.f, line, self.rng)
            else:
                self.f.write(line)
        self.f.flush()
        return uids

    def rotate(self, archive: bool = True) -> None:
        h = self.hour
        self.f.write(f"#close\t{self._stamp(h + 1)}\n".encode())
        self.f.close()
        hh = h % 24
        if self.layout == "standalone":
            dst = os.path.join(self.root, f"conn.{self._stamp(h)}.log")
        elif self.layout == "zeekctl":
            dst = os.path.join(self.root, "current",
                               f"conn-24-01-{1 + h // 24:02d}_{hh:02d}.00.00.log")
        else:
            os.makedirs(os.path.join(self.root, "log-queue"), exist_ok=True)
            dst = os.path.join(self.root, "log-queue",
                               f"conn__{self._stamp(h)}__{self._stamp(h + 1)}__.log")
        os.rename(self.live, dst)
        self.rotations += 1
        self.hour += 1
        self._open()
        if self.layout != "standalone":
            self.pending_archive = dst
            if archive:
                self.archive()

    def archive(self, cut_at: float | None = None) -> str | None:
        """Gzip the rotated file into the dated directory and remove it (as the layout does).

        ``cut_at`` (zeekctl only) stops after that fraction of the gzip stream, leaving a
        half-written archive and the plain file; ``finish_archive`` completes it.
        """
        src = self.pending_archive
        if src is None:
            return None
        h = self.hour - 1
        day_dir = os.path.join(self.root, f"2024-01-{1 + h // 24:02d}") if self.layout == "zeekctl" \
            else os.path.join(self.root, "logs", f"2024-01-{1 + h // 24:02d}")
        os.makedirs(day_dir, exist_ok=True)
        dst = os.path.join(day_dir, f"conn.{h % 24:02d}:00:00-{(h % 24) + 1:02d}:00:00.log.gz")
        with open(src, "rb") as f:
            blob = gzip.compress(f.read(), mtime=0)
        if self.layout == "zeekctl":
            with open(dst, "wb") as out:          # in place, not atomic
                cut = len(blob) if cut_at is None else int(len(blob) * cut_at)
                out.write(blob[:cut])
            self._archive_rest = (dst, blob, src) if cut_at is not None else None
            if cut_at is not None:
                return dst
        else:
            tmp = dst + ".tmp"
            with open(tmp, "wb") as out:
                out.write(blob)
            os.rename(tmp, dst)
        os.unlink(src)
        self.pending_archive = None
        return dst

    def finish_archive(self) -> None:
        dst, blob, src = self._archive_rest
        with open(dst, "wb") as out:
            out.write(blob)
        os.unlink(src)
        self.pending_archive = None

    def close(self) -> None:
        if self.f and not self.f.closed:
            self.f.close()


def writer_process(root: str, layout: str, n: int, seed: int, rotate_every: int,
                   sleep: float, ts_step: float = 0.01) -> None:
    """Body of a forked writer: ``n`` records, rotations, short sleeps; then exits."""
    w = ZeekWriter(root, layout, seed=seed, ts_step=ts_step)
    rng = random.Random(seed)
    written = 0
    while written < n:
        k = min(rng.randint(1, 60), n - written)
        w.write(k)
        written += k
        if rotate_every and written % rotate_every < k and written < n:
            w.rotate()
        time.sleep(rng.random() * sleep)
    w.close()
    os._exit(0)


def watcher_process(root: str, out: str, kwargs: dict) -> None:
    """Body of a forked watcher: ``Watcher(root, out, WatchOptions(**kwargs)).run()``.

    SIGTERM is handled from the first instruction on (a stop before ``run`` starts is kept).
    """
    holder: dict = {}
    stop_early = []

    def on_term(*_):
        if "w" in holder:
            holder["w"].request_stop()
        else:
            stop_early.append(True)

    signal.signal(signal.SIGTERM, on_term)
    import logging
    logging.disable(logging.WARNING)
    if kwargs.get("score", {}).get("models_dir"):
        import torch
        torch.set_num_threads(1)
    from zeekml.pipeline import ScoreOptions
    from zeekml.pipeline import Watcher, WatchOptions
    score = ScoreOptions(**kwargs.pop("score", {}))
    holder["w"] = w = Watcher(root, out, WatchOptions(score=score, **kwargs))
    if stop_early:
        w.request_stop()
    w.run()
    os._exit(0)


def start(target, *args) -> multiprocessing.Process:
    p = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    p.start()
    return p


def uid_counts(out_dir: str) -> Counter:
    c: Counter = Counter()
    path = os.path.join(out_dir, "verdicts.jsonl")
    if not os.path.exists(path):
        return c
    with open(path, "rb") as f:
        for line in f:
            c[json.loads(line)["uid"]] += 1
    return c


def all_uids(n: int, tag: str = "W") -> set[str]:
    return {uid_of(i, tag) for i in range(n)}

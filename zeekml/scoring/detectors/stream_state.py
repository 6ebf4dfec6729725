"""Per-host state of a ``causal_window`` token model between scoring calls (issue 15).

``zeekml watch`` scores each window's due conns among their host's preceding conns. Without a
state, each call recomputes the *cone* of those conns (their predecessors through the blocks:
25 token-block passes for a lone new conn of the shipped 4-block model); with it, a host's last
conns' keys and values at every block are kept from the call that computed them, and a new conn
whose predecessors are all kept costs one row per block.

Kept values are used only when they are what this call's stream would give those rows, checked on
content: a row's keys and values at block ``i`` depend on the tokens of the ``sum(spans[:i])``
conns before it and on how many predecessors each of the rows between reads (its links), nothing
else (``zeekml.nn.dense``). So a host's state is kept with the tokens of its last
``sum(spans)`` conns and the link counts of its last ``sum(spans[1:])``, and is used for a
run of the host's conns in a new stream only when the ``sum(spans)`` conns before the run's
first target have exactly those tokens and link counts (a late conn among them, a conn cut
from the context, a host seen again after its state was dropped: not used, the cone is
computed as without a state). The result is the same bits either way (tests:
``tests/unit/scoring/detectors/test_stream_state.py``).

Memory: per host, ``sum(spans)`` rows of ``2 * d_model`` float32 (7.7 KB for the shipped model)
plus their tokens (0.7 KB), in arrays that grow (doubling) to the most hosts kept at once and
stay; at most ``max_hosts`` hosts (the least recently used dropped first: 86 MB at the
default for the shipped model), and a host whose last conn is more than ``horizon`` seconds
older than the newest conn kept is dropped (its next conn reads none of them).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_HOSTS = 10_000


@dataclass
class Runs:
    """The runs of a stream (``HostStream.run_start``) that hold targets.

    Attributes (``r`` = runs with a target):
        first: ``[r]`` stream row of each run's first target.
        last: ``[r]`` stream row of each run's last row.
        start: ``[r]`` stream row where each run begins.
        last_is_target: ``[r]`` whether the run's last row is a target (its state can be kept).
    """

    first: np.ndarray
    last: np.ndarray
    start: np.ndarray
    last_is_target: np.ndarray


def target_runs(run_start: np.ndarray, targets: np.ndarray) -> Runs:
    """The runs of ``run_start`` ``[n]`` that hold some of ``targets`` (stream rows)."""
    n = len(run_start)
    is_target = np.zeros(n, dtype=bool)
    is_target[targets] = True
    starts = np.flatnonzero(np.r_[True, run_start[1:] != run_start[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n] - 1 if n else np.zeros(0, np.int64)
    first_t = np.minimum.reduceat(np.where(is_target, np.arange(n), n), starts) if n else starts
    has = first_t < n
    return Runs(first_t[has], ends[has], starts[has], is_target[ends[has]])


def window(values: np.ndarray, end: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """Rows ``end - width + 1 .. end`` of ``values`` for each ``end``, -1 where before ``start``
    (outside the run). Shapes: values ``[n, ...]``, end/start ``[r]`` -> ``[r, width, ...]``."""
    at = end[:, None] - np.arange(width - 1, -1, -1)[None, :]
    ok = at >= start[:, None]
    out = values[np.maximum(at, 0)]
    mask = ok.reshape(ok.shape + (1,) * (values.ndim - 1))
    return np.where(mask, out, -1)


class StreamState:
    """The per-host state of one ``causal_window`` model in one process (module docstring).

    Each kept host has a slot in arrays that grow with the hosts kept (``S`` = ``sum(spans)``):
    ``ids [S, f]`` the tokens of its last conns (-1 rows: none, the host had fewer), ``links
    [S - spans[0]]`` how many predecessors each of its last conns reads (-1: none), ``kv [S,
    2d]`` the keys and values of block ``i`` of its last ``spans[i]`` conns, block after block
    (``blocks`` slices them), ``have [S]`` which of those rows hold values, ``ts`` the start
    time of its latest conn. Oldest rows first, ending at the latest conn scored.

    Args:
        spans: ``Encoder.spans`` (predecessors each block attends to).
        horizon: seconds; a host whose latest conn is this much older than the newest conn
            kept is dropped (``TokenDetector.context_seconds``).
        max_hosts: most hosts kept (default ``DEFAULT_MAX_HOSTS``).
    """

    def __init__(self, spans: list[int], horizon: float, max_hosts: int = DEFAULT_MAX_HOSTS):
        if max_hosts < 1:
            raise ValueError(f"max_hosts {max_hosts}: keep at least one host")
        self.spans = list(spans)
        self.n_ids = sum(self.spans)
        self.n_links = self.n_ids - (self.spans[0] if self.spans else 0)
        self.horizon = float(horizon)
        self.max_hosts = int(max_hosts)
        self.slots: OrderedDict[str, int] = OrderedDict()     # least recently used first
        self.free: list[int] = []
        self.ids = self.links = self.kv = self.have = self.ts = None
        self.newest = -np.inf
        self.hits = 0
        self.misses = 0
        # dask may run two tasks of one detector in threads of one worker
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.slots)

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        del d["_lock"]
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    @property
    def blocks(self) -> list[slice]:
        """Block ``i``'s rows in a host's ``kv``."""
        ends = np.cumsum(self.spans)
        return [slice(int(e) - s, int(e)) for e, s in zip(ends, self.spans)]

    def known(self, hosts: list[str], runs: Runs, ids: np.ndarray, links: np.ndarray
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Per block, ``(stream rows [m], kv [m, 2d])`` kept for the rows before each run's
        first target, for the runs whose host state matches the stream (the tokens and link
        counts before the first target); and which runs matched ``[r]``.

        ``hosts``: each run's host; ``ids`` ``[n, f]`` and ``links`` ``[n]`` of the stream."""
        f = runs.first - 1
        hit = np.zeros(len(hosts), dtype=bool)
        kv = have = None
        with self._lock:
            slot = np.fromiter((self.slots.get(h, -1) for h in hosts), np.int64, len(hosts))
            idx = np.flatnonzero((slot >= 0) & (f >= runs.start))
            if len(idx):
                s = slot[idx]
                same = (self.ids[s] == window(ids, f[idx], runs.start[idx], self.n_ids)
                        ).reshape(len(idx), -1).all(1)
                same &= (self.links[s] == window(links, f[idx], runs.start[idx], self.n_links)).all(1)
                hit[idx[same]] = True
                for r in idx[same]:
                    self.slots.move_to_end(hosts[r])
                kv, have = self.kv[s[same]], self.have[s[same]]               # copies
            self.hits += int(hit.sum())
            self.misses += int(len(hit) - hit.sum())
        if not hit.any():
            return [(np.zeros(0, np.int64), np.zeros((0, 0), np.float32)) for _ in self.spans], hit
        out = []
        fh, sh = f[hit], runs.start[hit]
        for span, sl in zip(self.spans, self.blocks):
            at = fh[:, None] - np.arange(span - 1, -1, -1)[None, :]             # [h, span]
            ok = have[:, sl] & (at >= sh[:, None])
            out.append((at[ok], kv[:, sl][ok]))
        return out, hit

    def keep_rows(self, runs: Runs) -> tuple[np.ndarray, np.ndarray]:
        """Stream rows whose keys and values to ask the encoder for (``keep_kv``): the last
        ``max(spans)`` of each run that ends in a target, in run order, ``[k]``; and which runs
        they are for ``[k']`` (indices into ``runs``)."""
        w = max(self.spans, default=0)
        which = np.flatnonzero(runs.last_is_target)
        at = (runs.last[which][:, None] - np.arange(w - 1, -1, -1)[None, :]).reshape(-1)
        return np.maximum(at, 0), which

    def store(self, hosts: list[str], runs: Runs, which: np.ndarray, ids: np.ndarray,
              links: np.ndarray, kept: list[tuple[np.ndarray, np.ndarray]], ts: np.ndarray) -> None:
        """Keep the state of each run in ``which`` (``keep_rows``' runs), from the encoder's
        ``stream_kv`` for ``keep_rows``' rows (per block ``(kv [k, 2d], have [k])``, numpy),
        the stream's ``ids`` and ``links``, and ``ts`` ``[len(which)]`` of each run's last conn."""
        if not len(which):
            return
        w = max(self.spans, default=0)
        k = len(which)
        last, start = runs.last[which], runs.start[which]
        win_ids = window(ids, last, start, self.n_ids)
        win_links = window(links, last, start, self.n_links)
        inside = (last[:, None] - np.arange(w - 1, -1, -1)[None, :]) >= start[:, None]   # [k, w]
        with self._lock:
            if self.kv is None:
                self._grow(min(self.max_hosts, max(64, k)), ids.shape[1], kept[0][0].shape[1],
                           kept[0][0].dtype)
            # a slot written twice here (a host with two runs, a slot freed and taken again)
            # holds the later run's values
            writes: dict[int, int] = {}
            for j, r in enumerate(which):
                writes[self._slot(hosts[r])] = j
            slots = np.fromiter(writes.keys(), np.int64, len(writes))
            rows = np.fromiter(writes.values(), np.int64, len(writes))
            self.ids[slots], self.links[slots], self.ts[slots] = win_ids[rows], win_links[rows], ts[rows]
            for (kv, have), span, sl in zip(kept, self.spans, self.blocks):
                # block i's last spans[i] rows of each run
                self.kv[slots, sl] = kv.reshape(k, w, -1)[rows, w - span:]
                self.have[slots, sl] = have.reshape(k, w)[rows, w - span:] & inside[rows, w - span:]
            self.newest = max(self.newest, float(np.max(ts)))
            self._evict()

    def _slot(self, host: str) -> int:
        """``host``'s slot, taken (from a free one, by growing, or from the least recently
        used host past ``max_hosts``) if it has none; the host becomes the most recent."""
        slot = self.slots.get(host)
        if slot is None:
            if not self.free and len(self.slots) >= self.max_hosts:
                self.free.append(self.slots.popitem(last=False)[1])
            if not self.free:
                self._grow(min(self.max_hosts, 2 * len(self.ts)))
            slot = self.free.pop()
        self.slots[host] = slot
        self.slots.move_to_end(host)
        return slot

    def _grow(self, cap: int, n_fields: int | None = None, d2: int | None = None, dtype=None) -> None:
        old = 0 if self.ts is None else len(self.ts)
        if self.ts is None:
            # token ids are below the vocabulary size, link counts at most max(spans)
            self.ids = np.zeros((0, self.n_ids, n_fields), np.int32)
            self.links = np.zeros((0, self.n_links), np.int16)
            self.kv = np.zeros((0, self.n_ids, d2), dtype)
            self.have = np.zeros((0, self.n_ids), bool)
            self.ts = np.zeros(0, np.float64)
        grow = cap - old
        self.ids = np.concatenate([self.ids, np.zeros((grow,) + self.ids.shape[1:], self.ids.dtype)])
        self.links = np.concatenate([self.links, np.zeros((grow,) + self.links.shape[1:], np.int16)])
        self.kv = np.concatenate([self.kv, np.zeros((grow,) + self.kv.shape[1:], self.kv.dtype)])
        self.have = np.concatenate([self.have, np.zeros((grow,) + self.have.shape[1:], bool)])
        self.ts = np.concatenate([self.ts, np.zeros(grow)])
        self.free.extend(range(cap - 1, old - 1, -1))

    def _evict(self) -> None:
        """From the least recently used end, hosts whose latest conn is past the horizon
        (module docstring); ``_slot`` keeps at most ``max_hosts``."""
        cut = self.newest - self.horizon
        while self.slots:
            host, slot = next(iter(self.slots.items()))
            if self.ts[slot] >= cut:
                break
            del self.slots[host]
            self.free.append(slot)

"""Inputs of the multi-modal autoencoder's three adapters (docs/models.md section 2).

For each conn record:

- **quantities**: the shared flow feature vector (``FlowFeaturizer``), ``[n, Q]``;
- **sequence**: ``[n, 32, C]``, the first 32 packets of the conn from ``zeekml_flow.log``
  (``packets``: present, direction, log IP length, log inter-arrival, SYN/ACK/FIN/RST/PSH) when the
  pretraining corpus has that log, else the same originator's last 32 conns of the past hour
  (``host_max_age``) up to and including this one (``host``: present, log gap, log bytes each
  way, log duration, log packets, same responder as now, no reply). Steps before the first are zero (``present`` = 0);
- **entities**: ``[n, E]``, Word2Vec vectors of ``orig_h``, ``resp_h`` and ``resp_p/proto``, one
  "unseen" flag for each of the three, and one-hots of ``service`` and ``history`` (top values
  plus "other").

IP and port vectors come from skip-gram with negative sampling (``SkipGram``, a small torch
model trained here; DarkVec style) on time-ordered token sequences: per originator, the ports and
responders it contacts; per port, the originators that contact it. Values seen fewer than
``min_count`` times are replaced in the corpus by an "unseen" token of their class (IPv4
private/public/multicast/..., IPv6 ...; port bucket/proto), so a value never seen in pretraining
gets the vector of rare values of its class instead of nothing.

``hide_service`` blanks service and ports everywhere they appear (quantity columns, port vector,
service one-hot) and says which columns it blanked, so the loss can leave them out.
"""
from __future__ import annotations

import functools
import glob
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.features import table_memo
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.features.host_history import HostHistory, distinct_codes, flow_rows

if TYPE_CHECKING:
    from zeekml.parse.reject import Quarantine

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SEQ_LEN = 32
PACKET_CHANNELS = ("present", "dir", "log_ip_len", "log_iat", "syn", "ack", "fin", "rst", "psh")
HOST_CHANNELS = ("present", "log_gap", "log_orig_bytes", "log_resp_bytes", "log_duration",
                 "log_orig_pkts", "same_resp_h", "no_reply")
_TCP_FLAG_BITS = (0x02, 0x10, 0x01, 0x04, 0x08)  # SYN ACK FIN RST PSH
ENTITY_SLOTS = ("orig_h", "resp_h", "port")


# -- flow logs (packet sequences) -------------------------------------------------------------

def find_flow_logs(paths: list[str]) -> list[str]:
    """``zeekml_flow`` logs among ``paths`` and beside the conn logs they name (same directory)."""
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.realpath(p)
        if key not in seen and os.path.isfile(p):
            seen.add(key)
            out.append(p)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for f in sorted(glob.glob(os.path.join(p, "**", "zeekml_flow*.log*"), recursive=True)):
                add(f)
        elif os.path.basename(p).startswith("zeekml_flow"):
            add(p)
        elif os.path.exists(p):
            for f in sorted(glob.glob(os.path.join(os.path.dirname(p) or ".", "zeekml_flow*.log*"))):
                add(f)
    return out


def load_flow_table(paths: list[str], quarantine: "Quarantine | None" = None) -> pa.Table | None:
    """The ``zeekml_flow`` records under ``paths`` (see ``find_flow_logs``), or None; malformed
    records go to ``quarantine`` (give one: a bare default only counts them)."""
    from zeekml.parse import Quarantine, read_log

    tables = []
    q = quarantine if quarantine is not None else Quarantine()
    for f in find_flow_logs(paths):
        for b in read_log(f, q):
            if b.log_path.startswith("zeekml_flow"):
                t = pa.Table.from_batches([b.batch])
                keep = [c for c in ("uid", "dirs", "ip_lens", "iats", "tcp_flags") if c in t.column_names]
                if len(keep) == 5:
                    tables.append(t.select(keep))
    if not tables:
        return None
    uids = []
    for t in tables:
        col = t.column("uid")
        if not pa.types.is_string(col.type):
            col = pa.array([None if v is None else (v.decode("utf-8", "replace") if isinstance(v, bytes)
                                                      else str(v)) for v in col.to_pylist()], pa.string())
        uids.append(col)
    out = pa.table({
        "uid": pa.chunked_array([c for u in uids for c in (u.chunks if isinstance(u, pa.ChunkedArray) else [u])],
                                pa.string()),
        **{c: pa.chunked_array([t.column(c).cast(pa.list_(pa.float64())).combine_chunks() for t in tables])
           for c in ("dirs", "ip_lens", "iats", "tcp_flags")},
    })
    return out


def packet_sequences(table: pa.Table, flows: pa.Table | None) -> np.ndarray:
    """``[n, SEQ_LEN, len(PACKET_CHANNELS)]`` raw (unscaled) packet steps, joined on ``uid``."""
    n = table.num_rows
    out = np.zeros((n, SEQ_LEN, len(PACKET_CHANNELS)), dtype=np.float32)
    if flows is None or flows.num_rows == 0 or n == 0:
        return out
    hit = flow_rows(table.column("uid"), flows.column("uid"))
    ok = np.flatnonzero(hit >= 0)
    if len(ok) == 0:
        return out
    sub = flows.take(pa.array(hit[ok]))
    cols = [sub.column(c).combine_chunks() for c in ("dirs", "ip_lens", "iats", "tcp_flags")]
    # a flow's steps: the first k of each list, k = the shortest list (and at most SEQ_LEN)
    k = np.minimum.reduce([pc.list_value_length(c).fill_null(0).to_numpy(zero_copy_only=False)
                           for c in cols]).astype(np.int64)
    k = np.minimum(k, SEQ_LEN)
    seq = np.repeat(np.arange(len(ok)), k)
    step = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)

    def gather(c: pa.ListArray) -> np.ndarray:
        offs = c.offsets.to_numpy()
        vals = pc.fill_null(c.values, 0).to_numpy(zero_copy_only=False).astype(np.float64)
        return vals[offs[seq] + step]

    dirs, lens, iats, flags = (gather(c) for c in cols)
    r = ok[seq]
    out[r, step, 0] = 1.0
    out[r, step, 1] = dirs.astype(np.float32)
    out[r, step, 2] = np.log1p(np.maximum(lens, 0))
    out[r, step, 3] = np.log1p(np.maximum(iats, 0) * 1e3)
    f = flags.astype(np.int64)
    for j, bit in enumerate(_TCP_FLAG_BITS):
        out[r, step, 4 + j] = (f & bit) > 0
    return out


# -- host sequences ----------------------------------------------------------------------------

def _f64(table: pa.Table, name: str) -> np.ndarray:
    v = pc.fill_null(pc.cast(table.column(name), pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    return np.where(np.isfinite(v), np.maximum(v, 0.0), 0.0)


def host_sequences(table: pa.Table, max_age: float | None = None,
                   rows: np.ndarray | None = None,
                   scale: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``[n, SEQ_LEN, len(HOST_CHANNELS)]``: the originator's last 32 conns by ts, this one last;
    with ``rows``, ``[len(rows), ...]`` for those rows only, the whole table their history (what
    a row gets does not depend on which other rows are asked for; a 300k-conn baseline in one
    ``[n, 32, 8]`` array and its temporaries was 1.3 GB).

    ``max_age``: only conns that started at most this many seconds before this one (None = no
    limit). The earliest step's gap is 0, so a conn's sequence depends only on the conns of that
    horizon: split scoring gives each piece ``max_age`` seconds of context and gets the same values.
    Only conns of ``table`` are seen, so scoring a slice sees the history inside the slice.

    ``scale``: float32 ``(mean, std)`` per channel; the sequences are then returned normalised
    as ``ModalityFeaturizer.transform`` normalises them (``normalise_sequences``), bit for bit,
    but each conn's step is normalised once instead of each of the 32 places it is gathered to.
    """
    n = table.num_rows
    m = n if rows is None else len(rows)
    if n == 0 or m == 0:
        return np.zeros((m, SEQ_LEN, len(HOST_CHANNELS)), dtype=np.float32)
    hist = HostHistory.of(table)
    rsp, step = _shared_steps(table, hist)
    # every row in table order when none are asked: a row's values do not depend on the other
    # rows asked, and building them in host order then scattering them back into a zeroed
    # [n, 32, 8] array cost 1.1 s against 0.4 s on 100k conns
    targets = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    idx, valid = hist.window(targets, SEQ_LEN, max_age)
    if scale is not None:
        return _normalised_window(step, idx, valid, rsp[idx] == hist.resp[targets][:, None], *scale)
    seq = step[idx]
    seq *= valid[..., None]                   # in place: [n, 32, 8] temporaries were a third of it
    seq[..., 6] = (rsp[idx] == hist.resp[targets][:, None]) & valid
    seq[np.arange(m), np.argmax(valid, axis=1), 1] = 0.0      # the earliest step's gap
    return seq


def prepare(table: pa.Table) -> None:
    """Compute ``table``'s host-history index and host-sequence steps into the open
    ``table_memo`` scope now (a no-op outside one): what ``host_sequences`` reads of the whole
    table whatever rows it is asked for."""
    if not table_memo.active() or table.num_rows == 0:
        return
    _shared_steps(table, HostHistory.of(table))


def _shared_steps(table: pa.Table, hist: HostHistory) -> tuple[np.ndarray, np.ndarray]:
    """``(responder code of each sorted position, host_steps)`` of ``table``, shared in a
    ``table_memo`` scope."""
    return (table_memo.memoised(table, ("host_resp",), lambda: hist.resp[hist.order]),
            table_memo.memoised(table, ("host_steps",), lambda: host_steps(table, hist)))


def host_steps(table: pa.Table, hist: HostHistory) -> np.ndarray:
    """Each conn's host-sequence step (``HOST_CHANNELS``; ``same_resp`` 0, set per window),
    in ``hist``'s sorted order: what ``host_sequences`` gathers its windows from.

    Shapes:
        ``[n, len(HOST_CHANNELS)]`` float32
    """
    n = table.num_rows
    order, t = hist.order, hist.sorted_ts
    start = hist.group_start == np.arange(n)            # a host's first conn: no gap
    gap = np.zeros(n)
    gap[1:] = np.maximum(t[1:] - t[:-1], 0.0)
    gap[start] = 0.0
    return np.stack([
        np.ones(n),
        np.log1p(gap),
        np.log1p(_f64(table, "orig_bytes")[order]),
        np.log1p(_f64(table, "resp_bytes")[order]),
        np.log1p(_f64(table, "duration")[order]),
        np.log1p(_f64(table, "orig_pkts")[order]),
        np.zeros(n),
        (_f64(table, "resp_pkts")[order] == 0).astype(np.float64),
    ], axis=1).astype(np.float32)


def normalise_sequences(seq: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Raw sequences ``[n, T, C]`` normalised in place and returned: each present step's
    channels less ``mean`` over ``std`` (float32), absent steps' channels 0 (times the
    absent flag), channel 0 (present) kept as it is."""
    first = seq[..., 0].copy()
    present = seq[..., :1] > 0
    seq -= mean
    seq /= std
    seq *= present
    seq[..., 0] = first
    return seq


def _normalised_window(step: np.ndarray, idx: np.ndarray, valid: np.ndarray, same_resp: np.ndarray,
                       mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``normalise_sequences`` of the raw host sequences ``step[idx]`` (absent steps zeroed,
    channel 6 = ``same_resp``, the earliest step's gap 0), computed without them: the steps
    are normalised per conn, an absent step gathers a row of what normalising a zero step and
    zeroing it gives, and channels 0, 6 and the earliest gap are set to their normalised
    values. The same float32 operations on the same values, so the same bits, signs of zero
    included (tests/unit/features/test_modality.py); over 100k conns it avoids four passes
    over the ``[n, 32, 8]`` result.

    Shapes:
        step ``[n, C]`` float32, idx/valid/same_resp ``[m, T]`` -> ``[m, T, C]``
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    # an absent step: its raw values (all >= 0) zeroed give +0.0, normalised, then times the
    # absent flag (0.0): the sign of that zero is the sign of -mean / std, kept
    absent = ((np.zeros(step.shape[1], np.float32) - mean) / std) * np.float32(0.0)
    lookup = np.concatenate([(step - mean) / std, absent[None]])      # row n: an absent step
    seq = lookup[np.where(valid, idx, len(step))]
    one = (np.ones(step.shape[1], np.float32) - mean) / std
    zero = (np.zeros(step.shape[1], np.float32) - mean) / std
    seq[..., 6] = np.where(valid, np.where(same_resp, one[6], zero[6]), absent[6])
    m = len(seq)
    first = np.argmax(valid, axis=1)
    seq[np.arange(m), first, 1] = np.where(valid[np.arange(m), first], zero[1], absent[1])
    seq[..., 0] = valid
    return seq


# -- entities: skip-gram with negative sampling ------------------------------------------------

@functools.lru_cache(maxsize=1 << 16)
def ip_class(ip: str) -> str:
    """A coarse class of an address, used for its "unseen" token."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return "invalid"
    v = "v4" if a.version == 4 else "v6"
    if a.is_multicast:
        return v + "-multicast"
    if a.is_loopback or a.is_link_local:
        return v + "-local"
    if a.is_private:
        return v + "-private"
    return v + "-public"


def port_bucket(port: int | None) -> str:
    if port is None:
        return "none"
    return "well_known" if port < 1024 else "registered" if port < 49152 else "ephemeral"


def ip_token(ip: str | None) -> str:
    return f"ip:{ip or ''}"


def port_token(port: int | None, proto: str | None) -> str:
    return f"port:{'' if port is None else port}/{proto or ''}"


def unseen_token(token: str) -> str:
    """The "unseen" token standing in for ``token`` when it is rare or new."""
    kind, _, value = token.partition(":")
    if kind == "ip":
        return f"ip:<unseen:{ip_class(value)}>"
    port, _, proto = value.partition("/")
    return f"port:<unseen:{port_bucket(int(port) if port.isdigit() else None)}/{proto}>"


UNSEEN_TOKENS = tuple(
    [f"ip:<unseen:{v}-{k}>" for v in ("v4", "v6") for k in ("multicast", "local", "private", "public")]
    + ["ip:<unseen:invalid>"]
    + [f"port:<unseen:{b}/{p}>" for b in ("well_known", "registered", "ephemeral", "none")
       for p in ("tcp", "udp", "icmp", "")])


def entity_sentences(table: pa.Table) -> list[list[str]]:
    """Time-ordered token sequences: per originator its (port, responder) stream; per port the
    stream of originators contacting it."""
    if table.num_rows == 0:
        return []
    ts = pc.fill_null(table.column("ts"), 0.0).to_numpy(zero_copy_only=False)
    order = np.argsort(ts, kind="stable")
    oh = table.column("id.orig_h").to_pylist()
    rh = table.column("id.resp_h").to_pylist()
    rp = table.column("id.resp_p").to_pylist()
    pr = table.column("proto").to_pylist()
    by_host: dict[str, list[str]] = {}
    by_port: dict[str, list[str]] = {}
    for i in order:
        pt = port_token(rp[i], pr[i])
        by_host.setdefault(oh[i] or "", []).extend((pt, ip_token(rh[i])))
        by_port.setdefault(pt, []).append(ip_token(oh[i]))
    return [s for s in list(by_host.values()) + list(by_port.values()) if len(s) > 1]


@dataclass
class SkipGramConfig:
    """Skip-gram with negative sampling.

    Args:
        dim: vector width (default 16).
        window: context tokens each side (default 4).
        negatives: negative samples per pair (default 5).
        epochs: passes over the (capped) pairs (default 2).
        lr: Adam learning rate (default 0.02).
        min_count: values seen fewer times become their class's "unseen" token (default 2).
        max_pairs: cap on training pairs, sampled uniformly (default 120_000).
        batch_size: pairs per step (default 2048).
        min_steps: at least this many optimiser steps, however small the corpus (default 300).
    """

    dim: int = 16
    window: int = 4
    negatives: int = 5
    epochs: int = 2
    lr: float = 0.02
    min_count: int = 2
    max_pairs: int = 120_000
    batch_size: int = 2048
    min_steps: int = 300


# Most unseen tokens whose class row ``SkipGram.lookup`` keeps (emptied when full).
UNSEEN_MEMO = 1 << 16


class SkipGram:
    """A torch skip-gram: ``fit(sentences)`` learns ``vectors[token]`` (L2-normalised).

    Shapes:
        vectors: ``[len(tokens), dim]``
    """

    def __init__(self, config: SkipGramConfig | None = None, tokens: list[str] | None = None,
                 vectors: np.ndarray | None = None):
        self.config = config or SkipGramConfig()
        self.tokens: list[str] = list(tokens or [])
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.vectors = vectors if vectors is not None else np.zeros((0, self.config.dim), np.float32)

    def lookup(self, token: str) -> tuple[int, bool]:
        """``(row, unseen)``: the token's row, or its "unseen" class token's row."""
        i = self.index.get(token)
        if i is not None:
            return i, False
        # an unseen token's class parses the address (``ip_class``, ~4 us): live scoring looks
        # up the same few hundred addresses in every release (0.06 of the autoencoder's 1.3 CPU
        # s over bench/watch.py's dense probe), so the answers are kept, bounded
        seen = self.__dict__.setdefault("_unseen", {})
        hit = seen.get(token)
        if hit is None:
            if len(seen) >= UNSEEN_MEMO:
                seen.clear()
            hit = seen[token] = self.index.get(unseen_token(token),
                                               self.index.get("ip:<unseen:invalid>", 0))
        return hit, True

    def fit(self, sentences: list[list[str]], seed: int = 0) -> "SkipGram":
        import torch

        cfg = self.config
        counts: dict[str, int] = {}
        for s in sentences:
            for t in s:
                counts[t] = counts.get(t, 0) + 1
        keep = sorted(t for t, c in counts.items() if c >= cfg.min_count)
        self.tokens = list(UNSEEN_TOKENS) + [t for t in keep if t not in UNSEEN_TOKENS]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.__dict__.pop("_unseen", None)          # lookup's answers for the old vocabulary
        ids, sid = [], []
        for j, s in enumerate(sentences):
            ids.extend(self.index[t] if counts[t] >= cfg.min_count else self.index[unseen_token(t)] for t in s)
            sid.extend([j] * len(s))
        ids_a, sid_a = np.asarray(ids, np.int64), np.asarray(sid, np.int64)
        centers, contexts = [], []
        for d in range(1, cfg.window + 1):
            same = sid_a[d:] == sid_a[:-d]
            a, b = ids_a[:-d][same], ids_a[d:][same]
            centers += [a, b]
            contexts += [b, a]
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        v = len(self.tokens)
        in_emb = torch.nn.Embedding(v, cfg.dim)
        out_emb = torch.nn.Embedding(v, cfg.dim)
        torch.nn.init.uniform_(in_emb.weight, -0.5 / cfg.dim, 0.5 / cfg.dim)
        torch.nn.init.zeros_(out_emb.weight)
        if centers:
            c_all, x_all = np.concatenate(centers), np.concatenate(contexts)
            if len(c_all) > cfg.max_pairs:
                pick = rng.choice(len(c_all), cfg.max_pairs, replace=False)
                c_all, x_all = c_all[pick], x_all[pick]
            freq = np.bincount(ids_a, minlength=v).astype(np.float64) ** 0.75
            noise = torch.as_tensor(freq / freq.sum(), dtype=torch.float32)
            opt = torch.optim.Adam(list(in_emb.parameters()) + list(out_emb.parameters()), lr=cfg.lr)
            c_t, x_t = torch.as_tensor(c_all), torch.as_tensor(x_all)
            gen = torch.Generator().manual_seed(seed)
            per_epoch = -(-len(c_t) // cfg.batch_size)
            for _ in range(max(cfg.epochs, -(-cfg.min_steps // per_epoch))):
                perm = torch.randperm(len(c_t), generator=gen)
                for k in range(0, len(perm), cfg.batch_size):
                    b = perm[k:k + cfg.batch_size]
                    u = in_emb.weight[c_t[b]]                             # [B, d]
                    pos = out_emb.weight[x_t[b]]                          # [B, d]
                    neg = out_emb.weight[torch.multinomial(noise, len(b) * cfg.negatives, True,
                                                           generator=gen).view(len(b), cfg.negatives)]  # [B, k, d]
                    loss = -(torch.nn.functional.logsigmoid((u * pos).sum(-1))
                             + torch.nn.functional.logsigmoid(-(neg @ u.unsqueeze(-1)).squeeze(-1)).sum(-1)).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                log.info("skip-gram epoch: %d tokens, %d pairs, last loss %.3f", v, len(c_t),
                         float(loss.detach()))
        vec = in_emb.weight.detach().numpy().astype(np.float32)
        # an "unseen" class never met in training gets the mean vector of its kind
        seen = np.bincount(ids_a, minlength=v) > 0 if len(ids_a) else np.zeros(v, bool)
        for kind in ("ip:", "port:"):
            rows = np.array([i for i, t in enumerate(self.tokens) if t.startswith(kind)])
            ok = rows[seen[rows]] if len(rows) else rows
            mean = vec[ok].mean(axis=0) if len(ok) else np.zeros(cfg.dim, np.float32)
            for i in rows:
                if not seen[i]:
                    vec[i] = mean
        norm = np.linalg.norm(vec, axis=1, keepdims=True)
        self.vectors = vec / np.where(norm > 1e-9, norm, 1.0)
        return self

    def similarity(self, a: str, b: str) -> float:
        return float(self.vectors[self.lookup(a)[0]] @ self.vectors[self.lookup(b)[0]])


# -- the three modalities together -------------------------------------------------------------

@dataclass
class Modalities:
    """One batch of adapter inputs and the columns the loss may use.

    Shapes:
        quantity: ``[n, Q]``; sequence: ``[n, SEQ_LEN, C]``; entity: ``[n, E]``;
        quantity_keep: ``[Q]`` bool; entity_keep: ``[E]`` bool (False = blanked by hide_service).
    """

    quantity: np.ndarray
    sequence: np.ndarray
    entity: np.ndarray
    quantity_keep: np.ndarray
    entity_keep: np.ndarray

    def __len__(self) -> int:
        return len(self.quantity)

    def take(self, rows: np.ndarray) -> "Modalities":
        return Modalities(self.quantity[rows], self.sequence[rows], self.entity[rows],
                          self.quantity_keep, self.entity_keep)

    def concat(self) -> np.ndarray:
        """Everything flattened side by side: the "raw concatenated features" baseline."""
        n = len(self.quantity)
        return np.concatenate([self.quantity[:, self.quantity_keep], self.sequence.reshape(n, -1),
                               self.entity[:, self.entity_keep]], axis=1)


@dataclass
class ModalityFeaturizer:
    """conn table (+ optional ``zeekml_flow`` records) -> ``Modalities``.

    Args:
        seq_source: ``packets``, ``host`` or ``auto`` (default: ``packets`` when at least half
            the conns of the fitting corpus have a flow record, else ``host``).
        top_services: services with their own one-hot (default 16).
        top_histories: ``history`` strings with their own one-hot (default 32).
        skipgram: the IP/port embedding settings.
        host_max_age: host sequences hold only conns this many seconds old or newer
            (default 3600; None = no limit, as in models saved before this setting).
    """

    seq_source: str = "auto"
    host_max_age: float | None = 3600.0
    top_services: int = 16
    top_histories: int = 32
    skipgram: SkipGramConfig = field(default_factory=SkipGramConfig)
    flow: FlowFeaturizer = field(default_factory=FlowFeaturizer)
    services: list[str] = field(default_factory=list)
    histories: list[str] = field(default_factory=list)
    seq_mean: list[float] = field(default_factory=list)
    seq_std: list[float] = field(default_factory=list)
    w2v: SkipGram = field(default_factory=SkipGram)
    schema_version: int = SCHEMA_VERSION

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, table: pa.Table, flows: pa.Table | None = None, seed: int = 0) -> "ModalityFeaturizer":
        if self.seq_source == "auto":
            covered = 0
            if flows is not None and flows.num_rows:
                fu = set(flows.column("uid").to_pylist())
                covered = sum(u in fu for u in table.column("uid").to_pylist())
            self.seq_source = "packets" if table.num_rows and covered >= 0.5 * table.num_rows else "host"
        self.flow = FlowFeaturizer().fit(table)
        self.services = _top(table.column("service").to_pylist(), self.top_services)
        self.histories = _top(table.column("history").to_pylist(), self.top_histories)
        raw = self._raw_sequence(table, flows)
        present = raw[..., 0] > 0
        steps = raw[present] if present.any() else np.zeros((1, raw.shape[-1]), np.float32)
        mean, std = steps.mean(axis=0), steps.std(axis=0)
        mean[0], std[0] = 0.0, 1.0
        self.seq_mean = mean.tolist()
        self.seq_std = np.where(std > 1e-6, std, 1.0).tolist()
        self.w2v = SkipGram(self.skipgram).fit(entity_sentences(table), seed=seed)
        return self

    @property
    def seq_channels(self) -> tuple[str, ...]:
        return PACKET_CHANNELS if self.seq_source == "packets" else HOST_CHANNELS

    @property
    def quantity_dim(self) -> int:
        return len(self.flow.feature_names)

    @property
    def entity_names(self) -> list[str]:
        d = self.skipgram.dim
        names = [f"{s}_w2v{j}" for s in ENTITY_SLOTS for j in range(d)]
        names += [f"{s}_unseen" for s in ENTITY_SLOTS]
        names += [f"service_{s}" for s in self.services] + ["service_other", "service_none"]
        names += [f"history_{h}" for h in self.histories] + ["history_other"]
        return names

    @property
    def entity_dim(self) -> int:
        return len(self.entity_names)

    def _raw_sequence(self, table: pa.Table, flows: pa.Table | None,
                      rows: np.ndarray | None = None) -> np.ndarray:
        if self.seq_source == "packets":     # a conn's own packets: no other conn matters
            return packet_sequences(table if rows is None else table.take(pa.array(rows, pa.int64())),
                                    flows)
        return host_sequences(table, self.host_max_age, rows)

    @property
    def context_seconds(self) -> float:
        """How far back other conns change a conn's inputs (0 for packet sequences)."""
        if self.seq_source == "packets":
            return 0.0
        return float("inf") if self.host_max_age is None else float(self.host_max_age)

    # -- transforming ------------------------------------------------------------------------

    def transform(self, table: pa.Table, flows: pa.Table | None = None,
                  hide_service: bool = False, rows: np.ndarray | None = None) -> Modalities:
        """The modalities of every conn of ``table``, or of its ``rows`` only (the whole table
        their host history): ``transform(table).take(rows)`` at the cost of ``rows``."""
        if not self.flow.fitted:
            raise RuntimeError("ModalityFeaturizer.transform before fit")
        sub = table if rows is None else table.take(pa.array(np.asarray(rows, np.int64), pa.int64()))
        # in a table_memo scope the quantities come from the whole table's shared flow features
        q = self.flow.transform(table, rows) if table_memo.active() else self.flow.transform(sub)
        # normalised in place (the sequences are a fresh array of ours): the same float32
        # operations, without three [n, 32, C] temporaries and a float32 copy of the result;
        # host sequences come normalised (each conn's step once, not each of its 32 copies)
        mean, std = np.asarray(self.seq_mean, np.float32), np.asarray(self.seq_std, np.float32)
        if self.seq_source == "packets":
            seq = normalise_sequences(self._raw_sequence(table, flows, rows), mean, std)
        else:
            seq = host_sequences(table, self.host_max_age, rows, scale=(mean, std))
        ent = self._entities(sub)
        q_keep = np.ones(q.shape[1], dtype=bool)
        e_keep = np.ones(ent.shape[1], dtype=bool)
        if hide_service:
            q_keep = ~self.service_columns(self.flow.feature_names)
            e_keep = ~self.service_columns(self.entity_names)
            q = q * q_keep
            ent = ent * e_keep
        return Modalities(q.astype(np.float32, copy=False), seq.astype(np.float32, copy=False),
                          ent.astype(np.float32, copy=False), q_keep, e_keep)

    @staticmethod
    def service_columns(names: list[str]) -> np.ndarray:
        """Columns that carry service or ports (blanked for the service classification task)."""
        return np.array([n.startswith(("service_", "resp_p_", "port_")) for n in names], dtype=bool)

    def _entities(self, table: pa.Table) -> np.ndarray:
        n = table.num_rows
        d = self.skipgram.dim
        vec = self.w2v.vectors
        if n == 0:
            return np.zeros((0, self.entity_dim), np.float32)
        # Each distinct address and port/proto is looked up once (Arrow dictionary-encodes the
        # columns); rows take their distinct value's vector.
        rows = np.zeros((n, 3), dtype=np.int64)
        unseen = np.zeros((n, 3), dtype=np.float32)
        for j, (tokens, codes) in enumerate((_ip_tokens(table.column("id.orig_h")),
                                             _ip_tokens(table.column("id.resp_h")),
                                             _port_tokens(table))):
            found = [self.w2v.lookup(tok) for tok in tokens]
            rows[:, j] = np.fromiter((r for r, _ in found), np.int64, len(found))[codes]
            unseen[:, j] = np.fromiter((u for _, u in found), np.float32, len(found))[codes]
        parts = [vec[rows[:, j]] if len(vec) else np.zeros((n, d), np.float32) for j in range(3)]
        parts.append(unseen)
        parts.append(_one_hot_column(table.column("service"), self.services, other=True, none=True))
        parts.append(_one_hot_column(table.column("history"), self.histories, other=True, none=False))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    # -- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything but the Word2Vec vectors (``w2v_vectors``), which go with the weights."""
        return {
            "schema_version": self.schema_version, "seq_source": self.seq_source,
            "host_max_age": self.host_max_age,
            "top_services": self.top_services, "top_histories": self.top_histories,
            "skipgram": dict(vars(self.skipgram)), "flow": self.flow.to_dict(),
            "services": self.services, "histories": self.histories,
            "seq_mean": self.seq_mean, "seq_std": self.seq_std, "w2v_tokens": self.w2v.tokens,
        }

    @property
    def w2v_vectors(self) -> np.ndarray:
        return self.w2v.vectors

    @classmethod
    def from_dict(cls, d: dict, w2v_vectors: np.ndarray) -> "ModalityFeaturizer":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"modality schema {d.get('schema_version')} != {SCHEMA_VERSION}")
        sg = SkipGramConfig(**d["skipgram"])
        if len(d["w2v_tokens"]) != len(w2v_vectors):
            raise ValueError("Word2Vec vocabulary and vectors differ in length")
        return cls(seq_source=d["seq_source"], host_max_age=d.get("host_max_age"),
                   top_services=d["top_services"],
                   top_histories=d["top_histories"], skipgram=sg,
                   flow=FlowFeaturizer.from_dict(d["flow"]), services=list(d["services"]),
                   histories=list(d["histories"]), seq_mean=list(d["seq_mean"]),
                   seq_std=list(d["seq_std"]),
                   w2v=SkipGram(sg, d["w2v_tokens"], np.asarray(w2v_vectors, np.float32)))


def _top(values: list, k: int) -> list[str]:
    counts: dict[str, int] = {}
    for v in values:
        if v:
            counts[v] = counts.get(v, 0) + 1
    return [v for v, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:k]]


def _ip_tokens(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """``(distinct ip tokens, code of each row)`` of an address column (``ip_token``)."""
    distinct, codes = distinct_codes(column)
    return [ip_token(v) for v in distinct], codes


def _port_tokens(table: pa.Table) -> tuple[list[str], np.ndarray]:
    """``(distinct port tokens, code of each row)`` of ``id.resp_p``/``proto`` (``port_token``)."""
    port = pc.cast(table.column("id.resp_p"), pa.int64())
    unset = pc.is_null(port).to_numpy(zero_copy_only=False)
    p = np.where(unset, -1, pc.fill_null(port, 0).to_numpy(zero_copy_only=False).astype(np.int64))
    protos, pcode = distinct_codes(table.column("proto"))
    key = (p + 1) * max(len(protos), 1) + pcode
    distinct, codes = np.unique(key, return_inverse=True)
    width = max(len(protos), 1)
    tokens = [port_token(None if k // width == 0 else int(k // width - 1), protos[k % width] if protos else None)
              for k in distinct.tolist()]
    return tokens, codes.reshape(-1)


def _one_hot_column(column: pa.ChunkedArray, vocab: list[str], other: bool, none: bool) -> np.ndarray:
    """``_one_hot`` of a string column (null = ""), computed once per distinct value."""
    distinct, codes = distinct_codes(column)
    return _one_hot(np.asarray(distinct, dtype=object), vocab, other, none)[codes]


def _one_hot(values: np.ndarray, vocab: list[str], other: bool, none: bool) -> np.ndarray:
    cols = [(values == v) for v in vocab]
    known = np.zeros(len(values), dtype=bool)
    for c in cols:
        known |= c
    if other:
        cols.append(~known & (values != "") if none else ~known)
    if none:
        cols.append(values == "")
    if not cols:
        return np.zeros((len(values), 0), np.float32)
    return np.stack(cols, axis=1).astype(np.float32)

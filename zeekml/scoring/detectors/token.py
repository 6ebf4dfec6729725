"""``moe`` and ``dense``: the token transformers as detectors (the inference half of the kinds;
training is ``zeekml.train.moe``).

The anomaly score of a conn is relative to the baseline the detector is fitted on
(``zeekml.scoring.detectors.reference``), never to the pretraining corpus: see ``TokenDetector``.
``moe`` is ``MoEEncoder``; ``dense`` is ``DenseEncoder``, its twin with the same active parameters.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.device import batch_rows, inference_batch
from zeekml._core.errors import ModelError
from zeekml.features.tokens import MASK, PAD, SCHEMA_VERSION, FlowTokenizer
from zeekml.scoring.detectors.base import head_proba, load_checked, sub_state, torch_module
from zeekml.scoring.detectors.reference import (KnnReference, ReferenceSplitFit, ZReference,
                                                make_reference)
from zeekml.scoring.detectors.stream_state import StreamState, target_runs
from zeekml.scoring.explain import nearest_text, odds, surprise_text
from zeekml.scoring.registry import register_kind

log = logging.getLogger(__name__)

NAMES = ("moe", "dense")
INFER_BATCH = 1024   # sequences per inference batch on CPU (zeekml._core.device.inference_batch)
STREAM_BATCH = 8192  # target conns per stream pass of a causal_window model (bounds the gathered keys)
# Most targets per host run for which a scoring call uses and keeps the per-host state: measured
# (bench/moe_live.py, replayed watch calls) 1.45x the embedding's speed at ~2 targets a run,
# 1.22x at 10, 0.89x at 116 (one busy host: its cone is ~5% of the work, the bookkeeping more).
STATE_TARGETS_PER_RUN = 32
# What the shipped detector compares against (measured, bench/detect_models.py).
DEFAULT_REFERENCE = "knn"


def encoder_from_dict(kind: str, d: dict):
    """The encoder of ``kind`` rebuilt from its constructor dict (``config["encoder"]``)."""
    from zeekml.nn.dense import DenseConfig, DenseEncoder
    from zeekml.nn.moe import MoEEncoder

    return MoEEncoder.from_dict(d) if kind == "moe" else DenseEncoder(DenseConfig.from_dict(d))


def add_routing(acc: list[dict], stats: list) -> None:
    """Add one forward pass's routing statistics (per MoE layer) to ``acc``."""
    for i, s in enumerate(stats):
        if len(acc) <= i:
            acc.append({"tokens_per_expert": np.zeros(len(s.tokens_per_expert), np.int64),
                        "first_choice": np.zeros(len(s.first_choice), np.int64), "dropped": 0, "routed": 0})
        acc[i]["tokens_per_expert"] += s.tokens_per_expert.cpu().numpy()
        acc[i]["first_choice"] += s.first_choice.cpu().numpy()
        acc[i]["dropped"] += int(s.dropped)
        acc[i]["routed"] += int(s.routed)


def routing_summary(routing: list[dict]) -> list[dict]:
    """Per MoE layer: tokens per expert, share of the busiest expert, dropped share."""
    out = []
    for i, r in enumerate(routing):
        tpe = r["tokens_per_expert"]
        out.append({"layer": 2 * i + 1, "tokens_per_expert": tpe.tolist(),
                    "max_expert_share": float(tpe.max() / max(tpe.sum(), 1)),
                    "dropped": int(r["dropped"]), "routed": int(r["routed"]),
                    "dropped_share": float(r["dropped"] / max(r["routed"], 1))})
    return out


class LoadedTokenModel:
    """Tokenizer, encoder, masked-token head and (finetuned) classifier head of a model dir."""

    def __init__(self, config: dict, state: dict, device: str = "cpu"):
        from zeekml.nn.dense import ClassifierHead, FieldHead

        if config.get("schema_version") != SCHEMA_VERSION:
            raise ModelError(f"token schema {config.get('schema_version')} != {SCHEMA_VERSION}; "
                             "pretrain the model again with this zeekml")
        self.config = config
        self.kind = config["kind"]
        self.device = device
        self.tokenizer = FlowTokenizer.from_dict(config["tokenizer"])
        self.encoder = encoder_from_dict(self.kind, config["encoder"])
        self.encoder.load_state_dict(sub_state(state, "encoder."))
        self.encoder.to(device).eval()
        d = self.encoder.config.d_model
        self.mlm = FieldHead(d, self.tokenizer.field_sizes)
        self.mlm.load_state_dict(sub_state(state, "mlm."))
        self.mlm.to(device).eval()
        self.classes: list[str] = list(config.get("classes") or [])
        self.head = None
        if config.get("head"):
            h = config["head"]
            self.head = ClassifierHead(h["in_dim"], h["n_classes"], h["hidden"], 0.0)
            self.head.load_state_dict(sub_state(state, "head."))
            self.head.to(device).eval()
        self.hide_service = bool(config.get("hide_service"))

    @classmethod
    def from_dir(cls, model_dir: str, device: str = "cpu") -> LoadedTokenModel:
        """A moe/dense model directory, verified against its manifest."""
        config, state = load_checked(model_dir, NAMES, SCHEMA_VERSION, device)
        return cls(config, state, device)

    @property
    def causal(self) -> bool:
        """A ``causal_window`` encoder (``zeekml.nn.dense``): host streams, no CLS position."""
        return bool(self.encoder.config.causal)

    @property
    def context_seconds(self) -> float:
        """How far back a conn's host tokens reach (the tokenizer's ``max_age``). A
        ``causal_window`` model attends within ``max_age`` per block, so its conns reach
        ``n_layers`` hops of ``max_age`` back, plus one for the earliest token's own gap."""
        tok = self.tokenizer
        if self.causal:
            return tok.context_seconds * (self.encoder.config.n_layers + 1)
        return tok.context_seconds

    @property
    def context_key_rows(self) -> int | None:
        """How many of the originator's conns can change a conn's score: the ``seq_len``
        latest, itself included (the first step's gap is unset, so nothing before them counts);
        ``scoring.context`` then keeps only those of a busy host's hour. None for packet tokens."""
        tok = self.tokenizer
        if tok.source != "host":
            return None
        # a stream token's gap and responder are relative to the host's previous conn: one more
        return tok.seq_len + 1 if self.causal else tok.seq_len

    def tokens(self, table: pa.Table, flows: pa.Table | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Token ids ``[n, L, f]`` of ``table`` (or of its ``rows``, the rest as context).

        A ``causal_window`` model's windows are ``FlowTokenizer.stream_windows``, returned as
        ``[n, L, f + 1]``: the last column is each position's ``reach``, so that every slice of
        the array keeps the two together (``split``)."""
        if self.causal:
            ids, reach = self.tokenizer.stream_windows(table, rows, hide_service=self.hide_service)
            return np.concatenate([ids, reach[..., None]], axis=-1)
        if self.tokenizer.source == "packets" and flows is None:
            log.warning("this model reads packet tokens from zeekml_flow.log and none was given; "
                        "conns are scored from empty sequences")
        return self.tokenizer.transform(table, flows, rows=rows, hide_service=self.hide_service)

    def split(self, x):
        """``(ids [b, L, f], reach [b, L] or None)`` of what ``tokens`` returned (a tensor)."""
        if self.causal:
            return x[..., :-1], x[..., -1]
        return x, None

    def states(self, ids, reach=None):
        """``(EncoderOutput, token states [b, L, d])``: the encoder on ``ids`` and the states of
        its token positions (CLS dropped; a causal encoder has none)."""
        if self.causal:
            out = self.encoder(ids, reach=reach)
            return out, out.hidden
        out = self.encoder(ids)
        return out, out.hidden[:, 1:]

    def stream_embedding(self, table: pa.Table, rows: np.ndarray | None = None,
                         state: StreamState | None = None) -> np.ndarray:
        """A ``causal_window`` model's embedding of each of ``rows`` (default all), ``[n, d]``:
        the final state at the conn's own position of its host's stream, one pass over the
        stream (``FlowTokenizer.host_stream``; each conn in the windows of the rows is pushed
        through each block once, not once per window). Neither a CLS (a stream has none; one per
        conn would need a pass per conn) nor a mean over the window's states (those reach
        further back than the window) is added: the own position is the one state whose
        receptive field is exactly the conn's window. Targets go through the encoder in stream
        order, ``STREAM_BATCH`` at a time; a row's bits do not depend on the others.

        ``state``: per-host keys and values kept between calls (``stream_state``): used where
        they match this stream, updated with each host's last conn scored here. The same bits
        as without it."""
        torch = torch_module()
        enc = self.encoder
        st = self.tokenizer.host_stream(table, rows, width=max(enc.spans, default=0),
                                        hide_service=self.hide_service)
        d = enc.config.d_model
        out = np.zeros((len(st.targets), d), np.float32)
        if len(st.targets) == 0:
            return out
        order = np.argsort(st.targets, kind="stable")
        tg = st.targets[order]
        ctx = sum(enc.spans)             # a target's output reads at most this many rows back
        batch = inference_batch(self.device, STREAM_BATCH)
        live = None
        if state is not None:
            runs = target_runs(st.run_start, st.targets)
            # the state saves a run's cone before its first target (~sum(spans) rows a block):
            # worth its bookkeeping when runs hold few targets (many hosts, small windows)
            if len(st.targets) <= STATE_TARGETS_PER_RUN * len(runs.first):
                live = _LiveState(state, st, table, runs)
        with torch.inference_mode():
            for s in range(0, len(tg), batch):
                t = tg[s:s + batch]
                lo, hi = max(int(t[0]) - ctx, 0), int(t[-1]) + 1
                keys = st.keys[lo:hi] - lo
                keys[st.keys[lo:hi] < lo] = -1
                known, keep = ((None, None) if live is None
                               else live.batch(lo, int(t[0]), hi, torch, self.device))
                res = enc.forward_stream(torch.as_tensor(st.ids[lo:hi], device=self.device),
                                         torch.as_tensor(keys, device=self.device),
                                         torch.as_tensor(t - lo, device=self.device),
                                         known=known, keep_kv=keep)
                out[order[s:s + batch]] = res.hidden.float().cpu().numpy()
                if live is not None:
                    live.kept(res.stream_kv)
        if live is not None:
            live.store()
        if state is not None:
            # watch -vv: whether the state paid in each release, and what each one cost
            log.debug("causal %s: a stream of %d rows for %d targets in %d runs, the per-host "
                      "state %s (%d hosts kept; %d runs matched, %d not, in all calls so far)",
                      self.kind, len(st.ids), len(st.targets), len(runs.first),
                      "used" if live is not None else "not used", len(state), state.hits,
                      state.misses)
        return out

    def stream_proba(self, table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """A ``causal_window`` classifier's class probabilities ``[n, C]`` of ``rows`` (default
        all): its head (layer norm and one linear layer: ``procedure="lp"``) on
        ``stream_embedding``, run padded (``head_proba``), so that a row's bits do not depend on
        the rows beside it."""
        if self.head is None or not self.causal:
            raise ModelError("stream_proba needs a causal_window model with a classifier head")
        h = self.stream_embedding(table, rows)
        return head_proba(self.head, h, len(self.classes), self.device)

    @property
    def infer_rows(self) -> int:
        """Rows per batch of ``run`` and ``embed`` (in row order: a caller that cuts rows at
        multiples of it, ``classifier.part_bounds``, runs each row in the batch it would be in)."""
        return inference_batch(self.device, INFER_BATCH)

    def run(self, ids: np.ndarray, want: tuple[str, ...] = ("proba", "score")) -> dict:
        """Batched inference: ``proba`` ``[n, C]`` (with a head), ``score`` ``[n]`` and ``routing``
        (tokens per expert and dropped assignments, summed over batches, per MoE layer). The
        head's pass counts every position of its last block in ``routing`` only when
        ``"routing"`` is in ``want``; otherwise that block computes the two positions the
        pooled state reads (anchor ``last``: ``embedding``'s way; ``zeekml score``'s known-bad
        classifiers), and ``routing`` counts those."""
        torch = torch_module()
        from zeekml.nn.dense import pool

        probas, scores = [], []
        routing: list[dict] = []
        pooled = "routing" not in want and self.tokenizer.anchor == "last"
        with torch.inference_mode():
            batch = self.infer_rows
            for s in range(0, len(ids), batch):
                x = torch.as_tensor(ids[s:s + batch], device=self.device)
                if "proba" in want and self.head is not None:
                    if self.causal:
                        # its head reads the stream embedding, not a window's pooled states
                        raise ModelError("a causal_window classifier scores host streams "
                                         "(stream_proba), not token windows")
                    out = self.encoder(x, positions=[0, x.shape[1]] if pooled else None)
                    add_routing(routing, out.routing)
                    z = pool(out.hidden, x, self.tokenizer.anchor)
                    probas.append(torch.softmax(self.head(z), dim=-1).cpu().numpy())
                if "score" in want:
                    scores.append(self._nll(x, routing if self.head is None else None).cpu().numpy())
        res: dict = {"routing": routing}
        if probas:
            res["proba"] = np.concatenate(probas)
        elif "proba" in want and self.head is not None:
            res["proba"] = np.zeros((0, len(self.classes)))
        if "score" in want:
            res["score"] = np.concatenate(scores) if scores else np.zeros(0)
        return res

    def score_mask(self, x):
        """Which tokens are masked for the anomaly score: the conn itself (host) or every third
        packet (packets). Shapes: ``x [b, L, f]`` -> ``[b, L]`` bool."""
        torch = torch_module()
        x, _ = self.split(x)
        b, L, _ = x.shape
        m = torch.zeros(b, L, dtype=torch.bool, device=x.device)
        if self.tokenizer.anchor == "last":
            m[:, -1] = True
        else:
            m[:, ::3] = True
        return m & (x[..., 0] != PAD)

    def field_nll(self, x, routing: list | None = None):
        """Per sequence and token field: mean over masked tokens of the field's NLL (a field a
        token hides counts 0). Shapes: ``x [b, L, f]`` -> ``[b, f]``."""
        torch = torch_module()
        m = self.score_mask(x)
        x, reach = self.split(x)
        inp = torch.where(m.unsqueeze(-1), torch.full_like(x, MASK), x)
        out, hidden = self.states(inp, reach)
        if routing is not None:
            add_routing(routing, out.routing)
        logits = self.mlm(hidden)
        bases = torch.as_tensor(self.tokenizer.bases, device=x.device)
        local = x - bases
        mf = m.to(torch.float32)
        denom = mf.sum(1).clamp_min(1)
        per_field = []
        for fi, lg in enumerate(logits):
            tgt = local[..., fi].clamp_min(0)
            lp = torch.log_softmax(lg.float(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            nll = -torch.where(local[..., fi] > 0, lp, torch.zeros_like(lp))   # hidden: skip
            per_field.append((nll * mf).sum(1) / denom)
        return torch.stack(per_field, 1)

    def _nll(self, x, routing: list | None):
        """Per sequence: mean over masked tokens of the summed field NLL (the pretraining-relative
        score ``predict`` and ``eval`` report). Shapes: ``x [b, L, f]`` -> ``[b]``."""
        return self.field_nll(x, routing).sum(1)

    def profile(self, ids: np.ndarray, want: tuple[str, ...] = ("embedding", "parts", "raw")
                ) -> dict[str, np.ndarray]:
        """What the model makes of each sequence: ``embedding`` ``[n, 2d]`` (the pooled states of
        an unmasked pass, as the classifier head sees them), ``parts`` ``[n, f]`` (per-field NLL
        of the masked conn) and ``raw`` ``[n]`` (their sum); only the keys in ``want``. The
        embedding and the NLL are two encoder passes (unmasked, masked): asking for one costs one."""
        torch = torch_module()
        from zeekml.nn.dense import pool

        embs, fields = [], []
        nll = "parts" in want or "raw" in want
        with torch.inference_mode():
            batch = self.infer_rows
            for s in range(0, len(ids), batch):
                n = min(batch, len(ids) - s)
                x = torch.as_tensor(ids[batch_rows(s, s + n)], device=self.device)
                if "embedding" in want and self.causal:
                    # the state at the conn's own (last) position: stream_embedding's value
                    h = self.states(*self.split(x))[1][:, -1]
                    embs.append(h[:n].float().cpu().numpy())
                elif "embedding" in want:
                    # pooled from the CLS and last positions alone (anchor "last"): the last
                    # block computes just those two (1.09x the MoE, 1.15x the dense encoder)
                    last = self.tokenizer.anchor == "last"
                    h = self.encoder(x, positions=[0, x.shape[1]] if last else None).hidden
                    embs.append(pool(h, x, self.tokenizer.anchor)[:n].float().cpu().numpy())
                if nll:
                    fields.append(self.field_nll(x)[:n].cpu().numpy())
        d = self.encoder.config.d_model
        f = len(self.tokenizer.field_sizes)
        out = {}
        if "embedding" in want:
            out["embedding"] = (np.concatenate(embs) if embs
                                else np.zeros((0, d if self.causal else 2 * d), np.float32))
        if nll:
            parts = np.concatenate(fields) if fields else np.zeros((0, f), np.float32)
            out.update({k: v for k, v in (("parts", parts), ("raw", parts.sum(axis=1))) if k in want})
        return out


class _LiveState:
    """One ``stream_embedding`` call's use of a ``StreamState``: which rows of the stream are
    known from it, batch by batch, and what to keep of this call's rows."""

    def __init__(self, state: StreamState, st, table: pa.Table, runs):
        self.state, self.st = state, st
        self.runs = runs
        first = st.table_rows[self.runs.first]
        self.hosts = [str(h) if h is not None else "" for h in
                      table.column("id.orig_h").take(pa.array(first, pa.int64())).to_pylist()]
        self.links = (st.keys[:, 1:] >= 0).sum(axis=1)
        known, _ = state.known(self.hosts, self.runs, st.ids, self.links)
        self.known = known
        self.keep, self.which = state.keep_rows(self.runs)
        self.kept_kv: list[list[np.ndarray]] = [[] for _ in state.spans]
        self.kept_have: list[list[np.ndarray]] = [[] for _ in state.spans]
        self.kept_at: list[np.ndarray] = []
        self.table = table

    def batch(self, lo: int, first: int, hi: int, torch, device: str):
        """``(known, keep_kv)`` of ``forward_stream`` for the stream rows ``lo:hi``, whose
        targets are the targets in ``first:hi``."""
        known = []
        for rows, kv in self.known:
            m = (rows >= lo) & (rows < hi)
            known.append((torch.as_tensor(rows[m] - lo, device=device),
                          torch.as_tensor(kv[m], device=device)))
        m = (self.keep >= lo) & (self.keep < hi)
        # a run's last rows are kept by the batch whose targets hold its last conn (the rows
        # before it are in that batch's context)
        last = self.runs.last[self.which]
        own = np.repeat((last >= first) & (last < hi), max(self.state.spans, default=0))
        m &= own
        self.kept_at.append(np.flatnonzero(m))
        return known, torch.as_tensor(self.keep[m] - lo, device=device)

    def kept(self, stream_kv) -> None:
        for i, (kv, have) in enumerate(stream_kv):
            self.kept_kv[i].append(kv.cpu().numpy())
            self.kept_have[i].append(have.cpu().numpy())

    def store(self) -> None:
        at = np.concatenate(self.kept_at) if self.kept_at else np.zeros(0, np.int64)
        if len(at) != len(self.keep):
            raise AssertionError("stream state: a run's last rows were split over batches")
        kept = []
        for kvs, haves in zip(self.kept_kv, self.kept_have):
            kept.append((np.concatenate(kvs), np.concatenate(haves)))
        if not np.array_equal(at, np.arange(len(at))):     # batches kept them out of order
            inv = np.empty(len(self.keep), dtype=np.int64)
            inv[at] = np.arange(len(at))
            kept = [(kv[inv], have[inv]) for kv, have in kept]
        last = self.st.table_rows[self.runs.last[self.which]]
        # the ts of the kept runs' last conns only, not of every conn of the context
        ts = pc.fill_null(pc.cast(self.table.column("ts").take(pa.array(last, pa.int64())),
                                  pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        self.state.store(self.hosts, self.runs, self.which, self.st.ids, self.links, kept, ts)


def position_nll(loaded: LoadedTokenModel, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence, position and field: the NLL of the true token when that position alone is
    masked (every other token in view). One encoder pass per (sequence, position): meant for
    alerts only. Returns ``(valid [n, L] bool, nll [n, L, f])`` (0 where a field is hidden or
    the position is a pad).

    Shapes:
        ids ``[n, L, f]`` -> ``([n, L], [n, L, f])``
    """
    torch = torch_module()
    n, S, F = ids.shape
    F -= int(loaded.causal)           # a causal model's windows carry reach as a last column
    valid = ids[..., 0] != PAD
    nll = np.zeros((n, S, F))
    seq, at = np.nonzero(valid)
    if len(seq) == 0:
        return valid, nll
    bases = np.asarray(loaded.tokenizer.bases, dtype=np.int64)
    batch = inference_batch(loaded.device, INFER_BATCH)
    with torch.inference_mode():
        for s in range(0, len(seq), batch):
            sq, p = seq[s:s + batch], at[s:s + batch]
            x = ids[sq].copy()
            truth = x[np.arange(len(sq)), p, :F] - bases               # local ids [b, f]
            x[np.arange(len(sq)), p, :F] = MASK
            xt = torch.as_tensor(x, device=loaded.device)
            hidden = loaded.states(*loaded.split(xt))[1]                # token states [b, L, d]
            h = hidden[torch.arange(len(sq)), torch.as_tensor(p, device=loaded.device)]
            for f, lg in enumerate(loaded.mlm(h)):
                lp = torch.log_softmax(lg.float(), -1).cpu().numpy()
                t = truth[:, f]
                got = -lp[np.arange(len(sq)), np.clip(t, 0, lp.shape[1] - 1)]
                nll[sq, p, f] = np.where(t > 0, got, 0.0)             # hidden field: not weighed
    return valid, nll


class TokenDetector(ReferenceSplitFit):
    """A pretrained moe/dense token model as a ``Detector``, relative to its baseline.

    Anomalous (``reference="knn"``, the default) = the conn's pooled sequence embedding (its own
    token in the context of its originator's earlier conns) is far (mean cosine distance to the
    ``k`` nearest) from every baseline conn's; with ``reference="zscore"``: some token field of the
    conn is less predictable than it is for the baseline's conns (robust z-scores of per-field
    NLL, positive ones summed). The pretrained weights are used as they are; ``fit`` only builds
    the reference. The raw masked-token NLL is not the score: it measures distance from the
    pretraining corpus (mostly IoT-23 malware), which ranked malware as normal (AUROC 0.27).

    Args:
        loaded: a pretrained moe/dense model directory in memory.
        reference: ``"knn"`` or ``"zscore"`` (default ``DEFAULT_REFERENCE``).
        seed: draws the kNN reference subset of a large baseline (default 0).
    """

    note = "ZeekML::Anomalous_Flow"
    context_key = "id.orig_h"     # host tokens: only the same originator's conns change a score

    def __init__(self, loaded: LoadedTokenModel, reference: str = DEFAULT_REFERENCE, seed: int = 0):
        self.loaded = loaded
        self.name = loaded.kind
        self.reference: KnnReference | ZReference = make_reference(reference, seed)
        self._fitted = False
        self._identity: pa.Table | None = None     # uid, 4-tuple, service of each kNN reference row
        # a causal model's per-host keys and values between score calls (watch's windows)
        self._state = (StreamState(loaded.encoder.spans, self.context_seconds)
                       if loaded.causal and loaded.tokenizer.source == "host" else None)

    def __getstate__(self) -> dict:
        # a copy (a dask worker, a forked scorer) starts with no state of its own: what this
        # process kept is of no use to another and can be tens of MB
        d = dict(self.__dict__)
        if d.get("_state") is not None:
            s = d["_state"]
            d["_state"] = StreamState(s.spans, s.horizon, s.max_hosts)
        return d

    @property
    def context_seconds(self) -> float:
        """How far back a conn's host tokens reach (``LoadedTokenModel.context_seconds``)."""
        return self.loaded.context_seconds

    @property
    def forward_context_seconds(self) -> float:
        """0: a conn's tokens come from its originator's earlier conns (or its own packets)."""
        return 0.0

    @property
    def context_key_rows(self) -> int | None:
        """How many of the originator's conns can change a conn's score
        (``LoadedTokenModel.context_key_rows``)."""
        return self.loaded.context_key_rows

    def profile(self, table: pa.Table, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``LoadedTokenModel.profile`` of the conns of ``table`` (or of its ``rows``, the rest
        as context only: their tokens are not built, the model does not run on them)."""
        return self.loaded.profile(self.loaded.tokens(table, rows=rows))

    def _reference_input(self, table: pa.Table, rows: np.ndarray | None = None,
                         live: bool = False) -> np.ndarray:
        """What the reference compares, computed alone (one encoder pass, not two). ``live``:
        scoring (not fitting), so a causal model uses and updates its per-host state."""
        key = "embedding" if self.reference.kind == "knn" else "parts"
        if key == "embedding" and self.loaded.causal:
            return self.loaded.stream_embedding(table, rows, self._state if live else None)
        return self.loaded.profile(self.loaded.tokens(table, rows=rows), want=(key,))[key]

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row relative to the baseline, ``[n]``."""
        if not self._fitted:
            raise ModelError(f"{self.name} detector: score before fit")
        if table.num_rows == 0:
            return np.zeros(0)
        return self.reference.score(self._reference_input(table))

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]`` at the cost of ``rows`` alone. A causal model keeps each
        host's last keys and values between calls (``stream_state``: watch's windows, dask's
        tasks in one worker; the same bits as without); ``score`` of a whole log keeps none."""
        if not self._fitted:
            raise ModelError(f"{self.name} detector: score_rows before fit")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self.reference.score(self._reference_input(table, rows, live=True))

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Per row, in words: its nearest baseline conns by embedding (kNN reference,
        ``scoring.explain.nearest_text``), then the most surprising token of its sequence: which
        of the host's recent conns (or, for packet tokens, which packet of the conn) the model
        found least likely with every other token in view, and its ``top`` least likely fields
        with the chance the model gave each (``scoring.explain.surprise_text``)."""
        if not self._fitted:
            raise ModelError(f"{self.name} detector: explain before fit")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        L = self.loaded
        ids = L.tokens(table, rows=rows)
        clauses: list[list[str]] = [[] for _ in rows]
        ref = self.reference
        if isinstance(ref, KnnReference):
            emb = (L.stream_embedding(table, rows) if L.causal
                   else L.profile(ids, want=("embedding",))["embedding"])
            # one neighbour: the surprising token follows, and the notice line stays short
            dist, nrows = ref.nearest(emb, 1)
            for c, text in zip(clauses, nearest_text(self._identity, dist, nrows,
                                                     ref.nearest_q99(), len(ref.ref), shown=1)):
                c.append(text)
        for c, text in zip(clauses, self._surprise(table, rows, ids, top)):
            c.append(text)
        return ["; ".join(c) for c in clauses]

    def _surprise(self, table: pa.Table, rows: np.ndarray, ids: np.ndarray, top: int) -> list[str]:
        """The least likely token of each row's sequence, in words (``explain``)."""
        pos, nll = position_nll(self.loaded, ids)
        names = self.loaded.tokenizer.field_names
        tok = self.loaded.tokenizer
        conns = table.take(pa.array(rows)).to_pylist()
        if tok.source == "host":
            from zeekml.features.host_history import HostHistory

            hist = HostHistory.of(table)
            # a causal model's window is the host's last seq_len conns, whatever their age
            steps, _ = hist.window(rows, ids.shape[1], None if self.loaded.causal else tok.max_age)
            src = hist.order[steps]                               # table row of each position
            ts = np.nan_to_num(pc.cast(table.column("ts"), pa.float64()).to_numpy(
                zero_copy_only=False))
            if self.loaded.causal:
                # a stream window holds the host's last seq_len conns of the table, whatever
                # their age, but none older than the detector's reach can move the score, and
                # whether the table holds them depends on where a chunk or release began: those
                # are neither counted nor named (the host's conns of the years before, in a log
                # that repeats itself, were named by one chunking and not another)
                rows_ts = ts[np.asarray(rows, dtype=np.int64)]
                pos = pos & (rows_ts[:, None] - ts[src] <= self.context_seconds)
        out = []
        for i, conn in enumerate(conns):
            valid = np.flatnonzero(pos[i])
            if len(valid) == 0:
                out.append("no token of its sequence to weigh")
                continue
            p = int(valid[np.argmax(nll[i, valid].sum(axis=1))])
            fields = [(names[f], float(nll[i, p, f])) for f in np.argsort(-nll[i, p], kind="stable")[:top]]
            if tok.source == "host":
                at = int(src[i, p])
                what = table.slice(at, 1).to_pylist()[0]
                # the relative fields, as the tokenizer saw them: the gap to the previous
                # conn of the sequence and whether the responder is the alert's
                what["_gap"] = (max(float(ts[at] - ts[int(src[i, p - 1])]), 0.0)
                                if p > 0 and pos[i, p - 1] else None)
                what["_same_resp"] = what.get("id.resp_h") == conn.get("id.resp_h")
                if self.loaded.causal:
                    # a stream token's gap is to the host's previous conn, wherever it is; its
                    # responder field compares with that conn's, not the alert's
                    what["_gap"] = self._stream_gap(hist, ts, at)
                out.append(surprise_text(str(conn.get("id.orig_h")), len(valid), what, fields,
                                         is_self=at == int(rows[i])))
            else:
                parts = ", ".join(f"{f}: {odds(x)}" for f, x in fields)
                out.append(f"of this conn's first {len(valid)} packets the least expected: "
                           f"packet {int(p) + 1} ({parts})")
        return out


    def _stream_gap(self, hist, ts: np.ndarray, at: int) -> float | None:
        """Seconds from the host's previous conn to table row ``at`` (None: none within
        ``max_age``), as a stream token's ``gap`` field reads it."""
        r = int(hist.rank[at])
        if r - 1 < int(hist.group_start[r]):
            return None
        gap = max(float(ts[at] - ts[int(hist.order[r - 1])]), 0.0)
        return gap if gap <= self.loaded.tokenizer.max_age else None


@register_kind(*NAMES)
class TokenKind:
    """The inference half of ``--model moe`` and ``--model dense``."""

    schema_version = SCHEMA_VERSION

    def __init__(self, name: str):
        self.name = name

    def detector(self, model_dir: str, device: str = "cpu") -> TokenDetector:
        """The baseline-relative detector of a pretrained moe/dense directory."""
        loaded = LoadedTokenModel.from_dir(model_dir, device)
        if loaded.kind != self.name:
            raise ModelError(f"a {loaded.kind!r} model, not {self.name!r}", model_dir)
        if loaded.head is not None:
            raise ModelError("a finetuned classifier is not an anomaly detector; use the pretrained base",
                             model_dir)
        return TokenDetector(loaded)

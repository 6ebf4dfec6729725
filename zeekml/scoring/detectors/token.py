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

from zeekml._core.device import inference_batch
from zeekml._core.errors import ModelError
from zeekml.features.tokens import MASK, PAD, SCHEMA_VERSION, FlowTokenizer
from zeekml.scoring.detectors.base import load_checked, sub_state, torch_module
from zeekml.scoring.detectors.reference import KnnReference, ZReference, make_reference
from zeekml.scoring.registry import register_kind

log = logging.getLogger(__name__)

NAMES = ("moe", "dense")
INFER_BATCH = 1024   # sequences per inference batch on CPU (zeekml._core.device.inference_batch)
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

    def tokens(self, table: pa.Table, flows: pa.Table | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Token ids ``[n, L, f]`` of ``table`` (or of its ``rows``, the rest as context)."""
        if self.tokenizer.source == "packets" and flows is None:
            log.warning("this model reads packet tokens from zeekml_flow.log and none was given; "
                        "conns are scored from empty sequences")
        return self.tokenizer.transform(table, flows, rows=rows, hide_service=self.hide_service)

    def run(self, ids: np.ndarray, want: tuple[str, ...] = ("proba", "score")) -> dict:
        """Batched inference: ``proba`` ``[n, C]`` (with a head), ``score`` ``[n]`` and ``routing``
        (tokens per expert and dropped assignments, summed over batches, per MoE layer)."""
        torch = torch_module()
        from zeekml.nn.dense import pool

        probas, scores = [], []
        routing: list[dict] = []
        with torch.inference_mode():
            batch = inference_batch(self.device, INFER_BATCH)
            for s in range(0, len(ids), batch):
                x = torch.as_tensor(ids[s:s + batch], device=self.device)
                if "proba" in want and self.head is not None:
                    out = self.encoder(x)
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
        inp = torch.where(m.unsqueeze(-1), torch.full_like(x, MASK), x)
        out = self.encoder(inp)
        if routing is not None:
            add_routing(routing, out.routing)
        logits = self.mlm(out.hidden[:, 1:])
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
            batch = inference_batch(self.device, INFER_BATCH)
            for s in range(0, len(ids), batch):
                x = torch.as_tensor(ids[s:s + batch], device=self.device)
                if "embedding" in want:
                    embs.append(pool(self.encoder(x).hidden, x, self.tokenizer.anchor).float().cpu().numpy())
                if nll:
                    fields.append(self.field_nll(x).cpu().numpy())
        d = self.encoder.config.d_model
        f = len(self.tokenizer.field_sizes)
        out = {}
        if "embedding" in want:
            out["embedding"] = np.concatenate(embs) if embs else np.zeros((0, 2 * d), np.float32)
        if nll:
            parts = np.concatenate(fields) if fields else np.zeros((0, f), np.float32)
            out.update({k: v for k, v in (("parts", parts), ("raw", parts.sum(axis=1))) if k in want})
        return out


class TokenDetector:
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

    @property
    def context_seconds(self) -> float:
        """How far back a conn's host tokens reach (the tokenizer's ``max_age``)."""
        return self.loaded.tokenizer.context_seconds

    @property
    def forward_context_seconds(self) -> float:
        """0: a conn's tokens come from its originator's earlier conns (or its own packets)."""
        return 0.0

    def profile(self, table: pa.Table, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``LoadedTokenModel.profile`` of the conns of ``table`` (or of its ``rows``, the rest
        as context only: their tokens are not built, the model does not run on them)."""
        return self.loaded.profile(self.loaded.tokens(table, rows=rows))

    def _reference_input(self, table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """What the reference compares, computed alone (one encoder pass, not two)."""
        key = "embedding" if self.reference.kind == "knn" else "parts"
        return self.loaded.profile(self.loaded.tokens(table, rows=rows), want=(key,))[key]

    def fit(self, table: pa.Table) -> TokenDetector:
        """Build the reference from the baseline ``table`` (the weights stay as trained)."""
        self.reference.fit(self._reference_input(table))
        self._fitted = True
        return self

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row relative to the baseline, ``[n]``."""
        if not self._fitted:
            raise ModelError(f"{self.name} detector: score before fit")
        if table.num_rows == 0:
            return np.zeros(0)
        return self.reference.score(self._reference_input(table))

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]`` at the cost of ``rows`` alone."""
        if not self._fitted:
            raise ModelError(f"{self.name} detector: score_rows before fit")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self.reference.score(self._reference_input(table, rows))

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Per row: its distance from the baseline (the score before calibration), then the conn's
        fields the model found least likely (host tokens), with their NLL."""
        torch = torch_module()
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        dist = self.score_rows(table, rows)
        L = self.loaded
        ids = torch.as_tensor(L.tokens(table, rows=rows), device=L.device)
        out = []
        with torch.inference_mode():
            m = L.score_mask(ids)
            inp = torch.where(m.unsqueeze(-1), torch.full_like(ids, MASK), ids)
            logits = L.mlm(L.encoder(inp).hidden[:, 1:])
            bases = torch.as_tensor(L.tokenizer.bases, device=ids.device)
            local = ids - bases
            per_field = []
            for fi, lg in enumerate(logits):
                lp = torch.log_softmax(lg.float(), -1).gather(-1, local[..., fi].clamp_min(0).unsqueeze(-1)).squeeze(-1)
                per_field.append(((-lp) * m).sum(1) / m.sum(1).clamp_min(1))
            pf = torch.stack(per_field, 1).cpu().numpy()
        names = L.tokenizer.field_names
        for i in range(len(rows)):
            idx = np.argsort(-pf[i])[:top]
            out.append(f"{self.reference.kind}={dist[i]:.3g}," +
                       ",".join(f"nll_{names[j]}={pf[i, j]:.3g}" for j in idx))
        return out


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

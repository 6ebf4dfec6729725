"""``mae``: the multi-modal autoencoder as a detector and an embedder (the inference half of the
kind; training is ``zeekml.train.mae``).

The anomaly score of a conn is relative to the baseline the detector is fitted on
(``zeekml.scoring.detectors.reference``), never to the pretraining corpus: see ``MAEDetector``.
``embed`` gives the 64-d embedding that ``zeekml embed`` and ``zeekml similar`` serve.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from zeekml._core.device import batch_rows, inference_batch
from zeekml._core.errors import ModelError
from zeekml.features.modality import SCHEMA_VERSION, Modalities, ModalityFeaturizer
from zeekml.scoring.detectors.base import load_checked, sub_state, torch_module
from zeekml.scoring.detectors.reference import (KnnReference, ReferenceSplitFit, ZReference,
                                                make_reference)
from zeekml.scoring.explain import NEAREST_SHOWN, nearest_text
from zeekml.scoring.registry import register_kind

log = logging.getLogger(__name__)

NAME = "mae"
PARTS = ("quantity", "sequence", "entity")
# What the shipped detector compares against (measured, bench/detect_models.py).
DEFAULT_REFERENCE = "knn"
# Rows per inference batch on CPU (zeekml._core.device.inference_batch). Measured on 16k CTU-34-1
# conns, one thread: 8192 rows 1.5-1.8 s, 1024 rows 0.8-1.0 s (the batch's activations fit in
# cache), 512 no faster; outputs identical whatever the batch.
INFER_BATCH = 1024
# What ``LoadedMAE.run`` can return; the errors need the decoder, the rest the encoder only.
ERRORS = ("quantity", "sequence", "entity", "score")
OUTPUTS = ("embedding", *ERRORS, "proba")


def modality_tensors(m: Modalities, device: str):
    """``(quantity, sequence, entity)`` tensors of ``m`` on ``device``."""
    torch = torch_module()
    return (torch.as_tensor(m.quantity, device=device), torch.as_tensor(m.sequence, device=device),
            torch.as_tensor(m.entity, device=device))


class LoadedMAE:
    """A model directory in memory: featurizer, autoencoder and (finetuned) classifier head."""

    def __init__(self, config: dict, state: dict, device: str = "cpu"):
        from zeekml.nn.mae import EmbeddingClassifier, MAEConfig, MultiModalAutoencoder

        torch = torch_module()
        if config.get("schema_version") != SCHEMA_VERSION:
            raise ModelError(f"modality schema {config.get('schema_version')} != {SCHEMA_VERSION}; "
                             "pretrain the model again with this zeekml")
        self.config = config
        self.device = device
        state = dict(state)
        vectors = state.pop("w2v_vectors").cpu().numpy()
        self.featurizer = ModalityFeaturizer.from_dict(config["featurizer"], vectors)
        self.model = MultiModalAutoencoder(MAEConfig.from_dict(config["mae"]))
        self.model.load_state_dict(sub_state(state, "mae."))
        self.model.to(device).eval()
        self.head = None
        self.classes: list[str] = list(config.get("classes") or [])
        if config.get("head"):
            h = config["head"]
            self.head = EmbeddingClassifier(h["in_dim"], h["n_classes"], h["hidden"])
            self.head.load_state_dict(sub_state(state, "head."))
            self.head.to(device).eval()
            self.emb_mean = torch.tensor(h["emb_mean"], device=device)
            self.emb_std = torch.tensor(h["emb_std"], device=device)
        self.hide_service = bool(config.get("hide_service"))

    @classmethod
    def from_dir(cls, model_dir: str, device: str = "cpu") -> LoadedMAE:
        """An mae model directory, verified against its manifest."""
        config, state = load_checked(model_dir, (NAME,), SCHEMA_VERSION, device)
        return cls(config, state, device)

    def modalities(self, table: pa.Table, flows: pa.Table | None = None,
                   rows: np.ndarray | None = None) -> Modalities:
        """The three input modalities of ``table`` (of its ``rows`` only, the rest as their
        history) as this model was trained on them."""
        if self.featurizer.seq_source == "packets" and flows is None:
            log.warning("this model reads packet sequences from zeekml_flow.log and none was given; "
                        "conns are scored with empty sequences")
        return self.featurizer.transform(table, flows, hide_service=self.hide_service, rows=rows)

    @property
    def context_key_rows(self) -> int | None:
        """How many of the originator's conns can change a conn's featurisation: its host
        sequence's ``SEQ_LEN`` latest, itself included (the earliest step's gap is 0, so nothing
        before them counts); ``scoring.context`` then keeps only those of a busy host's hour
        (live: 1.18-1.46x, docs/results/watch.md). None for packet sequences (the conn's own
        packets)."""
        from zeekml.features.modality import SEQ_LEN

        return SEQ_LEN if self.featurizer.seq_source == "host" else None

    @property
    def infer_rows(self) -> int:
        """Rows per batch of ``run`` (in row order: a caller that cuts rows at multiples of it,
        ``classifier.part_bounds``, runs each row in the batch it would be in)."""
        return inference_batch(self.device, INFER_BATCH)

    def run(self, m: Modalities, want: tuple[str, ...] = OUTPUTS) -> dict[str, np.ndarray]:
        """Embedding, per-modality reconstruction errors and their sum (``score``) and, with a
        head, probabilities: the ``want`` ones (default all). Without an error among them only
        the encoder runs (the decoder and its heads are about half the model's multiply-adds),
        and the embedding is the same bits as the whole model's."""
        from zeekml.nn.mae import reconstruction_error

        unknown = set(want) - set(OUTPUTS)
        if unknown:
            raise ModelError(f"unknown autoencoder outputs {sorted(unknown)} (known: {', '.join(OUTPUTS)})")
        torch = torch_module()
        qk = torch.as_tensor(m.quantity_keep, device=self.device)
        ek = torch.as_tensor(m.entity_keep, device=self.device)
        decode = any(k in want for k in ERRORS)
        proba = "proba" in want and self.head is not None
        parts: dict[str, list[np.ndarray]] = {k: [] for k in want}
        batch = self.infer_rows
        with torch.inference_mode():
            for s in range(0, len(m), batch):
                n = min(batch, len(m) - s)
                q, sq, e = modality_tensors(m.take(batch_rows(s, s + n)), self.device)
                if decode:
                    out = self.model(q, sq, e)
                    z = out.embedding
                    err = reconstruction_error(out, q, sq, e, qk, ek)
                    errors = {"quantity": err.quantity, "sequence": err.sequence,
                              "entity": err.entity, "score": err.total}
                    for k in ERRORS:
                        if k in parts:
                            parts[k].append(errors[k][:n].cpu().numpy())
                else:
                    z = self.model.encode(q, sq, e)
                if "embedding" in parts:
                    parts["embedding"].append(z[:n].cpu().numpy())
                if proba:
                    logits = self.head((z[:n] - self.emb_mean) / self.emb_std)
                    parts["proba"].append(torch.softmax(logits, dim=1).cpu().numpy())
        d = self.model.config.embed_dim
        empty = {"embedding": np.zeros((0, d), np.float32), "proba": np.zeros((0, len(self.classes)))}
        return {k: (np.concatenate(v) if v else empty.get(k, np.zeros(0))) for k, v in parts.items()}


class MAEDetector(ReferenceSplitFit):
    """The multi-modal autoencoder as a ``Detector``, relative to its baseline.

    Anomalous (``reference="knn"``, the default) = the conn's 64-d embedding is far (mean cosine
    distance to the ``k`` nearest) from the embeddings of every baseline conn; with
    ``reference="zscore"``: a modality (quantities, sequence, entities) is reconstructed worse than
    it is for the baseline's conns (robust z-scores, positive ones summed). The pretrained weights
    are used as they are; ``fit`` only builds the reference. The raw reconstruction error is not
    the score: it measures distance from the pretraining corpus (mostly IoT-23 malware), which
    ranked malware as normal (AUROC 0.10).

    Args:
        loaded: a pretrained mae model directory in memory.
        reference: ``"knn"`` or ``"zscore"`` (default ``DEFAULT_REFERENCE``).
        seed: draws the kNN reference subset of a large baseline (default 0).
    """

    name = NAME
    note = "ZeekML::Anomalous_Flow"
    context_key = "id.orig_h"     # host sequences: only the same originator's conns change a score

    def __init__(self, loaded: LoadedMAE, reference: str = DEFAULT_REFERENCE, seed: int = 0):
        self.loaded = loaded
        self.reference: KnnReference | ZReference = make_reference(reference, seed)
        self._fitted = False
        self._identity: pa.Table | None = None     # uid, 4-tuple, service of each kNN reference row

    @property
    def context_key_rows(self) -> int | None:
        """How many of the originator's conns can change a conn's score
        (``LoadedMAE.context_key_rows``)."""
        return self.loaded.context_key_rows

    @property
    def context_seconds(self) -> float:
        """How far in time other conns can change a conn's score (the host-sequence horizon);
        split scoring (``--dask``) gives each piece this overlap."""
        return self.loaded.featurizer.context_seconds

    @property
    def forward_context_seconds(self) -> float:
        """0: host sequences hold a conn's originator's earlier conns only."""
        return 0.0

    def profile(self, table: pa.Table, rows: np.ndarray | None = None,
                want: tuple[str, ...] = ("embedding", "parts", "raw")) -> dict[str, np.ndarray]:
        """What the model makes of each conn (of ``rows``, the rest of ``table`` as context):
        ``embedding`` ``[n, 64]``, ``parts`` ``[n, 3]`` (reconstruction error per modality) and
        ``raw`` ``[n]`` (their sum: the pretraining-relative error); the ``want`` ones (the
        embedding alone runs the encoder alone)."""
        unknown = set(want) - {"embedding", "parts", "raw"}
        if unknown:
            raise ModelError(f"unknown profile outputs {sorted(unknown)} (known: embedding, parts, raw)")
        outs = (("embedding",) if "embedding" in want else ()) + \
            ((*PARTS, "score") if "parts" in want or "raw" in want else ())
        res = self.loaded.run(self.loaded.modalities(table, rows=rows), want=outs)
        p = {"embedding": res.get("embedding"), "raw": res.get("score"),
             "parts": np.stack([res[k] for k in PARTS], axis=1) if "parts" in want else None}
        return {k: p[k] for k in want}

    @property
    def _reference_key(self) -> str:
        return "embedding" if self.reference.kind == "knn" else "parts"

    def _reference_input(self, table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """What the reference compares (embeddings or per-modality errors) of ``rows`` of
        ``table`` (all when None), the other conns as context."""
        return self.profile(table, rows, want=(self._reference_key,))[self._reference_key]

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row relative to the baseline, ``[n]``."""
        if not self._fitted:
            raise ModelError("MAEDetector.score before fit")
        if table.num_rows == 0:
            return np.zeros(0)
        return self.reference.score(self._reference_input(table))

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, running the model on ``rows`` alone (the other conns of
        ``table`` only feed the host sequences, whose featurisation is vectorised and cheap)."""
        if not self._fitted:
            raise ModelError("MAEDetector.score_rows before fit")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self.reference.score(self._reference_input(table, rows))

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Per row, in words: with the kNN reference its nearest baseline conns by embedding
        (``scoring.explain.nearest_text``); with the z-score reference the modalities
        reconstructed worse than for the baseline's conns, worst first (at most ``top``)."""
        if not self._fitted:
            raise ModelError("MAEDetector.explain before fit")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        p = self.profile(table, rows, want=(self._reference_key,))
        ref = self.reference
        if isinstance(ref, KnnReference):
            dist, nrows = ref.nearest(p["embedding"], NEAREST_SHOWN)
            return nearest_text(self._identity, dist, nrows, ref.nearest_q99(), len(ref.ref))
        z = (p["parts"] - ref.median) / ref.scale
        out = []
        for i in range(len(rows)):
            worse = [j for j in np.argsort(-z[i], kind="stable")[:top] if z[i, j] > 0]
            out.append("reconstructed worse than the baseline's conns: " + ", ".join(
                f"{PARTS[j]} error {p['parts'][i, j]:.3g} (baseline median {ref.median[j]:.3g}, "
                f"{z[i, j]:.1f} spreads above)" for j in worse) if worse else
                "no modality reconstructed worse than the baseline's median")
        return out


@register_kind(NAME)
class MAEKind:
    """The inference half of ``--model mae``: the detector and the embedding."""

    schema_version = SCHEMA_VERSION

    def __init__(self, name: str):
        self.name = name

    def detector(self, model_dir: str, device: str = "cpu") -> MAEDetector:
        """The baseline-relative detector of a pretrained mae directory."""
        loaded = LoadedMAE.from_dir(model_dir, device)
        if not loaded.config.get("pretrained", True):
            raise ModelError("a model trained from scratch learnt no embedding to compare; use a "
                             "pretrained mae directory", model_dir)
        return MAEDetector(loaded)

    def embed(self, model_dir: str, table: pa.Table, device: str = "cpu",
              flows: pa.Table | None = None) -> np.ndarray:
        """The 64-d embedding of every conn, ``[n, D]`` float32."""
        loaded = LoadedMAE.from_dir(model_dir, device)
        return loaded.run(loaded.modalities(table, flows), want=("embedding",))["embedding"].astype(np.float32)

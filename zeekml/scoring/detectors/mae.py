"""``mae``: the multi-modal autoencoder as a detector and an embedder (the inference half of the
kind; training is ``zeekml.train.mae``).

The anomaly score of a conn is its reconstruction error; ``embed`` gives the 64-d embedding that
``zeekml embed`` and ``zeekml similar`` serve.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from zeekml._core.device import inference_batch
from zeekml._core.errors import ModelError
from zeekml.features.modality import SCHEMA_VERSION, Modalities, ModalityFeaturizer
from zeekml.scoring.detectors.base import load_checked, sub_state, torch_module
from zeekml.scoring.registry import register_kind

log = logging.getLogger(__name__)

NAME = "mae"
INFER_BATCH = 8192   # rows per inference batch on CPU (zeekml._core.device.inference_batch)


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
    def from_dir(cls, model_dir: str, device: str = "cpu") -> "LoadedMAE":
        """An mae model directory, verified against its manifest."""
        config, state = load_checked(model_dir, (NAME,), SCHEMA_VERSION, device)
        return cls(config, state, device)

    def modalities(self, table: pa.Table, flows: pa.Table | None = None) -> Modalities:
        """The three input modalities of ``table`` as this model was trained on them."""
        if self.featurizer.seq_source == "packets" and flows is None:
            log.warning("this model reads packet sequences from zeekml_flow.log and none was given; "
                        "conns are scored with empty sequences")
        return self.featurizer.transform(table, flows, hide_service=self.hide_service)

    def run(self, m: Modalities) -> dict[str, np.ndarray]:
        """Embedding, per-modality reconstruction errors and (with a head) probabilities."""
        from zeekml.nn.mae import reconstruction_error

        torch = torch_module()
        qk = torch.as_tensor(m.quantity_keep, device=self.device)
        ek = torch.as_tensor(m.entity_keep, device=self.device)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("embedding", "quantity", "sequence",
                                                                "entity", "score", "proba")}
        batch = inference_batch(self.device, INFER_BATCH)
        with torch.inference_mode():
            for s in range(0, len(m), batch):
                q, sq, e = modality_tensors(m.take(np.arange(s, min(s + batch, len(m)))), self.device)
                out = self.model(q, sq, e)
                err = reconstruction_error(out, q, sq, e, qk, ek)
                parts["embedding"].append(out.embedding.cpu().numpy())
                for k in ("quantity", "sequence", "entity"):
                    parts[k].append(getattr(err, k).cpu().numpy())
                parts["score"].append(err.total.cpu().numpy())
                if self.head is not None:
                    logits = self.head((out.embedding - self.emb_mean) / self.emb_std)
                    parts["proba"].append(torch.softmax(logits, dim=1).cpu().numpy())
        d = self.model.config.embed_dim
        empty = {"embedding": np.zeros((0, d), np.float32), "proba": np.zeros((0, len(self.classes)))}
        return {k: (np.concatenate(v) if v else empty.get(k, np.zeros(0))) for k, v in parts.items()}


class MAEDetector:
    """Reconstruction error of an mae model directory as a ``Detector`` (higher = more anomalous)."""

    name = NAME
    note = "ZeekML::Anomalous_Flow"
    context_key = "id.orig_h"     # host sequences: only the same originator's conns change a score

    def __init__(self, loaded: LoadedMAE):
        self.loaded = loaded

    @property
    def context_seconds(self) -> float:
        """How far in time other conns can change a conn's score (the host-sequence horizon);
        split scoring (``--dask``) gives each piece this overlap."""
        return self.loaded.featurizer.context_seconds

    @property
    def forward_context_seconds(self) -> float:
        """0: host sequences hold a conn's originator's earlier conns only."""
        return 0.0

    def fit(self, table: pa.Table) -> "MAEDetector":
        """Nothing to fit: the weights stay as trained; calibration happens outside."""
        return self

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row, ``[n]``."""
        if table.num_rows == 0:
            return np.zeros(0)
        return self.loaded.run(self.loaded.modalities(table))["score"]

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, running the model on ``rows`` alone (the other conns of
        ``table`` only feed the host sequences, whose featurisation is vectorised and cheap)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self.loaded.run(self.loaded.modalities(table).take(rows))["score"]

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Per-modality errors and the worst-reconstructed quantity features of each row."""
        if len(rows) == 0:
            return []
        torch = torch_module()
        sub = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
        m = self.loaded.modalities(sub)
        res = self.loaded.run(m)
        with torch.inference_mode():
            q, sq, e = modality_tensors(m, self.loaded.device)
            rq = self.loaded.model(q, sq, e).quantity.cpu().numpy()
        sqerr = (rq - m.quantity) ** 2 * m.quantity_keep
        names = self.loaded.featurizer.flow.feature_names
        out = []
        for i in range(len(rows)):
            worst = ";".join(names[j] for j in np.argsort(-sqerr[i])[:top])
            out.append(f"recon_quantity={res['quantity'][i]:.3g},recon_sequence={res['sequence'][i]:.3g},"
                       f"recon_entity={res['entity'][i]:.3g},worst={worst}")
        return out


@register_kind(NAME)
class MAEKind:
    """The inference half of ``--model mae``: the detector and the embedding."""

    schema_version = SCHEMA_VERSION

    def __init__(self, name: str):
        self.name = name

    def detector(self, model_dir: str, device: str = "cpu") -> MAEDetector:
        """The reconstruction-error detector of a pretrained mae directory."""
        loaded = LoadedMAE.from_dir(model_dir, device)
        if not loaded.config.get("pretrained", True):
            raise ModelError("a model trained from scratch has no reconstruction score", model_dir)
        return MAEDetector(loaded)

    def embed(self, model_dir: str, table: pa.Table, device: str = "cpu",
              flows: pa.Table | None = None) -> np.ndarray:
        """The 64-d embedding of every conn, ``[n, D]`` float32."""
        loaded = LoadedMAE.from_dir(model_dir, device)
        return loaded.run(loaded.modalities(table, flows))["embedding"].astype(np.float32)

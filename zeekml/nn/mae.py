"""Multi-modal autoencoder (docs/models.md section 2, after arXiv 2405.02649): one adapter per modality,
an integration autoencoder with a 64-d embedding, one decoder head per modality.

Legend: n = conns in the batch, Q = quantity width, T = sequence steps (32), C = sequence
channels, E = entity width, A = adapter width (32), D = embedding width (64).

The loss is the sum over modalities of each modality's mean squared error over its own columns
(the sum of squared errors divided by the modality's width), so a wide modality does not drown a
narrow one. Columns blanked for a task (service and ports) are left out of both numerator and
width. Each adapter sees only its own columns (the reference code sliced the statistics modality
as ``x[:, P:St]``; here every modality is its own tensor, so there is no slicing to get wrong).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class MAEConfig:
    """Constructor arguments of ``MultiModalAutoencoder`` (stored beside the weights).

    Args:
        quantity_dim: Q, width of the flow statistics.
        seq_channels: C, channels per sequence step.
        entity_dim: E, width of the entity vector.
        seq_len: T, steps per sequence (default 32).
        adapter_dim: A, output width of each adapter (default 32).
        hidden: widths between the concatenated adapters and the embedding (default (512, 256)).
        embed_dim: D, embedding width (default 64).
        dropout: dropout after each hidden layer of the encoder (default 0.0).
    """

    quantity_dim: int
    seq_channels: int
    entity_dim: int
    seq_len: int = 32
    adapter_dim: int = 32
    hidden: tuple[int, ...] = (512, 256)
    embed_dim: int = 64
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MAEConfig":
        d = dict(d)
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


class QuantityAdapter(nn.Module):
    """Flow statistics -> adapter output.

    Shapes:
        input ``[n, Q]`` -> output ``[n, A]``
    """

    def __init__(self, in_dim: int, out_dim: int = 32, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SequenceAdapter(nn.Module):
    """1-D convolutions over the steps, mean- and max-pooled.

    Shapes:
        input ``[n, T, C]`` -> output ``[n, A]``
    """

    def __init__(self, channels: int, out_dim: int = 32, width: int = 32, kernel: int = 3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, width, kernel, padding=kernel // 2), nn.ReLU(),
            nn.Conv1d(width, width, kernel, padding=kernel // 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(2 * width, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2))                              # [n, width, T]
        return self.out(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class EntityAdapter(nn.Module):
    """Word2Vec vectors, unseen flags and one-hots -> adapter output (a linear layer on a
    one-hot is a learned embedding of that value).

    Shapes:
        input ``[n, E]`` -> output ``[n, A]``
    """

    def __init__(self, in_dim: int, out_dim: int = 32, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class MAEOutput:
    """What ``forward`` returns.

    Shapes:
        embedding ``[n, D]``; quantity ``[n, Q]``; sequence ``[n, T, C]``; entity ``[n, E]``
    """

    embedding: torch.Tensor
    quantity: torch.Tensor
    sequence: torch.Tensor
    entity: torch.Tensor


def _mlp(widths: list[int], dropout: float = 0.0, last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_act:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MultiModalAutoencoder(nn.Module):
    """adapters -> concat [n, 3A] -> 512 -> 256 -> D (embedding) -> 256 -> 512 -> one head per modality.

    Shapes:
        quantity ``[n, Q]``, sequence ``[n, T, C]``, entity ``[n, E]`` -> ``MAEOutput``
    """

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.quantity_adapter = QuantityAdapter(c.quantity_dim, c.adapter_dim)
        self.sequence_adapter = SequenceAdapter(c.seq_channels, c.adapter_dim)
        self.entity_adapter = EntityAdapter(c.entity_dim, c.adapter_dim)
        enc = [3 * c.adapter_dim, *c.hidden, c.embed_dim]
        self.encoder = _mlp(enc, c.dropout, last_act=False)
        self.decoder = _mlp([c.embed_dim, *reversed(c.hidden)])
        last = c.hidden[0]
        self.quantity_head = nn.Linear(last, c.quantity_dim)
        self.sequence_head = nn.Linear(last, c.seq_len * c.seq_channels)
        self.entity_head = nn.Linear(last, c.entity_dim)

    def encode(self, quantity: torch.Tensor, sequence: torch.Tensor, entity: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.quantity_adapter(quantity), self.sequence_adapter(sequence),
                       self.entity_adapter(entity)], dim=1)          # [n, 3A]
        return self.encoder(h)                                        # [n, D]

    def forward(self, quantity: torch.Tensor, sequence: torch.Tensor, entity: torch.Tensor) -> MAEOutput:
        z = self.encode(quantity, sequence, entity)
        h = self.decoder(z)                                           # [n, hidden[0]]
        n = z.shape[0]
        return MAEOutput(
            embedding=z,
            quantity=self.quantity_head(h),
            sequence=self.sequence_head(h).view(n, self.config.seq_len, self.config.seq_channels),
            entity=self.entity_head(h),
        )

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@dataclass
class ReconstructionError:
    """Per-conn error of each modality (mean squared error over its kept columns) and their sum.

    Shapes:
        each ``[n]``
    """

    quantity: torch.Tensor
    sequence: torch.Tensor
    entity: torch.Tensor
    total: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = self.quantity + self.sequence + self.entity


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Row-wise sum of squared errors over kept columns / number of kept columns.

    ``keep``: ``[width]`` or ``[n, width]`` (bool or 0/1); None keeps every column.
    """
    sq = (pred - target) ** 2
    if keep is None:
        return sq.mean(dim=1)
    w = keep.to(sq.dtype)
    if w.dim() == 1:
        w = w.expand_as(sq)
    return (sq * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def reconstruction_error(out: MAEOutput, quantity: torch.Tensor, sequence: torch.Tensor,
                         entity: torch.Tensor, quantity_keep: torch.Tensor | None = None,
                         entity_keep: torch.Tensor | None = None) -> ReconstructionError:
    """Per-modality, width-normalised squared reconstruction error of each conn."""
    n = quantity.shape[0]
    return ReconstructionError(
        quantity=_masked_mse(out.quantity, quantity, quantity_keep),
        sequence=_masked_mse(out.sequence.reshape(n, -1), sequence.reshape(n, -1), None),
        entity=_masked_mse(out.entity, entity, entity_keep),
    )


def mae_loss(out: MAEOutput, quantity: torch.Tensor, sequence: torch.Tensor, entity: torch.Tensor,
             quantity_keep: torch.Tensor | None = None,
             entity_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over modalities of per-modality MSE (each divided by its width), averaged over conns."""
    return reconstruction_error(out, quantity, sequence, entity, quantity_keep, entity_keep).total.mean()


class EmbeddingClassifier(nn.Module):
    """The downstream head on the embedding: D -> hidden -> classes, or D -> classes when
    ``hidden`` is 0 (the linear head of LP-FT finetuning, ``zeekml.train.common.LPFT``).

    Shapes:
        input ``[n, D]`` -> logits ``[n, n_classes]``
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, n_classes))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

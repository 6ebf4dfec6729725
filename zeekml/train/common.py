"""The pieces every model kind's training shares, so that they cannot drift apart.

- settings: one ``@dataclass`` per loop (``PretrainConfig``/``FinetuneConfig`` of each kind),
  filled from the command's options by ``pick`` and ``apply_epochs``;
- ``--epochs`` means the same for every kind: an explicit ``--epochs N`` is taken as is (N
  passes, no step floor); without it the kind's defaults hold, including its ``min_steps``
  floor for few-shot budgets (``optimiser_steps``);
- a model directory's single ``weights.pt`` holds each module under a prefix
  (``prefixed_state``; inference reads them back with ``sub_state``);
- class-weighted cross-entropy weights (``class_weights``);
- the keys every ``config.json`` carries (``model_config``), ``schema_version`` included;
- per-epoch progress (``EpochLog``): epoch i/n, train loss, the validation metric, seconds, on
  the ``zeekml.train.progress`` logger (stderr under the CLI).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, TypeVar

import numpy as np

from zeekml._core.errors import ZeekmlError
from zeekml.scoring.detectors.base import sub_state, torch_module

__all__ = ["EpochLog", "Trainer", "apply_epochs", "class_weights", "cosine", "model_config", "optimiser_steps", "pick",
           "prefixed_state", "sub_state", "torch_module"]

T = TypeVar("T")

progress_log = logging.getLogger("zeekml.train.progress")
# Training takes minutes to hours: its per-epoch lines are progress, shown wherever logging has a
# handler (the CLI's stderr) even at the default WARNING level; library use without logging
# configured stays silent (Python's last-resort handler shows warnings only).
progress_log.setLevel(logging.INFO)


def pick(cls: type[T], opts: dict) -> T:
    """An instance of the dataclass ``cls`` from the entries of ``opts`` that are its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in opts.items() if k in names})


def apply_epochs(cfg: Any, epochs: int | None) -> Any:
    """``cfg`` with an explicit ``--epochs`` applied: that many passes exactly, so a loop with a
    ``min_steps`` floor loses it (the floor only guards the defaults on few-shot budgets)."""
    if epochs is not None:
        if epochs < 1:
            raise ZeekmlError(f"--epochs must be at least 1, not {epochs}")
        cfg.epochs = epochs
        if hasattr(cfg, "min_steps"):
            cfg.min_steps = 0
    return cfg


def optimiser_steps(cfg: Any, n_rows: int, batch_size: int | None = None) -> int:
    """Optimiser steps of a loop that draws random batches: ``epochs`` passes over ``n_rows``
    in batches of ``batch_size`` (default ``cfg.batch_size``; 0 = the whole set per step), and
    at least ``cfg.min_steps`` when the config has one."""
    bs = cfg.batch_size if batch_size is None else batch_size
    per_epoch = 1 if not bs else max(1, -(-n_rows // bs))
    return max(int(getattr(cfg, "min_steps", 0) or 0), cfg.epochs * per_epoch)


def class_weights(y: Any, n_classes: int) -> Any:
    """Per-class weights ``n / (C * count)`` for cross-entropy on imbalanced shots (a class absent
    from ``y`` counts as 1). Shapes: ``y [n]`` long -> ``[C]`` float."""
    torch = torch_module()
    counts = torch.bincount(y, minlength=n_classes).float()
    return counts.sum() / (n_classes * counts.clamp_min(1))


def prefixed_state(**modules: Any) -> dict:
    """One state dict of several modules, each under ``"<name>."`` (None modules are left out),
    on the CPU."""
    st = {}
    for prefix, module in modules.items():
        if module is not None:
            st.update({f"{prefix}.{k}": v.detach().cpu() for k, v in module.state_dict().items()})
    return st


def cosine(step: int, total: int, warmup: int = 100) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(p, 1.0)))


def model_config(*, schema_version: int, seed: int, pretrained: bool, detector: bool,
                 n_params: int, classes: list[str] | None = None, label_field: str | None = None,
                 hide_service: bool = False, settings: tuple[str, Any] | None = None,
                 base: str | None = None, base_config: dict | None = None, **kind_keys: Any) -> dict:
    """The ``config.json`` of a model directory: the keys every kind writes, then its own.

    Args:
        schema_version: the feature schema the model was trained on (checked on load).
        seed: the training seed.
        pretrained: the encoder's weights come from self-supervised pretraining.
        detector: ``zeekml score`` uses this directory as an anomaly detector.
        n_params: trainable parameters.
        classes: the classifier's classes (None for a self-supervised base).
        label_field: the label the classifier learnt (None for a base).
        hide_service: the service and port inputs were hidden.
        settings: ``("pretrain" | "finetune", dataclass)``: the loop's settings.
        base: the base directory a finetuned model started from.
        base_config: that base's config (its ``pretrain`` settings are kept).
        kind_keys: the kind's constructor arguments, feature scaling, vocabularies, ...
    """
    cfg: dict[str, Any] = {
        "schema_version": schema_version, "seed": seed, "pretrained": bool(pretrained),
        "detector": bool(detector), "n_params": int(n_params), "classes": classes,
        "label_field": label_field, "hide_service": bool(hide_service),
    }
    if settings is not None:
        cfg[settings[0]] = dataclasses.asdict(settings[1])
    if settings is not None and settings[0] == "finetune":
        cfg["base"] = base
        cfg["base_pretrain"] = (base_config or {}).get("pretrain")
    cfg.update(kind_keys)
    return cfg


class Trainer:
    """Base of the trainers (``zeekml.train.registry.register_trainer``): the kind's name, and its
    detector through the inference registry (so callers holding a trainer can score too)."""

    def __init__(self, name: str):
        self.name = name

    def detector(self, model_dir: str, device: str = "cpu") -> Any:
        """``zeekml.scoring.registry.get_kind(name).detector(model_dir, device)``."""
        from zeekml.scoring.registry import get_kind

        return get_kind(self.name).detector(model_dir, device)


class EpochLog:
    """Per-epoch progress of one training loop, one line per epoch on ``progress_log``.

    For example::

        moe pretrain epoch 3/8: train loss 2.3411, validation masked-token loss 2.4012, 41.2 s

    Args:
        what: the loop, e.g. ``"moe pretrain"``.
        epochs: epochs the loop will run.
        metric: what ``epoch``'s ``value`` is (e.g. ``"validation loss"``); None = no metric.
        steps_per_epoch: for loops counted in optimiser steps (finetuning): ``step`` reports an
            epoch every this many steps (default None: the loop calls ``epoch`` itself).
    """

    def __init__(self, what: str, epochs: int, metric: str | None = None,
                 steps_per_epoch: int | None = None):
        self.what = what
        self.epochs = max(int(epochs), 1)
        self.metric = metric
        self.steps_per_epoch = steps_per_epoch
        self.t0 = time.perf_counter()
        self.done = 0
        self.lines: list[str] = []
        self._loss, self._n, self._steps = 0.0, 0, 0
        self._right, self._seen = 0, 0

    def epoch(self, train_loss: float, value: float | None = None) -> str:
        """Report the next epoch: its mean train loss and, when the loop has one, its metric."""
        self.done += 1
        parts = [f"train loss {_fmt(train_loss)}"]
        if self.metric:
            parts.append(f"{self.metric} {_fmt(value)}")
        line = (f"{self.what} epoch {self.done}/{self.epochs}: {', '.join(parts)}, "
                f"{time.perf_counter() - self.t0:.1f} s")
        self.lines.append(line)
        progress_log.info("%s", line)
        return line

    def step(self, loss: float, right: int = 0, seen: int = 0) -> None:
        """One optimiser step of a step-counted loop: its loss, and how many of the batch's
        ``seen`` conns it classified right (the epoch's accuracy on the batches it trained on)."""
        self._loss += float(loss)
        self._n += 1
        self._steps += 1
        self._right += int(right)
        self._seen += int(seen)
        if self.steps_per_epoch and self._steps % self.steps_per_epoch == 0:
            self.flush()

    def flush(self) -> None:
        """Report the steps since the last epoch line as one epoch (a loop's last, short one)."""
        if self._n == 0:
            return
        acc = self._right / self._seen if self._seen else None
        self.epoch(self._loss / self._n, acc)
        self._loss, self._n, self._right, self._seen = 0.0, 0, 0, 0


def step_epochs(steps: int, per_epoch: int) -> int:
    """Epochs of a loop of ``steps`` optimiser steps, ``per_epoch`` to an epoch (last one short)."""
    return max(1, -(-int(steps) // max(int(per_epoch), 1)))


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.4f}"

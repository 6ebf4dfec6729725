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
  the ``zeekml.train.progress`` logger (stderr under the CLI);
- the finetune procedure of every kind (``LPFT``): LP-FT (Kumar et al. 2022, "Fine-Tuning can
  Distort Pretrained Features and Underperform Out-of-Distribution"): a linear head fitted on the
  frozen encoder first (``fit_linear_probe``), then everything finetuned from that head at a small
  learning rate, stopped early on a held-out share of the labeled rows (``holdout_split``,
  ``EarlyStopping``). ``procedure="full"`` keeps the earlier end-to-end finetune.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from zeekml._core.errors import ZeekmlError
from zeekml.scoring.detectors.base import sub_state, torch_module

__all__ = ["LPFT", "PROCEDURES", "EarlyStopping", "EpochLog", "Trainer", "apply_epochs", "check_procedure",
           "class_weights", "cosine", "fit_linear_probe", "ft_budget", "holdout_rows", "holdout_split",
           "lp_val_share", "model_config", "probe_into",
           "optimiser_steps", "pick", "prefixed_state", "run_ft", "sub_state", "torch_module"]

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


PROCEDURES = ("lp-ft", "lp", "full")


@dataclasses.dataclass
class LPFT:
    """How a classifier is finetuned: the fields every kind's ``FinetuneConfig`` shares.

    ``"lp-ft"``: (1) LP: a linear head is fitted on the frozen encoder's features of
    the labeled rows (multinomial logistic regression, class-weighted, L2 ``probe_l2``:
    ``fit_linear_probe``); (2) FT: the encoder and that head are trained together at
    ``lr * ft_lr_scale`` for at most the kind's step budget, and the weights of the step with the
    lowest loss on ``val_share`` of the labeled rows (stratified; the LP head itself is step 0)
    are kept. Why: with few labels, full finetuning from a random head distorts the pretrained
    features before the head has learnt anything (Kumar et al. 2022), and an MLP head fitted to a
    handful of conns of one class extrapolated backwards on conns unlike them (the mae head's
    AUROC 0.18-0.40 on Stratosphere 010 where a logistic probe on the same embedding got 0.98).
    A scratch twin (no base) runs the same procedure from random weights. ``"lp"``: the LP step
    alone, on every labeled row (nothing held out: there is no FT to stop), the encoder frozen;
    the one procedure of a ``causal_window`` token base, whose head reads the stream embedding
    (``zeekml.train.moe``). ``"full"``: the earlier procedure (an MLP head of width ``hidden``
    and the encoder trained end to end from a random head at ``lr``; mae: the head alone on the
    frozen embedding). Measured on one grid
    (docs/results/fewshot.md, "LP-FT"): LP-FT is mae's default (it fixes the inverted head);
    gnn and moe keep ``"full"``, which LP-FT did not beat for them.

    Args:
        procedure: ``"lp-ft"``, ``"lp"`` or ``"full"`` (default ``"full"``; mae: ``"lp-ft"``).
        probe_l2: L2 weight of the LP fit on the mean class-weighted loss (default 1e-3).
        ft_lr_scale: FT learning rate as a share of ``lr`` (default 0.1).
        val_share: share of each class's labeled rows held out to stop FT early (default 0.2;
            none when a class has fewer than ``1 / val_share`` rows).
        ft_without_val: run FT's whole budget when nothing can be held out (default False: the
            LP head is kept, since nothing could tell whether FT helps; with 2 benign conns in
            367, FT from the LP head overfitted them, AUROC 0.99 -> 0.93).
        eval_every: FT steps between two validation losses (default 10; gnn: 1, one full step).
        patience: validations without a better loss before FT stops (default 5).
    """

    procedure: str = "full"
    probe_l2: float = 1e-3
    ft_lr_scale: float = 0.1
    val_share: float = 0.2
    ft_without_val: bool = False
    eval_every: int = 10
    patience: int = 5


def lp_val_share(cfg: Any) -> float:
    """The share of each class held out for FT's early stopping: none for ``"lp"`` (no FT)."""
    return 0.0 if cfg.procedure == "lp" else cfg.val_share


def ft_budget(cfg: Any, steps: int, n_val: int, what: str = "finetune") -> int:
    """FT's step budget: ``steps``, or 0 without validation rows unless ``cfg.ft_without_val``
    (said on ``progress_log``, naming the loop ``what``); 0 for ``"lp"`` (the LP head alone)."""
    if cfg.procedure == "lp":
        return 0
    if n_val or cfg.ft_without_val:
        return steps
    progress_log.info("%s: a class has too few labeled conns to hold any out (val_share %g), so the "
                      "linear-probe head is kept without finetuning (ft_without_val runs it anyway)",
                      what, cfg.val_share)
    return 0


def check_procedure(cfg: Any) -> str:
    """``cfg.procedure``, or a ``ZeekmlError`` naming the known ones."""
    if cfg.procedure not in PROCEDURES:
        raise ZeekmlError(f"unknown finetune procedure {cfg.procedure!r}; use one of {', '.join(PROCEDURES)}")
    if not 0 <= cfg.val_share < 1:
        raise ZeekmlError(f"val_share must be in [0, 1), not {cfg.val_share}")
    return cfg.procedure


def holdout_split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, val)`` positions into ``y`` (class ids): ``floor(share * count)`` of each class
    drawn with ``seed`` into ``val``, the rest ``fit`` (both sorted). ``val`` is empty when any
    class would get none (it could not be validated), so early stopping is off there."""
    y = np.asarray(y)
    idx = np.arange(len(y))
    if share <= 0 or len(y) == 0:
        return idx, idx[:0]
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        rows = idx[y == c]
        k = int(np.floor(share * len(rows)))
        if k == 0:
            return idx, idx[:0]
        val.append(rng.choice(rows, size=k, replace=False))
    v = np.sort(np.concatenate(val))
    return np.setdiff1d(idx, v), v


def fit_linear_probe(z: Any, y: Any, n_classes: int, weight: Any = None, l2: float = 1e-3,
                     max_iter: int = 200) -> tuple[Any, Any]:
    """Multinomial logistic regression on frozen features: minimises the class-weighted mean
    cross-entropy ``+ l2/2 * ||W||^2`` (bias unpenalised) with L-BFGS in float64 from zeros, so
    the result depends only on the data (no seed). With two classes and balanced weights this is
    scikit-learn's ``LogisticRegression(C=2 / (l2 * n), class_weight="balanced")`` direction.

    Shapes:
        z ``[n, d]``, y ``[n]`` long, weight ``[C]`` -> W ``[C, d]``, b ``[C]`` (float32)
    """
    torch = torch_module()
    zd = z.detach().to("cpu", torch.float64)
    yd = y.detach().to("cpu")
    wd = None if weight is None else weight.detach().to("cpu", torch.float64)
    W = torch.zeros(n_classes, zd.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(zd @ W.T + b, yd, weight=wd) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().float(), b.detach().float()


def holdout_rows(y: Any, share: float, seed: int, n_classes: int, device: str,
                 index_device: str | None = None) -> tuple[Any, Any, Any]:
    """LP-FT's rows: ``(fit, val)`` index tensors of ``holdout_split`` on ``index_device``
    (default ``device``; the token models index their CPU-resident ids) and the class weights
    of the fit rows on ``device``. Shapes: y ``[n]`` long -> ``[n_fit]``, ``[n_val]``, ``[C]``."""
    torch = torch_module()
    fit, val = holdout_split(y.numpy(), share, seed)
    at = device if index_device is None else index_device
    weight = class_weights(y[torch.as_tensor(fit)], n_classes).to(device)
    return torch.as_tensor(fit, device=at), torch.as_tensor(val, device=at), weight


def probe_into(layer: Any, z: Any, y: Any, n_classes: int, weight: Any, l2: float) -> None:
    """LP-FT's LP: ``fit_linear_probe`` on the frozen features ``z`` ``[n, d]``, written into the
    ``nn.Linear`` ``layer`` (``[C, d]``) of the head."""
    torch = torch_module()
    W, b = fit_linear_probe(z, y, n_classes, weight, l2)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(b)


class EarlyStopping:
    """Keeps the modules' weights at the lowest validation loss seen and says when to stop.

    Args:
        modules: the modules whose state is kept (encoder and head).
        patience: validations without improvement before ``update`` says stop.
    """

    def __init__(self, *modules: Any, patience: int = 5):
        self.modules = [m for m in modules if m is not None]
        self.patience = max(int(patience), 1)
        self.best: float = math.inf
        self.best_step: int | None = None
        self.bad = 0
        self.losses: list[tuple[int, float]] = []
        self._state: list[dict] | None = None

    def update(self, step: int, loss: float) -> bool:
        """Record the validation ``loss`` after ``step`` optimiser steps; True = stop now."""
        self.losses.append((int(step), float(loss)))
        if loss < self.best - 1e-6:
            self.best, self.best_step, self.bad = float(loss), int(step), 0
            self._state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> None:
        """Put the best weights back (nothing happens when no loss was recorded)."""
        if self._state is not None:
            for m, st in zip(self.modules, self._state):
                m.load_state_dict(st)

    def summary(self) -> dict:
        """What the manifest's metrics record of the early stop."""
        return {"best_step": self.best_step, "best_val_loss": None if self.best_step is None else round(self.best, 5),
                "validations": len(self.losses)}


def run_ft(step: Callable[[], tuple[float, int, int]], val_loss: Callable[[], float] | None,
           stop: EarlyStopping, steps: int, eval_every: int, progress: EpochLog) -> int:
    """LP-FT's FT loop, the same for every kind: the validation loss of the LP head (step 0),
    then up to ``steps`` calls of ``step`` (one optimiser step; returns its loss and how many of
    the ``seen`` conns it classified ``right``), a validation loss every ``eval_every`` steps and
    after the last, stopping when ``stop`` says so; the best weights are put back at the end.
    ``val_loss`` None (nothing held out): every step runs and the last weights stay.
    Returns the steps run."""
    done = 0
    if val_loss is not None and stop.update(0, val_loss()):
        steps = 0
    for s in range(1, steps + 1):
        loss, right, seen = step()
        done = s
        progress.step(loss, right, seen)
        if val_loss is not None and (s % eval_every == 0 or s == steps) and stop.update(s, val_loss()):
            break
    progress.flush()
    stop.restore()
    return done


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

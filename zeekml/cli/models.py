"""The model protocol: ``pretrain``, ``finetune``, ``predict``, ``eval``, ``models list|verify``."""
from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator

import click

from zeekml._core.device import resolve_device
from zeekml.cli.score import DEVICE_OPTION
from zeekml.scoring.registry import default_models_dir, kind_names

# every registered model kind (zeekml.scoring.registry): a new kind is a choice without an edit here
MODEL_CHOICES = click.Choice(kind_names())


@contextlib.contextmanager
def quarantine_file(path: str | None) -> Iterator:
    """A ``Quarantine`` whose records go to ``path`` (made only when a record is rejected; None:
    a command without an output file, counted only); on exit one warning names the count, the
    file and the first bad line. Training and prediction inputs lose nothing silently, as
    ``score`` inputs do not."""
    from zeekml.parse import Quarantine
    from zeekml.sinks.jsonl import QuarantineWriter

    writer = None

    def sink(rec) -> None:
        nonlocal writer
        if writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            writer = QuarantineWriter(path)
        writer.write(rec)

    q = Quarantine(sink=sink if path else None, keep=1)
    try:
        yield q
    finally:
        if writer is not None:
            writer.close()
        if q.count:
            where = f"quarantined -> {path}" if path else "skipped"
            click.echo(f"warning: {q.count:,} malformed record(s) {where} "
                       f"(first: {q.records[0].describe()})", err=True)


@click.command("pretrain")
@click.option("--model", "model", required=True, type=MODEL_CHOICES,
              help="The kind of model to pretrain.")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True,
              help="Seed of the model's random draws (weights' initialisation, masking, batch order).")
@click.option("--epochs", default=None, type=int, help="Override the model's default.")
@click.option("--attention", type=click.Choice(["full", "causal_window"]), default=None,
              help="Token models (moe, dense) only: full = a conn's window of its host's last conns plus a CLS "
                   "(moe-base; finetunable), causal_window = each host's stream of conns, each conn through "
                   "each block once (moe-causal, the detector; finetuned with --procedure lp only). Default: full.")
@DEVICE_OPTION
def pretrain(model, logs, out, seed, epochs, attention, device):
    """Self-supervised pretraining on LOGS (labels ignored)."""
    from zeekml.train.protocol import run_pretrain

    opts = {"device": resolve_device(device)}
    if epochs is not None:
        opts["epochs"] = epochs
    if attention is not None:
        if model not in ("moe", "dense"):
            raise click.UsageError(f"--attention applies to the token models (moe, dense), not {model}")
        opts["attention"] = attention
    with quarantine_file(os.path.join(out, "quarantine.jsonl")) as q:
        metrics = run_pretrain(model, list(logs), out, seed=seed, quarantine=q, **opts)
    click.echo(json.dumps({"out": out, **(metrics or {})}, indent=2, default=str))


@click.command("finetune")
@click.option("--model", "model", required=True, type=MODEL_CHOICES,
              help="The kind of model (that of --base when given).")
@click.option("--base", type=click.Path(exists=True, file_okay=False), default=None,
              help="Pretrained model directory to start from.")
@click.option("--scratch", is_flag=True, help="Start from random weights instead of --base.")
@click.option("--train", "train", required=True, multiple=True, type=click.Path(exists=True))
@click.option("--label-field", required=True,
              type=click.Choice(["label", "detailedlabel", "detailed-label", "service"]))
@click.option("--shots", type=int, default=None,
              help="Train on K labeled conns per class, drawn from the earliest 70% by time "
                   "(a class with fewer gives all it has). Default: every labeled conn.")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Instead of --shots: this fraction of each class (at least one conn).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the shots drawn and of the model's random draws (weights' "
                   "initialisation, masking, batch order).")
@click.option("--epochs", default=None, type=int)
@click.option("--fpr-train", type=click.FloatRange(0, 1, min_open=True), default=0.01,
              show_default=True,
              help="label/detailedlabel heads: the cut stored with the model is the lowest P "
                   "(at least 0.5) that at most this share of the training share's benign conns "
                   "not trained on reach; score uses it when the baseline looks infected.")
@click.option("--procedure", type=click.Choice(["lp-ft", "lp", "full"]), default=None,
              help="lp-ft: a linear head fitted on the frozen encoder, then everything finetuned "
                   "at a small rate, stopped on 20% of the labeled conns held out; lp: that "
                   "linear head alone (the encoder frozen; the one procedure of a causal_window "
                   "base such as moe-causal); full: the earlier end-to-end finetune of an MLP "
                   "head (zeekml.train.common.LPFT). Default: lp-ft for mae, full for gnn, moe "
                   "and dense (measured: docs/results/fewshot.md).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@DEVICE_OPTION
def finetune(model, base, scratch, train, label_field, shots, fraction, seed, epochs, fpr_train,
             procedure, out, device):
    """Supervised finetuning on the earliest 70% of --train by time."""
    from zeekml.train.protocol import run_finetune

    if bool(base) == bool(scratch):
        raise click.UsageError("give exactly one of --base DIR or --scratch")
    if shots is not None and fraction is not None:
        raise click.UsageError("give at most one of --shots and --fraction")
    opts = {"device": resolve_device(device)}
    if epochs is not None:
        opts["epochs"] = epochs
    if procedure is not None:
        opts["procedure"] = procedure
    with quarantine_file(os.path.join(out, "quarantine.jsonl")) as q:
        metrics = run_finetune(model, base, list(train), label_field, shots, fraction, seed, out,
                               quarantine=q, fpr_train=fpr_train, **opts)
    click.echo(json.dumps({"out": out, **(metrics or {})}, indent=2, default=str))


@click.command("predict")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A model directory, as pretrain or finetune wrote it (--out).")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
@DEVICE_OPTION
def predict(model_dir, logs, out, device):
    """One JSON line per input conn: uid, ts, pred, proba (and score for anomaly models)."""
    from zeekml.train.protocol import run_predict

    with quarantine_file(out + ".quarantine.jsonl") as q:
        n = run_predict(model_dir, list(logs), out, device=resolve_device(device), quarantine=q)
    click.echo(f"{n} predictions -> {out}")


@click.command("eval")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A model directory, as pretrain or finetune wrote it (--out).")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Where the PNGs go (default: the model directory).")
@DEVICE_OPTION
def eval_(model_dir, logs, out_dir, device):
    """Macro-F1, weighted F1, accuracy, AUROC and per-class table on the latest 30% by time."""
    from zeekml.train.protocol import run_eval

    with quarantine_file(os.path.join(out_dir or model_dir, "quarantine.jsonl")) as q:
        report = run_eval(model_dir, list(logs), out_dir, device=resolve_device(device), quarantine=q)
    per_class = report.pop("per_class", None)
    click.echo(json.dumps(report, indent=2, default=str))
    if per_class:
        click.echo(f"{'class':30s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'support':>8s}")
        for c, m in per_class.items():
            click.echo(f"{c[:30]:30s} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:8d}")


@click.group("models")
def models():
    """The model directories shipped in models/ (or $ZEEKML_MODELS)."""


# The manifest metrics worth a glance, best first: held-out quality, then the training loss;
# at most ``HEADLINE_MAX`` are shown, then how much data the model was trained on.
HEADLINE_METRICS = ("macro_f1", "auroc", "link_auroc", "val_loss", "train_loss")
HEADLINE_MAX = 2
DATA_METRICS = (("train_rows", "train rows"), ("rows", "rows"), ("conns", "conns"))


def headline(metrics: dict) -> str:
    """A few of a manifest's ``metrics`` in words: ``val_loss 0.339, 48,204 rows``."""
    parts = [f"{k} {metrics[k]:.3g}" for k in HEADLINE_METRICS
             if isinstance(metrics.get(k), (int, float))][:HEADLINE_MAX]
    for key, words in DATA_METRICS:
        if isinstance(metrics.get(key), int):
            parts.append(f"{metrics[key]:,} {words}")
            break
    return ", ".join(parts)


def dir_size(d: str) -> int:
    """Bytes of the regular files directly in ``d`` (a model directory is flat)."""
    return sum(e.stat().st_size for e in os.scandir(d) if e.is_file(follow_symlinks=False))


@models.command("list")
@click.option("--dir", "root", default=None, type=click.Path(file_okay=False))
def models_list(root):
    """Each model directory with its kind, parameter count, size on disk, what it was trained
    for and the headline metrics of its manifest."""
    from zeekml._core.errors import ModelError
    from zeekml.scoring.detectors.base import read_config

    root = root or default_models_dir()
    found = sorted(glob.glob(os.path.join(root, "*", "manifest.json")))
    if not found:
        click.echo(f"no models under {root}")
        return
    for m in found:
        d = os.path.dirname(m)
        cfg = read_config(d)
        n = cfg.get("n_params")
        try:
            with open(m) as f:
                metrics = json.load(f).get("metrics") or {}
        except (OSError, ValueError, AttributeError) as e:
            raise ModelError(f"unreadable manifest ({e}); see zeekml models verify", m) from e
        if not isinstance(metrics, dict):
            raise ModelError("manifest metrics are not a JSON object", m)
        size = f"{dir_size(d) / 1e6:.1f} MB"
        click.echo(f"{os.path.basename(d):24s} {cfg.get('kind', '?'):6s} "
                   f"{(f'{n:,} params' if n else ''):>16s} {size:>8s}  "
                   f"{cfg.get('label_field') or 'pretrained':10s}  {headline(metrics)}".rstrip())


@models.command("verify")
@click.option("--dir", "root", default=None, type=click.Path(file_okay=False))
def models_verify(root):
    """Check every model file against the sha256 in its manifest.

    Every directory is checked; each failure is one line, and any failure exits 5 (model files
    missing or altered) after the rest were checked."""
    from zeekml._core.errors import ModelError
    from zeekml.scoring.detectors.base import load_model_dir

    root = root or default_models_dir()
    found = sorted(glob.glob(os.path.join(root, "*", "manifest.json")))
    failed: list[ModelError] = []
    for m in found:
        d = os.path.dirname(m)
        try:
            # everything a detector's load checks (manifest shape and coverage, hashes, the
            # weights file, config sizes), so "ok" means the directory loads
            load_model_dir(d)
        except ModelError as e:
            failed.append(e)
            click.echo(f"FAILED {e}", err=True)
            continue
        click.echo(f"ok {d}")
    if failed:
        raise ModelError(f"{len(failed)} of {len(found)} model directories failed verification",
                         root)
    click.echo(f"{len(found)} model directories verified")


COMMANDS = [pretrain, finetune, predict, eval_, models]

"""``zeekml embed`` and ``zeekml similar``: the autoencoder's 64-d flow embeddings as a product.

``embed`` writes one row per conn (``uid`` and ``e00``..``e63``) to Parquet; ``similar`` ranks the
conns of the given logs by cosine similarity to one conn, to answer "what else looks like this".
``zeekml_flow.log`` files given among LOGS or lying beside them feed the packet sequences of
models pretrained on them.
"""
from __future__ import annotations

import json
import os
import sys

import click

from zeekml._core.device import resolve_device
from zeekml._core.errors import ModelError, OutputError, ZeekmlError
from zeekml._core.outfile import open_output
from zeekml.cli.models import quarantine_file
from zeekml.cli.score import DEVICE_OPTION

MODEL_OPTION = click.option(
    "--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False),
    help="An mae model directory (default: models/mae-base, or $ZEEKML_MODELS/mae-base).")


def _model_dir(model_dir: str | None) -> str:
    if model_dir:
        return model_dir
    from zeekml.scoring.registry import default_models_dir

    d = os.path.join(default_models_dir(), "mae-base")
    if not os.path.isdir(d):
        raise ModelError("no mae model given and no shipped models/mae-base; pretrain one with "
                         "`zeekml pretrain --model mae LOG... --out DIR` and pass --model DIR", d)
    return d


def embed_logs(model_dir: str, logs: list[str], device: str = "cpu", quarantine=None,
               failed: list[ZeekmlError] | None = None):
    """``(conn table, embeddings [n, 64])`` of every conn record under ``logs``. ``failed``: as
    ``train.data.load_conns`` takes it (files that failed part-way keep their records before
    the failure and are listed there); without it the first file that fails raises."""
    from zeekml.features.modality import load_flow_table
    from zeekml.scoring.registry import get_kind
    from zeekml.train.data import load_conns

    table = load_conns(logs, quarantine, failed)
    if table.num_rows == 0:
        if failed:          # nothing kept of the files that failed: their error, not "no conns"
            raise failed[0]
        raise ZeekmlError("no conn records in the given logs")
    flows = load_flow_table(logs, quarantine)
    return table, get_kind("mae").embed(model_dir, table, device=device, flows=flows)


def exit_if_failed(failed: list[ZeekmlError]) -> None:
    """After the output is written: name each input file that failed part-way and exit 7
    ("finished but some input files failed"), as ``zeekml score`` does."""
    for e in failed:
        click.echo(f"zeekml: failed: {e}", err=True)
    if failed:
        sys.exit(7)


@click.command("embed")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Parquet file: uid and e00..e63, one row per conn in input order.")
@MODEL_OPTION
@DEVICE_OPTION
def embed(logs, out, model_dir, device):
    """Write the 64-d embedding of every conn in LOGS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    failed: list[ZeekmlError] = []
    with quarantine_file(out + ".quarantine.jsonl") as q:
        table, z = embed_logs(_model_dir(model_dir), list(logs), resolve_device(device), q, failed)
    cols = {"uid": table.column("uid")}
    for j in range(z.shape[1]):
        cols[f"e{j:02d}"] = pa.array(z[:, j], pa.float32())
    # open_output: a link planted at --out is refused (O_NOFOLLOW, one link only), a new file
    # is 0640; pyarrow's own open would follow a symlink and write its target
    fd = open_output(out, what="embeddings")
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(pa.table(cols), f)
    except OSError as e:
        raise OutputError(f"cannot write embeddings: {e.strerror or e}", out) from e
    click.echo(f"{table.num_rows} embeddings ({z.shape[1]}-d) -> {out}")
    exit_if_failed(failed)


@click.command("similar")
@click.option("--uid", required=True, help="The conn to find look-alikes of.")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--top", default=10, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per neighbour.")
@MODEL_OPTION
@DEVICE_OPTION
def similar(uid, logs, top, as_json, model_dir, device):
    """The conns of LOGS nearest to --uid by cosine similarity of their embeddings."""
    import numpy as np

    failed: list[ZeekmlError] = []
    with quarantine_file(None) as qr:
        table, z = embed_logs(_model_dir(model_dir), list(logs), resolve_device(device), qr, failed)
    uids = table.column("uid").to_pylist()
    try:
        q = uids.index(uid)
    except ValueError:
        raise ZeekmlError(f"uid {uid!r} is not among the {len(uids)} conns of the given logs") from None
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    sim = zn @ zn[q]
    sim[q] = -np.inf
    order = np.argsort(-sim, kind="stable")[:top]
    fields = ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "service", "conn_state", "label",
              "detailedlabel")
    cols = {f: table.column(f).to_pylist() for f in fields}
    rows = [{"rank": r + 1, "uid": uids[i], "cosine": round(float(sim[i]), 6),
             **{f: cols[f][i] for f in fields}} for r, i in enumerate(order)]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        exit_if_failed(failed)
        return
    click.echo(f"query {uid}: {cols['id.orig_h'][q]} -> {cols['id.resp_h'][q]}:{cols['id.resp_p'][q]}"
               f"/{cols['proto'][q]} {cols['service'][q] or '-'} {cols['conn_state'][q] or '-'}")
    click.echo(f"{'rank':>4s} {'cosine':>8s} {'uid':20s} {'orig_h':16s} {'resp_h':16s} {'resp_p':>6s} "
               f"{'proto':5s} {'service':8s} {'label'}")
    for row in rows:
        click.echo(f"{row['rank']:4d} {row['cosine']:8.4f} {row['uid'] or '-':20s} "
                   f"{row['id.orig_h'] or '-':16s} {row['id.resp_h'] or '-':16s} "
                   f"{row['id.resp_p'] if row['id.resp_p'] is not None else '-':>6} "
                   f"{row['proto'] or '-':5s} {row['service'] or '-':8s} "
                   f"{row['detailedlabel'] or row['label'] or ''}")
    exit_if_failed(failed)


COMMANDS = [embed, similar]

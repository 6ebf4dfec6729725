"""The host-history detectors declare how many of an originator's conns can change a score
(``context_key_rows``), and scoring a few conns among only those gives the bits of scoring them
among the whole history (``scoring.context.detectors_in_context``, what ``watch`` does)."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml.scoring.context import InContext, detectors_in_context
from zeekml.train.data import load_conns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
LOG = os.path.join(ROOT, "tests", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


def _mae():
    from zeekml.scoring.detectors.mae import MAEKind

    return MAEKind("mae").detector(os.path.join(ROOT, "models", "mae-base"))


def _moe():
    from zeekml.scoring.detectors.token import TokenKind

    return TokenKind("moe").detector(os.path.join(ROOT, "models", "moe-base"))


@pytest.mark.parametrize("make, rows", [(_mae, 32), (_moe, 16)], ids=["mae", "moe"])
def test_latest_rows_of_the_host_give_the_same_scores(make, rows):
    table = load_conns([LOG])
    det = make()
    assert det.context_key_rows == rows
    det.fit(table.slice(0, 150))
    ts = np.nan_to_num(np.asarray(table.column("ts").to_pylist(), dtype=np.float64))
    targets = np.sort(np.argsort(ts, kind="stable")[-12:]).astype(np.int64)   # the latest by ts
    full = det.score_rows(table, targets)
    (ctx,) = detectors_in_context([det], table, targets)
    assert isinstance(ctx, InContext)
    hosts = set(table.column("id.orig_h").take(pa.array(targets)).to_pylist())
    # the cut applied: at most rows - 1 before each host's earliest target, besides the targets
    assert ctx.context.num_rows <= len(targets) + (rows - 1) * len(hosts) < table.num_rows
    cut = ctx.score(table.take(pa.array(targets)))
    assert np.array_equal(cut, full)
    # without the declaration the context is the whole of the hosts' conns in the horizon
    det.__class__ = type("NoRows", (det.__class__,), {"context_key_rows": None})
    (whole,) = detectors_in_context([det], table, targets)
    assert whole.context.num_rows > ctx.context.num_rows
    # and a declaration shorter than the sequence would change scores: the check can fail
    det.__class__ = type("TooFew", (det.__class__,), {"context_key_rows": 4})
    (short,) = detectors_in_context([det], table, targets)
    assert not np.array_equal(short.score(table.take(pa.array(targets))), full)

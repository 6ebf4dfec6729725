"""The token detector on a ``causal_window`` base (issue 15): each conn's embedding is its own
position's state in its host's stream, computed once per conn. What the shipped full-attention
detectors guarantee holds here too: a conn's score does not depend on which other conns are
scored with it (score == watch == dask), the declared context (``context_key_rows``,
``context_seconds``) is exactly what can change a score, and a baseline conn embeds alike in the
baseline and in the input (``fit_split`` embeds it once). Tiny models pretrained here."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml._core.errors import ZeekmlError
from zeekml.flows.select import earliest_rows, ts_sort_key
from zeekml.scoring.context import InContext, detectors_in_context
from zeekml.scoring.detectors.reference import same_context_rows
from zeekml.scoring.registry import get_kind
from zeekml.train.data import load_conns
from tiny import LABELED_LOG, pretrain_tiny
from zeekml.train.registry import get_trainer

pytest.importorskip("torch")

LOG = LABELED_LOG
CAUSAL = {"chunk": 16, "attention": "causal_window"}   # on the tiny token settings


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return load_conns([LOG])


@pytest.fixture(scope="module")
def model_dirs(table, tmp_path_factory) -> dict[str, str]:
    out = {}
    for kind in ("moe", "dense"):
        d = str(tmp_path_factory.mktemp(kind) / kind)
        m = pretrain_tiny(table, d, kind, **CAUSAL)
        assert np.isfinite(m["val_loss"]) and np.isfinite(m["val_loss_last"])
        out[kind] = d
    return out


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_a_causal_base_is_stored_as_one_and_stays_out_of_the_defaults(kind, model_dirs):
    with open(os.path.join(model_dirs[kind], "config.json")) as f:
        cfg = json.load(f)
    assert cfg["encoder"]["attention"] == "causal_window" and cfg["arch"]["attention"] == "causal_window"
    assert cfg["detector"] is False
    det = get_kind(kind).detector(model_dirs[kind])
    assert det.loaded.causal
    assert det.context_key_rows == 8 + 1                  # the window and the gap of its first conn
    assert det.context_seconds == 3 * 3600.0               # 2 blocks of max_age + the first gap


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_a_conn_scores_alike_alone_in_small_batches_and_in_the_whole_log(kind, model_dirs, table):
    det = get_kind(kind).detector(model_dirs[kind])
    det.fit(table.slice(0, 150))
    whole = det.score(table)
    for rows in ([399], [0, 1, 2], [17, 18, 250, 251, 252], list(range(100, 300, 7))):
        assert np.array_equal(det.score_rows(table, np.array(rows)), whole[rows]), rows
    # the stream's embedding is the window's last state (the path explain and NLL take)
    emb = det.loaded.stream_embedding(table)
    win = det.loaded.profile(det.loaded.tokens(table), want=("embedding",))["embedding"]
    np.testing.assert_allclose(emb, win, rtol=0, atol=1e-6)


def test_the_declared_context_is_what_changes_a_score(model_dirs, table):
    det = get_kind("moe").detector(model_dirs["moe"])
    det.fit(table.slice(0, 150))
    ts = np.nan_to_num(np.asarray(table.column("ts").to_pylist(), dtype=np.float64))
    targets = np.sort(np.argsort(ts, kind="stable")[-12:]).astype(np.int64)
    full = det.score_rows(table, targets)
    (ctx,) = detectors_in_context([det], table, targets)
    assert isinstance(ctx, InContext) and ctx.context.num_rows < table.num_rows
    assert np.array_equal(ctx.score(table.take(pa.array(targets))), full)
    # one row fewer than declared (the window without its first conn's predecessor) moves scores
    det.__class__ = type("TooFew", (det.__class__,), {"context_key_rows": 8})
    (short,) = detectors_in_context([det], table, targets)
    assert not np.array_equal(short.score(table.take(pa.array(targets))), full)


def test_a_baseline_conn_embeds_alike_in_the_baseline_and_in_the_input(model_dirs, table):
    det = get_kind("moe").detector(model_dirs["moe"])
    rows = earliest_rows(ts_sort_key(table), 0.3)
    baseline = table.take(pa.array(rows))
    same = same_context_rows(table, rows)
    assert same.mean() > 0.95
    np.testing.assert_array_equal(det._reference_input(baseline)[same],
                                  det._reference_input(table, rows[same]))
    fit_idx, cal_idx = np.arange(0, len(rows), 2), np.arange(1, len(rows), 2)
    cal, full = det.fit_split(baseline, fit_idx, cal_idx, scored=table, rows=rows)
    np.testing.assert_allclose(full, det.score(table), rtol=0, atol=1e-6)
    np.testing.assert_allclose(cal, det.score_rows(baseline, cal_idx), rtol=0, atol=1e-6)


def test_alerts_are_explained_and_a_causal_base_is_finetuned_with_lp_only(model_dirs, table):
    det = get_kind("moe").detector(model_dirs["moe"])
    det.fit(table.slice(0, 150))
    text = det.explain(table, np.array([250, 399]))
    assert len(text) == 2 and all("nearest baseline conns" in t and "least expected" in t for t in text)
    labels = np.asarray(["a" if i % 2 else "b" for i in range(table.num_rows)], dtype=object)
    for procedure in ("lp-ft", "full"):
        with pytest.raises(ZeekmlError, match=f"causal_window base is finetuned with procedure lp .*not {procedure}"):
            get_trainer("moe").finetune(model_dirs["moe"], table, labels, np.arange(40), False, 0,
                                        "/nonexistent/out", [LOG], procedure=procedure)
    with pytest.raises(ZeekmlError, match="causal_window model from scratch is not supported"):
        get_trainer("moe").finetune(None, table, labels, np.arange(40), False, 0, "/nonexistent/out", [LOG],
                                    procedure="lp", **CAUSAL)


@pytest.fixture(scope="module")
def stream_classifier(model_dirs, table, tmp_path_factory) -> str:
    """The tiny causal moe finetuned with ``procedure="lp"`` on the log's labels (60 conns)."""
    from zeekml.train.data import labels_of

    labels = np.asarray(labels_of(table, "label"), dtype=object)
    rows = np.sort(np.r_[np.flatnonzero(labels == "Benign")[:30], np.flatnonzero(labels == "Malicious")[:30]])
    out = str(tmp_path_factory.mktemp("clf") / "cmoe")
    m = get_trainer("moe").finetune(model_dirs["moe"], table, labels, rows, hide_service=False, seed=0,
                                    out=out, sources=[LOG], label_field="label", procedure="lp")
    assert (m["fit_rows"], m["val_rows"], m["steps"]) == (60, 0, 0)
    return out


def test_a_stream_classifier_is_the_probe_on_the_frozen_stream_embedding(model_dirs, stream_classifier, table):
    """The head reads the base's stream embedding (the encoder left as pretrained), through its
    layer norm and one linear layer fitted as ``fit_linear_probe`` fits it: the balanced logistic
    regression of scikit-learn on the same layer-normed rows points the same way."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from zeekml.scoring.detectors.token import LoadedTokenModel
    from zeekml.train.data import labels_of

    base, clf = LoadedTokenModel.from_dir(model_dirs["moe"]), LoadedTokenModel.from_dir(stream_classifier)
    assert clf.causal and clf.config["head"] == {"in_dim": 16, "n_classes": 2, "hidden": 0}
    assert all(torch.equal(a, b) for a, b in zip(base.encoder.state_dict().values(),
                                                  clf.encoder.state_dict().values()))
    labels = np.asarray(labels_of(table, "label"), dtype=object)
    rows = np.sort(np.r_[np.flatnonzero(labels == "Benign")[:30], np.flatnonzero(labels == "Malicious")[:30]])
    z = base.stream_embedding(table, rows)
    zn = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
    ref = LogisticRegression(C=2 / (1e-3 * len(rows)), class_weight="balanced", max_iter=10_000,
                             tol=1e-10).fit(zn, labels[rows] == "Malicious")
    w = clf.head.net[1].weight.detach().numpy()
    direction = w[1] - w[0]
    assert direction @ ref.coef_[0] / np.linalg.norm(direction) / np.linalg.norm(ref.coef_[0]) > 0.99
    p = clf.stream_proba(table)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p[rows, 1], ref.predict_proba(zn)[:, 1], atol=0.02)
    with pytest.raises(Exception, match="stream_proba"):
        clf.run(clf.tokens(table), want=("proba",))


def test_a_stream_classifier_scores_a_conn_alike_in_any_company(stream_classifier, table):
    """As a known-bad detector (``zeekml score --models DIR``): score == score_rows == its parts
    run side by side == the conn with only its declared context (what watch and chunks give)."""
    from zeekml.scoring.registry import classifier_detector

    det = classifier_detector(stream_classifier)
    assert det.context_seconds == 3 * 3600.0 and det.context_key == "id.orig_h"
    whole = det.score(table)
    assert whole.shape == (table.num_rows,) and 0 < (whole >= det.decision_threshold).mean() < 1
    for rows in ([399], [0, 1, 2], [17, 18, 250, 251, 252], list(range(100, 300, 7))):
        assert np.array_equal(classifier_detector(stream_classifier).score_rows(table, np.array(rows)),
                              whole[rows]), rows
    big = pa.concat_tables([table, table])          # past two HEAD_ROWS: split into parts
    parts = classifier_detector(stream_classifier).score_parts(big, 3)
    assert len(parts.calls) == 3
    assert np.array_equal(parts.combine([c() for c in parts.calls]), det.score(big))
    ts = np.nan_to_num(np.asarray(table.column("ts").to_pylist(), dtype=np.float64))
    targets = np.sort(np.argsort(ts, kind="stable")[-12:]).astype(np.int64)
    (ctx,) = detectors_in_context([classifier_detector(stream_classifier)], table, targets)
    assert isinstance(ctx, InContext) and ctx.context.num_rows < table.num_rows
    assert np.array_equal(ctx.score(table.take(pa.array(targets))), whole[targets])
    assert "p_Malicious=" in det.explain(table, np.array([399]))[0]


def test_an_explanation_neither_counts_nor_names_conns_past_the_reach(model_dirs, table):
    """A stream window holds the host's last conns of the table whatever their age; those older
    than the detector's reach cannot move its score, and whether a chunk's table holds them
    depends on where the chunk began. The explanation is the same with them and without them,
    and its "last N conns" counts only the conns within the reach."""
    import pyarrow.compute as pc

    det = get_kind("moe").detector(model_dirs["moe"])
    det.fit(table.slice(0, 150))
    hosts = np.asarray(table.column("id.orig_h").to_pylist(), dtype=object)
    target = 399
    mine = np.flatnonzero(hosts == hosts[target])
    earlier = mine[mine < target]
    assert len(earlier) >= 4
    old = earlier[:-2]                                    # all but two pushed far past the reach
    ts = pc.cast(table.column("ts"), pa.float64()).to_numpy(zero_copy_only=False).copy()
    ts[old] -= 100.0 * det.context_seconds
    with_old = table.set_column(table.schema.get_field_index("ts"), "ts", pa.array(ts))
    keep = np.setdiff1d(np.arange(table.num_rows), old)
    without = with_old.take(pa.array(keep))
    a = det.explain(with_old, np.array([target]))
    b = det.explain(without, np.array([int(np.searchsorted(keep, target))]))
    assert a == b
    # the conn itself and its host's earlier conns left within the reach, at most a window
    counted = min(len(earlier) - len(old) + 1, det.loaded.tokenizer.seq_len)
    assert f"last {counted} conns" in a[0], a[0]
    # the window had room for conns pushed away: without the reach it counted them too
    assert counted < det.loaded.tokenizer.seq_len

"""The model-kind contract, run over every registered kind (scikit-learn's
``parametrize_with_checks`` style): a new kind is proven by this file picking it up, not by a copy
of the tests per kind.

On 400 real conns (tests/data/gnn: the IoT-23 CTU-34-1 head) with tiny settings, each kind must:
pretrain through its trainer -> write a model dir whose manifest and config carry ``kind`` and
``schema_version`` -> load back as a ``Detector`` through the inference registry -> fit on a
baseline -> give ``score_rows(t, rows) == score(t)[rows]`` -> give, scored in context
(``zeekml.scoring.context``, as split and live scoring do), the scores of the whole table.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml.scoring.context import InContext, detectors_in_context, horizon
from zeekml.scoring.detector import Detector, ModelKind
from zeekml.scoring.registry import get_kind, kind_names
from zeekml.train.data import load_conns
from zeekml.train.registry import get_trainer, trainer_names
from tiny import LABELED_LOG, TINY, pretrain_tiny

pytest.importorskip("torch")

LOG = LABELED_LOG
# rows in any order, a repeat, the first and the last conn
ROWS = np.array([0, 5, 399, 200, 5, 17])
TARGETS = np.arange(180, 200)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return load_conns([LOG])


@pytest.fixture(scope="module")
def pretrained(table, tmp_path_factory):
    """kind -> (model dir, pretraining metrics), each trained once, lazily."""
    done: dict[str, tuple[str, dict]] = {}

    def get(kind: str) -> tuple[str, dict]:
        if kind not in done:
            out = str(tmp_path_factory.mktemp(kind) / kind)
            metrics = pretrain_tiny(table, out, kind)
            done[kind] = (out, metrics)
        return done[kind]

    return get


def test_every_kind_has_both_halves():
    assert {"gnn", "moe", "dense", "mae"} <= set(kind_names())
    assert set(kind_names()) == set(trainer_names())
    for kind in kind_names():
        assert isinstance(get_kind(kind), ModelKind) and get_kind(kind).name == kind


@pytest.mark.parametrize("kind", kind_names())
def test_pretrain_writes_kind_and_schema_version(kind, pretrained):
    out, metrics = pretrained(kind)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    want = get_kind(kind).schema_version
    assert manifest["kind"] == config["kind"] == kind
    assert manifest["schema_version"] == config["schema_version"] == want
    assert set(manifest["files"]) >= {"config.json", "weights.pt"}
    # the keys every kind's config carries (zeekml.train.common.model_config)
    assert config["seed"] == 0 and config["pretrained"] is True and config["label_field"] is None
    assert config["n_params"] > 0 and isinstance(config["detector"], bool)
    assert config["pretrain"]["epochs"] == 1            # an explicit --epochs is taken as is
    assert isinstance(metrics, dict) and metrics


@pytest.mark.parametrize("kind", kind_names())
def test_loaded_detector_keeps_the_detector_contract(kind, pretrained, table):
    from zeekml._core.errors import ModelError

    out, _ = pretrained(kind)
    det = get_kind(kind).detector(out, device="cpu")
    assert det.name == kind
    with pytest.raises(ModelError, match="before fit"):
        det.score(table)
    assert det.fit(table.slice(0, 200)) is det
    whole = check_contract(det, table)
    # relative to the baseline it was fitted on: conns of the baseline itself score lower, on
    # average, than the conns after it (the IoT-23 head turns to the botnet's traffic later)
    assert whole[:200].mean() < whole[200:].mean()


def check_contract(det, table: pa.Table) -> np.ndarray:
    """The ``Detector`` contract on a fitted ``det``: shapes, ``score_rows(t, rows) ==
    score(t)[rows]``, scores in context == scores of the whole table, an explanation per row.
    Returns ``det.score(table)``."""
    assert isinstance(det, Detector), f"{type(det).__name__} lacks part of the Detector protocol"
    assert det.note.startswith("ZeekML::")
    back, fwd = horizon(det)
    assert back >= 0 and fwd >= 0
    whole = det.score(table)
    assert whole.shape == (table.num_rows,) and np.isfinite(whole).all()
    assert whole.std() > 0                              # it tells conns apart
    # to float32 precision (the models run in float32 over differently sized batches)
    part = det.score_rows(table, ROWS)
    assert part.shape == (len(ROWS),)
    np.testing.assert_allclose(part, whole[ROWS], rtol=1e-5, atol=1e-6)
    assert det.score_rows(table, np.zeros(0, dtype=np.int64)).shape == (0,)
    assert det.score(table.slice(0, 0)).shape == (0,)
    (ctx,) = detectors_in_context([det], table, TARGETS)
    if back > 0 or fwd > 0:
        assert isinstance(ctx, InContext)
    got = ctx.score(table.take(pa.array(TARGETS)))
    np.testing.assert_allclose(got, whole[TARGETS], rtol=1e-5, atol=1e-6)
    why = det.explain(table, np.array([3, 7]))
    assert len(why) == 2 and all(isinstance(w, str) and w for w in why)
    return whole


@pytest.mark.parametrize("kind", kind_names())
def test_finetuned_classifier_is_a_known_bad_detector(kind, pretrained, table, tmp_path):
    """Finetuning keeps the protocol: an explicit ``epochs`` means that many passes for every kind
    (no step floor), the config says what the classifier learnt, ``predict`` gives probabilities;
    and ``--models`` naming the directory makes it a ``classifier`` detector (score = P(Malicious),
    the probability ``predict`` gives) that keeps the detector contract."""
    from zeekml._core.errors import ModelError
    from zeekml.scoring.detectors.classifier import ClassifierDetector
    from zeekml.scoring.registry import load_model_detectors
    from zeekml.train.data import labels_of, sample_shots, temporal_split

    base, _ = pretrained(kind)
    labels = labels_of(table, "label")
    early, _ = temporal_split(table)
    rows = sample_shots(labels, early, k=8, seed=0)
    out = str(tmp_path / f"{kind}-ft")
    get_trainer(kind).finetune(base, table, labels, rows, hide_service=False, seed=0, out=out,
                               sources=[LOG], label_field="label", epochs=1, device="cpu",
                               **TINY.get(kind, {}))
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["kind"] == kind and config["schema_version"] == get_kind(kind).schema_version
    assert config["finetune"]["epochs"] == 1 and config["finetune"].get("min_steps", 0) == 0
    assert config["detector"] is False and config["pretrained"] is True
    assert config["label_field"] == "label" and config["classes"] == ["Benign", "Malicious"]
    pred = get_trainer(kind).predict(out, table, device="cpu")
    assert pred.classes == ["Benign", "Malicious"] and pred.proba.shape == (table.num_rows, 2)
    np.testing.assert_allclose(pred.proba.sum(axis=1), 1.0, rtol=1e-5)

    (det,) = load_model_detectors(out)
    assert isinstance(det, ClassifierDetector)
    assert det.name == f"clf-{kind}-ft" and det.note == "ZeekML::Intrusion"
    assert det.fit(table.slice(0, 200)) is det
    whole = check_contract(det, table)
    # the score is the head's probability of the malicious class, as predict reports it
    np.testing.assert_allclose(whole, pred.proba[:, 1], rtol=1e-5, atol=1e-6)
    assert ((whole >= 0) & (whole <= 1)).all()
    if kind in ("moe", "dense"):
        # the token kinds' anomaly detector needs the masked-token head of a base
        with pytest.raises(ModelError, match="finetuned classifier"):
            get_kind(kind).detector(out, device="cpu")


def test_epochs_and_step_floor_semantics():
    """Shared by every kind (``zeekml.train.common``): defaults keep the few-shot step floor, an
    explicit ``--epochs`` is taken as is, and 0 epochs is a one-line error."""
    from dataclasses import dataclass

    from zeekml._core.errors import ZeekmlError
    from zeekml.train.common import apply_epochs, optimiser_steps

    @dataclass
    class Cfg:
        epochs: int = 30
        batch_size: int = 64
        min_steps: int = 150

    assert optimiser_steps(Cfg(), n_rows=20) == 150                    # 30 x 1 batch, floored
    assert optimiser_steps(Cfg(), n_rows=1000) == 30 * 16
    assert optimiser_steps(apply_epochs(Cfg(), 2), n_rows=20) == 2     # explicit: no floor
    assert optimiser_steps(apply_epochs(Cfg(), 2), n_rows=20, batch_size=0) == 2   # full batch
    assert apply_epochs(Cfg(), None) == Cfg()
    with pytest.raises(ZeekmlError, match="at least 1"):
        apply_epochs(Cfg(), 0)


def test_knn_distance_does_not_depend_on_the_batch():
    """A conn's distance to the baseline is the same bits alone, in a small batch or in a large
    one (watch scores small batches, score the whole input): blocks have one fixed shape."""
    from zeekml.scoring.detectors.reference import CHUNK, KnnReference

    rng = np.random.default_rng(0)
    ref = KnnReference(k=3).fit(rng.standard_normal((354, 32)).astype(np.float32))
    e = rng.standard_normal((CHUNK + 100, 32)).astype(np.float32)
    whole = ref.score(e)
    for rows in (np.arange(1), np.arange(5, 9), np.array([3, CHUNK + 50, 2]), np.arange(CHUNK + 99, CHUNK + 100)):
        assert np.array_equal(ref.score(e[rows]), whole[rows])
    # the exact value: mean of the 3 smallest cosine distances
    u = e[7] / np.linalg.norm(e[7])
    r = ref.ref
    np.testing.assert_allclose(whole[7], np.sort(1.0 - r @ u)[:3].mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", kind_names())
def test_a_config_claiming_a_head_it_lacks_is_refused(kind, pretrained, tmp_path):
    """A base whose config was edited to look like a classifier (label_field, classes) has no
    head to score with: a one-line ModelError naming it, not scores of the wrong shape."""
    import shutil

    from zeekml._core.errors import ModelError
    from zeekml.scoring.detectors.base import sha256_file
    from zeekml.scoring.registry import load_model_detectors

    base, _ = pretrained(kind)
    d = tmp_path / "fake-classifier"
    shutil.copytree(base, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(label_field="label", classes=["Benign", "Malicious"], detector=False)
    (d / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(str(d / "config.json"))
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="no classifier head") as e:
        load_model_detectors(str(d))
    assert e.value.path == str(d)

"""LP-FT, the finetune procedure of every kind (``zeekml.train.common.LPFT``): a linear head fitted
on the frozen encoder, then everything finetuned from it at a small rate, stopped early on held-out
labeled rows; and the autoencoder head's inversion it replaces (docs/results/fewshot.md)."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from zeekml._core.errors import ZeekmlError
from zeekml.train.common import EarlyStopping, fit_linear_probe, holdout_split
from zeekml.train.data import labels_of, load_conns
from zeekml.train.registry import get_trainer
from tiny import LABELED_LOG, TINY, pretrain_tiny

torch = pytest.importorskip("torch")

LOG = LABELED_LOG


# -- the pieces ---------------------------------------------------------------------------------

def _two_blobs(n: int = 80, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) < n // 4).astype(np.int64)             # imbalanced: a quarter class 1
    x = rng.normal(size=(n, d)) + np.outer(y, rng.normal(size=d))
    return x.astype(np.float32), y


def test_the_linear_probe_is_scikit_learns_balanced_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from zeekml.train.common import class_weights

    x, y = _two_blobs()
    yt = torch.as_tensor(y)
    l2 = 0.05
    W, b = fit_linear_probe(torch.as_tensor(x), yt, 2, class_weights(yt, 2), l2)
    assert W.shape == (2, 5) and b.shape == (2,)
    ref = LogisticRegression(C=2 / (l2 * len(y)), class_weight="balanced", tol=1e-12,
                             max_iter=10_000).fit(x.astype(np.float64), y)
    # softmax over two classes: the logit difference is the binary model's
    np.testing.assert_allclose((W[1] - W[0]).numpy(), ref.coef_[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(b[1] - b[0]), ref.intercept_[0], rtol=1e-4, atol=1e-5)


def test_the_linear_probe_depends_on_the_data_only():
    x, y = _two_blobs(seed=1)
    torch.manual_seed(0)
    a = fit_linear_probe(torch.as_tensor(x), torch.as_tensor(y), 2)
    torch.manual_seed(123)
    b = fit_linear_probe(torch.as_tensor(x), torch.as_tensor(y), 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_holdout_is_stratified_and_disjoint():
    y = np.array([0] * 20 + [1] * 10 + [2] * 5)
    fit, val = holdout_split(y, 0.2, seed=3)
    assert sorted(np.r_[fit, val].tolist()) == list(range(35)) and not set(fit) & set(val)
    assert np.bincount(y[val]).tolist() == [4, 2, 1]
    assert np.array_equal(val, holdout_split(y, 0.2, seed=3)[1])
    assert not np.array_equal(val, holdout_split(y, 0.2, seed=4)[1])


def test_no_holdout_when_a_class_is_too_small_to_give_one():
    y = np.array([0] * 50 + [1] * 4)                        # 0.2 * 4 < 1
    fit, val = holdout_split(y, 0.2, seed=0)
    assert len(val) == 0 and fit.tolist() == list(range(54))
    assert len(holdout_split(y, 0.0, seed=0)[1]) == 0


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    m = torch.nn.Linear(2, 1)
    stop = EarlyStopping(m, patience=2)
    with torch.no_grad():
        m.weight.fill_(1.0)
    assert not stop.update(0, 0.5)
    with torch.no_grad():
        m.weight.fill_(2.0)
    assert not stop.update(10, 0.7)
    assert stop.update(20, 0.6)                             # second validation without a better loss
    stop.restore()
    assert torch.equal(m.weight, torch.ones(1, 2))
    assert stop.summary() == {"best_step": 0, "best_val_loss": 0.5, "validations": 3}


# -- the autoencoder head's inversion (fewshot.md: AUROC 0.18-0.40, a probe 0.98) -----------------

class _IdentityEncoder(torch.nn.Module):
    """A tiny stand-in autoencoder whose embedding is its quantity input (a trainable identity)."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)
        self.config = SimpleNamespace(embed_dim=d)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(d))
            self.lin.bias.zero_()

    def encode(self, q, sq, e):
        return self.lin(q)


def _inversion_case(d: int = 8):
    """Stratosphere 010's shape: many malicious conns tight around one point, 3 benign ones, and
    unseen benign conns spread far from anything labeled (tens of training std away)."""
    rng = np.random.default_rng(0)
    mal = rng.normal(0, 0.05, (200, d))
    mal[:, 0] += 1.0
    ben = rng.normal(0, 0.05, (3, d))
    ben[:, 0] -= 1.0
    t_ben = rng.normal(0, 3.0, (100, d))
    t_ben[:, 0] = -rng.uniform(1, 10, 100)
    t_mal = rng.normal(0, 0.1, (100, d))
    t_mal[:, 0] += 1.0
    x = torch.tensor(np.r_[mal, ben], dtype=torch.float32)
    t = torch.tensor(np.r_[t_ben, t_mal], dtype=torch.float32)
    return x, torch.tensor([1] * 200 + [0] * 3), t, np.r_[np.zeros(100), np.ones(100)]


def _auroc_of(head, model, mu, sd, t, yt) -> float:
    from sklearn.metrics import roc_auc_score

    head.eval()
    with torch.no_grad():
        p = torch.softmax(head((model.encode(t, None, None) - mu) / sd), 1)[:, 1].numpy()
    return float(roc_auc_score(yt, p))


def test_three_benign_conns_no_longer_invert_the_mae_head():
    from zeekml.train.mae import FinetuneConfig, _finetune_full, _finetune_lpft

    x, y, t, yt = _inversion_case()
    for seed in range(2):
        torch.manual_seed(seed)
        old = _IdentityEncoder(8)
        head, mu, sd, _, _ = _finetune_full(old, True, x, None, None, y, 2, FinetuneConfig(procedure="full"),
                                            seed, "cpu")
        # the earlier MLP head, on the labeled rows' standardisation, extrapolates backwards
        assert _auroc_of(head, old, mu, sd, t, yt) < 0.1
        new = _IdentityEncoder(8)
        head, mu, sd, _, m = _finetune_lpft(new, x, None, None, y, 2, FinetuneConfig(), seed, "cpu")
        assert _auroc_of(head, new, mu, sd, t, yt) > 0.9
        # 3 benign conns cannot give a held-out one: the LP head is kept, the encoder untouched
        assert m["val_rows"] == 0 and m["steps"] == 0
        assert torch.equal(new.lin.weight, torch.eye(8))


# -- through every kind's trainer ----------------------------------------------------------------

@pytest.fixture(scope="module")
def table() -> pa.Table:
    return load_conns([LOG])


@pytest.fixture(scope="module")
def labels(table) -> np.ndarray:
    return np.asarray(labels_of(table, "label"), dtype=object)


@pytest.fixture(scope="module")
def bases(table, tmp_path_factory):
    """kind -> a tiny base pretrained once (lazily)."""
    done: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in done:
            out = str(tmp_path_factory.mktemp(kind) / "base")
            pretrain_tiny(table, out, kind)
            done[kind] = out
        return done[kind]

    return get


def _encoder_state(kind: str, model_dir: str) -> dict:
    """The encoder's weights of a model directory (no head, no pretraining decoder)."""
    st = torch.load(os.path.join(model_dir, "weights.pt"), weights_only=True)
    keep = {"gnn": lambda k: k.startswith("encoder."), "moe": lambda k: k.startswith("encoder."),
            "mae": lambda k: k.startswith("mae.") and ("encoder" in k or "adapter" in k)}[kind]
    return {k: v for k, v in st.items() if keep(k)}


def _config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def _rows(labels: np.ndarray, n_benign: int, n_malicious: int) -> np.ndarray:
    ben = np.flatnonzero(labels == "Benign")[:n_benign]
    mal = np.flatnonzero(labels == "Malicious")[:n_malicious]
    return np.sort(np.r_[ben, mal])


@pytest.mark.parametrize("kind", ["gnn", "moe", "mae"])
def test_the_probe_phase_leaves_the_encoder_as_pretrained(kind, bases, table, labels, tmp_path):
    """With 3 benign conns nothing can be held out, so LP-FT stops after LP: the encoder is the
    base's, bit for bit, and the head is linear."""
    base = bases(kind)
    out = str(tmp_path / "ft")
    m = get_trainer(kind).finetune(base, table, labels, _rows(labels, 3, 60), hide_service=False, seed=0,
                                   out=out, sources=[LOG], label_field="label", procedure="lp-ft", **TINY[kind])
    assert m["val_rows"] == 0 and m["steps"] == 0
    before, after = _encoder_state(kind, base), _encoder_state(kind, out)
    assert before and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    cfg = _config(out)
    assert cfg["finetune"]["procedure"] == "lp-ft" and cfg["finetune"]["val_share"] == 0.2
    hidden = cfg["model"]["head_hidden"] if kind == "gnn" else cfg["head"]["hidden"]
    assert hidden == 0
    pred = get_trainer(kind).predict(out, table)
    assert pred.classes == ["Benign", "Malicious"]
    np.testing.assert_allclose(pred.proba.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gnn", "moe", "mae"])
def test_lp_is_the_probe_alone_fitted_on_every_labeled_row(kind, bases, table, labels, tmp_path):
    """``procedure="lp"``: nothing held out (there is no FT to stop), no FT step, the encoder the
    base's bit for bit; LP-FT on the same rows holds 12 out and so fits another head."""
    base = bases(kind)
    rows = _rows(labels, 30, 30)
    out = str(tmp_path / "lp")
    m = get_trainer(kind).finetune(base, table, labels, rows, hide_service=False, seed=0, out=out,
                                   sources=[LOG], label_field="label", epochs=3, procedure="lp", **TINY[kind])
    assert (m["fit_rows"], m["val_rows"], m["steps"]) == (60, 0, 0)
    before, after = _encoder_state(kind, base), _encoder_state(kind, out)
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    cfg = _config(out)
    assert cfg["finetune"]["procedure"] == "lp"
    assert (cfg["model"]["head_hidden"] if kind == "gnn" else cfg["head"]["hidden"]) == 0
    p = get_trainer(kind).predict(out, table).proba
    y = labels[rows] == "Malicious"
    assert ((p[rows, 1] >= 0.5) == y).mean() > 0.8          # the probe learnt its rows


def test_the_mae_head_after_lp_is_the_logistic_fit_on_the_same_embedding(bases, table, labels, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from zeekml.scoring.detectors.mae import LoadedMAE

    rows = _rows(labels, 3, 60)
    out = str(tmp_path / "ft")
    get_trainer("mae").finetune(bases("mae"), table, labels, rows, hide_service=False, seed=0, out=out,
                                sources=[LOG], label_field="label", procedure="lp-ft")
    base = LoadedMAE.from_dir(bases("mae"))
    z = base.run(base.modalities(table))["embedding"][rows]
    zs = (z - z.mean(0)) / np.maximum(z.std(0), 1e-4)
    ref = LogisticRegression(C=2 / (1e-3 * len(rows)), class_weight="balanced", max_iter=10_000,
                             tol=1e-10).fit(zs, labels[rows] == "Malicious")
    ft = LoadedMAE.from_dir(out)
    w = ft.head.net[0].weight.detach().numpy()
    direction = w[1] - w[0]
    cos = direction @ ref.coef_[0] / np.linalg.norm(direction) / np.linalg.norm(ref.coef_[0])
    assert cos > 0.99, cos


@pytest.mark.parametrize("kind", ["gnn", "moe", "mae"])
def test_finetuning_after_the_probe_is_stopped_on_held_out_rows(kind, bases, table, labels, tmp_path):
    base = bases(kind)
    out = str(tmp_path / "ft")
    rows = _rows(labels, 30, 30)
    m = get_trainer(kind).finetune(base, table, labels, rows, hide_service=False, seed=0, out=out,
                                   sources=[LOG], label_field="label", epochs=3, procedure="lp-ft", **TINY[kind])
    assert (m["fit_rows"], m["val_rows"]) == (48, 12)
    es = m["early_stopping"]
    assert es["validations"] >= 2 and 0 <= es["best_step"] <= m["steps"]
    # a scratch twin runs the same procedure
    m0 = get_trainer(kind).finetune(None, table, labels, rows, hide_service=False, seed=0,
                                    out=str(tmp_path / "scratch"), sources=[LOG], label_field="label",
                                    epochs=3, procedure="lp-ft", **TINY[kind])
    assert m0["val_rows"] == 12 and _config(str(tmp_path / "scratch"))["finetune"]["procedure"] == "lp-ft"


@pytest.mark.parametrize("kind", ["gnn", "moe", "mae"])
def test_the_full_procedure_is_still_there_with_its_mlp_head(kind, bases, table, labels, tmp_path):
    out = str(tmp_path / "ft")
    m = get_trainer(kind).finetune(bases(kind), table, labels, _rows(labels, 20, 20), hide_service=False,
                                   seed=0, out=out, sources=[LOG], label_field="label", epochs=2,
                                   procedure="full", **TINY[kind])
    assert "early_stopping" not in m
    cfg = _config(out)
    assert cfg["finetune"]["procedure"] == "full"
    assert (cfg["model"]["head_hidden"] if kind == "gnn" else cfg["head"]["hidden"]) == 64
    assert get_trainer(kind).predict(out, table).proba.shape == (table.num_rows, 2)


def test_an_unknown_procedure_is_one_clear_error(bases, table, labels, tmp_path):
    with pytest.raises(ZeekmlError, match="unknown finetune procedure 'lpft'; use one of lp-ft, lp, full"):
        get_trainer("mae").finetune(bases("mae"), table, labels, _rows(labels, 5, 5), hide_service=False,
                                    seed=0, out=str(tmp_path / "x"), sources=[LOG], label_field="label",
                                    procedure="lpft")


def test_zeekml_finetune_takes_the_procedure(bases, tmp_path):
    import click
    from click.testing import CliRunner

    from zeekml.cli import main
    from zeekml.train.common import PROCEDURES

    command = main.get_command(click.Context(main), "finetune")
    opt = next(p for p in command.params if p.name == "procedure")
    assert tuple(opt.type.choices) == PROCEDURES
    for procedure, hidden in (("lp-ft", 0), ("full", 64)):
        out = tmp_path / procedure
        r = CliRunner().invoke(main, ["finetune", "--model", "mae", "--base", bases("mae"), "--train", LOG,
                                      "--label-field", "label", "--shots", "20", "--epochs", "2",
                                      "--procedure", procedure, "--out", str(out)])
        assert r.exit_code == 0, r.output
        cfg = _config(str(out))
        assert (cfg["finetune"]["procedure"], cfg["head"]["hidden"]) == (procedure, hidden)
    r = CliRunner().invoke(main, ["finetune", "--model", "mae", "--base", bases("mae"), "--train", LOG,
                                  "--label-field", "label", "--procedure", "lpft", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "'lpft' is not one of 'lp-ft', 'lp', 'full'" in r.output


def test_each_kind_has_the_procedure_it_measured_best_with_as_its_default():
    """docs/results/fewshot.md, "LP-FT": mae's finetune is LP-FT (the earlier head inverted), gnn
    and moe keep the full finetune, which LP-FT did not beat for them."""
    from zeekml.train import gnn, mae, moe

    assert mae.FinetuneConfig().procedure == "lp-ft"
    assert gnn.FinetuneConfig().procedure == moe.FinetuneConfig().procedure == "full"

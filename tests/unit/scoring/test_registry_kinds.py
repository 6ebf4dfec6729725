"""One registry of model kinds (it feeds the CLI's ``--model`` choices) and one way a
``--models`` directory becomes detectors: a model directory itself or a directory of them;
anything unusable is a one-line ``ModelError`` (exit 5) naming it, never a silent fallback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from zeekml._core.errors import ModelError
from zeekml.scoring import registry
from zeekml.scoring.registry import (detector_dirs, get_kind, kind_names, load_model_detectors,
                                     model_dirs, register_kind)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
MODELS = os.path.join(ROOT, "models")
MAE_BASE = os.path.join(MODELS, "mae-base")
LOG = os.path.join(ROOT, "tests", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")
shipped = pytest.mark.skipif(not os.path.exists(os.path.join(MAE_BASE, "config.json")),
                             reason="models/mae-base not shipped")


def fake_model_dir(path, **config) -> str:
    """A model directory with a config and a manifest (no weights: these tests stop before)."""
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"kind": config.get("kind"), "files": {}}, f)
    return str(path)


def test_cli_model_choices_are_the_registry():
    from zeekml.cli.models import MODEL_CHOICES

    assert tuple(MODEL_CHOICES.choices) == kind_names()
    assert {"gnn", "moe", "dense", "mae"} <= set(kind_names())


def test_a_kind_name_cannot_be_taken_twice():
    class Other:
        def __init__(self, name):
            self.name = name

    with pytest.raises(ValueError, match="'gnn' registered twice"):
        register_kind("gnn")(Other)
    assert type(get_kind("gnn")).__name__ == "GNNKind"
    with pytest.raises(ModelError, match="unknown model kind 'nope'"):
        get_kind("nope")


def test_listing_kinds_imports_neither_torch_nor_torch_geometric():
    """``zeekml cat`` and ``--no-models`` start without the model libraries (torch_geometric
    takes seconds to import)."""
    code = ("import sys, zeekml.cli; from zeekml.scoring.registry import kind_names; kind_names(); "
            "print(sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_missing_models_dir_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such directory") as e:
        load_model_detectors(str(tmp_path / "nope"))
    assert e.value.exit_code == 5 and e.value.path == str(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model directory here"):
        load_model_detectors(str(tmp_path / "empty"))


def test_a_finetuned_classifier_is_a_detector_when_named(tmp_path, caplog):
    """Issue 14: a classifier given to --models by itself is used (a ``classifier`` detector);
    beside others it is used only when its config says ``"detector": true``, else left out (logged,
    naming it)."""
    ft = fake_model_dir(tmp_path / "parent" / "mae-ft", kind="mae", schema_version=1, detector=False,
                        label_field="label", classes=["Benign", "Malicious"])
    assert detector_dirs(ft) == [ft]
    caplog.set_level("INFO", logger="zeekml.scoring.registry")
    with pytest.raises(ModelError, match="no anomaly detector here"):
        detector_dirs(str(tmp_path / "parent"))
    assert "finetuned classifier not on by default" in caplog.text and ft in caplog.text


def test_broken_or_missing_config_is_a_model_error(tmp_path):
    bad = tmp_path / "m" / "broken"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{not json")
    (bad / "manifest.json").write_text("{}")
    with pytest.raises(ModelError, match="config.json is not valid JSON"):
        detector_dirs(str(tmp_path / "m"))
    (bad / "config.json").unlink()                          # a manifest without its config
    with pytest.raises(ModelError, match="no config.json") as e:
        detector_dirs(str(tmp_path / "m"))
    assert e.value.path == str(bad)


def test_non_detectors(tmp_path):
    twin = fake_model_dir(tmp_path / "p" / "dense-base", kind="dense", schema_version=1, detector=False,
                          pretrained=True, label_field=None, classes=None, head=None)
    with pytest.raises(ModelError, match="not an anomaly detector"):
        detector_dirs(twin)                                 # asked for by name: say why not
    with pytest.raises(ModelError, match="no anomaly detector here"):
        detector_dirs(str(tmp_path / "p"))                  # a parent with none at all
    odd = fake_model_dir(tmp_path / "q" / "x", kind="fourier", schema_version=1, detector=True)
    with pytest.raises(ModelError, match="unknown model kind 'fourier'") as e:
        load_model_detectors(str(tmp_path / "q"))
    assert e.value.path == odd


@shipped
def test_a_model_dir_itself_or_its_parent(tmp_path):
    parent = tmp_path / "models"
    parent.mkdir()
    os.symlink(MAE_BASE, parent / "mae-base")
    fake_model_dir(parent / "dense-base", kind="dense", schema_version=1, detector=False, pretrained=True)
    (parent / "notes").mkdir()                              # not a model dir: not looked at
    assert model_dirs(MAE_BASE) == [MAE_BASE]
    assert detector_dirs(str(parent)) == [str(parent / "mae-base")]    # the twin stays out
    assert [d.name for d in load_model_detectors(MAE_BASE)] == ["mae"]
    assert [d.name for d in load_model_detectors(str(parent))] == ["mae"]


@shipped
def test_empty_means_the_shipped_models(monkeypatch):
    monkeypatch.delenv("ZEEKML_MODELS", raising=False)
    assert os.path.samefile(registry.default_models_dir(), MODELS)
    assert [os.path.basename(d) for d in detector_dirs(registry.default_models_dir())] == \
        ["gnn-base", "mae-base", "moe-causal"]


def test_score_with_an_unusable_models_dir_exits_5_in_one_line(tmp_path):
    from zeekml.cli import main

    fake_model_dir(tmp_path / "ft", kind="moe", schema_version=1, detector=False, label_field="label",
                   classes=["a", "b"], head={"n_classes": 2})
    for models in (tmp_path / "missing", tmp_path / "ft"):
        r = CliRunner().invoke(main, ["score", LOG, "--out", str(tmp_path / "o"), "--models", str(models),
                                      "--no-progress"])
        assert r.exit_code == 5, r.output
        assert "Traceback" not in r.output and str(models) in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output

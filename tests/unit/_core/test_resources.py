"""``zeekml._core.resources``: shipped models and Zeek scripts from a checkout, a wheel, or $ENV."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import zeekml
from zeekml._core import resources
from zeekml._core.errors import ModelError
from zeekml._core.resources import ZeekScriptsNotFound, shipped_models_dir, zeek_scripts_dir

REPO = Path(zeekml.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    monkeypatch.delenv(resources.MODELS_ENV, raising=False)
    monkeypatch.delenv(resources.ZEEK_SCRIPTS_ENV, raising=False)


def _model(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"kind": "gnn"}')
    return d


def _scripts(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "__load__.zeek").write_text("@load ./main\n")
    return d


def _installed(tmp_path: Path, monkeypatch, shipped: bool) -> Path:
    """A site-packages with zeekml/ in it, as pip leaves it (package data only when ``shipped``)."""
    site = tmp_path / "site-packages"
    pkg = site / "zeekml"
    pkg.mkdir(parents=True)
    if shipped:
        _model(pkg / resources.SHIPPED / "models", "gnn-base")
        _scripts(pkg / resources.SHIPPED / "zeek_scripts")
    monkeypatch.setattr(resources, "_zeekml_dir", lambda: pkg)
    return site


# --- checkout layout (this test runs from one) -------------------------------------------------

def test_checkout_finds_the_root_models_and_scripts():
    assert Path(shipped_models_dir()) == REPO / "models"
    assert sorted(p.name for p in (REPO / "models").glob("*/config.json")) != []
    assert Path(zeek_scripts_dir()) == (REPO / "zeek-scripts" / "scripts").resolve()


# --- wheel layout --------------------------------------------------------------------------------

def test_wheel_install_uses_package_data(tmp_path, monkeypatch):
    site = _installed(tmp_path, monkeypatch, shipped=True)
    assert Path(shipped_models_dir()) == site / "zeekml" / "_shipped" / "models"
    assert Path(zeek_scripts_dir()) == (site / "zeekml" / "_shipped" / "zeek_scripts").resolve()


def test_wheel_install_never_takes_a_stray_site_packages_models(tmp_path, monkeypatch):
    # Another distribution's top-level models/ beside zeekml/ is not ours: no pyproject.toml there.
    site = _installed(tmp_path, monkeypatch, shipped=False)
    _model(site / "models", "someone-elses")
    _scripts(site / "zeek-scripts" / "scripts")
    with pytest.raises(ModelError, match="no shipped models found"):
        shipped_models_dir()
    with pytest.raises(ZeekScriptsNotFound):
        zeek_scripts_dir()


def test_package_data_wins_over_a_checkout(tmp_path, monkeypatch):
    site = _installed(tmp_path, monkeypatch, shipped=True)
    (site / "pyproject.toml").write_text("")
    _model(site / "models", "checkout-model")
    assert Path(shipped_models_dir()) == site / "zeekml" / "_shipped" / "models"


def test_empty_package_data_falls_through_to_the_checkout(tmp_path, monkeypatch):
    # An editable install of a tree where someone built in place: zeekml/_shipped/models exists
    # but holds no model directory, so it does not count.
    site = _installed(tmp_path, monkeypatch, shipped=False)
    (site / "zeekml" / resources.SHIPPED / "models").mkdir(parents=True)
    (site / "pyproject.toml").write_text("")
    _model(site / "models", "gnn-base")
    assert Path(shipped_models_dir()) == site / "models"


# --- environment overrides ---------------------------------------------------------------------

def test_zeekml_models_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv(resources.MODELS_ENV, str(tmp_path))
    assert shipped_models_dir() == str(tmp_path)


def test_zeekml_models_missing_is_a_model_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv(resources.MODELS_ENV, str(missing))
    with pytest.raises(ModelError) as e:
        shipped_models_dir()
    assert e.value.exit_code == 5
    assert str(e.value) == f"{missing}: $ZEEKML_MODELS is not a directory"


def test_zeek_scripts_env_overrides(tmp_path, monkeypatch):
    d = _scripts(tmp_path / "s")
    monkeypatch.setenv(resources.ZEEK_SCRIPTS_ENV, str(d))
    assert zeek_scripts_dir() == str(d.resolve())


def test_zeek_scripts_env_without_scripts_does_not_fall_back(tmp_path, monkeypatch):
    # The checkout's scripts exist, but the user asked for another directory: say so.
    monkeypatch.setenv(resources.ZEEK_SCRIPTS_ENV, str(tmp_path))
    with pytest.raises(ZeekScriptsNotFound, match=f"no __load__.zeek in {tmp_path}"):
        zeek_scripts_dir()


# --- nothing found -----------------------------------------------------------------------------

def test_no_models_anywhere_is_one_line_naming_where_and_what_to_do(tmp_path, monkeypatch):
    _installed(tmp_path, monkeypatch, shipped=False)
    with pytest.raises(ModelError) as e:
        shipped_models_dir()
    msg = str(e.value)
    assert e.value.exit_code == 5 and "\n" not in msg
    assert str(tmp_path / "site-packages" / "zeekml" / "_shipped" / "models") in msg
    assert "ZEEKML_MODELS" in msg and "--no-models" in msg


def test_no_scripts_anywhere_names_the_variable(tmp_path, monkeypatch):
    _installed(tmp_path, monkeypatch, shipped=False)
    with pytest.raises(ZeekScriptsNotFound) as e:
        zeek_scripts_dir()
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert "ZEEKML_ZEEK_SCRIPTS" in str(e.value)


def test_zipped_install_has_no_resources(monkeypatch):
    monkeypatch.setattr(resources, "_zeekml_dir", lambda: None)
    with pytest.raises(ModelError, match="nowhere"):
        shipped_models_dir()
    with pytest.raises(ZeekScriptsNotFound, match="nowhere"):
        zeek_scripts_dir()


# --- through the CLI: an install without models ------------------------------------------------

def test_cli_models_list_without_models_exits_5(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from zeekml.cli import main

    _installed(tmp_path, monkeypatch, shipped=False)
    res = CliRunner().invoke(main, ["models", "list"])
    assert res.exit_code == 5, res.output
    assert res.output.startswith("zeekml: error: no shipped models found")
    assert "Traceback" not in res.output


def test_cli_score_no_models_needs_no_shipped_models(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from zeekml.cli import main

    _installed(tmp_path, monkeypatch, shipped=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["score", str(REPO / "examples" / "zeek"), "--no-models",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert list(json.loads((out / "summary.json").read_text())["thresholds"]) == ["iforest"]

"""Hostile model directories (issue 17): each is refused with a one-line ``ModelError`` (exit 5),
never a traceback, a hang, a pickle run or an allocation of what a config asks for.

Every hostile directory is a copy of one tiny GNN pretrained here on 400 real conns
(tests/data/gnn), then edited the way an attacker would (manifest re-hashed where the attack
needs it to pass the sha256 check).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil

import pytest
from click.testing import CliRunner

from zeekml._core.errors import ModelError
from zeekml.cli import main
from zeekml.scoring.detectors.base import CONFIG, MANIFEST, WEIGHTS, load_model_dir, verify_model_dir
from zeekml.scoring.registry import get_kind

pytest.importorskip("torch")

LOG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data", "gnn",
                   "iot23-ctu-34-1-head400.conn.log.labeled")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from zeekml.train.data import load_conns
    from zeekml.train.registry import get_trainer

    out = str(tmp_path_factory.mktemp("tiny") / "gnn-tiny")
    get_trainer("gnn").pretrain(load_conns([LOG]), out, sources=[LOG], seed=0, epochs=1,
                                device="cpu", hidden=16, segment_flows=400)
    return out


def _copy(tiny: str, tmp_path) -> str:
    root = tmp_path / "models"
    root.mkdir()
    d = str(root / "gnn-x")
    shutil.copytree(tiny, d)
    return d


def _manifest(d: str) -> dict:
    with open(os.path.join(d, MANIFEST)) as f:
        return json.load(f)


def _write_manifest(d: str, m) -> None:
    with open(os.path.join(d, MANIFEST), "w") as f:
        json.dump(m, f)


def _rehash(d: str, name: str) -> None:
    m = _manifest(d)
    with open(os.path.join(d, name), "rb") as f:
        m["files"][name] = hashlib.sha256(f.read()).hexdigest()
    _write_manifest(d, m)


def _verify_cli(d: str):
    return CliRunner().invoke(main, ["models", "verify", "--dir", os.path.dirname(d)])


def _refused(d: str, match: str) -> None:
    """Refused by the loader, by a detector's load and by ``models verify`` (exit 5, one line)."""
    with pytest.raises(ModelError, match=match):
        load_model_dir(d)
    with pytest.raises(ModelError, match=match):
        get_kind("gnn").detector(d, device="cpu")
    r = _verify_cli(d)
    assert r.exit_code == 5, r.output
    assert "Traceback" not in r.output
    assert re.search(match, r.output), r.output


def test_the_untouched_copy_loads_and_verifies(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    config, state = load_model_dir(d)
    assert config["kind"] == "gnn" and state
    r = _verify_cli(d)
    assert r.exit_code == 0, r.output
    assert f"ok {d}" in r.output


class _Boom:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickle_payload_is_a_model_error_not_an_unpickling_traceback(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    import torch

    torch.save({"w": torch.zeros(2), "x": _Boom()}, os.path.join(d, WEIGHTS))
    _rehash(d, WEIGHTS)
    _refused(d, "weights.pt is not a plain tensor file")


def test_manifest_omitting_config_json_is_refused(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    m = _manifest(d)
    del m["files"][CONFIG]
    _write_manifest(d, m)
    with open(os.path.join(d, CONFIG)) as f:
        cfg = json.load(f)
    cfg["model"]["dropout"] = 0.9          # the edit that an unlisted config let through
    with open(os.path.join(d, CONFIG), "w") as f:
        json.dump(cfg, f)
    _refused(d, "does not cover config.json")


def test_manifest_omitting_weights_is_refused(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    m = _manifest(d)
    del m["files"][WEIGHTS]
    _write_manifest(d, m)
    _refused(d, "does not cover weights.pt")


@pytest.mark.parametrize("what", ["weights", "entry"])
def test_dev_zero_symlink_is_refused_without_hanging(tiny, tmp_path, what):
    d = _copy(tiny, tmp_path)
    if what == "weights":
        os.remove(os.path.join(d, WEIGHTS))
        os.symlink("/dev/zero", os.path.join(d, WEIGHTS))
    else:
        os.symlink("/dev/zero", os.path.join(d, "extra.bin"))
        m = _manifest(d)
        m["files"]["extra.bin"] = "0" * 64
        _write_manifest(d, m)
    _refused(d, "symlink out of the model directory")


def test_fifo_in_the_model_dir_is_refused_without_hanging(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    os.mkfifo(os.path.join(d, "extra.bin"))
    m = _manifest(d)
    m["files"]["extra.bin"] = "0" * 64
    _write_manifest(d, m)
    _refused(d, "extra.bin is not a regular file")


def test_symlink_out_of_the_dir_to_a_regular_file_is_refused(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    outside = tmp_path / "weights-elsewhere.pt"
    shutil.move(os.path.join(d, WEIGHTS), outside)
    os.symlink(outside, os.path.join(d, WEIGHTS))
    _refused(d, "symlink out of the model directory")


@pytest.mark.parametrize("name", ["../config.json", "/etc/passwd"])
def test_manifest_entry_with_a_path_is_refused(tiny, tmp_path, name):
    d = _copy(tiny, tmp_path)
    m = _manifest(d)
    m["files"][name] = "0" * 64
    _write_manifest(d, m)
    _refused(d, "is not a plain file name")


@pytest.mark.parametrize("doc, match", [
    ([["config.json", "0" * 64]], "manifest.json is a JSON list, not an object"),
    ({"files": ["config.json"]}, "has no \"files\" object"),
    ({"files": {"config.json": 5}}, "is not 64 hex digits"),
])
def test_manifest_of_the_wrong_shape_is_refused(tiny, tmp_path, doc, match):
    d = _copy(tiny, tmp_path)
    _write_manifest(d, doc)
    _refused(d, match)


def test_config_asking_for_huge_layers_is_refused_before_building(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    with open(os.path.join(d, CONFIG)) as f:
        cfg = json.load(f)
    cfg["model"]["hidden"] = 10 ** 9
    with open(os.path.join(d, CONFIG), "w") as f:
        json.dump(cfg, f)
    _rehash(d, CONFIG)
    _refused(d, r"model.hidden = 1000000000 is out of bounds")


def test_verify_checks_every_directory_and_names_each_failure(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    good = os.path.join(os.path.dirname(d), "gnn-good")
    shutil.copytree(tiny, good)
    _write_manifest(d, [])
    r = _verify_cli(d)
    assert r.exit_code == 5, r.output
    assert f"ok {good}" in r.output
    assert "FAILED" in r.output and "1 of 2 model directories failed" in r.output
    assert verify_model_dir(good)["files"]


def test_pickle_payload_never_runs(tiny, tmp_path):
    """The payload's effect (a file written) never happens, whatever the load does."""
    d = _copy(tiny, tmp_path)
    marker = tmp_path / "ran"
    with open(os.path.join(d, WEIGHTS), "wb") as f:
        pickle.dump(_Touch(str(marker)), f)
    _rehash(d, WEIGHTS)
    with pytest.raises(ModelError):
        load_model_dir(d)
    assert not marker.exists()


class _Touch:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))

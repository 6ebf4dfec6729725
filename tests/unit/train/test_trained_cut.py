"""The operating point a known-bad classifier keeps from finetuning (issue 14): the cut on
P(malicious) chosen on benign conns it did not train on, and its place in the model directory."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zeekml.scoring.detectors.base import verify_model_dir
from zeekml.train.artifact import save_model_dir, update_config
from zeekml.train.metrics import trained_cut
from zeekml.train.protocol import validation_benign_rows


def test_the_cut_lets_at_most_fpr_of_the_benign_conns_through():
    p = np.r_[np.full(196, 0.1), [0.7, 0.8, 0.9, 0.95]]      # 200 conns: 2 allowed at 1%
    op = trained_cut(p, fpr=0.01)
    assert op["cut"] == np.nextafter(0.8, 1.0) and op["validation_fpr"] == 0.01
    assert op["chosen_by"] == "validation" and op["validation_benign"] == 200
    assert ((p >= op["cut"]).sum(), (p >= 0.8).sum()) == (2, 3)


def test_the_floor_holds_when_the_benign_conns_are_far_below_it():
    op = trained_cut(np.r_[np.full(99, 0.01), [0.3]], fpr=0.01)
    assert (op["cut"], op["chosen_by"], op["validation_fpr"]) == (0.5, "floor", 0.0)


def test_ties_count_whole_and_a_saturated_head_gets_the_strictest_cut():
    p = np.r_[np.full(95, 0.2), np.full(5, 0.9)]             # 5 tied at 0.9, 1 allowed
    op = trained_cut(p, fpr=0.01)
    assert op["cut"] > 0.9 and op["validation_fpr"] == 0.0
    sat = trained_cut(np.r_[np.full(90, 0.2), np.full(10, 1.0)], fpr=0.01)
    assert sat["cut"] == 1.0 and sat["validation_fpr"] == 0.1
    assert sat["chosen_by"] == "1.0: no cut reaches fpr 0.01 on these conns"


def test_no_validation_conns_is_the_floor_and_says_so():
    op = trained_cut(np.array([np.nan]))
    assert op == {"cut": 0.5, "fpr": 0.01, "validation_benign": 0, "validation_fpr": None,
                  "floor": 0.5, "chosen_by": "floor: no validation benign conns"}


def test_validation_rows_are_the_training_shares_benign_conns_not_drawn():
    labels = np.array(["Benign", "Malicious", "Benign", "Background", None, "Benign", "Benign"],
                      dtype=object)
    early = np.arange(6)                                   # row 6 is in the later 30%
    assert validation_benign_rows(labels, early, np.array([0, 1])).tolist() == [2, 3, 5]
    got = validation_benign_rows(labels, early, np.array([0]), limit=2)
    assert len(got) == 2 and set(got) <= {2, 3, 5}


def test_update_config_keeps_the_directory_verifying(tmp_path):
    d = str(tmp_path / "m")
    save_model_dir(d, "moe", {"schema_version": 1, "classes": ["Benign", "Malicious"]}, None, [])
    update_config(d, {"operating_point": {"cut": 0.5}})
    verify_model_dir(d)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["operating_point"] == {"cut": 0.5} and cfg["kind"] == "moe"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"operating_point": {"cut": 0.1}}))
    with pytest.raises(Exception, match="sha256|altered|changed"):
        verify_model_dir(d)


def test_update_manifest_sets_keys_but_never_the_hashes(tmp_path):
    from zeekml.train.artifact import update_manifest

    d = str(tmp_path / "m")
    save_model_dir(d, "moe", {"schema_version": 1}, None, [])
    update_manifest(d, {"command": "python bench/x.py"})
    verify_model_dir(d)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["command"] == "python bench/x.py"
    with pytest.raises(ValueError, match="hashed"):
        update_manifest(d, {"files": {}})

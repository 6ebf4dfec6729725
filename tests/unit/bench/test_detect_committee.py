"""bench/detect_committee.py's rules on hand-built probabilities: a k-of-n vote counts members at
their own cut, pooled rules take their cut on the validation benign conns as ``finetune`` does,
and the rates are those of the held-out capture and the presumed-benign logs. The benchmark
itself (which needs ../shared/data) is run by hand."""
from __future__ import annotations


import numpy as np
import pytest
from bench_script import load_bench



@pytest.fixture(scope="module")
def dc():
    return load_bench("detect_committee")


def fold(held_p, cut, val_p, zat_p, btest_p, y):
    return {"held_p": np.array(held_p), "held_y": np.array(y), "cut": np.float64(cut),
            "val_p": np.array(val_p), "zat_p": np.array(zat_p), "btest_p": np.array(btest_p)}


def test_combine(dc):
    ps = [np.array([0.9, 0.2, 0.6]), np.array([0.1, 0.8, 0.7])]
    np.testing.assert_array_equal(dc.combine("vote", ps, [0.5, 0.75]), [1, 1, 1])
    np.testing.assert_array_equal(dc.combine("vote", ps, [0.5, 0.5]), [1, 1, 2])
    np.testing.assert_allclose(dc.combine("mean", ps, [0.5, 0.5]), [0.5, 0.5, 0.65])
    np.testing.assert_allclose(dc.combine("min", ps, [0.5, 0.5]), [0.1, 0.2, 0.6])
    np.testing.assert_allclose(dc.combine("geo", ps, [0.5, 0.5]), np.sqrt([0.09, 0.16, 0.42]))
    with pytest.raises(ValueError, match="unknown rule"):
        dc.combine("median", ps, [0.5, 0.5])


def test_votes_and_rates_on_a_hand_built_fold(dc):
    y = [1, 1, 1, 1, 0, 0, 0, 0, -1]
    a = fold([0.9, 0.9, 0.2, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9], 0.5, [0.1] * 99 + [0.9],
             [0.9, 0.1], [0.1, 0.1, 0.1, 0.1], y)
    b = fold([0.8, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9], 0.6, [0.1] * 100,
             [0.9, 0.9], [0.9, 0.1, 0.1, 0.1], y)
    rows = dc.committee_rows({"a": a, "b": b}, ("a", "b"), 0.01)
    # any: rows 0, 1, 3 (malicious) and 4 (benign) flagged; row 8 is unlabeled
    assert rows["any"]["recall"] == 0.75 and rows["any"]["benign_flagged"] == 0.25
    assert rows["any"]["zat_flagged"] == 1.0 and rows["any"]["btest_flagged"] == 0.25
    assert rows["any"]["val_flagged"] == 0.01 and not rows["any"]["target_met"]
    # all: only rows 0 and 3 (both members at their cut); no benign conn
    assert rows["all"]["recall"] == 0.5 and rows["all"]["benign_flagged"] == 0.0
    assert rows["all"]["zat_flagged"] == 0.5 and rows["all"]["btest_flagged"] == 0.0
    # mean: the cut is finetune's on the mean validation P (1 of 100 at 0.5: allowed at 1%)
    assert rows["mean"]["cut"] == 0.5
    assert rows["mean"]["recall"] == 0.75 and rows["mean"]["benign_flagged"] == 0.25


def test_two_members_scored_on_other_conns_are_refused(dc):
    y = [1, 0]
    a = fold([0.9, 0.1], 0.5, [0.1, 0.2], [0.1], [0.1], y)
    b = fold([0.9, 0.1], 0.5, [0.1], [0.1], [0.1], y)
    with pytest.raises(SystemExit, match="not scored on the same conns"):
        dc.committee_rows({"a": a, "b": b}, ("a", "b"), 0.01)


def test_markdown_bolds_the_cells_that_meet_the_target(dc):
    ok = {"recall": 0.9, "benign_flagged": 0.001, "zat_flagged": 0.0, "btest_flagged": 0.1, "target_met": True}
    no = {"recall": 0.5, "benign_flagged": 0.0, "zat_flagged": 0.02, "btest_flagged": 0.3, "target_met": False}
    md = dc.markdown({"folds": {"x": {"r": ok}, "z": {"r": no}}}, ["r"]).splitlines()
    assert md[0] == "| rule | x | z | target met | zat flagged | btest flagged |"
    assert md[2] == "| r | **0.900 / 0.0010** | 0.500 / 0.0000 | 1 of 2 | 0.000-0.020 | 0.100-0.300 |"

"""``calibrate_combined``: one per-detector quantile so that the union of the detectors' alerts on
the calibration conns is at ``fpr`` (not ``fpr / n`` each), and the baseline-size rule."""
from __future__ import annotations

import numpy as np
import pytest

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline.fitted import check_baseline_size
from zeekml.scoring.calibrate import ThresholdCalibrator, calibrate_combined, union_rate

A = np.arange(100.0)


def test_one_detector_whose_threshold_conn_overshoots_goes_below_fpr():
    # 187 conns at fpr 0.06: the 1 - fpr quantile is a conn's score, and 12 conns (0.064) reach
    # it; the search keeps 11 (0.059)
    s = np.arange(187.0)
    assert union_rate({"a": ThresholdCalibrator(fpr=0.06).fit(s)}, {"a": s}) == 12 / 187
    c = calibrate_combined({"a": s}, 0.06)
    assert c.cal_rate == 11 / 187 and c.effective_fpr == 0.06 and c.q < 0.06
    assert c.calibrators["a"].threshold == 176.0


def test_one_detector_is_the_plain_calibrator_at_fpr():
    c = calibrate_combined({"a": A}, 0.1)
    assert c.q == 0.1 and c.cal_rate == 0.1 and c.effective_fpr == 0.1
    assert c.calibrators["a"] == ThresholdCalibrator(fpr=0.1).fit(A)
    assert c.calibrators["a"].threshold == 90.0


def test_detectors_that_agree_keep_the_whole_budget():
    c = calibrate_combined({"a": A, "b": 2 * A}, 0.1)
    assert c.q == 0.1 and c.cal_rate == 0.1
    assert (c.calibrators["a"].threshold, c.calibrators["b"].threshold) == (90.0, 180.0)


def test_overlapping_tails_get_more_than_the_union_bound():
    b = A.copy()
    b[99] = 0.0          # a's top conn is not in b's tail: the tails overlap but for one conn
    scores = {"a": A, "b": b}
    c = calibrate_combined(scores, 0.1)
    # 9 alerts each (a: 91..99, b: 90..98): 10 conns together, exactly fpr
    assert c.cal_rate == 0.1 and c.effective_fpr == 0.1
    assert (c.calibrators["a"].threshold, c.calibrators["b"].threshold) == (91.0, 90.0)
    assert 0.0808 < c.q < 0.0910
    # the union bound (fpr / 2 each) alerts on 6 of 100: 0.06, below what was asked
    bound = {k: ThresholdCalibrator(fpr=0.05).fit(v) for k, v in scores.items()}
    assert union_rate(bound, scores) == 0.06


def test_disjoint_tails_split_the_budget():
    c = calibrate_combined({"a": A, "b": 100.0 - A}, 0.1)
    assert c.cal_rate == 0.1
    assert (c.calibrators["a"].threshold, c.calibrators["b"].threshold) == (95.0, 96.0)


def test_too_few_conns_report_what_they_deliver():
    # 7 conns: every threshold is its detector's largest score (q = 0); the tops are two conns
    c = calibrate_combined({"a": np.arange(7.0), "b": -np.arange(7.0)}, 0.001)
    assert c.q == 0.0 and c.n_calibration == 7
    assert c.cal_rate == 2 / 7 and c.effective_fpr == 2 / 7 and c.min_fpr == 1 / 7


def test_non_finite_scores_do_not_count_as_calibration_conns():
    c = calibrate_combined({"a": np.r_[A[:99], np.nan], "b": A}, 0.1)
    assert c.n_calibration == 99


def test_no_scores_is_an_error():
    with pytest.raises(ValueError, match="no detector scores"):
        calibrate_combined({}, 0.1)


@pytest.mark.parametrize("m, fpr", [(7, 0.001), (99, 0.001), (354, 0.0001)])
def test_a_baseline_that_cannot_resolve_ten_times_fpr_is_refused(m, fpr):
    with pytest.raises(ZeekmlError) as e:
        check_baseline_size(m, fpr)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"its {m:,} calibration conns support an FPR of {1 / m:.2g} at the least" in msg
    assert f"raise --fpr to {1 / m:.2g}" in msg and "--baseline-until" in msg


def test_refusal_names_the_baseline_size_needed():
    # every baseline conn calibrates: the baseline needed is the calibration conns needed
    with pytest.raises(ZeekmlError, match=r"at least 1,000 conns"):
        check_baseline_size(7, 0.001)
    with pytest.raises(ZeekmlError, match=r"at least 50 conns"):
        check_baseline_size(4, 0.02)


def test_small_baselines_warn_and_large_ones_do_not():
    assert check_baseline_size(100, 0.001) == (
        "baseline small for --fpr 0.001: 100 calibration conns, 0.1 expected beyond the threshold "
        "(the smallest FPR they support is 0.01); 10,000 baseline conns give a stable threshold")
    assert check_baseline_size(354, 0.001).startswith("baseline small for --fpr 0.001: 354 ")
    assert check_baseline_size(9_999, 0.001) is not None
    assert check_baseline_size(10_000, 0.001) is None

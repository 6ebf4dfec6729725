"""``ThresholdCalibrator``: thresholds at the ``1 - fpr`` quantile of baseline scores, the
effective FPR, the calibrated scale (threshold -> 1.0, median -> 0.0), and its dict form (what
``zeekml watch`` saves in calibration.json and ``summary.json`` reports). Exact values on
hand-built scores."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zeekml.scoring.calibrate import ThresholdCalibrator

ONE_TO_TEN = np.arange(1.0, 11.0)


def test_threshold_is_the_higher_quantile_and_center_the_median():
    cal = ThresholdCalibrator(fpr=0.1).fit(ONE_TO_TEN)
    # position 0.9 * (10 - 1) = 8.1, between the 9th and 10th score; "higher" takes the 10th: an
    # observed score, with at most fpr of the baseline strictly above it (here none)
    assert cal.threshold == 10.0
    assert cal.center == 5.5
    assert cal.n_baseline == 10


@pytest.mark.parametrize("fpr, threshold", [(0.5, 6.0), (0.25, 8.0), (0.2, 9.0), (0.001, 10.0)])
def test_threshold_for_other_rates(fpr, threshold):
    assert ThresholdCalibrator(fpr=fpr).fit(ONE_TO_TEN).threshold == threshold


def test_calibrate_maps_threshold_to_one_and_center_to_zero():
    cal = ThresholdCalibrator(fpr=0.1).fit(ONE_TO_TEN)
    got = cal.calibrate(np.array([10.0, 5.5, 1.0, 14.5, 7.75]))
    assert got.dtype == np.float64
    assert got.tolist() == [1.0, 0.0, -1.0, 2.0, 0.5]


def test_calibrate_keeps_nan_and_accepts_float32_and_lists():
    cal = ThresholdCalibrator(fpr=0.1).fit(ONE_TO_TEN)
    got = cal.calibrate(np.array([np.nan, 10.0], dtype=np.float32))
    assert np.isnan(got[0]) and got[1] == 1.0
    assert cal.calibrate([5.5]).tolist() == [0.0]


def test_non_finite_baseline_scores_are_ignored():
    cal = ThresholdCalibrator(fpr=0.25).fit(np.array([np.nan, 1.0, np.inf, 2.0, -np.inf, 3.0]))
    assert cal.n_baseline == 3
    assert cal.center == 2.0 and cal.threshold == 3.0


@pytest.mark.parametrize("scores", [[], [np.nan, np.inf]])
def test_nothing_to_calibrate_on_is_an_error(scores):
    with pytest.raises(ValueError, match="no baseline scores"):
        ThresholdCalibrator().fit(np.array(scores))


def test_threshold_at_the_median_moves_up_by_one_standard_deviation():
    # the 0.5 quantile ("higher") of [0, 5, 5, 5, 5] is 5, the median too: a threshold at the
    # median would alert on half the typical conns; std = sqrt((16 + 4 * 1) / 5) = 2
    cal = ThresholdCalibrator(fpr=0.5).fit(np.array([0.0, 5.0, 5.0, 5.0, 5.0]))
    assert cal.center == 5.0 and cal.threshold == 7.0
    assert cal.calibrate(np.array([7.0, 5.0])).tolist() == [1.0, 0.0]


def test_constant_baseline_gets_a_tiny_positive_margin():
    cal = ThresholdCalibrator(fpr=0.1).fit(np.full(4, 2.0))
    assert cal.center == 2.0 and cal.threshold == 2.0 + 1e-6
    assert cal.calibrate(np.array([2.0]))[0] == 0.0


@pytest.mark.parametrize("fpr, n, effective", [
    (0.1, 10, 0.1),            # achievable: 1/10 = fpr
    (0.01, 10, 0.1),           # 10 baseline conns cannot tell apart less than 1 in 10
    (0.25, 10, 0.25),
    (0.00025, 354, 1 / 354),   # examples/: 354 calibration conns, four detectors at fpr 0.001
])
def test_effective_fpr_is_at_least_one_over_the_baseline_size(fpr, n, effective):
    cal = ThresholdCalibrator(fpr=fpr).fit(np.arange(float(n)))
    assert cal.effective_fpr == effective


def test_unfitted_effective_fpr_is_one():
    assert ThresholdCalibrator(fpr=0.01).effective_fpr == 1.0


def test_dict_round_trip():
    cal = ThresholdCalibrator(fpr=0.1).fit(ONE_TO_TEN)
    d = cal.to_dict()
    assert d == {"fpr": 0.1, "threshold": 10.0, "center": 5.5, "n_baseline": 10}
    # as it is saved (calibration.json) and read back
    back = ThresholdCalibrator.from_dict(json.loads(json.dumps(d)))
    assert back == cal
    x = np.array([-1.25, 5.5, 10.0, 12.25])
    assert back.calibrate(x).tolist() == cal.calibrate(x).tolist() == [-1.5, 0.0, 1.0, 1.5]
    assert back.effective_fpr == cal.effective_fpr == 0.1


def test_fit_from_baseline_stats_is_the_fit_from_the_scores():
    """``BaselineStats`` (sorted finite scores, median and std computed once) gives every
    calibrator the bits of computing them from the scores as given, at any rate, for ties, NaNs,
    infinities and tiny baselines; the combined search's calibrators are those ``fit`` gives at
    its rate."""
    from zeekml.scoring.calibrate import BaselineStats, calibrate_combined

    rng = np.random.default_rng(0)
    cases = [rng.standard_normal(1001), rng.integers(0, 4, 500).astype(float), np.array([2.0]),
             np.r_[rng.exponential(size=300), [np.nan, np.inf, -np.inf]], np.full(50, 3.0)]
    for s in cases:
        finite = s[np.isfinite(s)]
        for q in (0.0, 0.001, 0.01, 0.3):
            got = ThresholdCalibrator(fpr=q).fit_stats(BaselineStats.of(s))
            center = float(np.median(finite))
            threshold = float(np.quantile(finite, 1.0 - q, method="higher"))
            if threshold <= center:
                threshold = center + max(1e-9, float(np.std(finite)) or 1e-6)
            assert (got.center, got.threshold, got.n_baseline) == (center, threshold, len(finite))
    with pytest.raises(ValueError):
        BaselineStats.of(np.array([np.nan]))
    scores = {"a": rng.standard_normal(3000) ** 2, "b": rng.exponential(size=3000)}
    combined = calibrate_combined(scores, 0.01)
    for name, cal in combined.calibrators.items():
        assert cal.to_dict() == ThresholdCalibrator(fpr=combined.q).fit(scores[name]).to_dict()

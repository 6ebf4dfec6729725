"""bench/combine_eval.py on hand-built scores: tail probabilities (empirical below the fitted
tail, the fitted decay above it), the combination rules, the alert threshold set on the
calibration conns, and detect_eval's ``--scores`` files read back. The benchmark itself (which
needs ../shared/data) is run by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from bench_script import load_bench



@pytest.fixture(scope="module")
def ce():
    return load_bench("combine_eval")


ONE_TO_TEN = np.arange(1.0, 11.0)


def test_exp_tail_is_empirical_below_u_and_exponential_above(ce):
    # m = 10, tail 0.2: k = 2 conns above u = 8 (9 and 10), mean excess 1.5, p(u+) = 2/10
    t = ce.Tail(ONE_TO_TEN, 0.2, "exp")
    got = t.neglogp(np.array([0.5, 1.0, 5.0, 8.0, 11.0, np.inf]))
    want = [0.0, 0.0, -math.log(0.6), -math.log(0.3), -math.log(0.2) + 3 / 1.5, math.inf]
    assert got.tolist() == pytest.approx(want)
    # interpolated between order statistics: 5.5 lies half-way between p = 0.6 and 0.5
    assert t.neglogp(np.array([5.5]))[0] == pytest.approx(-math.log(0.55))
    # a score past every calibration conn still ranks
    far = t.neglogp(np.array([10.0, 12.0, 20.0]))
    assert far[0] < far[1] < far[2]


def test_empirical_tail_reaches_one_over_m_at_the_largest_score(ce):
    # emp_exp: the empirical share up to 10 (p = 1/10 there), then exp(-(s - 10) / 1.5)
    t = ce.Tail(ONE_TO_TEN, 0.2, "emp_exp")
    got = t.neglogp(np.array([10.0, 13.0, 5.0]))
    assert got.tolist() == pytest.approx([math.log(10), math.log(10) + 2.0, -math.log(0.6)])


def test_pareto_tail_decays_as_a_power_of_the_distance(ce):
    # logexp: exp on log(s - c): doubling the distance from c adds the same -log p whatever s
    x = np.r_[np.zeros(5), np.linspace(0.1, 1.0, 45)]
    t = ce.Tail(x, 0.2, "logexp")
    c = t.shift
    a, b = t.neglogp(np.array([c + 2.0, c + 4.0])), t.neglogp(np.array([c + 8.0, c + 16.0]))
    assert a[1] - a[0] == pytest.approx(b[1] - b[0])


@pytest.mark.parametrize("kind", ["exp", "logexp", "medpareto", "gpd", "emp_exp", "emp_pareto"])
def test_every_tail_is_monotone(ce, kind):
    rng = np.random.default_rng(0)
    t = ce.Tail(rng.exponential(size=300), 0.2, kind)
    s = np.linspace(-1.0, 30.0, 2000)
    assert np.all(np.diff(t.neglogp(s)) >= 0)


def test_tail_refuses_an_unknown_kind_and_too_few_scores(ce):
    with pytest.raises(ValueError, match="unknown tail kind"):
        ce.Tail(ONE_TO_TEN, 0.2, "normal")
    with pytest.raises(ValueError, match="fewer than 3"):
        ce.Tail(np.array([1.0, np.nan, 2.0]), 0.2, "exp")


def _setting(test_a, test_b, y):
    # b = 2 a on the calibration conns: the same tail probabilities at b = 2 a
    return {"y": np.array(y), "cal": {"a": ONE_TO_TEN, "b": 2 * ONE_TO_TEN},
            "test": {"a": np.array(test_a, dtype=float), "b": np.array(test_b, dtype=float)},
            "hold": {}}


def test_rules_on_equal_tail_probabilities(ce):
    d = _setting([5.0], [10.0], [1])          # p = 0.6 for both
    L = -math.log(0.6)
    got = {r: ce.rule_scores(d, r, 0.1, 0.2, "exp")["test"][0]
           for r in ("tippett", "fisher", "hmp", "stouffer", "top2")}
    assert got["tippett"] == pytest.approx(L)
    assert got["fisher"] == pytest.approx(2 * L)
    assert got["hmp"] == pytest.approx(L)          # the harmonic mean of equal p is p
    assert got["top2"] == pytest.approx(L)
    from scipy.stats import norm

    assert got["stouffer"] == pytest.approx(2 * norm.isf(0.6))


def test_tippett_takes_the_smallest_p_and_hmp_lies_between(ce):
    d = _setting([9.5], [2.0], [1])           # p(a) from the tail, p(b = 2) = 1.0
    s = {r: ce.rule_scores(d, r, 0.1, 0.2, "exp")["test"][0] for r in ("tippett", "hmp", "fisher")}
    la = ce.Tail(ONE_TO_TEN, 0.2, "exp").neglogp(np.array([9.5]))[0]
    assert s["tippett"] == pytest.approx(la) and s["fisher"] == pytest.approx(la)
    # 2 / (1/p + 1): below min p's evidence, above nothing
    assert s["hmp"] == pytest.approx(-math.log(2 / (math.exp(la) + 1)))
    assert 0 < s["hmp"] < s["tippett"]


def test_threshold_is_the_calibration_quantile_and_alerts_are_counted(ce):
    # fpr 0.1 over 10 calibration conns ("higher"): the largest calibration statistic, that of
    # a = 10 (b = 20); 11/22 passes it, 5/10 does not
    d = _setting([11.0, 5.0, 12.0], [22.0, 10.0, 1.0], [1, 0, 0])
    r = ce.evaluate(d, "tippett", 0.1, 0.2, "exp")
    assert (r["alerts"], r["tp"], r["fp"], r["malicious"], r["benign"]) == (2, 1, 1, 1, 2)
    assert r["cal_rate"] == pytest.approx(0.1) and r["held"] is None
    assert r["auroc"] == pytest.approx(0.5)       # the benign 12 outranks the malicious 11


def test_max_keeps_calibrate_combined_thresholds(ce):
    from zeekml.scoring.calibrate import calibrate_combined

    d = _setting([10.0, 9.0], [1.0, 20.0], [1, 0])
    cals = calibrate_combined(d["cal"], 0.1).calibrators
    got = ce.rule_scores(d, "max", 0.1, 0.2, "exp")["test"]
    want = np.maximum(cals["a"].calibrate(d["test"]["a"]), cals["b"].calibrate(d["test"]["b"]))
    assert got.tolist() == want.tolist()
    r = ce.evaluate(d, "max", 0.1, 0.2, "exp")
    assert r["alerts"] == int((want >= 1.0).sum())


def test_detect_eval_scores_file_reads_back(ce, tmp_path):
    de = load_bench("detect_eval")
    path = str(tmp_path / "cap.deployment.npz")
    y = np.array([1, 0, -1])
    cal, test, hold = {"a": np.arange(4.0)}, {"a": np.array([3.0, 1.0, 0.5])}, {"a": np.ones(2)}
    de.save_scores(path, y, cal, test, hold, {"combined": {"a": test["a"] / 3}})
    d = ce.load(path)
    assert d["y"].tolist() == [1, 0, -1]
    assert d["cal"]["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert d["test"]["a"].tolist() == [3.0, 1.0, 0.5] and d["hold"]["a"].tolist() == [1.0, 1.0]
    assert np.load(path)["calibrated/combined/a"].tolist() == pytest.approx([1.0, 1 / 3, 1 / 6])

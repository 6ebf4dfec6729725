"""``calibrate_with_cuts`` (issue 14): where a known-bad classifier's trained cut replaces its
baseline quantile, under each rule; and the cut a classifier directory's config may hold."""
from __future__ import annotations

import numpy as np
import pytest
from test_registry_kinds import fake_model_dir

from zeekml._core.errors import ModelError
from zeekml.scoring.calibrate import calibrate_combined, calibrate_with_cuts
from zeekml.scoring.detectors.classifier import read_operating_point

OP = {"cut": 0.5, "fpr": 0.01, "validation_benign": 1000, "validation_fpr": 0.002}
rng = np.random.default_rng(0)
ANOM = rng.normal(size=1000)
INFECTED = np.r_[np.full(700, 0.99), rng.uniform(0, 0.1, 300)]     # P of an infected baseline
CLEAN = rng.uniform(0, 0.2, 1000)


def test_infected_the_cut_replaces_the_quantile_and_leaves_the_search():
    c, used = calibrate_with_cuts({"a": ANOM, "clf": INFECTED}, 0.01, {"clf": OP}, infected=True)
    alone = calibrate_combined({"a": ANOM}, 0.01)
    assert list(c.calibrators) == ["a", "clf"]
    assert c.calibrators["a"] == alone.calibrators["a"] and c.cal_rate == alone.cal_rate
    clf = c.calibrators["clf"]
    assert (clf.threshold, clf.center, clf.fpr, clf.n_baseline) == (0.5, 0.0, 0.002, 1000)
    assert clf.calibrate(np.array([0.5, 0.99, 0.25])).tolist() == [1.0, 1.98, 0.5]
    assert used == {"clf": OP | {"baseline_threshold": None}}
    # what it replaces: the median is the malware's own P (0.99), so the quantile calibrator
    # puts its bar above any probability and the classifier can never alert
    old = calibrate_combined({"a": ANOM, "clf": INFECTED}, 0.01).calibrators["clf"]
    assert old.center == 0.99 and old.threshold > 1.0


def test_a_classifier_alone_on_an_infected_baseline():
    c, used = calibrate_with_cuts({"clf": INFECTED}, 0.01, {"clf": OP}, infected=True)
    assert c.calibrators["clf"].threshold == 0.5 and c.cal_rate == 0.0 and list(used) == ["clf"]


def test_clean_or_never_is_the_combined_calibration():
    want = calibrate_combined({"a": ANOM, "clf": CLEAN}, 0.01)
    for infected, rule in ((False, "infected"), (True, "never"), (False, "never")):
        c, used = calibrate_with_cuts({"a": ANOM, "clf": CLEAN}, 0.01, {"clf": OP}, infected, rule)
        assert used == {} and c.calibrators == want.calibrators and c.q == want.q


def test_min_takes_the_lower_threshold_whatever_the_baseline():
    c, used = calibrate_with_cuts({"a": ANOM, "clf": INFECTED}, 0.01, {"clf": OP}, False, "min")
    assert c.calibrators["clf"].threshold == 0.5 and used["clf"]["baseline_threshold"] > 1.0
    assert c.cal_rate > 0.5          # the lower bar alerts on the infected calibration conns
    c, used = calibrate_with_cuts({"a": ANOM, "clf": CLEAN}, 0.01, {"clf": OP}, True, "min")
    assert used == {} and c.calibrators["clf"].threshold < 0.2     # the quantile is lower


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown cut rule 'max'"):
        calibrate_with_cuts({"a": ANOM}, 0.01, {}, False, "max")


def test_operating_point_in_config(tmp_path):
    d = fake_model_dir(tmp_path / "m", kind="moe")
    assert read_operating_point({}, d) is None
    assert read_operating_point({"operating_point": OP}, d) == OP
    for bad in ({"cut": 0}, {"cut": 1.5}, {"cut": "0.5"}, {"cut": True}, {}, 0.5):
        with pytest.raises(ModelError, match="\"operating_point\" needs a \"cut\" probability") as e:
            read_operating_point({"operating_point": bad}, d)
        assert e.value.path == d

"""A known-bad classifier's trained cut in ``fit_calibrate`` (issue 14): on a baseline that
looks infected its threshold is the cut chosen at finetune time, said in the warnings, the
summary and its notices; on a clean baseline nothing changes."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from test_fitted import Bytes, table, use

from zeekml.pipeline.fitted import fit_calibrate, score_batch
from zeekml.pipeline.options import ScoreOptions, ScoreSummary

OP = {"cut": 0.6, "fpr": 0.01, "validation_benign": 5000, "validation_fpr": 0.0012,
      "floor": 0.5, "chosen_by": "validation"}
# 30 conns of an infected host in a 400-conn baseline (7.5%: past baseline_infection's 1%)
HOSTS = ["10.0.0.5"] * 30 + ["10.0.0.7"] * 370


class Clf(Bytes):
    """A fake classifier with a trained cut: P = 0.95 for the infected host, 0.2 + a little
    per conn otherwise (so the baseline quantile of a clean baseline is below 0.6)."""

    note = "ZeekML::Intrusion"
    kind = "classifier"

    def __init__(self, bad: set[str], op: dict | None = OP):
        super().__init__("clf-x")
        self.bad = bad
        self.trained_cut = op
        self.decision_threshold = op["cut"] if op else 0.5

    def score(self, t: pa.Table) -> np.ndarray:
        b = np.asarray(t.column("orig_bytes").to_pylist(), dtype=np.float64)
        return np.array([0.95 if h in self.bad else 0.2 + 1e-4 * x
                         for h, x in zip(t.column("id.orig_h").to_pylist(), b)])


def test_an_infected_baseline_keeps_the_trained_cut(monkeypatch):
    use(monkeypatch, Bytes("a"), Clf({"10.0.0.5"}))
    t = table(400, HOSTS)
    summary = ScoreSummary()
    f = fit_calibrate(t, ScoreOptions(fpr=0.05), summary)
    cal = f.calibrators["clf-x"]
    assert (cal.threshold, cal.center, cal.fpr, cal.n_baseline) == (0.6, 0.0, 0.0012, 5000)
    assert summary.thresholds["clf-x"]["trained_cut"] is True
    assert "trained_cut" not in summary.thresholds["a"]
    assert summary.calibration["trained_cuts"] == {"clf-x": OP | {"baseline_threshold": None}}
    assert summary.warnings[0].startswith("your baseline looks infected: 30 of its 400 conns")
    assert summary.warnings[1] == (
        "clf-x: threshold is its trained cut, P >= 0.6 (chosen at finetune: 0.12% of 5,000 "
        "benign conns reach it), not the baseline quantile: the baseline looks infected")
    # the anomaly detector is calibrated alone: its rate on the calibration conns is the asked one
    assert summary.calibration["calibration_alert_rate"] <= 0.05
    batch = score_batch(t, f)
    infected = np.array([h == "10.0.0.5" for h in t.column("id.orig_h").to_pylist()])
    clf_alerts = [r for r, m in batch.msg.items() if m.startswith("clf-x")]
    assert sorted(clf_alerts) == np.flatnonzero(infected).tolist()     # all 30, nothing else
    assert all(batch.msg[r] == "clf-x anomaly score 1.583 (1.0 = trained cut P >= 0.6 (chosen at "
               "finetune: 0.12% of 5,000 benign conns reach it), baseline looks infected)"
               for r in clf_alerts)
    assert all("threshold at fpr 0.05" in m for r, m in batch.msg.items() if r not in clf_alerts)


def test_before_the_cut_the_infected_baseline_raised_the_bar_above_the_malware(monkeypatch):
    """The defect the cut mends: calibrated on the infected baseline, the classifier's threshold
    is 0.95, the infected host's own P, and only ties at it alert (an older directory without
    a cut still gets this)."""
    use(monkeypatch, Bytes("a"), Clf({"10.0.0.5"}, op=None))
    summary = ScoreSummary()
    f = fit_calibrate(table(400, HOSTS), ScoreOptions(fpr=0.05), summary)
    assert f.calibrators["clf-x"].threshold == 0.95 and f.calibrators["clf-x"].center < 0.95
    assert "trained_cuts" not in summary.calibration and f.trained_cuts == {}


def test_a_clean_baseline_calibrates_the_classifier_as_before(monkeypatch):
    use(monkeypatch, Bytes("a"), Clf(set()))
    t = table(400, HOSTS)
    s_cut = ScoreSummary()
    f = fit_calibrate(t, ScoreOptions(fpr=0.05), s_cut)
    use(monkeypatch, Bytes("a"), Clf(set(), op=None))
    s_old = ScoreSummary()
    g = fit_calibrate(t, ScoreOptions(fpr=0.05), s_old)
    assert f.trained_cuts == {} and s_cut.warnings == s_old.warnings == []
    assert s_cut.thresholds == s_old.thresholds and s_cut.calibration == s_old.calibration
    assert f.calibrators["clf-x"].threshold < 0.6          # the baseline quantile, not the cut
    assert score_batch(t, f).msg == score_batch(t, g).msg

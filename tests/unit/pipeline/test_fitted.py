"""``fit_calibrate`` and ``score_batch``: baseline conns scored once, the effective FPR in the
notices, and the "your baseline looks infected" warning of known-bad classifiers."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

import zeekml.pipeline.fitted as fitted_mod
from zeekml.flows.table import conn_table
from zeekml.pipeline.batch import score_table
from zeekml.pipeline.fitted import baseline_infection, fit_calibrate, score_batch
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.sinks.verdicts import render_verdicts


class Bytes:
    """A per-conn detector: the score is the conn's ``orig_bytes``; counts the rows it scores."""

    note = "ZeekML::Anomalous_Flow"
    context_seconds = 0.0
    forward_context_seconds = 0.0
    context_key = None
    fits_baseline = False        # a score of the conn alone: out of sample on any baseline

    def __init__(self, name: str = "bytes", context: float = 0.0):
        self.name = name
        self.context_seconds = self.forward_context_seconds = context
        self.scored = 0

    def fit(self, table: pa.Table) -> "Bytes":
        return self

    def score(self, table: pa.Table) -> np.ndarray:
        self.scored += table.num_rows
        return np.asarray(table.column("orig_bytes").to_pylist(), dtype=np.float64)

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        return self.score(table)[rows]

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        return ["orig_bytes"] * len(rows)


class Judge(Bytes):
    """A fake known-bad classifier: probability 0.9 for conns of the hosts in ``bad``."""

    note = "ZeekML::Intrusion"

    def __init__(self, bad: set[str], kind: str | None = None):
        super().__init__("clf-fake")
        self.bad = bad
        if kind:
            self.kind = kind
            self.note = "ZeekML::Anomalous_Flow"

    def score(self, table: pa.Table) -> np.ndarray:
        return np.array([0.9 if h in self.bad else 0.1
                         for h in table.column("id.orig_h").to_pylist()])


def table(n: int, hosts: list[str] | None = None) -> pa.Table:
    hosts = hosts or ["10.0.0.1"] * n
    return conn_table([pa.table({
        "ts": np.arange(n, dtype=np.float64) + 1e9, "uid": [f"C{i}" for i in range(n)],
        "id.orig_h": hosts, "id.resp_h": ["10.9.9.9"] * n,
        # a permutation of 0..n-1, so the tail is not the latest conns
        "orig_bytes": pa.array((np.arange(n) * 7919) % n, pa.uint64())})])


def use(monkeypatch, *dets) -> None:
    monkeypatch.setattr(fitted_mod, "build_detectors", lambda *a, **k: list(dets))


def test_baseline_conns_are_scored_once_and_verdicts_are_the_same(monkeypatch):
    t = table(1000)
    rows = np.arange(300)
    opts = ScoreOptions(fpr=0.05)
    once, twice = Bytes(), Bytes()
    use(monkeypatch, once)
    s1 = ScoreSummary()
    a = render_verdicts(score_table(t, t.take(pa.array(rows)), opts, s1, rows))
    use(monkeypatch, twice)
    s2 = ScoreSummary()
    b = render_verdicts(score_table(t, t.take(pa.array(rows)), opts, s2))
    assert once.scored == 1000                 # the whole input, once
    assert twice.scored == 300 + 1000          # the baseline (to calibrate), then the whole input
    assert a.data() == b.data() and len(a.alerts) == len(b.alerts) > 0
    assert s1.thresholds == s2.thresholds


def test_detectors_with_a_time_context_calibrate_in_the_baselines_own_context(monkeypatch):
    ctx = Bytes("ctx", context=60.0)
    use(monkeypatch, ctx)
    t = table(1000)
    rows = np.arange(300)
    raw: dict[str, np.ndarray] = {}
    fit_calibrate(t.take(pa.array(rows)), ScoreOptions(fpr=0.05), scored=t, rows=rows, raw=raw)
    assert raw == {} and ctx.scored == 300


def test_summary_and_notices_carry_the_effective_fpr(monkeypatch, caplog):
    use(monkeypatch, Bytes("a"), Bytes("b"))
    t = table(400)
    summary = ScoreSummary()
    with caplog.at_level(logging.WARNING, logger="zeekml.pipeline.fitted"):
        f = fit_calibrate(t, ScoreOptions(fpr=0.002), summary)
    # 400 calibration conns (the whole baseline): one conn is 0.0025 (the two detectors agree
    # on it); no quantile goes below one conn, so q = 0 (each threshold at its largest score)
    assert f.effective_fpr == summary.effective_fpr == 0.0025
    assert summary.calibration == {"scheme": "combined", "fpr": 0.002, "effective_fpr": 0.0025,
                                   "per_detector_quantile": 0.0, "calibration_conns": 400,
                                   "calibration_alert_rate": 0.0025, "min_fpr": 0.0025}
    assert summary.warnings == [
        "baseline small for --fpr 0.002: 400 calibration conns, 0.8 expected beyond the threshold "
        "(the smallest FPR they support is 0.0025); 5,000 baseline conns give a stable threshold"]
    assert caplog.messages == summary.warnings
    batch = score_batch(t, f)
    # the baseline's top conn alone: every conn calibrates, none scores above the threshold
    assert list(batch.msg.values()) == [
        "a anomaly score 1.000 (1.0 = threshold at effective fpr 0.0025, asked 0.002)"]


def test_notice_keeps_the_asked_fpr_when_the_baseline_resolves_it(monkeypatch):
    use(monkeypatch, Bytes("a"))
    f = fit_calibrate(table(400), ScoreOptions(fpr=0.01))
    assert f.effective_fpr == 0.01
    msgs = list(score_batch(table(400), f).msg.values())
    # 1% of the 400 calibration conns, the same conns scored (before: 7, calibrated on a half)
    assert len(msgs) == 4 and all(m.endswith(" (1.0 = threshold at fpr 0.01)") for m in msgs)


def test_a_baseline_too_small_is_refused_before_any_fitting(monkeypatch):
    det = Bytes()
    use(monkeypatch, det)
    with pytest.raises(fitted_mod.ZeekmlError, match="its 7 calibration conns support an FPR of "
                                                     "0.14 at the least"):
        fit_calibrate(table(7), ScoreOptions(fpr=0.001))
    assert det.scored == 0


HOSTS = ["10.0.0.5"] * 30 + ["10.0.0.6"] * 12 + ["10.0.0.7"] * 358


@pytest.mark.parametrize("kind", [None, "classifier"])
def test_known_bad_classifiers_flagging_the_baseline_raise_the_infected_warning(kind):
    t = table(400, HOSTS)
    judge = Judge({"10.0.0.5", "10.0.0.6"}, kind)
    assert baseline_infection(t, [Bytes(), judge]) == (
        "your baseline looks infected: 42 of its 400 conns flagged by clf-fake, of hosts "
        "10.0.0.5 (30), 10.0.0.6 (12); calibrate on a clean period (--baseline, "
        "--baseline-fraction, --baseline-until or --baseline-range)")


def test_infected_warning_names_five_hosts_at_most_and_only_past_one_percent():
    hosts = [f"10.0.1.{i}" for i in range(7)] + ["10.0.0.7"] * 393
    t = table(400, hosts)
    msg = baseline_infection(t, [Judge(set(hosts[:7]))])
    assert msg.startswith("your baseline looks infected: 7 of its 400 conns flagged by clf-fake, "
                          "of hosts 10.0.1.0 (1), 10.0.1.1 (1), 10.0.1.2 (1), 10.0.1.3 (1), "
                          "10.0.1.4 (1) and 2 more;")
    assert baseline_infection(t, [Judge(set(hosts[:3]))]) is None      # 3 of 400 < 1%
    assert baseline_infection(t, [Bytes()]) is None                     # no classifier, no verdict


def test_infected_warning_reaches_the_summary(monkeypatch):
    use(monkeypatch, Bytes(), Judge({"10.0.0.5"}))
    summary = ScoreSummary()
    fit_calibrate(table(400, HOSTS), ScoreOptions(fpr=0.05), summary)
    assert [w.split(":")[0] for w in summary.warnings] == ["your baseline looks infected"]
    assert "10.0.0.5 (30)" in summary.warnings[0]


def test_without_a_known_bad_detector_the_judge_checks_a_random_draw_of_the_baseline():
    n = 3000
    hosts = (["10.0.0.5"] * 300 + ["10.0.0.7"] * 2700)
    t = table(n, hosts)
    check: dict = {}
    msg = baseline_infection(t, [Bytes()], Judge({"10.0.0.5"}), seed=0, check=check)
    assert check["judge"] == "clf-fake" and check["conns"] == fitted_mod.BASELINE_CHECK_CONNS == 1000
    assert 70 < check["flagged"] < 130                # ~10% of the draw
    assert msg == (f"your baseline looks infected: {check['flagged']} of 1,000 of its 3,000 conns "
                   f"(drawn at random) flagged by clf-fake, of hosts 10.0.0.5 ({check['flagged']}); "
                   "calibrate on a clean period (--baseline, --baseline-fraction, --baseline-until "
                   "or --baseline-range)")
    # the run's own known-bad detector judges every conn instead; a clean baseline: no warning
    assert "300 of its 3,000 conns" in baseline_infection(t, [Judge({"10.0.0.5"})], Judge(set()))
    assert baseline_infection(table(n), [Bytes()], Judge({"10.0.0.5"}), check=check) is None
    assert check["flagged"] == 0


def test_an_infected_baseline_points_at_the_judge_as_the_detectors_to_use():
    """With no clean period the remedy is the known-bad classifiers that judged the baseline:
    the warning names their directory for --models; when the run already scores with a
    known-bad detector (whose threshold is then its trained cut) it has nothing to add."""
    t = table(3000, ["10.0.0.5"] * 300 + ["10.0.0.7"] * 2700)
    judge = Judge({"10.0.0.5"})
    judge.model_dir = "/opt/zeekml/models/malicious-committee"
    msg = baseline_infection(t, [Bytes()], judge, seed=0)
    assert msg.endswith("or --baseline-range); with no clean period, score with the known-bad "
                        "classifiers that judged it: --models /opt/zeekml/models/malicious-committee")
    own = Judge({"10.0.0.5"})
    own.model_dir = "/somewhere/my-classifier"
    assert baseline_infection(t, [own], judge).endswith("or --baseline-range)")


def test_the_baseline_check_reaches_the_summary(monkeypatch):
    use(monkeypatch, Bytes())
    monkeypatch.setattr(fitted_mod, "baseline_judge", lambda options, check=None: Judge({"10.0.0.5"}))
    summary = ScoreSummary()
    fit_calibrate(table(400, HOSTS), ScoreOptions(fpr=0.05), summary)
    assert summary.calibration["baseline_check"] == {"judge": "clf-fake", "conns": 400,
                                                     "flagged": 30, "infected": True}
    assert "your baseline looks infected: 30 of its 400 conns" in summary.warnings[0]


def test_the_judge_is_the_shipped_committee_and_only_with_models(monkeypatch, tmp_path):
    assert fitted_mod.baseline_judge(ScoreOptions(models_dir=None)) is None     # --no-models
    monkeypatch.setenv("ZEEKML_MODELS", str(tmp_path))       # models without the committee
    check: dict = {}
    assert fitted_mod.baseline_judge(ScoreOptions(models_dir=""), check) is None
    assert check["skipped"].startswith("no baseline check: the shipped models (") \
        and check["skipped"].endswith("hold no malicious-committee")


def test_the_shipped_classifier_detectors_count_as_known_bad():
    """The hook needs no change for ``scoring.detectors.classifier``: every note a classifier
    raises is a known-bad note, and the anomaly note is not."""
    from zeekml.scoring.detectors.classifier import NOTES, ClassifierDetector

    assert set(NOTES.values()) <= fitted_mod.KNOWN_BAD_NOTES
    assert "ZeekML::Anomalous_Flow" not in fitted_mod.KNOWN_BAD_NOTES
    for note in NOTES.values():
        det = ClassifierDetector.__new__(ClassifierDetector)   # no model directory needed here
        det.note = note
        assert fitted_mod.is_known_bad(det)
    assert not fitted_mod.is_known_bad(Bytes())


class Learner(Bytes):
    """A detector that fits on the baseline but cannot score its fitted conns out of sample."""

    fits_baseline = True


def test_a_detector_without_out_of_sample_scores_is_not_calibrated_in_sample(monkeypatch):
    use(monkeypatch, Learner("learner"))
    with pytest.raises(fitted_mod.ZeekmlError, match="learner has no out-of-sample scores"):
        fit_calibrate(table(400), ScoreOptions(fpr=0.01))


def test_every_baseline_conn_calibrates_the_iforest_out_of_bag():
    t = table(600)
    summary = ScoreSummary()
    f = fit_calibrate(t, ScoreOptions(fpr=0.01), summary)
    assert summary.calibration["calibration_conns"] == 600
    forest = f.detectors[0]
    # the threshold is a quantile of the out-of-bag scores of all 600 conns
    want = np.quantile(forest.oob_scores, 0.99, method="higher")
    assert f.calibrators["iforest"].threshold == pytest.approx(want)


class Slow(Bytes):
    """A per-conn detector recording the thread its fit ran in; with ``release``, the fit ends
    only once that is set."""

    def __init__(self, name: str, log: list, release=None):
        super().__init__(name)
        self.log, self.release = log, release

    def fit(self, table: pa.Table) -> "Slow":
        import threading
        self.log.append(("fit", self.name, threading.current_thread().name))
        if self.release is not None:
            assert self.release.wait(10), "the baseline check never ran while a fit did"
        return self


def test_the_baseline_check_runs_beside_the_fits_with_the_summary_of_a_run_in_turn(monkeypatch):
    import threading

    from zeekml.pipeline import side_by_side

    log: list = []
    release = threading.Event()

    class LoggingJudge(Judge):
        def score_rows(self, table, rows):
            log.append(("check", self.name, threading.current_thread().name))
            release.set()          # fit "a" ends only once the check has run beside it
            return super().score_rows(table, rows)

    def run(workers: int) -> ScoreSummary:
        log.clear()
        release.clear()
        if workers == 1:
            release.set()          # in turn: the fits must not wait for the check after them
        monkeypatch.setattr(side_by_side, "usable_cores", lambda: workers)
        use(monkeypatch, Slow("a", log, release), Slow("b", log))
        monkeypatch.setattr(fitted_mod, "baseline_judge",
                            lambda options, check=None: LoggingJudge({"10.0.0.5"}))
        summary = ScoreSummary()
        fit_calibrate(table(400, HOSTS), ScoreOptions(fpr=0.05), summary)
        return summary

    beside = run(2)
    threads = {who: thread for _, who, thread in log}
    assert threads["clf-fake"].startswith(side_by_side.THREAD_NAME)
    assert [step for step, _, _ in log][:2] == ["fit", "fit"]          # started after the fits
    in_turn = run(1)
    assert [step for step, _, _ in log] == ["fit", "fit", "check"]
    assert {t for _, _, t in log} == {threading.current_thread().name}
    assert beside.calibration["baseline_check"] == in_turn.calibration["baseline_check"] == {
        "judge": "clf-fake", "conns": 400, "flagged": 30, "infected": True}
    assert beside.warnings == in_turn.warnings


def test_while_explaining_sees_the_scores_before_the_explanations_and_may_take_out_alerts(monkeypatch):
    use(monkeypatch, Bytes("a"))
    t = table(400)
    f = fit_calibrate(t, ScoreOptions(fpr=0.01))
    seen = {}

    def meanwhile(batch):
        rows = np.flatnonzero(batch.alert)
        seen.update(alerts=rows.tolist(), msg=dict(batch.msg), sub=dict(batch.sub),
                    lines=render_verdicts(batch, alerts=False))
        batch.alert[rows[0]] = False                 # what an allowlist does

    batch = score_batch(t, f, while_explaining=meanwhile)
    first, *rest = seen["alerts"]
    assert len(rest) == 3 and seen["msg"] == {} and seen["sub"] == {}
    # the rows still alerting are explained, the one taken out is not
    assert sorted(batch.msg) == sorted(batch.sub) == rest
    assert first not in batch.msg and first not in batch.sub
    # the lines rendered then are the lines of the explained batch (they hold no explanation)
    assert seen["lines"].alerts == [] and seen["lines"].lines[first] != render_verdicts(batch).lines[first]
    assert seen["lines"].lines[rest[0]] == render_verdicts(batch).lines[rest[0]]


class Halves(Bytes):
    """A known-bad-like detector that scores a table in two parts (``score_parts``) and records
    which thread ran each part and the calls of ``score`` itself."""

    def __init__(self, name: str = "halves", context: float = 1.0):
        super().__init__(name, context)
        self.threads: list[str] = []
        self.whole_calls = 0

    def score(self, table: pa.Table) -> np.ndarray:
        self.whole_calls += 1
        return super().score(table)

    def score_parts(self, table: pa.Table, parts: int):
        import threading
        import time

        from zeekml.scoring.detectors.classifier import ScoreParts

        n, cut = table.num_rows, table.num_rows // 2
        whole = np.asarray(table.column("orig_bytes").to_pylist(), dtype=np.float64)

        def part(a: int, b: int) -> np.ndarray:
            self.threads.append(threading.current_thread().name)
            time.sleep(0.2)          # long enough that two parts side by side overlap
            return whole[a:b]
        return ScoreParts([lambda: part(0, cut), lambda: part(cut, n)],
                          lambda got: np.concatenate(got))


def test_a_detector_in_parts_is_calibrated_and_scored_with_its_parts_side_by_side(monkeypatch):
    """A detector that scores in parts (``score_parts``: the known-bad classifiers) and learns
    nothing from the baseline is calibrated on its parts run side by side instead of one call
    on one thread, and a one-table run scores the input so: the same scores as ``score``, each
    part on its own thread; in turn (one core) it is one ``score`` call as before."""
    from zeekml.pipeline import side_by_side
    from zeekml.pipeline.fitted import calibration_scores

    base, t = table(400, HOSTS), table(300, HOSTS[:300])
    two = side_by_side.SideBySide(2, 1)
    monkeypatch.setattr(side_by_side, "plan", lambda tasks, cores=None: two)
    det = Halves()
    cal, seconds, _ = calibration_scores([det], base)
    np.testing.assert_array_equal(cal["halves"], Bytes().score(base))
    assert det.whole_calls == 0 and sorted(det.threads) == ["zeekml-detector-0", "zeekml-detector-1"]
    assert seconds["halves"] >= 0.0
    use(monkeypatch, det)
    f = fit_calibrate(base, ScoreOptions(fpr=0.05))
    det.threads.clear()
    batch = score_batch(t, f, how=two)
    np.testing.assert_array_equal(batch.scores["halves"], f.calibrators["halves"].calibrate(Bytes().score(t)))
    assert det.whole_calls == 0 and sorted(det.threads) == ["zeekml-detector-0", "zeekml-detector-1"]
    # in turn: one call of score, no parts
    monkeypatch.setattr(side_by_side, "plan", lambda tasks, cores=None: side_by_side.IN_TURN)
    det.threads.clear()
    cal, _, _ = calibration_scores([det], base)
    np.testing.assert_array_equal(cal["halves"], Bytes().score(base))
    assert det.whole_calls == 1 and det.threads == []

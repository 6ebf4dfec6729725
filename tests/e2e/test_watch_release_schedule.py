"""When ``zeekml watch`` releases the conns held for their time context (docs/results/watch.md,
"releases that stay short"): the watcher reads on while its scoring processes score a release
(a release decided meanwhile waits in ``DetectorPool``'s queue), and a window that closes with
input left unread decides no release (``hold_release``). Scoring processes are held by a gate
(a pipe the test writes into), so nothing depends on how fast anything runs."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from checks import run_watcher_in_thread
from context_detector import ContextCounter
from test_watch_context import _waiting_context
from test_watch_detector_pool import _bytes, _write_log

from zeekml.pipeline import FittedDetectors, ScoreOptions, Watcher, WatchOptions
from zeekml.pipeline.live import watcher as live_watcher
from zeekml.pipeline.live.context import LiveContext, score_due
from zeekml.pipeline.live.watcher import MAX_HELD_WINDOWS, hold_release
from zeekml.scoring.calibrate import ThresholdCalibrator


def _fitted(gate: int) -> FittedDetectors:
    dets = [ContextCounter("gated", 20.0, gate, by_bytes=True), ContextCounter("free", 5.0, by_bytes=True)]
    cal = {d.name: ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0)) for d in dets}
    # "gated" costs most: the scoring process takes it, the watcher keeps "free"
    return FittedDetectors(dets, cal, 0.02, conn_seconds={"gated": 5.0, "free": 1.0})


def _options(**kw) -> WatchOptions:
    # releases by ts alone (no wall-clock wait), at least 55 s of ts apart; windows of 100
    # conns (10 s of ts): the releases go out at windows 1, 7 and 13, and at the end
    return WatchOptions(window_records=100, catch_up_factor=1, rescan_seconds=0.1,
                        use_events=False, context_lateness=3.0, context_batch_seconds=55.0,
                        context_release_wait=None, score=ScoreOptions(conn_notices=True), **kw)


def _wait_for(cond, seconds: float = 60.0) -> bool:
    """Poll ``cond`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_watcher_reads_on_while_its_scoring_process_scores(tmp_path, monkeypatch):
    root = tmp_path / "logs"
    _write_log(root)                                  # 1500 conns 0.1 s apart
    alone = _fitted(None)
    monkeypatch.setattr(live_watcher, "calibrate", lambda *a, **k: alone)
    Watcher(str(root), str(tmp_path / "one"), _options(once=True)).run()
    r, w = os.pipe()
    try:
        fitted = _fitted(r)
        monkeypatch.setattr(live_watcher, "calibrate", lambda *a, **k: fitted)
        watcher = Watcher(str(root), str(tmp_path / "pool"), _options(once=True, score_workers=1))
        t, err = run_watcher_in_thread(watcher)
        # the scoring process is held on the first release (window 1); the watcher reads
        # every record meanwhile, the releases decided after it waiting in the queue
        read_all = _wait_for(lambda: watcher.stats.records_read == 1500)
        queued = watcher.pool.queued if watcher.pool is not None else None
        os.write(w, b"x" * 20)                        # let the process score
        t.join(60)
        assert not t.is_alive() and not err, err
        assert read_all, f"the watcher stopped reading at {watcher.stats.records_read} records " \
                         "while its scoring process scored"
        assert queued and queued >= 1
    finally:
        os.close(r)
        os.close(w)
    # the same releases as the watcher scoring alone: the same bytes
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "pool")


def test_hold_release_rule():
    assert hold_release(caught_up=False, held=0, once=False)
    assert hold_release(caught_up=False, held=MAX_HELD_WINDOWS - 1, once=False)
    assert not hold_release(caught_up=False, held=MAX_HELD_WINDOWS, once=False)
    assert not hold_release(caught_up=True, held=0, once=False)
    assert not hold_release(caught_up=False, held=0, once=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_window_closed_with_input_left_unread_decides_no_release(tmp_path, monkeypatch, workers):
    """The log is there before ``watch`` starts: windows of about 100 records close with input
    left unread until the last; only every ``MAX_HELD_WINDOWS + 1``-th of them, and the last,
    decide a release. The verdicts are those of ``--once`` (which holds none)."""
    root = tmp_path / "logs"
    _write_log(root)
    fitted = _fitted(None)
    monkeypatch.setattr(live_watcher, "calibrate", lambda *a, **k: fitted)
    Watcher(str(root), str(tmp_path / "once"), _options(once=True)).run()
    calls: list[tuple[bool, int, bool]] = []      # (caught up, held before, held now)
    decided: list[float] = []

    def spy_hold(caught_up, held, once):
        calls.append((caught_up, held, hold_release(caught_up, held, once)))
        return calls[-1][2]

    due = LiveContext.due

    def spy_due(self, fitted, flush=False, idle=False):
        decided.append(self.watermark)
        return due(self, fitted, flush, idle)

    monkeypatch.setattr(live_watcher, "hold_release", spy_hold)
    monkeypatch.setattr(LiveContext, "due", spy_due)
    watcher = Watcher(str(root), str(tmp_path / "live"),
                      _options(score_workers=workers, window_seconds=0.2))
    t, err = run_watcher_in_thread(watcher, pool_seconds=30.0 if workers else 0.0)
    done = _wait_for(lambda: watcher.stats.records_read == 1500 and calls and calls[-1][0])
    watcher.request_stop()
    t.join(60)
    assert not t.is_alive() and not err, err
    assert done, watcher.stats
    held = [c for c in calls if c[2]]
    assert len(held) >= MAX_HELD_WINDOWS, calls
    # every window that decided a release had read all there was, or followed 4 held ones
    assert all(c[0] or c[1] == MAX_HELD_WINDOWS for c in calls if not c[2]), calls
    assert len(decided) == len(calls) - len(held)
    live = set(_bytes(tmp_path / "live")["verdicts.jsonl"])
    once = set(_bytes(tmp_path / "once")["verdicts.jsonl"])
    assert live and live <= once


def test_due_conns_wait_only_idle_wait_while_the_scorers_are_idle():
    """``idle`` (the scoring processes have no release in hand): due conns wait ``idle_wait``
    for their batch instead of ``release_wait``; not idle, the full wait. Each conn still
    gets its batch score (a fake clock: nothing here is timed)."""
    table, fitted, batch, lateness, now, _ = _waiting_context()
    ctx = LiveContext(fitted, lateness=lateness, max_rows=10_000, batch_seconds=1e6,
                      release_wait=5.0, clock=lambda: now[0], idle_wait=2.0)
    ctx.add(table.slice(0, 100))
    got = _verdicts(ctx, fitted, idle=True)          # released at 0 (the first batch)
    assert got
    ctx.add(table.slice(100, 40))
    now[0] = 1.0
    assert not _verdicts(ctx, fitted, idle=True)     # due since the release at 0
    now[0] = 2.0
    assert not _verdicts(ctx, fitted, idle=False)    # busy: they wait the full 5 s
    n = len(got)
    got += _verdicts(ctx, fitted, idle=True)         # idle: 2 s were enough
    assert len(got) > n
    ctx.add(table.slice(140, 40))
    now[0] = 3.0
    assert not _verdicts(ctx, fitted, idle=False)
    now[0] = 6.9
    assert not _verdicts(ctx, fitted, idle=False)
    now[0] = 7.0
    n = len(got)
    got += _verdicts(ctx, fitted, idle=False)        # 5 s after the last release
    assert len(got) > n
    ctx.add(table.slice(180, 40))
    got += score_due(*ctx.due(fitted, flush=True), fitted).verdicts()
    assert len(got) == 220 and all(v.scores == batch[v.uid] for v in got)
    # without idle_wait, idle changes nothing: the full 5 s
    now[0] = 0.0
    ctx = LiveContext(fitted, lateness=lateness, max_rows=10_000, batch_seconds=1e6,
                      release_wait=5.0, clock=lambda: now[0])
    ctx.add(table.slice(0, 100))
    assert _verdicts(ctx, fitted, idle=True)
    ctx.add(table.slice(100, 40))
    now[0] = 4.9
    assert not _verdicts(ctx, fitted, idle=True)
    now[0] = 5.0
    assert _verdicts(ctx, fitted, idle=True)


def _verdicts(ctx: LiveContext, fitted, idle: bool) -> list:
    own, dets = ctx.due(fitted, idle=idle)
    return score_due(own, dets, fitted).verdicts() if own.num_rows else []


@pytest.mark.parametrize("workers", [0, 1])
def test_the_watcher_scores_its_releases_on_the_release_heap(tmp_path, monkeypatch, workers):
    # the learned detectors' releases take their big arrays from the heap (live.malloc.
    # release_heap) wherever the watcher scores them itself: the whole release without scoring
    # processes, its own share with them; the rest of the watcher keeps the window threshold
    import contextlib

    from zeekml.pipeline.live import pool as live_pool

    root = tmp_path / "logs"
    _write_log(root, 300)
    inside = []
    scored_inside = []

    @contextlib.contextmanager
    def heap():
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    monkeypatch.setattr(live_watcher, "release_heap", heap)
    monkeypatch.setattr(live_pool, "release_heap", heap)

    class Watched(ContextCounter):
        def score(self, table):
            scored_inside.append(bool(inside))
            return super().score(table)

    dets = [Watched("mine", 5.0, by_bytes=True)]
    if workers:
        dets.append(ContextCounter("theirs", 20.0, by_bytes=True))
    fitted = FittedDetectors(dets, {d.name: ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0)) for d in dets},
                             0.02, conn_seconds={"mine": 1.0, "theirs": 5.0})
    monkeypatch.setattr(live_watcher, "calibrate", lambda *a, **k: fitted)
    watcher = Watcher(str(root), str(tmp_path / "out"), _options(once=True, score_workers=workers))
    watcher.run()
    assert watcher.stats.records_read == 300
    assert scored_inside and all(scored_inside), scored_inside

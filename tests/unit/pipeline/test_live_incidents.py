"""``live.incidents.LiveIncidents`` reuses its incidents while no alert comes or goes, and what
it reuses is what grouping the alerts afresh gives."""
from __future__ import annotations

import pytest

from zeekml.pipeline.live.incidents import LiveIncidents
from zeekml.scoring.verdict import Verdict


def _alert(i: int, host: str, ts: float) -> Verdict:
    return Verdict(ts=ts, uid=f"C{i}", orig_h=host, orig_p=40000 + i, resp_h=f"10.9.0.{i % 7}",
                   resp_p=445, proto="tcp", score=1.5 + i / 10, alert=True, model="iforest",
                   verdict_id=f"v{i}")


def _dicts(incs) -> list[dict]:
    return [i.to_dict() for i in incs]


def test_incidents_are_reused_until_alerts_change_and_equal_a_fresh_grouping():
    first = [_alert(i, "10.0.0.1", 1000.0 + i) for i in range(4)] + [_alert(9, "10.0.0.2", 1001.0)]
    live = LiveIncidents(lateness=0.0)
    live.add(first, 1010.0)
    closed, still = live.update()
    assert not closed and still
    # a window without alerts, later log time still inside the horizon: the same objects
    live.add([], 1020.0)
    closed2, still2 = live.update()
    assert not closed2 and len(still2) == len(still) and all(a is b for a, b in zip(still, still2))
    fresh = LiveIncidents(lateness=0.0)
    fresh.add(first, 1020.0)
    assert _dicts(fresh.update()[1]) == _dicts(still2)
    # a new alert: grouped again, as a watcher that saw every alert at once groups them
    more = [_alert(5, "10.0.0.1", 1030.0)]
    live.add(more, 1030.0)
    _, still3 = live.update()
    assert not any(a is b for a in still3 for b in still)
    fresh = LiveIncidents(lateness=0.0)
    fresh.add(first + more, 1030.0)
    assert _dicts(fresh.update()[1]) == _dicts(still3)
    # the log time passes every horizon: all close, and a later call has nothing open
    closed4, still4 = live.update(flush=True)
    assert _dicts(closed4) == _dicts(fresh.update(flush=True)[0]) and not still4
    assert live.update() == ([], [])


def test_watchs_incidents_of_a_known_bad_detector_say_so():
    """The kept alerts carry their verdict's note, so watch names a classifier's incident as
    score does ("known-bad conns", not "anomalous")."""
    alerts = [_alert(i, "10.0.0.1", 1000.0 + i) for i in range(3)]
    for a in alerts:
        a.note, a.resp_h = "ZeekML::Intrusion", "10.9.0.1"
    live = LiveIncidents(lateness=0.0)
    live.add(alerts, 1010.0)
    [inc] = live.update(flush=True)[0]
    assert inc.description == "3 known-bad conns to 1 host on 445/tcp in 2 s"


def test_a_host_that_alerts_without_pause_does_not_hold_its_incident_open_for_ever():
    """A host alerting every second (a scan, a flood) would keep one incident open as long as
    it runs, every alert held and checkpointed: at ``max_alerts`` the incident closes, as it
    stands, and the later alerts start the next one."""
    live = LiveIncidents(lateness=0.0, max_alerts=100)
    closed_all = []
    for w in range(5):                      # 5 windows of 60 alerts, 1 s apart
        alerts = [_alert(60 * w + k, "10.0.0.1", 1000.0 + 60 * w + k) for k in range(60)]
        live.add(alerts, alerts[-1].ts)
        closed, still = live.update()
        closed_all += closed
        assert len(live.alerts) < 100 + 60          # never more than the cap and a window
    assert [i.alerts for i in closed_all] == [120, 120] and live.closed == 2
    assert closed_all[0].last_ts < closed_all[1].first_ts
    [rest] = live.update(flush=True)[0]
    assert rest.alerts == 60 and rest.incident_id not in {i.incident_id for i in closed_all}
    with pytest.raises(ValueError):
        LiveIncidents(max_alerts=0)

"""``ScoreOutputs``: the output directory of ``zeekml score`` (verdicts.jsonl, zeekml_notice.log,
quarantine.jsonl, summary.json and the Zeek feedback file). Exact bytes on hand-built verdicts."""
from __future__ import annotations

import json

from zeekml.parse.reject import RejectedRecord
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.run_outputs import ScoreOutputs

QUIET = Verdict(ts=1700000000.25, uid="C1", orig_h="10.0.0.1", orig_p=1234, resp_h="10.0.0.2",
                resp_p=53, proto="udp", score=0.5, alert=False, model="iforest",
                scores={"iforest": 0.5, "gnn": float("nan")})
LOUD = Verdict(ts=1700000001.5, uid="C2", orig_h="10.0.0.3", orig_p=40000, resp_h="10.0.0.4",
               resp_p=22, proto="tcp", score=2.0, alert=True, model="gnn",
               msg="gnn anomaly score 2.000 (1.0 = threshold at fpr 0.001)", sub="gnn:x=1",
               scores={"iforest": 0.25, "gnn": 2.0})
# verdict_id = "V" + sha1("<model>|<uid>|<ts:.6f>")[:16]: stable, so Zeek drops duplicates
QUIET_LINE = (b'{"verdict_id":"V7f90bece5071a48b","uid":"C1","ts":1700000000.25,"id.orig_h":"10.0.0.1",'
              b'"id.orig_p":1234,"id.resp_h":"10.0.0.2","id.resp_p":53,"proto":"udp",'
              b'"community_id":"1:Ea0b+QAKyyyZmzLMpe+46vMamSo=",'
              b'"scores":{"iforest":0.5,"gnn":null},"score":0.5,"alert":false,"note":null,'
              b'"model":"iforest"}\n')
LOUD_LINE = (b'{"verdict_id":"V0311798d83d25b1f","uid":"C2","ts":1700000001.5,"id.orig_h":"10.0.0.3",'
             b'"id.orig_p":40000,"id.resp_h":"10.0.0.4","id.resp_p":22,"proto":"tcp",'
             b'"community_id":"1:Z+wBB8CoSa0gJvp2tmp2ad/HKqY=",'
             b'"scores":{"iforest":0.25,"gnn":2.0},"score":2.0,"alert":true,'
             b'"note":"ZeekML::Anomalous_Flow","model":"gnn"}\n')


def _records(path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines(keepends=True) if not line.startswith(b"#")]


def test_verdicts_notices_feedback_and_summary(tmp_path):
    out, fb = tmp_path / "out", tmp_path / "zeekml_verdicts.log"
    o = ScoreOutputs(str(out), zeek_feedback=str(fb), conn_notices=True)
    o.write([QUIET, LOUD])
    o.write([QUIET])                                   # results stream in: appended
    o.quarantine.write(RejectedRecord("c.log", 3, 99, "field count: 1 of 21", b"x"))
    assert o.scored == 3 and dict(o.notes) == {"ZeekML::Anomalous_Flow": 1}
    paths = o.finish({"scored": 3, "outputs": {"extra": "kept"}})

    assert paths == {"verdicts": str(out / "verdicts.jsonl"), "notices": str(out / "zeekml_notice.log"),
                     "quarantine": str(out / "quarantine.jsonl"), "summary": str(out / "summary.json"),
                     "zeek_feedback": str(fb),
                     "zeek_incidents": str(tmp_path / "zeekml_verdicts.incidents.log")}
    assert (out / "verdicts.jsonl").read_bytes() == QUIET_LINE + LOUD_LINE + QUIET_LINE
    assert _records(out / "zeekml_notice.log") == [
        b"1700000001.500000\tC2\t10.0.0.3\t40000\t10.0.0.4\t22\t-\t-\t-\ttcp\tZeekML::Anomalous_Flow\t"
        b"gnn anomaly score 2.000 (1.0 = threshold at fpr 0.001)\tgnn:x=1\t10.0.0.3\t10.0.0.4\t22\t-\t"
        # community_id: the spec's algorithm for 10.0.0.3:40000 -> 10.0.0.4:22/tcp
        b"zeekml\tNotice::ACTION_LOG\t-\t3600.000000\t2.000000\tgnn\t1:Z+wBB8CoSa0gJvp2tmp2ad/HKqY=\n"]
    assert (out / "zeekml_notice.log").read_bytes().endswith(b"\n") and \
        (out / "zeekml_notice.log").read_bytes().splitlines()[-1].startswith(b"#close\t")
    assert (out / "quarantine.jsonl").read_bytes() == (
        b'{"path":"c.log","line":3,"offset":99,"reason":"field count: 1 of 21","sample":"x"}\n')
    # the Zeek Input-framework file: the alerts only
    assert _records(fb) == [
        b"V0311798d83d25b1f\t1700000001.500000\tC2\t10.0.0.3\t40000\t10.0.0.4\t22\ttcp\t"
        b"ZeekML::Anomalous_Flow\t2.000000\tgnn\tgnn anomaly score 2.000 (1.0 = threshold at fpr 0.001)\t"
        b"gnn:x=1\n"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"scored": 3, "outputs": {"extra": "kept", **paths}}


def test_nothing_scored_still_writes_every_file(tmp_path):
    out = tmp_path / "out"
    o = ScoreOutputs(str(out), conn_notices=True)
    paths = o.finish({"scored": 0})
    assert set(paths) == {"verdicts", "notices", "quarantine", "summary"}
    assert (out / "verdicts.jsonl").read_bytes() == b""
    assert (out / "quarantine.jsonl").read_bytes() == b""
    assert _records(out / "zeekml_notice.log") == []
    assert json.loads((out / "summary.json").read_text())["outputs"] == paths


def test_summary_json_layout(tmp_path):
    """``summary.json`` is indented by 2, keys in the order given, no trailing newline."""
    out = tmp_path / "out"
    paths = ScoreOutputs(str(out)).finish({"b": 1, "a": [1.5]})
    assert (out / "summary.json").read_text() == (
        '{\n  "b": 1,\n  "a": [\n    1.5\n  ],\n  "outputs": {\n'
        + ",\n".join(f'    "{k}": "{v}"' for k, v in paths.items()) + "\n  }\n}")


def _rendered_batch(alerts: bool):
    import numpy as np
    import pyarrow as pa

    from zeekml.scoring.verdict import VerdictBatch
    from zeekml.sinks.verdicts import render_verdicts

    n = 6
    t = pa.table({"ts": pa.array(np.arange(n, dtype=float) + 1.7e9), "uid": [f"C{i}" for i in range(n)],
                  "id.orig_h": ["10.0.0.1"] * n, "id.orig_p": pa.array([1] * n, pa.uint16()),
                  "id.resp_h": ["10.0.0.2"] * n, "id.resp_p": pa.array([80] * n, pa.uint16()),
                  "proto": ["tcp"] * n})
    # two detectors share a note; row 1 alerts by the third
    batch = VerdictBatch(t, ["gnn", "mae", "clf"], ["ZeekML::Anomalous_Flow"] * 2 + ["ZeekML::Intrusion"],
                         {k: np.ones(n) for k in ("gnn", "mae", "clf")}, np.full(n, 2.0),
                         np.array([0, 2, 1, 0, 2, 1]), np.array([True, True, True, False, False, True]))
    return render_verdicts(batch, alerts=alerts)


def test_alerts_are_counted_by_note_and_held_only_for_conn_notices(tmp_path):
    """Without ``conn_notices`` the alerting verdicts are counted by note, not held as objects
    (an infected archive alerts on most of its conns); with it they are held for the notices,
    and a batch counted without its verdicts is refused rather than losing its notices."""
    import pytest
    from collections import Counter

    want = Counter({"ZeekML::Anomalous_Flow": 3, "ZeekML::Intrusion": 1})
    lean = _rendered_batch(alerts=False)
    assert lean.alerts == [] and lean.notes == want
    o = ScoreOutputs(str(tmp_path / "a"))
    assert not o.wants_alerts
    o.write_batch(lean)
    o.write_batch(_rendered_batch(alerts=True))
    assert o.notes == want + want and o._alerts == [] and o._notice_lines == []
    o.close()

    full = _rendered_batch(alerts=True)
    assert Counter(v.note for _, v in full.alerts) == full.notes == want
    n = ScoreOutputs(str(tmp_path / "b"), conn_notices=True)
    assert n.wants_alerts
    n.write_batch(full)
    # held as their notice lines (the verdicts themselves only for a Zeek feedback file)
    assert len(n._notice_lines) == 4 and n._alerts == []
    with pytest.raises(RuntimeError, match="4 given"):
        n.write_batch(lean)
    n.close()

"""``sinks.verdicts``: the one verdicts.jsonl renderer (columnar, exact bytes on a hand-built
``VerdictBatch``), and the in-memory modes of the notice and quarantine writers equal their files."""
from __future__ import annotations

import re

import numpy as np
import pytest
import pyarrow as pa

from zeekml.flows.community_id import community_id_v1
from zeekml.parse.reject import RejectedRecord
from zeekml.scoring.verdict import VerdictBatch, verdict_id
from zeekml.sinks.jsonl import QuarantineWriter
from zeekml.sinks.verdicts import VerdictWriter, render_verdicts, verdict_line
from zeekml.sinks.zeek_notice import NoticeWriter

# row 0's conn; row 1 lacks its originator port and row 2 its originator: no Community ID
CID0 = community_id_v1("10.0.0.1", "10.0.0.9", "tcp", 1, 80)
_STAMP = re.compile(rb"(?m)^#(open|close)\t\d{4}(-\d\d){5}$")


@pytest.fixture(autouse=True, params=["per-conn format", "Arrow join"])
def render_way(request, monkeypatch):
    """Every test here for both ways ``render_verdicts`` makes lines (``JOIN_MIN_ROWS``)."""
    from zeekml.sinks import verdicts

    monkeypatch.setattr(verdicts, "JOIN_MIN_ROWS", 1 if request.param == "Arrow join" else 10**9)
    return request.param


def _batch() -> VerdictBatch:
    table = pa.table({
        "ts": pa.array([1.5, None, 3.25], pa.float64()),
        "uid": pa.array(['C"1', None, "C3"], pa.string()),
        "id.orig_h": pa.array(["10.0.0.1", "10.0.0.2", None], pa.string()),
        "id.orig_p": pa.array([1, None, 3], pa.uint16()),
        "id.resp_h": pa.array(["10.0.0.9", "10.0.0.9", "é"], pa.string()),
        "id.resp_p": pa.array([80, 443, 53], pa.uint16()),
        "proto": pa.array(["tcp", "udp", None], pa.string()),
    })
    return VerdictBatch(
        table, names=["iforest", "gnn"], notes=["ZeekML::Anomalous_Flow", "ZeekML::Intrusion"],
        scores={"iforest": np.array([0.5, np.nan, 2.0]), "gnn": np.array([0.25, 0.75, -np.inf])},
        score=np.array([0.5, 0.75, 2.0]), top=np.array([0, 1, 0]),
        alert=np.array([False, False, True]), msg={2: "m"}, sub={2: "s"})


def test_lines_exact_bytes():
    r = render_verdicts(_batch())
    stand_in = _batch().column("uid")[1]     # the uid-less conn's stand-in (uid_stand_ins)
    assert stand_in.startswith("nouid-") and len(stand_in) == 22
    assert r.ids == [verdict_id("iforest", 'C"1', 1.5), verdict_id("gnn", stand_in, 0.0),
                     verdict_id("iforest", "C3", 3.25)]
    assert r.lines == [
        ('{"verdict_id":"%s","uid":"C\\"1","ts":1.5,"id.orig_h":"10.0.0.1","id.orig_p":1,'
         '"id.resp_h":"10.0.0.9","id.resp_p":80,"proto":"tcp","community_id":"%s","scores":{"iforest":0.5,"gnn":0.25},'
         '"score":0.5,"alert":false,"note":null,"model":"iforest"}\n' % (r.ids[0], CID0)).encode(),
        ('{"verdict_id":"%s","uid":"%s","ts":0.0,"id.orig_h":"10.0.0.2","id.orig_p":null,'
         '"id.resp_h":"10.0.0.9","id.resp_p":443,"proto":"udp","community_id":null,"scores":{"iforest":null,"gnn":0.75},'
         '"score":0.75,"alert":false,"note":null,"model":"gnn"}\n' % (r.ids[1], stand_in)).encode(),
        ('{"verdict_id":"%s","uid":"C3","ts":3.25,"id.orig_h":null,"id.orig_p":3,'
         '"id.resp_h":"\\u00e9","id.resp_p":53,"proto":null,"community_id":null,"scores":{"iforest":2.0,"gnn":null},'
         '"score":2.0,"alert":true,"note":"ZeekML::Anomalous_Flow","model":"iforest"}\n'
         % r.ids[2]).encode(),
    ]
    assert [i for i, _ in r.alerts] == [2]
    v = r.alerts[0][1]
    assert (v.uid, v.msg, v.sub, v.note, v.verdict_id) == ("C3", "m", "s", "ZeekML::Anomalous_Flow", r.ids[2])


def test_columnar_lines_equal_one_by_one_lines_and_the_file(tmp_path):
    b = _batch()
    r = render_verdicts(b)
    assert r.lines == [verdict_line(v) for v in b.verdicts()]
    w = VerdictWriter(tmp_path / "verdicts.jsonl")
    w.write(b.verdicts())
    w.close()
    assert (tmp_path / "verdicts.jsonl").read_bytes() == r.data() and w.count == 3
    assert render_verdicts(VerdictBatch(b.table.slice(0, 0), ["iforest"], ["n"],
                                        {"iforest": np.zeros(0)}, np.zeros(0),
                                        np.zeros(0, int), np.zeros(0, bool))).lines == []


def test_notice_writer_in_memory_gives_the_file_bytes(tmp_path):
    alerts = [v for _, v in render_verdicts(_batch()).alerts] * 2
    f = NoticeWriter(tmp_path / "n.log")
    m = NoticeWriter(None)
    for v in alerts:
        f.write(v)
        m.write(v)
    f.close()
    assert m.count == f.count == 2
    data = NoticeWriter.header() + m.take_lines()
    assert m.take_lines() == b""
    on_disk = _STAMP.sub(b"", (tmp_path / "n.log").read_bytes())
    assert on_disk == _STAMP.sub(b"", data) + b"\n"      # the file also has its #close line


def test_quarantine_writer_in_memory_gives_the_file_bytes(tmp_path):
    rec = RejectedRecord("a.log", 3, 120, "bad line", b"x\ty\xff")
    f, m = QuarantineWriter(tmp_path / "q.jsonl"), QuarantineWriter(None)
    f(rec), m(rec)
    f.close()
    assert b"".join(m.take_lines()) == (tmp_path / "q.jsonl").read_bytes() and m.take_lines() == []


def test_community_id_logged_or_computed_and_suricata_alerts_both_ways():
    """A logged Community ID is kept (Zeek's or Suricata's), a missing one computed; Suricata
    alerts come last, before ``suppressed_by``; the columnar and one-by-one lines stay equal."""
    from zeekml.sinks.triage import mark_suppressed

    b = _batch()
    logged = pa.array(["1:logged=", None, ""], pa.string())
    b = VerdictBatch(b.table.append_column("community_id", logged), b.names, b.notes, b.scores,
                     b.score, b.top, b.alert, b.msg, b.sub,
                     suricata_alerts={2: [{"signature_id": 2010935, "signature": "ET SCAN é",
                                           "severity": 2, "category": "Misc"}]})
    r = render_verdicts(b)
    assert r.lines == [verdict_line(v) for v in b.verdicts()]
    assert b'"proto":"tcp","community_id":"1:logged=","scores"' in r.lines[0]
    assert b'"community_id":null' in r.lines[1] and b'"community_id":null' in r.lines[2]
    assert b"suricata_alerts" not in r.lines[0] + r.lines[1]
    assert r.lines[2].endswith(b'"model":"iforest","suricata_alerts":[{"signature_id":2010935,'
                               b'"signature":"ET SCAN \\u00e9","severity":2,"category":"Misc"}]}\n')
    assert r.alerts[0][1].suricata_alerts == b.suricata_alerts[2]
    mark_suppressed(r.lines, {2: "rule 1"})
    assert r.lines[2].endswith(b'"category":"Misc"}],"suppressed_by":"rule 1"}\n')


def test_alerts_added_to_rendered_lines_go_before_suppressed_by():
    """``zeekml watch`` adds the alerts after rendering (in its scoring processes, with the
    allowlist applied): the lines are those of a batch that had them before rendering."""
    from zeekml.sinks.triage import mark_suppressed
    from zeekml.sinks.verdicts import add_suricata_alerts

    joined = {0: [{"signature_id": 1, "signature": "a", "severity": 3, "category": "c"}],
              2: [{"signature_id": 2, "signature": "b\"}", "severity": 1, "category": ""}] * 2}
    b = _batch()
    late = render_verdicts(b).lines
    mark_suppressed(late, {2: 'rule "x"', 1: "y"})
    add_suricata_alerts(late, joined)
    b.suricata_alerts = joined
    early = render_verdicts(b).lines
    mark_suppressed(early, {2: 'rule "x"', 1: "y"})
    assert late == early
    assert early[2].endswith(b'"category":""}],"suppressed_by":"rule \\"x\\""}\n')
    with pytest.raises(ValueError):
        add_suricata_alerts([b"not json\n"], joined={0: joined[0]})


def test_scores_rendered_once_per_distinct_value_give_json_dumps_text():
    """``_floats`` formats each distinct value once (by bits): the text of ``json.dumps`` for
    every value, ``-0.0`` apart from ``0.0``, non-finite as null, below and above its cut-over."""
    import json

    from zeekml.sinks.verdicts import _floats

    rng = np.random.default_rng(3)
    pool = np.concatenate([rng.standard_normal(20), [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-7, 1e22, 5.0]])
    for n in (1, 63, 64, 1000):
        a = pool[rng.integers(0, len(pool), size=n)]
        want = [json.dumps(x) if np.isfinite(x) else "null" for x in a.tolist()]
        assert _floats(a) == want, n
    assert _floats(np.array([0.0, -0.0] * 40))[:2] == ["0.0", "-0.0"]


def _awkward_floats(n: int, seed: int) -> np.ndarray:
    """Floats where Arrow's text and repr's part: integral values, signed zeros, |x| about
    1e-4 and 1e15, 16-17 digit values, subnormals, non-finite ones, any bit pattern."""
    rng = np.random.default_rng(seed)
    edges = np.array([0.0, -0.0, 1.0, -3.0, 1e-4, np.nextafter(1e-4, 0), -1e-4, 1e15,
                      np.nextafter(1e15, 0), 1e16, 5e-324, 2.2250738585072014e-308, np.nan, np.inf,
                      -np.inf, 0.1, 2.5, 123456789012345.6, 12453259957.85208, 1e-7, 1e22])
    return np.concatenate([edges, rng.random(n), rng.lognormal(0, 12, n), rng.standard_normal(n) * 1e9,
                           rng.integers(0, 2 ** 63, n).view(np.float64), np.round(rng.random(n) * 3, 6)])


def test_float_texts_are_the_text_of_json_dumps():
    """The Arrow join's float text (Arrow's cast where it gives repr's digits and notation,
    repr elsewhere) is ``_floats``' (``json.dumps``) for every value."""
    from zeekml.sinks.verdicts import _floats, _float_texts

    for seed in range(3):
        a = _awkward_floats(100_000, seed)
        assert _float_texts(a).to_pylist() == _floats(a), seed
    assert _float_texts(np.array([1.5, 2.25])).to_pylist() == ["1.5", "2.25"]


def test_awkward_floats_render_as_verdict_line():
    """Scores and ts of every kind of float render as ``verdict_line`` renders them."""
    a = _awkward_floats(400, 7)
    n = len(a)
    rng = np.random.default_rng(8)
    table = pa.table({"ts": pa.array(np.where(np.isfinite(a), np.abs(a), a), pa.float64()),
                      "uid": pa.array([f"C{i}" for i in range(n)], pa.string()),
                      "id.orig_h": pa.array(["10.0.0.1"] * n, pa.string()),
                      "id.orig_p": pa.array(rng.integers(1, 65535, n), pa.uint16()),
                      "id.resp_h": pa.array(["10.0.0.9"] * n, pa.string()),
                      "id.resp_p": pa.array([80] * n, pa.uint16()),
                      "proto": pa.array(["tcp"] * n, pa.string())})
    scores = {"iforest": a, "gnn": rng.permutation(a)}
    b = VerdictBatch(table, ["iforest", "gnn"], ["ZeekML::Anomalous_Flow"] * 2, scores,
                     np.fmax(scores["iforest"], scores["gnn"]), np.zeros(n, int), np.zeros(n, bool))
    assert render_verdicts(b).lines == [verdict_line(v) for v in b.verdicts()]


def test_detector_names_needing_escapes_render_as_json():
    """The per-batch line format holds each detector's key: one with a quote or a ``%`` renders
    as ``verdict_line`` renders it."""
    b = _batch()
    names = ['gnn "x"', "iforest 100%"]
    b = VerdictBatch(b.table, names, b.notes, {names[0]: b.scores["iforest"], names[1]: b.scores["gnn"]},
                     b.score, b.top, b.alert, b.msg, b.sub)
    r = render_verdicts(b)
    assert r.lines == [verdict_line(v) for v in b.verdicts()]
    assert b'"scores":{"gnn \\"x\\"":0.5,"iforest 100%":0.25}' in r.lines[0]


@pytest.mark.parametrize("plain", [True, False])
def test_columnar_join_equals_one_by_one_lines_on_hard_strings_and_types(plain):
    """200 conns whose strings need no escape (the join quotes them as they are) or hold quotes,
    backslashes, control bytes, DEL, non-ASCII and astral characters (each escaped as
    ``json.dumps`` does), with unset values and other column types (large strings, int64 ports,
    a dictionary-coded proto): every line equals ``verdict_line`` of its verdict."""
    rng = np.random.default_rng(5 if plain else 6)
    pool = ["10.0.0.1", "fe80::1", "host name", "x~y!z#[]"] if plain else \
        ["10.0.0.1", 'a"b', "back\\slash", "ctl\x01\x1f", "del\x7f", "é", "€uro", "\U0001F600", "", "plain"]
    n = 200

    def pick(none_share: float) -> list:
        return [None if rng.random() < none_share else pool[i] for i in rng.integers(0, len(pool), n)]

    table = pa.table({
        "ts": pa.array(rng.random(n) * 1e9, pa.float64()),
        "uid": pa.array([None if i % 17 == 0 else f"C{i}" for i in range(n)], pa.string()),
        "id.orig_h": pa.array(pick(0.1), pa.large_string()),
        "id.orig_p": pa.array([None if i % 13 == 0 else int(p) for i, p in enumerate(rng.integers(-5, 70000, n))],
                              pa.int64()),
        "id.resp_h": pa.array(pick(0.0), pa.string()),
        "id.resp_p": pa.array(rng.integers(0, 65536, n), pa.uint16()),
        "proto": pa.array(pick(0.2), pa.string()).dictionary_encode(),
    })
    scores = {"iforest": rng.random(n), "gnn": np.where(rng.random(n) < 0.1, np.nan, rng.random(n) * 2)}
    score = np.maximum(scores["iforest"], np.nan_to_num(scores["gnn"]))
    b = VerdictBatch(table, ["iforest", "gnn"], ["ZeekML::Anomalous_Flow", "ZeekML::Intrusion"], scores,
                     score, (scores["gnn"] > scores["iforest"]).astype(np.int64), score >= 1.0)
    r = render_verdicts(b)
    assert r.lines == [verdict_line(v) for v in b.verdicts()]
    assert all(line.isascii() for line in r.lines)

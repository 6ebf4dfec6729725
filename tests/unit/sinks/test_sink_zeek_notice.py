"""``NoticeWriter``: alerting verdicts as Zeek notice.log records (``zeekml_notice.log``), with
``score``, ``model`` and ``community_id`` columns. Exact bytes on hand-built verdicts."""
from __future__ import annotations

import re

from zeekml.scoring.verdict import Verdict
from zeekml.sinks.zeek_notice import NOTICE_FIELDS, NoticeWriter

HEADER = (
    b"#separator \\x09\n"
    b"#set_separator\t,\n"
    b"#empty_field\t(empty)\n"
    b"#unset_field\t-\n"
    b"#path\tzeekml_notice\n"
    b"#open\tSTAMP\n"
    b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tfuid\tfile_mime_type\tfile_desc\t"
    b"proto\tnote\tmsg\tsub\tsrc\tdst\tp\tn\tpeer_descr\tactions\temail_dest\tsuppress_for\tscore\tmodel\tcommunity_id\n"
    b"#types\ttime\tstring\taddr\tport\taddr\tport\tstring\tstring\tstring\tenum\tenum\tstring\tstring\t"
    b"addr\taddr\tport\tcount\tstring\tset[enum]\tset[string]\tinterval\tdouble\tstring\tstring\n")
_STAMP = re.compile(rb"(?m)^#(open|close)\t\d{4}(-\d\d){5}$")


def _masked(path) -> bytes:
    return _STAMP.sub(lambda m: b"#" + m.group(1) + b"\tSTAMP", path.read_bytes())


def _verdict(**kw) -> Verdict:
    base = dict(ts=1700000000.5, uid="CabC1", orig_h="10.0.0.1", orig_p=51000, resp_h="10.0.0.2",
                resp_p=443, proto="tcp", score=1.23456789, alert=True, model="gnn",
                msg="gnn anomaly score 1.235 (1.0 = threshold at fpr 0.001)", sub="gnn:a=1,b=2")
    return Verdict(**(base | kw))


def test_notice_records_exact_bytes(tmp_path):
    path = tmp_path / "zeekml_notice.log"
    w = NoticeWriter(path)
    w.write(_verdict())
    w.write(_verdict(uid="C2", orig_h="2001:db8::1", orig_p=8, resp_h="2001:db8::2", resp_p=0,
                     proto="icmp", score=float("inf"), model="iforest", note="ZeekML::Intrusion",
                     msg="tab\there", sub=""))
    w.write(_verdict(uid="C3", orig_p=None, resp_p=None, proto=None, msg="", sub="\\x"))
    assert w.count == 3
    w.close()
    assert _masked(path) == HEADER + (
        b"1700000000.500000\tCabC1\t10.0.0.1\t51000\t10.0.0.2\t443\t-\t-\t-\ttcp\t"
        b"ZeekML::Anomalous_Flow\tgnn anomaly score 1.235 (1.0 = threshold at fpr 0.001)\t"
        b"gnn:a=1,b=2\t10.0.0.1\t10.0.0.2\t443\t-\tzeekml\tNotice::ACTION_LOG\t-\t3600.000000\t"
        b"1.234568\tgnn\t1:9TD1/n8+yCqzce6RpyFms8F7kdI=\n"
        b"1700000000.500000\tC2\t2001:db8::1\t8\t2001:db8::2\t0\t-\t-\t-\ticmp\t"
        b"ZeekML::Intrusion\ttab\\x09here\t(empty)\t2001:db8::1\t2001:db8::2\t0\t-\tzeekml\t"
        b"Notice::ACTION_LOG\t-\t3600.000000\tinf\tiforest\t1:X/B5Gjx0rPSeSdkYb7zdm8/HJsc=\n"
        b"1700000000.500000\tC3\t10.0.0.1\t-\t10.0.0.2\t-\t-\t-\t-\t-\t"
        b"ZeekML::Anomalous_Flow\t(empty)\t\\\\x\t10.0.0.1\t10.0.0.2\t-\t-\tzeekml\t"
        b"Notice::ACTION_LOG\t-\t3600.000000\t1.234568\tgnn\t-\n"      # no ports: no Community ID
        b"#close\tSTAMP\n")


def test_suppress_for_and_an_empty_log(tmp_path):
    path = tmp_path / "n.log"
    w = NoticeWriter(path, suppress_for=60.0)
    w.write(_verdict())
    w.close()
    assert _masked(path).split(b"\n")[8].split(b"\t")[20] == b"60.000000"
    empty = tmp_path / "empty.log"
    w = NoticeWriter(empty)
    assert w.count == 0
    w.close()
    assert _masked(empty) == HEADER + b"#close\tSTAMP\n"


def test_fields_are_zeeks_notice_columns_plus_score_model_and_community_id():
    names = [n for n, _ in NOTICE_FIELDS]
    assert names[:21] == ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "fuid",
                          "file_mime_type", "file_desc", "proto", "note", "msg", "sub", "src",
                          "dst", "p", "n", "peer_descr", "actions", "email_dest", "suppress_for"]
    assert names[21:] == ["score", "model", "community_id"]

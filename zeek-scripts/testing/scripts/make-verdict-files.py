#!/usr/bin/env python3
"""Writes files/verdicts.log, files/verdicts-hostile.log and files/verdicts.incidents.log (the
incident file `--zeek-feedback verdicts.log` writes beside the verdict file) with zeekml's own
writers.

The btest tests feed these files to Zeek, so they are exactly what zeekml writes. A pytest in
zeekml (tests/unit/zeek_scripts) regenerates them and checks the shipped copies are current.
Run from a zeekml checkout:  python zeek-scripts/testing/scripts/make-verdict-files.py
"""
from __future__ import annotations

import pathlib
import sys

CLOCK = 1700000000.0  # fixed #open/#close stamp base, so the files are reproducible

HOSTILE = {
    "tab": "tab\there",
    "newline": "new\nline",
    "dash": "-",
    "empty_marker": "(empty)",
    "literal_hex": "\\x41",
    "backslash": "back\\slash",
    "hash": "#leading hash",
    "comma": "comma,inside",
}


def verdicts():
    from zeekml.scoring.verdict import Verdict
    return [
        Verdict(ts=1700000001.5, uid="CZkml1", orig_h="10.0.0.1", orig_p=40001,
                resp_h="192.168.1.2", resp_p=443, proto="tcp", score=2.5, alert=True,
                model="gnn-v1", note="ZeekML::Intrusion", msg="C2 beacon pattern",
                sub="iat_std=0.01 bytes=300"),
        Verdict(ts=1700000002.0, uid="CZkml2", orig_h="10.0.0.2", orig_p=5353,
                resp_h="10.0.0.3", resp_p=53, proto="udp", score=1.25, alert=True,
                model="iforest-v1", note="ZeekML::Anomalous_Flow"),
        Verdict(ts=1700000003.25, uid="CZkml3", orig_h="2001:db8::1", orig_p=50000,
                resp_h="2001:db8::2", resp_p=8080, proto="tcp", score=3.0, alert=True,
                model="moe-v1", note="ZeekML::Botnet_Activity", msg="Mirai-like",
                sub="family=mirai"),
        Verdict(ts=1700000004.0, uid="CZkml4", orig_h="10.0.0.4", orig_p=1234,
                resp_h="10.0.0.5", resp_p=22, proto="tcp", score=0.9, alert=True,
                model="future-v9", note="ZeekML::Not_Declared_Yet", msg="new head"),
    ]


def hostile_verdicts():
    from zeekml.scoring.verdict import Verdict
    return [Verdict(ts=1700000100.0 + i, uid=f"CH{i}", orig_h="10.1.0.1", orig_p=30000 + i,
                    resp_h=f"10.2.0.{i + 1}", resp_p=80, proto="tcp", score=1.0, alert=True,
                    model="m", note="ZeekML::Intrusion", msg=value, sub=value)
            for i, value in enumerate(HOSTILE.values())]


def incidents():
    """incidents.jsonl records (``Incident.to_dict()``), as ``zeekml score`` writes them: an
    originator with a port and a description, a responder (an inbound attack) over IPv6, and one
    with neither ports nor description and a description-like ``-``."""
    def inc(iid, host, role, first, last, alerts, ports, description, uid, detectors, peers):
        return {"incident_id": iid, "host": host, "role": role, "first_ts": first,
                "last_ts": last, "conns": alerts + 2, "alerts": alerts, "peak_alerts": alerts,
                "score": 1.5 + alerts / 10, "peers": [], "n_peers": peers,
                "resp_ports": ports, "services": [], "detectors": detectors,
                "detector_alerts": {}, "max_score": 1.5, "description": description,
                "top_conns": [{"uid": uid}] if uid else []}
    return [
        inc("I00000000000000a1", "10.0.0.1", "orig", 1700000001.5, 1700000041.5, 18,
            ["445/tcp", "139/tcp"], "scanned 18 hosts on 445/tcp in 40 s", "CZkml1",
            ["iforest", "gnn"], 18),
        inc("I00000000000000b2", "2001:db8::2", "resp", 1700000100.0, 1700000400.0, 12,
            ["8080/tcp"], "inbound: 12 hosts sent conns to 8080/tcp", "CZkml3", ["moe"], 12),
        inc("I00000000000000c3", "10.0.0.4", "orig", 1700000500.0, 1700000500.0, 1, [], "",
            None, ["mae"], 1),
        inc("I00000000000000d4", "10.0.0.5", "orig", 1700000600.0, 1700000660.0, 3,
            ["53/udp"], "-", "CZkml2", ["iforest"], 2),
    ]


def write(path: pathlib.Path, vs) -> None:
    from zeekml.sinks.zeek_input import VerdictFeedbackWriter
    VerdictFeedbackWriter(path, max_age=None, clock=lambda: CLOCK).write(vs)


def write_incidents(path: pathlib.Path, incs) -> None:
    from zeekml.sinks.zeek_input import IncidentFeedbackWriter
    IncidentFeedbackWriter(path, max_age=None, clock=lambda: CLOCK).write(incs)


def main(out_dir: pathlib.Path) -> None:
    from zeekml.sinks.zeek_input import incident_feedback_path
    # the writers keep the records a file already holds (by id, as `watch` needs): start afresh,
    # or a record whose text the writer now makes otherwise would stay as it was
    for name in ("verdicts.log", "verdicts-hostile.log"):
        (out_dir / name).unlink(missing_ok=True)
    pathlib.Path(incident_feedback_path(out_dir / "verdicts.log")).unlink(missing_ok=True)
    write(out_dir / "verdicts.log", verdicts())
    write(out_dir / "verdicts-hostile.log", hostile_verdicts())
    write_incidents(pathlib.Path(incident_feedback_path(out_dir / "verdicts.log")), incidents())


if __name__ == "__main__":
    here = pathlib.Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parents[2]))
    main(here.parent / "files" if len(sys.argv) < 2 else pathlib.Path(sys.argv[1]))

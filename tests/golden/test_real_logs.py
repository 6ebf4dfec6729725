"""Every real Zeek and Suricata log of the shared data set (copied to tests/data/real) reads exactly.

Row counts must equal the files' record lines, nothing may be quarantined, and values are
spot-checked against the files. zat's LogToDataFrame is the reference where it is right.
"""
import hashlib
import math
from pathlib import Path

import pytest

from zeekml.parse import Quarantine, detect_format, read_log, read_table
from zeekml.parse.reader import open_binary
from zeekml.parse.suricata_eve import SuricataEveParser

REAL = Path(__file__).parent.parent / "data" / "real"
MANIFEST = [line.split("\t") for line in (REAL / "MANIFEST.tsv").read_text().splitlines()[1:]]


def test_manifest_covers_every_copied_log():
    files = {str(p.relative_to(REAL)) for p in REAL.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv"}
    assert files == {m[0] for m in MANIFEST}
    assert len(MANIFEST) == 169


@pytest.mark.parametrize("stored,original,sha,rows", MANIFEST, ids=[m[1] for m in MANIFEST])
def test_real_log_reads_exactly(stored, original, sha, rows):
    path = REAL / stored
    with open_binary(str(path)) as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha, "copy differs from the original"
    q = Quarantine()
    fmt = detect_format(str(path))
    if fmt == "suricata-eve":
        p = SuricataEveParser(str(path), q)
        with open_binary(str(path)) as f:
            batches = p.feed(f.read()) + p.finish()
        n = sum(b.num_rows for b in batches)     # every event a row: flows, alerts, the others
    else:
        n = sum(b.num_rows for b in read_log(str(path), q))
    assert q.count == 0, [r.describe() for r in q.records[:3]]
    assert n == int(rows)


def _row(path, i=0):
    return next(iter(read_log(str(REAL / path)))).batch.slice(i, 1).to_pylist()[0]


def test_spot_values():
    r = _row("zat/data/conn.log")
    assert r["ts"] == 1379288667.706265 and r["uid"] == b"CoyZrY2g74UvMMgp4a"
    assert r["resp_bytes"] == 38393 and r["history"] == b"ShADadR" and r["tunnel_parents"] == []
    assert "local_resp" not in r          # Bro 2.x has no local_resp column
    r = _row("iot23-ctu-34-1/conn.log.labeled.gz", 1)
    assert r["duration"] is None and r["orig_bytes"] is None and r["label"] == b"Benign"
    assert r["detailed-label"] is None and r["tunnel_parents"] is None
    r = _row("zed-sample-data/zeek-json/ssh.json.gz")
    assert r["ts"] == 1521911799.739898 and r["_path"] == b"ssh"
    r = _row("zeek-btest/Baseline/opt.basic/conn.log")
    assert r["ts"] is None and r["ip_proto"] == 17 and r["local_resp"] is True
    r = _row("iot23-csv-aucad/iot-23/CTU-Malware-Capture-8-1-labeled.csv.gz")
    assert r["id.resp_p"] is not None and r["label"] in (b"Benign", b"Malicious")


def test_agrees_with_zat_where_zat_is_right():
    """Documented zat differences on the same real log (zat 0.4.9):
    - ts: zat builds datetimes from floats, off by up to ~1 us from the written decimal;
    - unset counts become NaN/<NA> (fine) but (empty) sets stay the literal "(empty)" string;
    - ``\\xHH`` escapes are never undone; zat has no notion of invalid UTF-8 bytes.
    Everything else (counts, ports, durations, strings) must agree exactly.
    """
    zat = pytest.importorskip("zat.log_to_dataframe")
    path = str(REAL / "zat/data/conn.log")
    df = zat.LogToDataFrame().create_dataframe(path).reset_index()
    ours = read_table(path).to_pylist()
    assert len(df) == len(ours)
    for (_, z), o in zip(df.iterrows(), ours):
        assert abs(z["ts"].timestamp() - o["ts"]) < 2e-6
        for c in ("orig_bytes", "resp_bytes", "orig_pkts", "resp_ip_bytes", "id.orig_p", "id.resp_p"):
            zv = z[c]
            assert (o[c] is None) == (zv is None or (isinstance(zv, float) and math.isnan(zv)) or str(zv) == "<NA>")
            if o[c] is not None:
                assert int(zv) == o[c]
        if o["duration"] is not None:
            assert abs(z["duration"].total_seconds() - o["duration"]) < 1e-6
        assert str(z["uid"]) == o["uid"].decode()
        assert str(z["history"]) == (o["history"] or b"").decode() or o["history"] is None
        assert o["tunnel_parents"] == [] and str(z["tunnel_parents"]) == "(empty)"   # zat is wrong here

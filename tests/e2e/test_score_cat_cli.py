"""`zeekml score` and `zeekml cat` end to end on the bundled examples, through click's CliRunner."""
import gzip
import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from zeekml.cli import main
from zeekml.parse import read_table

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def test_cat_prints_typed_json_lines():
    r = CliRunner().invoke(main, ["cat", str(EXAMPLES / "zeek" / "conn.log"),
                                   "--fields", "ts,uid,orig_bytes,tunnel_parents,local_orig"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert len(lines) == 360
    assert lines[0] == {"ts": 1379288667.706265, "uid": "CoyZrY2g74UvMMgp4a", "orig_bytes": 601,
                        "tunnel_parents": [], "local_orig": None}


def test_cat_non_utf8_is_lossless_and_malformed_reported(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes(b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tx\n"
                  b"#fields\ts\tn\n#types\tstring\tcount\n\\xff\\x41\t1\nbad\n")
    r = CliRunner().invoke(main, ["cat", str(p)])
    assert r.exit_code == 0
    out = r.stdout.splitlines()
    assert len(out) == 1
    s = json.loads(out[0])["s"]
    assert s.encode("utf-8", "surrogateescape") == b"\xffA"
    assert "x.log:9" in r.stderr and "1 malformed record" in r.stderr


def _score(args):
    return CliRunner().invoke(main, ["score", *args, "--no-progress"])


def test_score_examples_writes_all_outputs(tmp_path):
    out = tmp_path / "out"
    r = _score([str(EXAMPLES), "--out", str(out), "--fpr", "0.01", "--conn-notices"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    # 360 zat conns + 2000 IoT-23 conns + 1 Suricata flow
    assert summary["conn_records"] == summary["scored"] == 2361
    assert summary["quarantined"] == 0
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 2361 and len({v["verdict_id"] for v in verdicts}) == 2361
    n_alerts = sum(v["alert"] for v in verdicts)
    assert n_alerts == summary["alerts"] > 0
    notices = read_table(str(out / "zeekml_notice.log")).to_pylist()
    assert len(notices) == n_alerts
    assert all(n["note"] == "ZeekML::Anomalous_Flow" and n["score"] >= 1.0 for n in notices)
    assert "alerts" in r.output and "flows/s" in r.output


def test_score_calibration_holds_target_fpr_on_baseline(tmp_path):
    """On the baseline period itself the alert rate stays near the target (what calibration promises)."""
    out = tmp_path / "out"
    log = EXAMPLES / "iot23" / "conn.log.labeled"
    r = _score([str(log), "--out", str(out), "--fpr", "0.05", "--baseline", str(log)])
    assert r.exit_code == 0, r.output
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    rate = sum(v["alert"] for v in verdicts) / len(verdicts)
    assert 0.01 <= rate <= 0.10


def test_score_quarantines_and_continues(tmp_path):
    src = (EXAMPLES / "zeek" / "conn.log").read_bytes()
    lines = src.split(b"\n")
    lines.insert(20, b"garbage\tline")
    d = tmp_path / "logs"
    d.mkdir()
    (d / "conn.log.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    out = tmp_path / "out"
    r = _score([str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == 1 and q[0]["line"] == 21 and q[0]["path"].endswith("conn.log.gz")
    assert json.loads((out / "summary.json").read_text())["scored"] == 360


def test_score_errors_are_one_line_with_exit_codes(tmp_path):
    r = _score([str(tmp_path / "missing.log"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "missing.log" in r.output and "Traceback" not in r.output
    bad = tmp_path / "notalog.bin"
    bad.write_bytes(b"\x00\x01binary")
    r = _score([str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "notalog.bin" in r.output and "Traceback" not in r.output
    broken = tmp_path / "conn.log.gz"
    broken.write_bytes(gzip.compress(b"x" * 1000)[:30])
    good = tmp_path / "conn.log"
    shutil.copy(EXAMPLES / "zeek" / "conn.log", good)
    r = _score([str(broken), str(good), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 7, r.output
    assert "conn.log.gz" in r.output

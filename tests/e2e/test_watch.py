"""``zeekml watch`` end to end: live/batch parity on a real log, copies read once (guarantee 4), a
gzip archive being written (6), hostile values in notices (10), stats and status, the CLI."""
from __future__ import annotations

import gzip
import json
import os
import shutil

from click.testing import CliRunner
from test_watch_support import (FIELDS, TYPES, ZeekWriter, all_uids, conn_line, header,
                                uid_counts, write_baseline)

from zeekml.cli import main
from zeekml.parse import Quarantine
from zeekml.parse.zeek_tsv import ZeekTsvParser
from zeekml.pipeline import ScoreOptions
from zeekml.sources.checkpoint import CheckpointStore
from zeekml.pipeline import Watcher, WatchOptions

HERE = os.path.dirname(__file__)
REAL_CONN = os.path.join(HERE, "..", "data", "real", "zat", "data", "conn.log")
REAL_JSON = os.path.join(HERE, "..", "data", "real", "zat", "data", "json", "conn.log")
# REAL_CONN scored with itself as the baseline is scored in sample: at the default --fpr 0.001
# no conn passes thresholds set on its out-of-bag scores; at 0.02 a few alert
FPR = ["--fpr", "0.02"]


def _watch_once(root, out, baseline=None, **kw):
    score = ScoreOptions(baseline=[baseline] if baseline else [],
                         **{"conn_notices": True, **kw.pop("score", {})})
    w = Watcher(root, out, WatchOptions(score=score, once=True, rescan_seconds=0.2,
                                        use_events=False, **kw))
    return w.run()


def _verdict_lines(out):
    with open(os.path.join(out, "verdicts.jsonl")) as f:
        return sorted(f)


def _notice_records(out):
    with open(os.path.join(out, "zeekml_notice.log"), "rb") as f:
        return sorted(l for l in f if not l.startswith(b"#"))


def test_live_verdicts_equal_batch_verdicts_on_a_real_log(tmp_path):
    """The same conn gets the same verdict from `watch` (in small windows) as from `score`."""
    root = tmp_path / "logs"
    root.mkdir()
    # the live file is written in two pieces, with windows of 50 records. The first ends at a
    # line's end: a `--once` run that outlasts `unterminated_settle_seconds` (5 s; fitting on a
    # loaded box can) reads a cut line as the file's finished last record, by design, which
    # is not what this test is about (tests/unit/sources/test_tail.py cuts inside lines)
    data = open(REAL_CONN, "rb").read()
    cut = data.rindex(b"\n", 0, len(data) // 3) + 1
    live = root / "conn.log"
    r = CliRunner()
    with open(live, "wb") as f:
        f.write(data[:cut])
    res = r.invoke(main, ["watch", str(root), "--out", str(tmp_path / "live"), "--once",
                          "--baseline", REAL_CONN, "--window-records", "50", "--quiet", "--no-models",
                          "--conn-notices", *FPR])
    assert res.exit_code == 0, res.output
    with open(live, "ab") as f:
        f.write(data[cut:])
    res = r.invoke(main, ["watch", str(root), "--out", str(tmp_path / "live"), "--once",
                          "--baseline", REAL_CONN, "--window-records", "50", "--quiet", "--no-models",
                          "--conn-notices", *FPR])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["score", REAL_CONN, "--out", str(tmp_path / "batch"),
                          "--baseline", REAL_CONN, "--no-progress", "--no-models", "--conn-notices", *FPR])
    assert res.exit_code == 0, res.output
    live_v, batch_v = _verdict_lines(tmp_path / "live"), _verdict_lines(tmp_path / "batch")
    assert len(live_v) == 360
    assert live_v == batch_v
    assert _notice_records(tmp_path / "live") == _notice_records(tmp_path / "batch")
    assert any(json.loads(l)["alert"] for l in live_v)


def test_calibration_saved_and_reused_without_baseline(tmp_path):
    """Without --baseline the first conns are saved as a Zeek log; `score --baseline` on it
    reproduces the live verdicts, and a restart refits to the same thresholds."""
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    out = tmp_path / "out"
    s1 = _watch_once(str(root), str(out), baseline_records=200)
    assert s1.scored == 360
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["records"] == 200
    base = out / "calibration-baseline.log"
    assert base.exists()
    r = CliRunner().invoke(main, ["score", REAL_CONN, "--out", str(tmp_path / "batch"),
                                  "--baseline", str(base), "--no-progress", "--no-models"])
    assert r.exit_code == 0, r.output
    assert _verdict_lines(out) == _verdict_lines(tmp_path / "batch")
    s2 = _watch_once(str(root), str(out))
    assert s2.scored == 0 and s2.calibration["thresholds"] == cal["thresholds"]


def test_live_renamed_and_archived_copies_are_read_once(tmp_path):
    """Guarantee 4: one content under three names (live, renamed hard link, .gz copy), TSV and
    JSON, is scored once; the duplicate filter is off, so the fingerprint alone does it."""
    root = tmp_path / "logs"
    (root / "current").mkdir(parents=True)
    (root / "2014-04-03").mkdir()
    shutil.copy(REAL_CONN, root / "current" / "conn.log")
    os.link(root / "current" / "conn.log", root / "current" / "conn-14-04-03_10.08.27.log")
    with open(REAL_CONN, "rb") as f, gzip.open(root / "2014-04-03" / "conn.10:08:27-11:00:00.log.gz",
                                               "wb") as g:
        g.write(f.read())
    (root / "json").mkdir()
    shutil.copy(REAL_JSON, root / "json" / "conn.log")
    shutil.copy(REAL_JSON, root / "json" / "conn.2019-12-03-22-44-56.log")
    with open(REAL_JSON, "rb") as f, gzip.open(root / "json" / "conn.22:44:56-23:00:00.log.gz",
                                               "wb") as g:
        g.write(f.read())
    out = tmp_path / "out"
    stats = _watch_once(str(root), str(out), baseline=REAL_CONN, dedup_capacity=0)
    counts = uid_counts(str(out))
    assert stats.duplicates_dropped == 0
    assert len(counts) == 360 + 50
    assert max(counts.values()) == 1
    cp = CheckpointStore(str(out)).load()
    assert len(cp.files) + len(cp.done) == 2


def test_gzip_archive_being_written_is_not_read_until_whole(tmp_path):
    """Guarantee 6: zeekctl's archive-log writes the .gz in place; a half-written one is left
    alone (no record, no quarantine) and read once when whole, from where the plain copy
    stopped."""
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(root, "zeekctl", seed=1)
    w.write(300)
    w.rotate(archive=False)
    w.write(10)
    w.archive(cut_at=0.5)          # half a gzip stream beside the plain file
    s1 = _watch_once(root, out, baseline)
    assert s1.scored == 310        # the plain copy is read, the partial gz ignored
    os.unlink(w._archive_rest[2])  # the plain file goes before the gz is whole
    w.pending_archive = None
    w.write(5)
    s2 = _watch_once(root, out, baseline)
    assert s2.scored == 5 and s2.quarantined == 0   # still not whole: not touched
    w._archive_rest = (w._archive_rest[0], w._archive_rest[1], os.devnull + ".absent")
    dst, blob, _ = w._archive_rest
    with open(dst, "wb") as f:
        f.write(blob)
    s3 = _watch_once(root, out, baseline, dedup_capacity=0)
    assert s3.scored == 0          # whole now, but all of it was read from the plain copy
    counts = uid_counts(out)
    assert set(counts) == all_uids(315) and max(counts.values()) == 1
    assert os.path.getsize(os.path.join(out, "quarantine.jsonl")) == 0


def test_gzip_archive_resumes_where_the_plain_copy_stopped(tmp_path):
    """Down while a file was rotated, archived and deleted: the rest is read from the .gz."""
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(root, "supervisor", seed=2)
    w.write(100)
    _watch_once(root, out, baseline)
    w.write(77)
    w.rotate(archive=True)          # renamed to log-queue/, gzipped, queue file deleted
    w.write(3)
    s = _watch_once(root, out, baseline, dedup_capacity=0)
    assert s.scored == 80
    counts = uid_counts(out)
    assert set(counts) == all_uids(180) and max(counts.values()) == 1


def test_hostile_values_survive_into_notices_byte_for_byte(tmp_path, monkeypatch):
    """Guarantee 10: uids with tabs, newlines, `\\x41`, `\\\\`, `-`, `(empty)`, a leading `#`
    reach zeekml_notice.log escaped (one line per alert, no injected lines) and read back equal."""
    root = tmp_path / "logs"
    root.mkdir()
    hostile = ["C\tTAB", "C\nNEWLINE", "C\\x41", "C\\\\", "-", "(empty)", "#HASH", "C\x1b[31mRED"]
    esc = {"C\tTAB": "C\\x09TAB", "C\nNEWLINE": "C\\x0aNEWLINE", "C\\x41": "C\\\\x41",
           "C\\\\": "C\\\\\\\\", "-": "\\x2d", "(empty)": "\\x28empty)", "#HASH": "\\x23HASH",
           "C\x1b[31mRED": "C\\x1b[31mRED"}
    lines = [header("2024-01-01-00-00-00")]
    for i, u in enumerate(hostile):
        vals = conn_line(i).decode().rstrip("\n").split("\t")
        vals[1] = esc[u]
        lines.append(("\t".join(vals) + "\n").encode())
    (root / "conn.log").write_bytes(b"".join(lines))
    out = tmp_path / "out"
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    import zeekml.pipeline.live.pool as live_pool
    real = live_pool.score_batch

    def every_conn_alerts(table, fitted):   # the detector is not under test: force alerts
        batch = real(table, fitted)
        batch.alert[:] = True
        batch.msg = {i: "msg\twith\ttabs\nand a newline" for i in range(len(batch))}
        return batch

    monkeypatch.setattr(live_pool, "score_batch", every_conn_alerts)
    stats = _watch_once(str(root), str(out), baseline)
    assert stats.scored == len(hostile) and stats.quarantined == 0
    assert stats.alerts == len(hostile)
    q = Quarantine()
    p = ZeekTsvParser("n", q)
    batches = p.feed((out / "zeekml_notice.log").read_bytes())
    assert q.count == 0
    uids = [u for b in batches for u in b.batch.column("uid").to_pylist()]
    assert sorted(uids) == sorted(u.encode() for u in hostile)
    msgs = {m for b in batches for m in b.batch.column("msg").to_pylist()}
    assert msgs == {b"msg\twith\ttabs\nand a newline"}
    assert p.header.path == "zeekml_notice" and p.header.fields[0] == "ts"
    assert FIELDS[1] == "uid" and TYPES[1] == "string"


def test_cli_status_stats_file_and_zeek_feedback(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    out, fb = tmp_path / "out", tmp_path / "zeekml_verdicts.log"
    res = CliRunner().invoke(main, ["watch", str(root), "--out", str(out), "--once",
                                    "--baseline", REAL_CONN, "--zeek-feedback", str(fb),
                                    "--status-seconds", "0.1", "--no-models", "--conn-notices", *FPR])
    assert res.exit_code == 0, res.output
    assert "records/s" in res.output and "lag" in res.output and "quarantined" in res.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["scored"] == 360 and stats["state"] == "done"
    assert {"records_per_s", "lag_s", "quarantined", "rss_bytes", "stalled"} <= set(stats)
    from zeekml.sinks.zeek_input import read_verdict_file
    _, rows = read_verdict_file(fb)
    alerts = [json.loads(l) for l in _verdict_lines(out) if json.loads(l)["alert"]]
    assert sorted(r["verdict_id"].decode() for r in rows) == sorted(a["verdict_id"] for a in alerts)


def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["watch", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                                  "--once"])
    assert r.exit_code == 2 and "no such directory" in r.output
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    r = CliRunner().invoke(main, ["watch", str(root), "--out", str(tmp_path / "o"), "--once",
                                  "--baseline", REAL_CONN, "--quiet", "--no-models"])
    assert r.exit_code == 0, r.output
    other = write_baseline(str(tmp_path / "other.log"))
    r = CliRunner().invoke(main, ["watch", str(root), "--out", str(tmp_path / "o"), "--once",
                                  "--baseline", other, "--quiet", "--no-models"])
    assert r.exit_code == 1 and "another baseline" in r.output


def _cli_child(args):
    import sys
    sys.stderr = open(os.devnull, "w")
    try:
        main(args, standalone_mode=False)
    except SystemExit as e:
        os._exit(e.code or 0)
    os._exit(0)


def test_cli_sigterm_commits_a_final_checkpoint(tmp_path):
    """SIGTERM (and SIGINT) finish the window in hand and commit: a restart scores nothing
    again, and records written after the stop are scored once by the next run."""
    import signal
    import time

    from test_watch_support import start
    root, out = tmp_path / "logs", tmp_path / "out"
    root.mkdir()
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(str(root), "standalone", seed=9)
    w.write(500)
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = start(_cli_child, ["watch", str(root), "--out", str(out), "--baseline", baseline,
                               "--quiet", "--no-models", "--window-seconds", "5", "--status-seconds", "0.2"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:     # running and the records read (window still open)
            st = (out / "stats.json")
            if st.exists() and json.loads(st.read_text()).get("state") == "running":
                break
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(p.pid, sig)
        p.join(20)
        assert p.exitcode == (130 if sig == signal.SIGINT else 0)   # Ctrl-C: 130, after the commit
        assert json.loads((out / "stats.json").read_text())["state"] == "stopped"
        w.write(100)
    w.close()
    counts = uid_counts(str(out))
    assert set(counts) == all_uids(600) and max(counts.values()) == 1
    s = _watch_once(str(root), str(out), baseline, dedup_capacity=0)
    assert s.scored == 100


def test_zeek_feedback_files_exist_before_the_first_alert(tmp_path):
    """The Zeek package opens both input files when Zeek starts: watch writes them (header only)
    at start, not at its first alert. REAL_CONN as its own baseline at the default --fpr raises
    no alert."""
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    out, fb = tmp_path / "out", tmp_path / "zeekml_verdicts.log"
    res = CliRunner().invoke(main, ["watch", str(root), "--out", str(out), "--once", "--baseline",
                                    REAL_CONN, "--zeek-feedback", str(fb), "--no-models", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "stats.json").read_text())["alerts"] == 0
    from zeekml.sinks.zeek_input import incident_feedback_path, read_verdict_file
    assert read_verdict_file(fb)[1] == []
    assert os.path.exists(incident_feedback_path(fb))


def test_the_final_status_counts_the_files_read(tmp_path):
    """The last status line and stats.json name the files read: counted before the follower
    stops (they said 0/0 after every --once run)."""
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    seen = []
    w = Watcher(str(root), str(tmp_path / "out"),
                WatchOptions(score=ScoreOptions(fpr=0.02), once=True, rescan_seconds=0.2,
                             use_events=False), on_status=seen.append)
    stats = w.run()
    assert stats.files_tracked == 1
    assert seen[-1]["state"] == "done" and seen[-1]["files_tracked"] == 1
    with open(tmp_path / "out" / "stats.json") as f:
        assert json.load(f)["files_tracked"] == 1

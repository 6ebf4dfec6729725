"""``zeekml watch`` loses nothing and overwrites nothing (issue 17): the last line without a
newline, conns without a uid across windows, outputs without a checkpoint, a planted symlink, a
truncated archive. Each verdict set is compared with what ``zeekml score`` writes."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import zlib

from click.testing import CliRunner
from test_watch_support import write_baseline

from zeekml.cli import main

HERE = os.path.dirname(__file__)
IOT23 = os.path.join(HERE, "..", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")
OLD = time.time() - 3600


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _watch(root, out, baseline, *extra):
    return _run("watch", root, "--out", out, "--once", "--baseline", baseline, "--no-models",
                "--quiet", "--no-events", "--rescan-seconds", "0.1", *extra)


def _score(root, out, baseline):
    return _run("score", root, "--out", out, "--baseline", baseline, "--no-models",
                "--no-progress")


def _iot23_dirs(tmp_path):
    """``(root, out, baseline)``: a log directory holding the IoT-23 head, the output directory
    to be, and a baseline log."""
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(IOT23, root / "conn.log.labeled")
    return root, tmp_path / "out", write_baseline(str(tmp_path / "baseline.log"))


def _verdicts(out) -> list[dict]:
    with open(os.path.join(out, "verdicts.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_last_line_without_newline_is_scored_as_score_does(tmp_path):
    """IoT-23's files end without a newline: `score` wrote 23,145 verdicts, `watch --once`
    23,144 (here: 400 and 399 before the fix)."""
    root = tmp_path / "logs"
    root.mkdir()
    with open(IOT23, "rb") as f:
        data = f.read().rstrip(b"\n")
    log = root / "conn.log.labeled"
    log.write_bytes(data)
    os.utime(log, (OLD, OLD))
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    r = _score(root, tmp_path / "s", baseline)
    assert r.exit_code == 0, r.output
    r = _watch(root, tmp_path / "w", baseline)
    assert r.exit_code == 0, r.output
    batch, live = _verdicts(tmp_path / "s"), _verdicts(tmp_path / "w")
    assert len(batch) == 400
    assert sorted(v["verdict_id"] for v in live) == sorted(v["verdict_id"] for v in batch)
    assert live[-1]["uid"] == batch[-1]["uid"]
    # nothing quarantined, and a second run reads nothing again
    assert os.path.getsize(tmp_path / "w" / "quarantine.jsonl") == 0
    r = _watch(root, tmp_path / "w", baseline)
    assert r.exit_code == 0, r.output
    assert len(_verdicts(tmp_path / "w")) == 400


def _uidless_json(path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"ts": 1_700_000_000.0, "id.orig_h": f"10.1.{i // 250}.{i % 250}",
                                "id.orig_p": 40000 + i, "id.resp_h": "192.168.1.1",
                                "id.resp_p": 443, "proto": "tcp", "conn_state": "SF",
                                "orig_pkts": 3, "resp_pkts": 2}) + "\n")


def test_conns_without_uid_keep_distinct_ids_across_windows_and_match_score(tmp_path):
    """1,500 distinct uid-less conns with one ts, in windows of 100: 1,062 were dropped as
    duplicates (row<i> repeated per window)."""
    root = tmp_path / "logs"
    root.mkdir()
    _uidless_json(root / "conn.log", 1500)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    r = _watch(root, tmp_path / "w", baseline, "--window-records", "100")
    assert r.exit_code == 0, r.output
    assert "0 duplicates dropped" in r.output
    live = _verdicts(tmp_path / "w")
    assert len(live) == 1500 and len({v["verdict_id"] for v in live}) == 1500
    assert all(v["uid"].startswith("nouid-") for v in live)
    r = _score(root, tmp_path / "s", baseline)
    assert r.exit_code == 0, r.output
    batch = _verdicts(tmp_path / "s")
    assert {v["verdict_id"]: v["uid"] for v in batch} == {v["verdict_id"]: v["uid"] for v in live}


def _snapshot(out) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("verdicts.jsonl", "zeekml_notice.log",
                                                "quarantine.jsonl") if (out / n).exists()}


def test_watch_refuses_a_score_output_directory_unless_overwrite(tmp_path):
    root, out, baseline = _iot23_dirs(tmp_path)
    r = _score(root, out, baseline)
    assert r.exit_code == 0, r.output
    before = _snapshot(out)
    assert len(before["verdicts.jsonl"]) > 0
    r = _watch(root, out, baseline)
    assert r.exit_code == 6, r.output
    assert "no intact watch checkpoint" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output
    assert _snapshot(out) == before                     # nothing cut
    assert not (out / "watch.lock").exists()            # the refused start left nothing behind
    assert (out / "summary.json").exists() and (out / "baseline.json").exists()
    r = _watch(root, out, baseline, "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(_verdicts(out)) == 400
    # the score run's own files went with its verdicts: `zeekml report` reads the watch's state
    assert not (out / "summary.json").exists() and not (out / "baseline.json").exists()


def test_score_refuses_a_watch_output_directory(tmp_path):
    root, out, baseline = _iot23_dirs(tmp_path)
    assert _watch(root, out, baseline).exit_code == 0
    before = _snapshot(out)
    r = _score(root, out, baseline)
    assert r.exit_code == 6, r.output
    assert r.stderr.strip().splitlines()[-1] == (
        f"zeekml: error: {out}: holds the outputs of zeekml watch (checkpoint.json): scoring into "
        "it would replace the verdicts watch wrote; give another --out")
    assert _snapshot(out) == before                     # the exactly-once verdicts untouched


def test_watch_refuses_outputs_whose_checkpoint_was_deleted(tmp_path):
    root, out, baseline = _iot23_dirs(tmp_path)
    assert _watch(root, out, baseline).exit_code == 0
    before = _snapshot(out)
    for name in ("checkpoint.json", "checkpoint.json.prev"):
        (out / name).unlink(missing_ok=True)
    r = _watch(root, out, baseline)
    assert r.exit_code == 6, r.output
    assert _snapshot(out) == before


def test_first_start_commits_a_checkpoint_before_any_output(tmp_path):
    """So a crash in the first window (outputs written, no window committed) is recovered,
    not refused: the checkpoint is there and says 0 bytes committed."""
    from zeekml.sources.checkpoint import CheckpointStore

    root = tmp_path / "logs"
    root.mkdir()
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    shutil.copy(baseline, root / "conn.log")
    out = tmp_path / "out"
    assert _watch(root, out, baseline).exit_code == 0
    cp = CheckpointStore(str(out)).load()
    assert cp.generation >= 2 and cp.outputs["verdicts.jsonl"] > 0
    # an uncommitted tail after a crash is cut back, not refused
    with open(out / "verdicts.jsonl", "ab") as f:
        f.write(b'{"partial":')
    r = _watch(root, out, baseline)
    assert r.exit_code == 0, r.output
    assert os.path.getsize(out / "verdicts.jsonl") == cp.outputs["verdicts.jsonl"]


def test_planted_symlink_out_of_the_log_directory_is_not_copied(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(IOT23, root / "conn.log.labeled")
    secret = tmp_path / "secret.json"
    secret.write_text('{"root_password": "hunter2"}\n' * 5)
    (root / "conn.s.log").symlink_to(secret)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    out = tmp_path / "out"
    r = _watch(root, out, baseline)
    assert r.exit_code == 0, r.output
    for name in os.listdir(out):
        if os.path.isfile(out / name):
            assert b"hunter2" not in (out / name).read_bytes(), name
    assert len(_verdicts(out)) == 400


def test_truncated_archive_is_read_to_its_damage_and_reported(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    with open(IOT23, "rb") as f:
        z = gzip.compress(f.read())
    arch = root / "conn.2019-03-15-14-50-49.log.labeled.gz"
    arch.write_bytes(z[: len(z) * 2 // 3])
    os.utime(arch, (OLD, OLD))
    # what zcat recovers: the whole lines before the damage, headers included
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    recovered = d.decompress(z[: len(z) * 2 // 3])
    records = [ln for ln in recovered.split(b"\n")[:-1] if not ln.startswith(b"#")]
    assert 50 < len(records) < 400
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    out = tmp_path / "out"
    r = _watch(root, out, baseline)
    assert r.exit_code == 0, r.output
    assert len(_verdicts(out)) == len(records)

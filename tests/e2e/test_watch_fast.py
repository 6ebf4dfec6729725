"""``zeekml watch``'s fast paths give the bytes of the general ones: verdict lines rendered column
by column (``sinks.verdicts.render_verdicts``) equal each verdict's record through ``json.dumps``,
and windows scored in forked processes equal windows scored in the watcher itself (same files, same order); a
scoring process that dies is a clear error."""
from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pyarrow as pa
import pytest
from checks import run_watcher_in_thread
from test_watch_support import write_baseline

from zeekml.flows.table import conn_table
from zeekml.parse import Quarantine, read_log
from zeekml.pipeline import (ScoreOptions, ScoreSummary, Watcher, WatchOptions, fit_calibrate,
                             load_conns, score_fitted)
from zeekml.pipeline.fitted import score_batch
from zeekml.pipeline.live import score_window
from zeekml.sinks.jsonl import clean_floats
from zeekml.sinks.verdicts import VerdictWriter, render_verdicts, verdict_line, verdict_record

HERE = os.path.dirname(__file__)
REAL_CONN = os.path.join(HERE, "..", "data", "real", "zat", "data", "conn.log")


def _fitted():
    return fit_calibrate(load_conns([REAL_CONN], Quarantine(), ScoreSummary()),
                         ScoreOptions(fpr=0.05))


def _writer_bytes(verdicts, path) -> bytes:
    w = VerdictWriter(str(path))
    w.write(verdicts)
    w.close()
    return open(path, "rb").read()


def _general(verdicts) -> list[bytes]:
    """Each verdict's line the general way: its record through ``json.dumps``."""
    return [(json.dumps(clean_floats(verdict_record(v)), separators=(",", ":")) + "\n").encode()
            for v in verdicts]


def test_column_renderer_gives_the_general_bytes(tmp_path):
    table = conn_table(list(read_log(REAL_CONN)))
    # hostile uids and addresses: quotes, backslashes, control bytes, non-ASCII, U+2028; unset
    # and empty uids and an unset ts take Verdict's stand-ins (uid_stand_ins, 0.0)
    uids = table.column("uid").to_pylist()
    uids[:8] = ['C"q', "C\\b", "C\tt\n", "Cé✓", "C\u2028", "C\x00z", None, ""]
    table = table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids, pa.string()))
    resp = table.column("id.resp_h").to_pylist()
    resp[7] = None
    table = table.set_column(table.schema.get_field_index("id.resp_h"), "id.resp_h",
                             pa.array(resp, pa.string()))
    ts = table.column("ts").to_pylist()
    ts[10], ts[11] = None, float("nan")
    table = table.set_column(table.schema.get_field_index("ts"), "ts", pa.array(ts, pa.float64()))
    batch = score_batch(table, _fitted())
    batch.scores[batch.names[0]][20] = float("nan")     # non-finite scores are null
    batch.score[21] = -np.inf
    verdicts = batch.verdicts()
    fast = render_verdicts(batch)
    assert len(fast.lines) == 360 and fast.ids == [v.verdict_id for v in verdicts]
    assert [i for i, _ in fast.alerts] == [i for i, v in enumerate(verdicts) if v.alert] and fast.alerts
    assert [v for _, v in fast.alerts] == [v for v in verdicts if v.alert]
    assert fast.lines == _general(verdicts) == [verdict_line(v) for v in verdicts]
    assert b'"uid":"nouid-' in fast.lines[6] and b'"uid":"nouid-' in fast.lines[7]
    assert verdicts[6].uid != verdicts[7].uid
    assert b'"ts":0.0' in fast.lines[10] and b'"ts":null' in fast.lines[11]
    assert b'"score":null' in fast.lines[21]
    assert fast.data() == _writer_bytes(verdicts, tmp_path / "v")


def test_score_window_renders_score_fitted():
    table = conn_table(list(read_log(REAL_CONN))).slice(0, 40)
    fitted = _fitted()
    assert score_window(table, fitted).lines == _general(score_fitted(table, fitted))
    assert score_window(None, fitted).lines == [] and score_window(table.slice(0, 0), fitted).lines == []


def _run(root, out, **kw):
    opts = WatchOptions(score=ScoreOptions(baseline=[REAL_CONN], conn_notices=True, fpr=0.02), once=True,
                        rescan_seconds=0.2,
                        use_events=False, **kw)
    return Watcher(str(root), str(out), opts).run()


def test_scoring_processes_give_the_outputs_of_one_process(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    shutil.copy(REAL_CONN, root / "conn.log")
    one = _run(root, tmp_path / "one", window_records=50, catch_up_factor=1)
    two = _run(root, tmp_path / "two", window_records=50, catch_up_factor=1, score_workers=2)
    assert one.scored == two.scored == 360 and two.windows == one.windows >= 5
    for name in ("verdicts.jsonl", "zeekml_notice.log", "quarantine.jsonl"):
        a, b = ((tmp_path / d / name).read_bytes().splitlines(keepends=True) for d in ("one", "two"))
        if name.endswith(".log"):       # the header's #open stamp is the time of writing
            a, b = ([x for x in lines if not x.startswith(b"#open")] for lines in (a, b))
        assert a == b and (a or name == "quarantine.jsonl"), name


def test_a_scoring_process_that_dies_is_a_clear_error(tmp_path):
    import psutil

    from zeekml._core.errors import ZeekmlError
    root = tmp_path / "logs"
    root.mkdir()
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    out = tmp_path / "out"
    w = Watcher(str(root), str(out), WatchOptions(
        score=ScoreOptions(baseline=[baseline]), score_workers=1, rescan_seconds=0.1,
        use_events=False, window_seconds=0.05))
    t, err = run_watcher_in_thread(w)
    assert w.pool is not None and w.pool.pids, "no scoring process"
    worker = psutil.Process(w.pool.pids[0])
    assert worker.ppid() == os.getpid()
    os.kill(worker.pid, signal.SIGKILL)
    shutil.copy(REAL_CONN, root / "conn.log")
    t.join(30)
    if t.is_alive():
        w.request_stop()
        t.join(10)
        pytest.fail("watch went on without its scoring process")
    assert err and isinstance(err[0], ZeekmlError) and "scoring process died" in str(err[0])


def test_verdict_dedup_forgets_the_oldest_ids_first(tmp_path):
    from zeekml.pipeline.live import VerdictDedup
    d = VerdictDedup(capacity=1000)
    assert all(d.add(f"V{i}") for i in range(2500))
    assert len(d) == 1000
    assert not any(d.add(f"V{i}") for i in range(1500, 2500))   # the newest 1000 are known
    assert d.add("V1499") and len(d) == 1000                    # an older one was forgotten
    assert not d.add("V1499") and d.add("V1500")                # V1500 was the oldest left
    path = tmp_path / "verdicts.jsonl"
    path.write_text("".join(f'{{"verdict_id":"X{i}","uid":"C"}}\n' for i in range(50)))
    e = VerdictDedup(capacity=20)
    e.seed_from(str(path), path.stat().st_size)
    assert len(e) == 20 and not e.add("X49") and e.add("X29")
    off = VerdictDedup(capacity=0)
    assert off.add("V1") and off.add("V1")

"""`zeekml score --dask`: the same verdicts as a single-process run, on real logs."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.pipeline.dask import plan_tasks, read_task
from zeekml.parse import read_table

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
ZAT_CONN = EXAMPLES / "zeek" / "conn.log"


def test_byte_range_tasks_read_exactly_what_the_whole_file_holds():
    tasks = plan_tasks([str(ZAT_CONN)], split_bytes=8_000)
    assert len(tasks) > 4
    assert tasks[0].start == 0 and all(t.header.startswith(b"#separator") for t in tasks[1:])
    assert [t.start for t in tasks[1:]] == [t.end for t in tasks[:-1]]
    pieces = [read_task(t) for t in tasks]
    assert all(not p.rejected and p.error is None for p in pieces)
    got = [r for p in pieces for r in p.table.column("uid").to_pylist()]
    assert got == [u.decode() for u in read_table(str(ZAT_CONN)).column("uid").to_pylist()]


@pytest.fixture(scope="module")
def scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c.scheduler_address


def _run(args):
    r = CliRunner().invoke(main, ["score", *args, "--no-progress"])
    return r


def test_dask_verdicts_identical_to_single_process(tmp_path, scheduler):
    logs = tmp_path / "logs"
    shutil.copytree(EXAMPLES, logs)
    (logs / "broken").mkdir()
    (logs / "broken" / "conn.log.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    r1 = _run([str(logs), "--out", str(tmp_path / "single"), "--no-models"])
    assert r1.exit_code == 7, r1.output           # the damaged archive is reported, the rest scored
    # 10 kB tasks: the 45 kB conn.log is scored as five byte ranges
    r2 = _run([str(logs), "--out", str(tmp_path / "dask"), "--dask", scheduler,
               "--dask-split-bytes", "10000", "--no-models"])
    assert r2.exit_code == 7, r2.output
    a = (tmp_path / "single" / "verdicts.jsonl").read_text()
    b = (tmp_path / "dask" / "verdicts.jsonl").read_text()
    assert a == b and len(a.splitlines()) == 2361
    s1 = json.loads((tmp_path / "single" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "dask" / "summary.json").read_text())
    for k in ("records_read", "conn_records", "scored", "alerts", "baseline_records", "files",
              "files_failed", "thresholds"):
        assert s1[k] == s2[k], k


def _records(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_dask_conn_notices_equal_a_single_process_runs(tmp_path, scheduler):
    """The workers count their alerts by note and send the alerting verdicts back only where
    --conn-notices asks for them: the notice log is the single-process run's, line for line."""
    zeek = str(EXAMPLES / "zeek")
    r1 = _run([zeek, "--out", str(tmp_path / "single"), "--no-models", "--conn-notices"])
    r2 = _run([zeek, "--out", str(tmp_path / "dask"), "--dask", scheduler, "--no-models",
               "--conn-notices"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a = _records(tmp_path / "single" / "zeekml_notice.log")
    assert a and a == _records(tmp_path / "dask" / "zeekml_notice.log")
    s = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("single", "dask")]
    assert s[0]["alerts"] == s[1]["alerts"] == len(a) and s[0]["alerts_by_note"] == s[1]["alerts_by_note"]


def test_dask_learned_scores_do_not_depend_on_the_split(tmp_path, scheduler):
    """The GNN scores a conn from its graph windows and the autoencoder from its host's recent
    conns; byte-range tasks get the neighbouring rows within each detector's context_seconds,
    so the verdicts equal a single-process run's."""
    models = Path(__file__).parent.parent.parent / "models"
    if not (models / "gnn-base" / "config.json").exists():
        pytest.skip("models/gnn-base not shipped")
    log = EXAMPLES / "iot23" / "conn.log.labeled"
    r1 = _run([str(log), "--out", str(tmp_path / "single"), "--models", str(models)])
    r2 = _run([str(log), "--out", str(tmp_path / "dask"), "--models", str(models), "--dask", scheduler,
               "--dask-split-bytes", "30000"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a = [json.loads(x) for x in (tmp_path / "single" / "verdicts.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "dask" / "verdicts.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2000 and "gnn" in a[0]["scores"]
    # Same verdicts; the learned models' float32 sums run over differently sized batches, so
    # their scores agree to float32 precision rather than bit for bit (the iforest's bit for bit).
    for x, y in zip(a, b):
        assert (x["uid"], x["alert"], x["note"], x["model"]) == (y["uid"], y["alert"], y["note"], y["model"])
        assert x["scores"]["iforest"] == y["scores"]["iforest"]
        assert x["scores"].keys() == y["scores"].keys()
        assert all(abs(x["scores"][k] - y["scores"][k]) < 1e-5 for k in x["scores"])



def test_dask_scores_with_a_known_bad_committee(tmp_path, scheduler):
    """A classifier keeps the probabilities of the tables it scored (``TableMemo``, weak
    references to this process's tables): sent to the workers it must still pickle, as an
    empty memo. The committee's verdicts over byte-range tasks equal a single-process run's."""
    committee = Path(__file__).parent.parent.parent / "models" / "malicious-committee"
    if not (committee / "config.json").exists():
        pytest.skip("models/malicious-committee not shipped")
    log = EXAMPLES / "iot23" / "conn.log.labeled"
    r1 = _run([str(log), "--out", str(tmp_path / "single"), "--models", str(committee)])
    r2 = _run([str(log), "--out", str(tmp_path / "dask"), "--models", str(committee), "--dask",
               scheduler, "--dask-split-bytes", "60000"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a = [json.loads(x) for x in (tmp_path / "single" / "verdicts.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "dask" / "verdicts.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2000 and "clf-malicious-committee" in a[0]["scores"]
    assert sum(x["alert"] for x in a) > 0
    for x, y in zip(a, b):
        assert (x["uid"], x["alert"], x["note"], x["model"]) == (y["uid"], y["alert"], y["note"], y["model"])
        assert all(abs(x["scores"][k] - y["scores"][k]) < 1e-5 for k in x["scores"])

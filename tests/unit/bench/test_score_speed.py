"""bench/score_speed.py's timers: self time per stage (nested timers subtract), and the kNN stage
covering both ways the reference is searched (``KnnReference.score`` searches its distinct rows
without ``knn_distance`` since issue 15's dedup). The benchmark itself is run by hand."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from bench_script import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "bench", "score_speed.py")


@pytest.fixture(scope="module")
def ss():
    return load_bench("score_speed")


def test_nested_timers_record_self_time(ss):
    st = ss.Stages()
    with st.timed("outer", phase="fit", detector="mae"):
        time.sleep(0.02)
        with st.timed("inner"):
            time.sleep(0.05)
    inner, outer = st.self_s[("fit", "mae", "inner")], st.self_s[("fit", "mae", "outer")]
    assert inner >= 0.05 and 0.02 <= outer < 0.05
    assert st.phase == "other" and st.detector == "-"


def test_timers_record_the_main_threads_cpu_apart_from_waiting(ss):
    """A stage that waits (here: sleeps) has wall time but no CPU; a busy nested stage's CPU is
    its own, not its parent's; the result file's rows and the Markdown table carry both."""
    st = ss.Stages()
    with st.timed("waits", phase="other", detector="-"):
        time.sleep(0.05)
        with st.timed("busy"):
            start = time.thread_time()
            while time.thread_time() - start < 0.03:
                pass
    key_w, key_b = ("other", "-", "waits"), ("other", "-", "busy")
    assert st.self_s[key_w] >= 0.05 and st.self_cpu_s[key_w] < 0.03
    assert st.self_cpu_s[key_b] >= 0.03
    r = {"wall_s": 1.0, "stages": [[*k, v] for k, v in st.self_s.items()],
         "stages_cpu": [[*k, v] for k, v in st.self_cpu_s.items()],
         "background_imports": {"wall_s": 2.5, "cpu_s": 2.0}}
    md = ss.markdown(r)
    assert f"| other | - | busy | {st.self_s[key_b]:.2f} | {st.self_cpu_s[key_b]:.2f} |" in md
    assert "background imports (a thread overlapping the stages above): 2.50 s wall, 2.00 s CPU" in md
    assert ss.cpu_of({"stages": []}) == {} and ss.background_line({}) == ""


def test_repeated_rounds_report_the_median_run_and_each_rounds_ratio(ss):
    runs = [{"wall_s": w, "flows_per_s": 100 / w, "tag": i} for i, w in enumerate([9.0, 7.0, 8.0, 30.0])]
    med = ss.median_run(runs)
    assert med["tag"] == 2 and med["rounds_wall_s"] == [9.0, 7.0, 8.0, 30.0]      # lower middle of 4
    assert ss.median_run(runs[:3])["tag"] == 2 and ss.median_run(runs[1:2])["tag"] == 1
    assert "rounds_wall_s" not in runs[2]                                        # the input is not changed
    base = [{"flows_per_s": 50.0}, {"flows_per_s": 25.0}]
    assert ss.round_ratios(runs[:2], base) == [100 / 9.0 / 50.0, 100 / 7.0 / 25.0]
    with pytest.raises(ValueError):
        ss.median_run([])


def test_background_imports_are_timed_in_their_thread(ss, monkeypatch):
    from zeekml._core import preload

    monkeypatch.setattr(preload.Preload, "_run", preload.Preload._run)     # undone after the test
    st = ss.Stages()
    st.time_background_imports()
    p = preload.Preload(["json", "zeekml_no_such_module_x"])
    assert p.wait(60)
    assert "zeekml_no_such_module_x" in p.failed             # the wrapped thread still records failures
    assert set(st.background) == {"wall_s", "cpu_s"} and st.background["wall_s"] >= 0.0
    assert not st.stack and not st.self_s                     # nothing added to the stages


def test_the_knn_stage_times_the_reference_and_the_direct_search():
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'bench')!r})\n"
        "import score_speed as ss\n"
        "st = ss.Stages(); ss.install(st)\n"
        "from zeekml.scoring.detectors import reference as r\n"
        "rng = np.random.default_rng(0)\n"
        "with st.timed('x', phase='score', detector='mae'):\n"
        "    r.KnnReference().fit(rng.standard_normal((300, 16))).score(rng.standard_normal((5000, 16)))\n"
        "with st.timed('x', phase='score', detector='gnn'):\n"
        "    e, ref = rng.standard_normal((5000, 16)), rng.standard_normal((300, 16))\n"
        "    r.knn_distance(r.unit_rows(e), r.unit_rows(ref), 5)\n"
        "print(sorted(k for k, v in st.self_s.items() if v > 0 and k[2] == 'kNN to reference'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == \
        "[('score', 'gnn', 'kNN to reference'), ('score', 'mae', 'kNN to reference')]"


def test_learned_ab_runs_both_sides_and_compares_their_scores(ss, tmp_path):
    """``--learned-ab COMMIT`` loads COMMIT's graph builder, encoder, features, modalities and
    GNN detector beside this tree's and times both on the same log; at HEAD both sides are
    the same code, so their scores must be identical (and the sha256 says so)."""
    import shutil

    if not os.path.exists(os.path.join(ROOT, "models", "gnn-base", "config.json")):
        pytest.skip("models/ not shipped")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(os.path.join(ROOT, "examples", "iot23", "conn.log.labeled"), logs / "conn.000.log")
    out = ss.learned_ab(str(logs), head.stdout.strip(), rounds=1)
    assert out["conns"] > 1000 and out["same_scores"]
    assert [r["side"] for r in out["rounds"]] == [head.stdout.strip(), "tree"]
    assert all(r["gnn_s"] > 0 and r["mae_s"] > 0 and len(r["sha256"]) == 4 for r in out["rounds"])


def test_a_run_of_another_checkout_uses_its_code_and_keeps_its_files_apart(ss, tmp_path, monkeypatch):
    """``--against DIR``: the worker is DIR's own script, importing DIR's zeekml, and its result
    and outputs do not overwrite this tree's run of the same mode."""
    calls = []

    def fake_run(cmd, check, env, stdout):
        calls.append((cmd, env["PYTHONPATH"]))
        res, out = cmd[cmd.index("--result") + 1], cmd[cmd.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "verdicts.jsonl"), "w") as f:
            f.write("{}\n{}\n")
        with open(res, "w") as f:
            f.write('{"wall_s": 2.0, "process_cpu_s": 3.5}')

    monkeypatch.setattr(ss.subprocess, "run", fake_run)
    other = str(tmp_path / "other")
    mine = ss.run_mode("models", "logs", str(tmp_path), None)
    theirs = ss.run_mode("models", "logs", str(tmp_path), None, root=other)
    assert calls[0][0][1] == os.path.join(ROOT, "bench", "score_speed.py")
    assert calls[0][1] == ss.ROOT
    assert calls[1][0][1] == os.path.join(other, "bench", "score_speed.py") and calls[1][1] == other
    assert calls[0][0][calls[0][0].index("--result") + 1] != calls[1][0][calls[1][0].index("--result") + 1]
    assert mine["verdict_lines"] == theirs["verdict_lines"] == 2 and theirs["process_cpu_s"] == 3.5


def test_report_gives_the_ratio_and_compare_the_process_cpu(ss, tmp_path, capsys):
    run = lambda wall, cpu: {"wall_s": wall, "flows_per_s": 100 / wall, "process_cpu_s": cpu,
                             "stages": [["fit", "iforest", "fit (sklearn)", 0.5]], "stages_cpu": []}
    res = ss.report({"models": [run(10.0, 14.0)], "no-models": [run(4.0, 4.5)]},
                    ["models", "no-models"], 100, 1, False)
    assert res["ratio"] == 0.4 and res["models"]["process_cpu_s"] == 14.0
    assert "process CPU 14.0 s" in capsys.readouterr().out
    path = tmp_path / "r.json"
    path.write_text(__import__("json").dumps(res))
    assert "| | **process CPU s, all detectors** | 14.0 |" in ss.compare([str(path)])


def test_against_a_directory_that_is_no_checkout_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--against", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "not a zeekml checkout" in out.stderr


def test_the_timeline_shows_the_fits_side_by_side_after_the_read_and_the_imports(ss, tmp_path):
    """``--timeline``'s worker, in its own process on the bundled IoT-23 example with the shipped
    models: every detector's fit is a task on a detector thread with its thread CPU, the fits
    start once the input is read and the imports are waited for, the render comes after them,
    and the wall time holds every step."""
    import json
    import shutil

    if not os.path.exists(os.path.join(ROOT, "models", "gnn-base", "config.json")):
        pytest.skip("models/ not shipped")
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(os.path.join(ROOT, "examples", "iot23", "conn.log.labeled"), logs / "conn.000.log")
    result = tmp_path / "r.json"
    subprocess.run([sys.executable, SCRIPT, "--worker", "timeline-models", "--log-dir", str(logs), "--out",
                    str(tmp_path / "out"), "--result", str(result)], check=True, timeout=600,
                   env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True)
    r = json.loads(result.read_text())
    first = {}
    for s in r["steps"]:
        first.setdefault(s["step"], s)
    tasks = [s for s in first.values() if s["step"].startswith("task ")]
    assert {"task gnn", "task mae", "task moe", "task iforest"} <= set(first)
    assert all(s["thread"].startswith("zeekml-detector") and s["thread_cpu_s"] > 0
               for s in tasks if s["step"] != "task baseline-check")
    read, fits = first["read + parse + spill"], first["fit + calibrate"]
    assert read["end_s"] <= fits["start_s"] <= min(s["start_s"] for s in tasks)
    assert first["render verdicts"]["start_s"] >= fits["end_s"]
    assert r["wall_s"] >= max(s["end_s"] for s in r["steps"])
    ss.print_timeline(r)          # the table prints from the file it wrote

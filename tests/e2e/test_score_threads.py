"""``zeekml score`` never takes torch's thread count from the machine's load
(``zeekml._core.device.configure_torch_if_asked``): the learned detectors' scores still move in
their last bits with the count, so a count chosen from the load would make verdict bytes depend on
the load (``watch`` chooses one, to keep up). It runs its detectors side by side with a share of
the cores each (``zeekml.pipeline.side_by_side``), and sets torch's count back after."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MODELS = ROOT / "models"
ZEEK_CONN = ROOT / "examples" / "zeek" / "conn.log"
IOT23 = ROOT / "examples" / "iot23" / "conn.log.labeled"      # 2,000 conns: four chunks of 500

# Runs the CLI in a process whose load average reads as a very busy machine (so a count taken
# from the load would be 1) and whose torch starts at 3 threads (standing in for torch's default
# of every core, which is 1 on a one-core box and could not tell the two apart); prints the
# count before and after.
PROBE = """
import os, sys
os.getloadavg = lambda: (64.0, 64.0, 64.0)
import torch
torch.set_num_threads(3)
from zeekml.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("threads", torch.get_num_threads())
"""


@pytest.mark.skipif(not (MODELS / "moe-causal" / "config.json").exists(), reason="models not shipped")
def test_score_keeps_torchs_threads_whatever_the_load(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ZEEKML_TORCH_THREADS", "OMP_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", PROBE, "score", str(ZEEK_CONN), "--out", str(tmp_path / "out"),
                          "--no-progress", "--models", str(MODELS)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    # the learned detectors ran (else torch's threads would never have been in question)
    assert '"moe"' in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()[0]
    assert res.stdout.strip().splitlines()[-1] == "threads 3", res.stdout[-500:]


@pytest.mark.skipif(not (MODELS / "moe-causal" / "config.json").exists(), reason="models not shipped")
def test_detectors_side_by_side_give_the_verdicts_they_give_in_turn(tmp_path):
    """``pipeline.side_by_side``: the shipped detectors fitted, calibrated and scored two at a
    time (one kernel thread each) write the bytes they write one after another (one thread)."""
    out = {}
    for workers in ("1", "2"):
        env = dict(os.environ, ZEEKML_TORCH_THREADS="1", ZEEKML_DETECTOR_THREADS=workers)
        res = subprocess.run([sys.executable, "-m", "zeekml", "score", str(ZEEK_CONN), "--out",
                              str(tmp_path / workers), "--no-progress", "--models", str(MODELS)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        out[workers] = (tmp_path / workers / "verdicts.jsonl").read_bytes()
    assert b'"moe"' in out["1"].splitlines()[0]
    assert out["1"] == out["2"]


# The CLI with one detector's fit replaced by torch work that outlasts the test, announced on
# stdout: Ctrl-C then lands while that work runs in a detector thread, with no timing in it.
BUSY = """
import sys, torch
import zeekml.pipeline.fitted as fitted
real = fitted._fit_one
def fit_one(det, *args):
    if det.name != "gnn":
        return real(det, *args)
    print("busy", flush=True)
    x = torch.rand(512, 512)
    for _ in range(100000):
        x = torch.tanh(x @ x)
fitted._fit_one = fit_one
from zeekml.cli import main
main(sys.argv[1:])
"""


def _interrupted_while_busy(script: str, log: Path, out: Path) -> None:
    """``zeekml score LOG`` with the shipped models under ``script``, interrupted as soon as
    it prints "busy" (a thread of it in torch work that outlasts the test): one line, exit 130,
    at once: not an abort from ending the interpreter under the busy thread, nor a wait for it."""
    import signal
    import time

    env = dict(os.environ, ZEEKML_DETECTOR_THREADS="2")
    p = subprocess.Popen([sys.executable, "-c", script, "score", str(log), "--out", str(out),
                          "--no-progress", "--models", str(MODELS)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().startswith(b"busy")   # two threads may print at once
        # a moment later the main thread waits in Thread.join, where Ctrl-C marks the busy
        # thread stopped while it still computes (CPython 3.11): the process aborted (-6)
        time.sleep(1.0)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err.decode()[-2000:]
    assert err.decode().endswith("zeekml: interrupted\n") and "Traceback" not in err.decode()
    assert time.monotonic() - t0 < 30


@pytest.mark.skipif(not (MODELS / "gnn-base" / "config.json").exists(), reason="models not shipped")
def test_ctrl_c_while_detectors_run_side_by_side_is_one_line_and_exit_130(tmp_path):
    _interrupted_while_busy(BUSY, ZEEK_CONN, tmp_path / "out")


# The same beyond one chunk: the input cut in chunks of 500 conns (no CLI option sets it), and the
# first detector call in a lane (a chunk's scoring, side_by_side.Lanes) replaced by torch work
# that outlasts the test.
BUSY_CHUNK = """
import sys, torch
import zeekml.pipeline.batch as batch
import zeekml.pipeline.side_by_side as sbs
real_spill = batch.spill_inputs
batch.spill_inputs = lambda files, q, s, rows, *a, **k: real_spill(files, q, s, 500, *a, **k)
real_submit = sbs.Lanes.submit
def submit(self, lane, call, order=0):
    def busy():
        print("busy", flush=True)
        x = torch.rand(512, 512)
        for _ in range(100000):
            x = torch.tanh(x @ x)
    return real_submit(self, lane, busy if order == 0 else call, order)
sbs.Lanes.submit = submit
from zeekml.cli import main
main(sys.argv[1:])
"""


@pytest.mark.skipif(not (MODELS / "gnn-base" / "config.json").exists(), reason="models not shipped")
def test_ctrl_c_while_chunks_run_in_lanes_is_one_line_and_exit_130(tmp_path):
    _interrupted_while_busy(BUSY_CHUNK, IOT23, tmp_path / "out")

"""``zeekml score`` leaves torch's thread count alone unless the environment asks for one
(``zeekml._core.device.configure_torch_if_asked``): the MoE's scores still move in their last bits
with the count, so a count chosen from the machine's load would make verdict bytes depend on the
load (``watch`` chooses one, to keep up)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MODELS = ROOT / "models"
ZEEK_CONN = ROOT / "examples" / "zeek" / "conn.log"

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

"""A command imports what it needs and nothing more: ``zeekml cat`` never loads scikit-learn or
torch, ``zeekml score --no-models`` never loads torch or torch_geometric, and ``zeekml score`` and
``watch`` with the shipped models load torch but neither PyTorch Geometric nor ``torch._dynamo``
(the GNN runs on its own layers: 1,530 modules fewer). Each run is a fresh
interpreter (``sys.modules`` of this one already holds everything the other tests imported)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CONN = ROOT / "examples" / "zeek" / "conn.log"
HEAVY = ("torch", "torch._dynamo", "torch_geometric", "sklearn")

PROBE = """
import json, sys
from zeekml.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit as e:
    if e.code:
        raise
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def loaded_after(*args: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``zeekml ARGS``."""
    res = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], check=False,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stderr.strip().splitlines()[-1])


def test_cat_loads_no_scoring_stack():
    assert loaded_after("cat", str(CONN)) == []


def test_score_without_models_loads_no_torch(tmp_path):
    loaded = loaded_after("score", "--no-models", str(CONN), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "verdicts.jsonl").exists()
    assert loaded == ["sklearn"]           # the IsolationForest, and nothing of the models


def test_score_with_the_shipped_models_loads_no_pyg(tmp_path):
    """Every shipped detector (the GNN's included) scores without PyTorch Geometric, whose
    ``__init__`` imports ``torch._dynamo``, datasets and llm code (~2 s)."""
    loaded = loaded_after("score", str(CONN), "--out", str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "gnn" in summary["thresholds"]  # the GNN did score
    assert loaded == ["sklearn", "torch"]


def test_watch_with_the_shipped_models_loads_no_pyg(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "conn.log").write_bytes(CONN.read_bytes())
    loaded = loaded_after("watch", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), "--once")
    calibration = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert "gnn" in calibration["thresholds"]
    assert loaded == ["sklearn", "torch"]


@pytest.mark.parametrize("module", sorted(set(__import__("zeekml.cli", fromlist=["x"]).COMMAND_NAMES.values())))
def test_command_names_map_each_command_to_its_module(module):
    """``COMMAND_NAMES`` (what the lazy group imports) holds exactly the commands each module defines."""
    from zeekml import cli

    assert module in cli.COMMAND_MODULES
    names = {c.name for c in importlib.import_module(f"zeekml.cli.{module}").COMMANDS}
    assert names == {n for n, m in cli.COMMAND_NAMES.items() if m == module}


def test_every_command_module_is_mapped():
    from zeekml import cli

    assert set(cli.COMMAND_NAMES.values()) == set(cli.COMMAND_MODULES)

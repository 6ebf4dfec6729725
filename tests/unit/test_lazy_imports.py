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
# What only ``zeekml watch`` runs: the watcher, its pools and journal, and the tail follower
# with its checkpoint ledger. ``zeekml.pipeline`` names the watch classes lazily so that score
# (which imports the package) does not load them.
WATCH_ONLY = ("zeekml.pipeline.live", "zeekml.pipeline.live.watcher", "zeekml.pipeline.live.pool",
              "zeekml.sources.tail", "zeekml.sources.checkpoint")

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


def loaded_after(*args: str, modules: tuple[str, ...] = HEAVY) -> list[str]:
    """The ``modules`` (default: the heavy ones) a fresh interpreter holds after running
    ``zeekml ARGS``."""
    res = subprocess.run([sys.executable, "-c", PROBE.format(heavy=modules), *args], check=False,
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


@pytest.mark.parametrize("log", ["zeek/conn.log", "iot23/conn.log.labeled"])
def test_cat_of_a_clean_tsv_log_loads_no_pandas(log):
    """The TSV fast path builds its Arrow values from buffers: pyarrow imports pandas (~0.23 s)
    whenever it converts a Python value (the IoT-23 log takes the packed-column path too)."""
    assert loaded_after("cat", str(ROOT / "examples" / log), modules=("pandas",)) == []


def test_cat_loads_no_pipeline():
    assert loaded_after("cat", str(CONN), modules=WATCH_ONLY + ("zeekml.pipeline",)) == []


def test_score_without_models_loads_none_of_watch(tmp_path):
    """Nor tomllib: only an ``--allowlist`` file is TOML."""
    loaded = loaded_after("score", "--no-models", str(CONN), "--out", str(tmp_path / "out"),
                          modules=WATCH_ONLY + ("tomllib", "zeekml.pipeline.batch"))
    assert (tmp_path / "out" / "verdicts.jsonl").exists()
    assert loaded == ["zeekml.pipeline.batch"]    # the probe sees score's own pipeline


def test_score_with_the_shipped_models_loads_none_of_watch(tmp_path):
    loaded = loaded_after("score", str(CONN), "--out", str(tmp_path / "out"),
                          modules=WATCH_ONLY + ("tomllib", "zeekml.pipeline.batch", "zeekml.nn.gnn"))
    assert "gnn" in json.loads((tmp_path / "out" / "summary.json").read_text())["thresholds"]
    assert loaded == ["zeekml.nn.gnn", "zeekml.pipeline.batch"]


def test_pipeline_names_the_watch_classes_on_first_use():
    """``from zeekml.pipeline import Watcher`` still works: the name loads ``live`` then."""
    code = ("import sys, zeekml.pipeline as p\n"
            "before = 'zeekml.pipeline.live' in sys.modules\n"
            "from zeekml.pipeline import Watcher, WatchOptions, WatchStats, LiveContext, status_line\n"
            "import zeekml.pipeline.live as live\n"
            "assert (Watcher, WatchOptions, WatchStats, LiveContext, status_line) == (\n"
            "    live.Watcher, live.WatchOptions, live.WatchStats, live.LiveContext, live.status_line)\n"
            "assert set(p.__all__) <= set(dir(p))\n"
            "try:\n"
            "    p.Nothing\n"
            "except AttributeError as e:\n"
            "    assert 'Nothing' in str(e)\n"
            "else:\n"
            "    raise AssertionError('no AttributeError')\n"
            "print(before)\n")
    res = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


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

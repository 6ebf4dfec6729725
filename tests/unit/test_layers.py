"""Data flows one way: each package imports only the packages it is declared to build on.

sources -> parse -> flows -> features -> nn -> scoring -> sinks, with ``_core`` shared by all.
Sources hand raw lines to the parsers (the tailer takes a parser factory) and yield records; they
never write outputs. ``train`` sits beside inference: it may use every step up to ``scoring``
(it trains what the detectors load), and nothing on the way to a verdict imports it. Only
``pipeline`` (which wires the steps) and ``cli`` (the shell over it) see every step.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent.parent / "zeekml"
STEPS = ["_core", "parse", "flows", "features", "nn", "scoring", "sinks"]
LAYERS: dict[str, set[str]] = {
    **{step: set(STEPS[: i + 1]) for i, step in enumerate(STEPS)},
    "sources": {"_core", "parse", "sources"},
    "train": set(STEPS[:6]) | {"sources", "train"},
    "pipeline": set(STEPS) | {"sources", "pipeline"},
    "cli": set(STEPS) | {"sources", "pipeline", "train", "cli"},
    "zeek_package": {"_core"},
    "__main__": {"cli"},
    "__init__": set(),
}


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        out |= {m.split(".")[1] for m in mods if m.startswith("zeekml.")}
    return out


def test_imports_follow_the_flow():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        step = parts[0]
        assert step in LAYERS, f"zeekml/{'/'.join(parts)}.py: package {step!r} has no layer"
        bad += [f"zeekml/{'/'.join(parts)}.py imports zeekml.{m}"
                for m in sorted(imported_packages(path) - LAYERS[step])]
    assert not bad, "\n".join(bad)


def test_the_check_can_fail():
    assert "pipeline" not in LAYERS["parse"] and "nn" not in LAYERS["flows"]
    assert "sinks" not in LAYERS["scoring"] and "scoring" not in LAYERS["nn"]
    assert "train" not in LAYERS["scoring"] and "train" not in LAYERS["pipeline"]
    assert not {"sinks", "scoring", "pipeline"} & LAYERS["sources"]


def test_an_import_against_the_flow_is_found(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom zeekml.train.common import x\nimport zeekml.sinks.jsonl\n")
    assert imported_packages(f) == {"train", "sinks"}

"""Data flows one way: a step imports only from the steps before it and from ``_core``.

sources -> parse -> flows -> features -> nn -> scoring -> sinks. ``pipeline``, ``watch``,
``distributed`` and ``cli`` see every step; ``train`` sits off the inference path.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent.parent / "zeekml"
ORDER = ["_core", "parse", "flows", "features", "nn", "scoring", "sinks"]
EXTRA = {
    # the pcap source writes the conn.log and zeekml_flow.log it replays with our own writer
    "sources": {"parse", "flows", "sinks"},
    # learned detectors are built through the model registry, imported lazily
    "scoring": {"train"},
    "train": {"sources", "scoring"},
}
FREE = {"pipeline", "watch", "distributed", "cli", "__main__", "__init__", "zeek_package"}


def allowed(step: str) -> set[str]:
    before = set(ORDER[: ORDER.index(step) + 1]) if step in ORDER else {"_core", step}
    if step == "train":
        before = set(ORDER[:5]) | {"train"}
    return before | EXTRA.get(step, set()) | {"_core"}


def test_imports_follow_the_flow():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        step = parts[0]
        if step in FREE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                if m.startswith("zeekml.") and m.split(".")[1] not in allowed(step):
                    bad.append(f"zeekml/{'/'.join(parts)}.py imports {m}")
    assert not bad, "\n".join(bad)


def test_the_check_can_fail():
    assert "pipeline" not in allowed("parse") and "nn" not in allowed("flows")
    assert "sinks" not in allowed("scoring") and "scoring" not in allowed("nn")

"""A ``bench/`` script loaded as a module, for the tests of its pieces (``tests/unit/bench/``);
imported as ``from bench_script import load_bench`` (pytest puts tests/ on sys.path for its
conftest, as for ``tiny``). The benchmarks themselves need ../shared/data and are run by hand."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench(name: str, as_name: str | None = None) -> ModuleType:
    """``bench/<name>.py`` as a module named ``as_name`` (default ``name``)."""
    spec = importlib.util.spec_from_file_location(as_name or name, os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

"""The tree holds to the ``[tool.ruff]`` rules of pyproject.toml (pyflakes, pycodestyle, bugbear,
blind except, google-style docstrings). ruff comes with the ``test`` extra."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the wheel ships the binary beside it)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed (pip install -e '.[test]')")
        return ["ruff"]
    return [sys.executable, "-m", "ruff"]


def test_ruff_is_clean():
    r = subprocess.run([*_ruff(), "check", "--no-cache", "zeekml", "tests", "bench"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

"""A wheel of this tree, installed (not editable) in a fresh venv, finds its models and scripts.

What a user gets from ``pip install .``: the venv must import zeekml from its own site-packages,
never from this checkout. The editable install of the checkout is a ``.pth`` file (an import
hook) in the test interpreter's site-packages, so the venv is made *without* system site
packages and sees them through a ``.pth`` of plain path lines: Python puts those directories on
``sys.path`` but runs no ``.pth`` inside them, so torch and the other dependencies import while
the editable hook never loads. Nothing is downloaded (``--no-index``, ``--no-deps``,
``--no-build-isolation``).
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import zeekml

REPO = Path(zeekml.__file__).resolve().parents[1]
# Not needed by the build; everything else at the root is copied, so a file the build config
# needs but the copy lacked would fail here as it would for a user.
NOT_BUILD_INPUTS = {".git", "tests", "bench", "docs", "build", "dist", "out", ".pytest_cache",
                    ".hypothesis", ".ruff_cache", ".venv", "venv"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "ZEEKML_MODELS",
                        "ZEEKML_ZEEK_SCRIPTS", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


class Installed:
    def __init__(self, venv: Path, workdir: Path):
        self.venv = venv
        self.workdir = workdir
        self.python = venv / "bin" / "python"

    def site_packages(self) -> Path:
        return Path(self.cli_python("import sysconfig; print(sysconfig.get_paths()['purelib'])"))

    def cli_python(self, code: str) -> str:
        res = _run([str(self.python), "-c", code], cwd=self.workdir, env=_clean_env())
        return res.stdout.strip()

    def zeekml(self, *args: str) -> subprocess.CompletedProcess:
        return _run([str(self.venv / "bin" / "zeekml"), *args], cwd=self.workdir, env=_clean_env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build leaves build/ behind, and a stale build/lib of the shared
    # tree could put files in the wheel that the sources no longer have.
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=lambda d, names: [
        n for n in names
        if n == "__pycache__" or n.endswith(".egg-info")
        or (Path(d) == REPO and n in NOT_BUILD_INPUTS)])
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(dist), str(src)], env=_clean_env())
    (wheel,) = dist.glob("zeekml-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    inst = Installed(venv, tmp / "cwd")
    inst.workdir.mkdir()
    # Plain path lines only: the dependencies become importable, the .pth files there (the
    # editable zeekml's import hook among them) are not run.
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    deps = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"],
                                      sysconfig.get_paths()["platlib"], *user])
            if os.path.isdir(p)]
    (inst.site_packages() / "_zeekml_test_deps.pth").write_text("\n".join(deps) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(inst.python), "install", "--no-deps",
          "--no-index", "--ignore-installed", "-q", str(wheel)], env=_clean_env())
    return inst


def test_zeekml_imports_from_the_venv_not_the_checkout(installed):
    path = Path(installed.cli_python("import zeekml; print(zeekml.__file__)"))
    assert path.is_relative_to(installed.venv), path
    assert not path.resolve().is_relative_to(REPO)


def test_the_wheel_carries_the_shipped_models_byte_for_byte(installed):
    shipped = installed.site_packages() / "zeekml" / "_shipped" / "models"
    ours = sorted(p.parent.name for p in (REPO / "models").glob("*/manifest.json"))
    assert sorted(p.parent.name for p in shipped.glob("*/manifest.json")) == ours
    for name in ours:
        files = sorted(p.name for p in (REPO / "models" / name).iterdir() if p.is_file())
        match, mismatch, errors = filecmp.cmpfiles(REPO / "models" / name, shipped / name, files,
                                                   shallow=False)
        assert (mismatch, errors) == ([], []), name


def test_models_list_lists_the_shipped_models(installed):
    out = installed.zeekml("models", "list").stdout
    listed = sorted(line.split()[0] for line in out.splitlines() if line.strip())
    assert listed == sorted(p.parent.name for p in (REPO / "models").glob("*/manifest.json")), out


def test_score_uses_the_learned_detectors(installed):
    examples = installed.workdir / "examples"
    shutil.copytree(REPO / "examples", examples)
    installed.zeekml("score", str(examples), "--out", "out")
    summary = json.loads((installed.workdir / "out" / "summary.json").read_text())
    learned = set()
    for cfg in (REPO / "models").glob("*/config.json"):
        c = json.loads(cfg.read_text())
        if c.get("detector"):
            learned.add(c["kind"])
    assert learned, "the checkout ships no learned detector to look for"
    assert set(summary["thresholds"]) == {"iforest"} | learned, summary["thresholds"]


def test_zeek_package_path_is_the_installed_scripts(installed):
    path = Path(installed.zeekml("zeek-package", "--path").stdout.strip())
    assert path.is_relative_to(installed.venv.resolve()), path
    names = sorted(p.name for p in path.glob("*.zeek"))
    assert names == sorted(p.name for p in (REPO / "zeek-scripts" / "scripts").glob("*.zeek"))
    assert "__load__.zeek" in names

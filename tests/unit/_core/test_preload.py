"""Background imports (``zeekml._core.preload``): they land, a failing one is left to the caller,
and a ``zeekml score`` that fails while one is still running exits with its own code and one
line, never waiting for the import nor hanging on an import lock."""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zeekml._core import preload
from zeekml.pipeline.batch import detector_imports

ROOT = Path(__file__).resolve().parent.parent.parent.parent


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway modules; they are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("zk_preload_"):
            del sys.modules[name]


def test_modules_are_imported_in_the_background_and_waited_for(modules):
    (modules / "zk_preload_a.py").write_text("import time\ntime.sleep(0.2)\nVALUE = 41\n")
    (modules / "zk_preload_b.py").write_text("import zk_preload_a\nVALUE = zk_preload_a.VALUE + 1\n")
    p = preload.start_imports(["zk_preload_a", "zk_preload_b"])
    assert p is not None and p.modules == ("zk_preload_a", "zk_preload_b")
    preload.wait_started()
    assert p.wait(0) and not p.failed
    assert sys.modules["zk_preload_b"].VALUE == 42


@pytest.fixture
def gc_state():
    """The collector as the test found it, enabled and with nothing frozen by the test."""
    was = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_sleeps_through_the_imports_which_are_frozen_and_is_left_as_found(
        modules, gc_state, enabled):
    # torch's import set off gen-2 collections worth ~0.35 s of the preload thread's ~2.3 s
    (modules / "zk_preload_gc.py").write_text(
        "import gc\nDURING = gc.isenabled()\nCYCLE = []\nCYCLE.append(CYCLE)\n")
    (gc.enable if enabled else gc.disable)()
    frozen = gc.get_freeze_count()
    p = preload.start_imports(["zk_preload_gc"])
    assert p is not None and p.wait(10) and not p.failed
    assert sys.modules["zk_preload_gc"].DURING is False
    assert gc.isenabled() is enabled
    assert gc.get_freeze_count() > frozen


def test_nothing_to_import_starts_no_thread():
    assert preload.start_imports(["json", "sys"]) is None


def test_a_failing_import_is_left_to_the_caller(modules):
    (modules / "zk_preload_bad.py").write_text("raise RuntimeError('broken install')\n")
    (modules / "zk_preload_after.py").write_text("VALUE = 1\n")
    p = preload.start_imports(["zk_preload_bad", "zk_preload_after"])
    preload.wait_started()
    assert p.failed == {"zk_preload_bad": "RuntimeError: broken install"}
    assert "zk_preload_after" not in sys.modules      # stops at the first failure
    with pytest.raises(RuntimeError, match="broken install"):
        __import__("zk_preload_bad")                  # the caller's own import says why


def test_detector_imports():
    assert detector_imports(None) == ["sklearn.ensemble"]          # --no-models: no torch
    shipped = detector_imports("")
    assert shipped[:2] == ["sklearn.ensemble", "torch"]
    assert {"zeekml.nn.gnn", "zeekml.nn.mae", "zeekml.nn.moe"} <= set(shipped)
    assert "zeekml.nn.dense" not in shipped        # dense-base says "detector": false
    # a directory that cannot be read: torch only; loading the detectors says what is wrong
    assert detector_imports(str(ROOT / "no-such-models")) == ["sklearn.ensemble", "torch"]


# `zeekml score` with learned models on an input without conn records: the run fails after the
# background import started. The import here never ends (it waits on an event nobody sets), so
# a run that waited for it, or hung on its import lock, would time out.
PROBE = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {mods!r})
    import zeekml.pipeline.batch as batch
    batch.detector_imports = lambda models_dir: ["zk_preload_never"]
    start = batch.start_imports

    def start_and_see_it_run(modules):
        p = start(modules)
        while not os.path.exists({started!r}):    # the import is under way before the run goes on
            time.sleep(0.01)
        return p

    batch.start_imports = start_and_see_it_run
    from zeekml.cli import main
    main(sys.argv[1:])
""")


def test_a_run_that_fails_during_the_import_exits_at_once_with_its_own_error(tmp_path):
    mods, started = tmp_path / "mods", tmp_path / "started"
    mods.mkdir()
    (mods / "zk_preload_never.py").write_text(
        "import threading, pathlib\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "threading.Event().wait()\n")
    dns = tmp_path / "dns.log"
    dns.write_text("#separator \\x09\n#path\tdns\n#fields\tts\tuid\tquery\n#types\ttime\tstring\tstring\n"
                   "1.0\tCa\texample.com\n")
    res = subprocess.run([sys.executable, "-c", PROBE.format(mods=str(mods), started=str(started)), "score", str(dns),
                          "--out", str(tmp_path / "out"), "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "zeekml: error: no conn records in any input (Zeek conn.log or Suricata eve.json flows): "
        "nothing to score"), res.stderr



EXIT_PROBE = textwrap.dedent("""
    import atexit, gc, sys
    registered = []
    register = atexit.register
    atexit.register = lambda f, *a, **k: (registered.append(f), register(f, *a, **k))[1]
    from zeekml.cli import main
    for out in sys.argv[1:]:
        try:
            main(["score", "--no-models", {conn!r}, "--out", out, "--no-progress"])
        except SystemExit as e:
            assert not e.code, e.code
    assert registered.count(gc.freeze) == 1, registered
    print("ok")
""")


def test_score_freezes_the_collector_at_exit_once_per_process(tmp_path):
    """``zeekml score`` leaves the interpreter's shutdown nothing for the collector to walk
    (``cli.score.exit_without_gc_walk``): registered once however many runs."""
    probe = EXIT_PROBE.format(conn=str(ROOT / "examples" / "zeek" / "conn.log"))
    res = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "a"), str(tmp_path / "b")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr

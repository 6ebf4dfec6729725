"""Heavy imports started in a background thread, so that they overlap with work that needs none
of them (``zeekml score`` reads and parses its input while scikit-learn, torch and the model
code load).

Safe by construction, not by luck:

- the thread only imports; the caller waits for it (``wait_started``) before its own code
  imports any of those modules, so two threads never import the same package tree at once (the
  one way Python's per-module import locks can deadlock is two threads each holding a module
  the other one's import needs, which needs a cycle in the modules both are importing). One
  import does overlap: pyarrow's first conversion of a Python value (``pa.scalar``,
  ``pa.array``) imports pandas, which the reading thread may start while this one imports
  scikit-learn (which imports pandas too); one waits for the other, and there is no cycle:
  pandas imports neither scikit-learn nor torch;
- it is a daemon thread: a run that fails before it needs the modules (bad input) exits at
  once instead of waiting for torch to finish loading;
- an import that fails in the thread is only logged: the caller's own import of the module
  raises the real error where it is used, as it would without a preload.

The cyclic garbage collector sleeps while the thread imports, and what the imports made is then
frozen (``gc.freeze``): importing torch and scikit-learn allocates ~450k tracked objects and
little garbage (~8k objects), yet set off gen-2 collections worth ~0.35 s of the thread's
~2.3 s, and every later full collection would walk those objects again. The state the collector
was in is restored afterwards.
"""
from __future__ import annotations

import gc
import importlib
import logging
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

_started: list[Preload] = []
_lock = threading.Lock()


class Preload:
    """Import ``modules``, in order, in a daemon thread started at construction."""

    def __init__(self, modules: Iterable[str]):
        self.modules = tuple(modules)
        self.failed: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="zeekml-preload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for name in self.modules:
                try:
                    importlib.import_module(name)
                except BaseException as e:  # noqa: BLE001 - re-raised by the caller's own import
                    self.failed[name] = f"{type(e).__name__}: {e}"
                    log.debug("background import of %s failed (%s); left to the caller", name, e)
                    return
        finally:
            gc.freeze()
            if was_enabled:
                gc.enable()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every module is imported (or one failed); True when done."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def start_imports(modules: Iterable[str]) -> Preload | None:
    """Start importing ``modules`` (those not imported yet) in the background; None when there
    is nothing to import. ``wait_started`` waits for it."""
    import sys

    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return None
    p = Preload(todo)
    with _lock:
        _started.append(p)
    return p


def wait_started() -> None:
    """Wait for every import ``start_imports`` started in this process: call it before code
    that imports those modules itself (see the module docstring)."""
    with _lock:
        pending = list(_started)
        _started.clear()
    for p in pending:
        p.wait()

"""Checks the learned-detector tests share (imported as ``from checks import ...``; pytest puts
tests/ on sys.path for its conftest)."""
from __future__ import annotations

import numpy as np


def assert_same(got: np.ndarray, want: np.ndarray, avx2: bool) -> None:
    """Bit for bit on the x86-64 AVX2 kernels (``tests/conftest.py``), else within float32."""
    if avx2:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def count_embedded(det, monkeypatch) -> list[int]:
    """Rows asked of each call of ``det._reference_input`` from now on (a list that fills as it
    is called)."""
    calls: list[int] = []
    inner = det._reference_input

    def counting(t, r=None):
        calls.append(t.num_rows if r is None else len(r))
        return inner(t, r)

    monkeypatch.setattr(det, "_reference_input", counting)
    return calls


def run_watcher_in_thread(w, pool_seconds: float = 30.0):
    """Start ``w.run()`` (a ``Watcher``) in a thread and wait up to ``pool_seconds`` for its
    scoring processes; returns the thread and the list that collects what ``run`` raised."""
    import threading
    import time

    err: list[BaseException] = []

    def run():
        try:
            w.run()
        except BaseException as e:  # noqa: BLE001 - the test asserts on it
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + pool_seconds
    while w.pool is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return t, err

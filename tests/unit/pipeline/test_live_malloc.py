"""``watch``'s glibc tuning (``live.malloc``): which mmap threshold a watch runs with, what it does
to a release's big arrays, and the scoring processes giving a release's freed pages back."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from zeekml.pipeline.live import malloc
from zeekml.pipeline.live import pool as pool_module

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or malloc._MALLOC_TRIM is None,
                           reason="glibc's mallopt and malloc_trim")


REUSE = """
def reuse_faults():
    import resource
    import numpy as np
    a = np.ones(3 << 18, dtype=np.float32); del a        # the heap grown once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        a = np.ones(3 << 18, dtype=np.float32)             # 3 MiB, every page written
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


def _faults_of_reuse(threshold: int, trim: int | None = None) -> int:
    """Minor page faults of 20 rounds of a 3 MiB array allocated, written and freed, in a fresh
    process with ``threshold`` (and ``trim``) fixed (mallopt is process-wide and has no getter).
    3 MiB: numpy asks for transparent huge pages from 4 MiB on, which fault 2 MiB at a time."""
    code = REUSE + textwrap.dedent(f"""
        from zeekml.pipeline.live.malloc import fix_mmap_threshold
        fix_mmap_threshold({threshold}, trim={trim})
        print(reuse_faults())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc
def test_under_the_release_threshold_a_big_array_reuses_the_heap_instead_of_new_pages():
    # at 1 MiB each 3 MiB array is a new mapping, its 768 pages faulted in every round; as the
    # watcher sets it for releases, it comes from the heap the last one went back to
    window = _faults_of_reuse(malloc.WINDOW_MMAP_THRESHOLD)
    release = _faults_of_reuse(malloc.RELEASE_MMAP_THRESHOLD, trim=2 * malloc.RELEASE_MMAP_THRESHOLD)
    assert window >= 20 * 700
    assert release < 20 * 70


class _Scores:
    """A detector without a time context whose score is the conns' ``orig_bytes``."""

    name = "bytes"

    def score(self, table: pa.Table) -> np.ndarray:
        return np.asarray(table.column("orig_bytes").to_pylist(), dtype=float)


def test_a_scoring_process_gives_the_release_back_after_scoring_it(monkeypatch):
    trimmed = []
    seen = []

    class Watched(_Scores):
        def score(self, table):
            seen.append(len(trimmed))             # not trimmed while it scores
            return super().score(table)

    monkeypatch.setattr(pool_module, "trim_heap", lambda: trimmed.append(True))
    own = pa.table({"orig_bytes": [3, 5, 8]})
    raw, cpu = pool_module.score_release([_Scores(), Watched()], ([(0, None, None), (1, None, None)], own))
    assert raw["bytes"].tolist() == [3.0, 5.0, 8.0] and set(cpu) == {0, 1}
    assert seen == [0] and trimmed == [True]      # once, after the release's last detector


@glibc
def test_release_heap_sets_the_release_threshold_inside_and_the_window_one_after(monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "fix_mmap_threshold", lambda n, trim=None: calls.append((n, trim)))
    monkeypatch.setattr(malloc, "trim_heap", lambda: calls.append("trim"))
    with malloc.release_heap():
        calls.append("release")
    assert calls == [(malloc.RELEASE_MMAP_THRESHOLD, 2 * malloc.RELEASE_MMAP_THRESHOLD), "release",
                     "trim", (malloc.WINDOW_MMAP_THRESHOLD, malloc.DEFAULT_TRIM_THRESHOLD)]


@glibc
def test_a_scoring_process_scores_on_the_release_heap_whatever_the_watcher_has():
    # the watcher at the window threshold forks a scoring process; a detector that measures the
    # faults of reusing a 3 MiB array, scored there, finds the release heap
    code = REUSE + textwrap.dedent("""
        import numpy as np, pyarrow as pa
        from zeekml.pipeline import FittedDetectors
        from zeekml.pipeline.live.malloc import fix_mmap_threshold
        from zeekml.pipeline.live.pool import DetectorPool
        from zeekml.scoring.calibrate import ThresholdCalibrator

        class Faults:
            name, note = "faults", "ZeekML::Anomalous_Flow"
            def score(self, table):
                return np.full(table.num_rows, float(reuse_faults()))

        fix_mmap_threshold()                        # as the watcher runs
        fitted = FittedDetectors([Faults()], {"faults": ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0))},
                                 0.02, conn_seconds={"faults": 1.0})
        pool = DetectorPool(fitted, 1, rebalance=False)
        try:
            assert pool.owner == [0]
            rel = pool.submit(pa.table({"ts": [1.0, 2.0]}), list(fitted.detectors), fitted)
            print(int(pool.collect(rel)["faults"][0]), reuse_faults())
        finally:
            pool.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    there, here = map(int, out.stdout.split())
    assert here >= 20 * 700            # the watcher's own threshold: a new mapping every round
    assert there < 20 * 70


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RUSAGE_THREAD")
def test_thread_page_faults_counts_this_threads_fresh_pages_only():
    import mmap
    import threading

    def write_fresh_pages() -> int:
        """Faults of writing 768 pages of a new anonymous mapping (never resident before,
        whatever the heap holds)."""
        m = mmap.mmap(-1, 3 << 20)
        t0 = malloc.thread_page_faults()
        for at in range(0, 3 << 20, mmap.PAGESIZE):
            m[at] = 1
        faults = malloc.thread_page_faults() - t0
        m.close()
        return faults

    other = []
    assert write_fresh_pages() >= 700
    t0 = malloc.thread_page_faults()
    worker = threading.Thread(target=lambda: other.append(write_fresh_pages()))
    worker.start()
    worker.join()
    assert other[0] >= 700                            # counted in the thread that wrote them
    assert malloc.thread_page_faults() - t0 < 100     # ... and not in this one

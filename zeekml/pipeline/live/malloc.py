"""Memory tuning of the watch process (glibc): fixed mmap thresholds (windows, releases), heap
trimming, RSS."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from zeekml._core.heap import _MALLOC_TRIM, trim_heap  # noqa: F401 - watch's names for them

# The fixed mmap threshold of a watch whose detectors score windows as they come (no time
# context: the IsolationForest). glibc otherwise raises its threshold each time such a block is
# freed (up to 32 MiB), after which a window's big arrays (features of 40 000 conns: ~19 MB)
# land in the heap and fragment it: RSS crept ~15 MB over 2M records, and stays flat with the
# threshold fixed at 1 MiB (docs/results/watch.md, "RSS over time").
WINDOW_MMAP_THRESHOLD = 1 << 20

# ... and of one whose learned detectors score releases of a time context: glibc's largest
# fixed threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64 bits). A release's tensors and arrays of
# 1-32 MB (activations of 25,000 conns, a graph's index arrays) then come from the heap again
# instead of being mapped, faulted in page by page and unmapped each time: at 1 MiB the
# detectors spent about twice the CPU of the same releases at glibc's default (`python
# bench/watch.py --release-replay 5000 --releases 6`, one process, CPU s a release: gnn
# 2.35-2.47 against 1.0-1.6, mae 1.3-1.8 against 0.8-1.0, moe 1.3-1.5 against 0.7; 7.2M minor
# page faults against 0.6M, 18.9 s of system CPU against 3.4; docs/results/watch.md, "the heap
# of a release"). The heap's free top is kept up to twice that (``trim``, as glibc's own moving
# threshold keeps it); its freed pages go back after each release instead (``trim_heap``: in
# the scoring processes after each release, in the watcher at the end of ``release_heap``).
RELEASE_MMAP_THRESHOLD = 32 << 20
# glibc's trim threshold, which a fixed mmap threshold leaves as it is
DEFAULT_TRIM_THRESHOLD = 128 << 10


def fix_mmap_threshold(nbytes: int = WINDOW_MMAP_THRESHOLD, trim: int | None = None) -> None:
    """Blocks of ``nbytes`` and more always come from mmap and go back to the system when
    freed; smaller ones from the heap (glibc's ``M_MMAP_THRESHOLD``, which also stops glibc
    moving the threshold itself). ``trim``: the free top of the heap goes back to the system
    only past this many bytes (``M_TRIM_THRESHOLD``; None leaves glibc's 128 KiB, which then
    gives back a big block freed at the top at once, to be faulted in again by the next)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, nbytes)                          # M_MMAP_THRESHOLD
        if trim is not None:
            libc.mallopt(-1, trim)                        # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def thread_page_faults() -> int:
    """Minor page faults of the calling thread so far (``RUSAGE_THREAD``; 0 where the system
    has no such count): a page the heap gave back and a later allocation touched again."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    except (ImportError, AttributeError, OSError):
        return 0


def use_release_heap() -> None:
    """From now on, the heap as a learned detectors' release needs it: ``RELEASE_MMAP_THRESHOLD``,
    the free top kept up to twice that."""
    fix_mmap_threshold(RELEASE_MMAP_THRESHOLD, trim=2 * RELEASE_MMAP_THRESHOLD)


@contextlib.contextmanager
def release_heap() -> Iterator[None]:
    """The heap as a learned detectors' release needs it (``RELEASE_MMAP_THRESHOLD``, the free
    top kept up to twice that) while the block runs; after it the freed pages go back
    (``trim_heap``) and the window threshold is set again, so that what outlives a release in
    the watcher (the context's tables, the id filter) is laid out as before."""
    use_release_heap()
    try:
        yield
    finally:
        trim_heap()
        fix_mmap_threshold(WINDOW_MMAP_THRESHOLD, trim=DEFAULT_TRIM_THRESHOLD)

"""Memory tuning of the watch process (glibc): fixed mmap threshold, heap trimming, RSS."""
from __future__ import annotations

import os


def _libc_malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Blocks of ``nbytes`` and more always come from mmap and go back to the system when freed.
    glibc otherwise raises that threshold each time such a block is freed (up to 32 MiB), after
    which a window's big arrays (features of 40 000 conns: ~19 MB) land in the heap and fragment
    it: RSS crept ~15 MB over 2M records, and stays flat with the threshold fixed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0




def trim_heap() -> None:
    """Give the freed pages of the heap back to the system (glibc ``malloc_trim``): without it
    glibc keeps those of each window's arrays and RSS wanders 10-25 MB above the live size."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)

"""Giving the freed pages of the C heap back to the system (glibc ``malloc_trim``).

glibc keeps the pages of freed blocks below the heap's top, so a process that builds and drops
large arrays step after step (``watch``'s windows and releases, ``score``'s chunks) holds more
and more of them as its resident size though its live size stays flat. Elsewhere (musl, macOS)
there is nothing to call, and nothing is done."""
from __future__ import annotations


def _libc_malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def trim_heap() -> None:
    """Give the freed pages of the heap back to the system (glibc ``malloc_trim``): without it
    glibc keeps those of each window's arrays and RSS wanders 10-25 MB above the live size."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)

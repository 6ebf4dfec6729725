"""Whole writes: ``pwrite_all`` loops over short writes, ``atomic_write`` replaces or leaves alone."""
import os

import pytest

from zeekml._core.atomic import atomic_write, pwrite_all


def test_pwrite_all_finishes_short_writes_and_refuses_empty_ones(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        calls = []

        def two_bytes(fd, view, off):
            calls.append(off)
            return os.pwrite(fd, view[:2], off)

        pwrite_all(fd, b"abcde", 3, two_bytes)
        assert calls == [3, 5, 7] and os.pread(fd, 10, 0) == b"\0\0\0abcde"
        with pytest.raises(OSError, match="short write"):
            pwrite_all(fd, b"x", 0, lambda fd, view, off: 0)
    finally:
        os.close(fd)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "doc.json")
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert open(path, "rb").read() == b"new"

    def fails(fd, view):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"newer", write=fails)
    assert open(path, "rb").read() == b"new" and os.listdir(tmp_path) == ["doc.json"]

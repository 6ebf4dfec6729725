"""How ``DetectorPool`` hands a release to a scoring process (``live.pool.send_release``): the
tables (each detector's context, the release's own conns) as Arrow IPC streams in a memfd whose
descriptor is passed over the pipe, read there in place; only a small message is pickled."""
from __future__ import annotations

import pickle
import threading
from multiprocessing.connection import Pipe

import numpy as np
import pyarrow as pa
import pytest

from zeekml.pipeline.live import pool as pool_module
from zeekml.pipeline.live.pool import (pack_release, receive_release, send_release,
                                       unpack_release)


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"ts": pa.array(rng.random(n) * 1e9),
                     "id.orig_h": pa.array([f"10.0.{i % 256}.{i % 7}" for i in range(n)]),
                     "orig_bytes": pa.array(rng.integers(0, 1 << 40, n)),
                     "service": pa.array([None if i % 3 else "dns" for i in range(n)],
                                         pa.string())})


def _release():
    ctx_a, ctx_b, own = _table(50_000, 1), _table(7, 2), _table(1_000, 3)
    items = [(0, ctx_a, np.arange(10)), (2, None, None), (3, ctx_b, np.array([6]))]
    return items, own


def _same(got, want) -> None:
    (items, own), (items0, own0) = got, want
    assert own.equals(own0)
    for (i, ctx, pos), (i0, ctx0, pos0) in zip(items, items0, strict=True):
        assert i == i0
        assert (ctx is None and ctx0 is None) or ctx.equals(ctx0)
        assert (pos is None and pos0 is None) or np.array_equal(pos, pos0)


@pytest.mark.skipif(not pool_module.SHARED_TABLES, reason="no memfd_create here")
def test_a_release_travels_in_a_memfd_and_only_a_small_message_is_pickled():
    items, own = _release()
    msg, fd = pack_release(items, own)
    assert fd is not None
    # the 50,000-row context is ~2 MB; what is pickled names spans in the memfd
    assert len(pickle.dumps(msg)) < 2_000
    _same(unpack_release(msg, fd), (items, own))


@pytest.mark.skipif(not pool_module.SHARED_TABLES, reason="no memfd_create here")
def test_send_and_receive_a_release_over_the_scoring_processes_pipe():
    mine, theirs = Pipe()
    try:
        items, own = _release()
        send_release(mine, items, own)
        _same(receive_release(theirs, theirs.recv()), (items, own))
        # a release without tables (no context, no own conns) sends no descriptor
        send_release(mine, [(1, None, None)], None)
        assert receive_release(theirs, theirs.recv()) == ([(1, None, None)], None)
    finally:
        mine.close()
        theirs.close()


def test_without_memfd_the_tables_are_pickled_as_before(monkeypatch):
    monkeypatch.setattr(pool_module, "SHARED_TABLES", False)
    items, own = _release()
    msg, fd = pack_release(items, own)
    assert fd is None and msg == (items, own)
    mine, theirs = Pipe()
    got = []
    # pickled, the tables fill the pipe: read them as a scoring process would, meanwhile
    reader = threading.Thread(target=lambda: got.append(receive_release(theirs, theirs.recv())))
    reader.start()
    try:
        send_release(mine, items, own)
        reader.join(60)
        _same(got[0], (items, own))
    finally:
        mine.close()
        theirs.close()

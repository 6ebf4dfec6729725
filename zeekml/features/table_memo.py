"""Featurisation of one conn table computed once while a scope is open, shared by every
featuriser that asks for it.

``zeekml score`` fits and scores three learned detectors and the IsolationForest on the same two
tables (the baseline, the input) inside ``fit_calibrate``, and each featuriser used to start
again from the columns: the raw flow features of each table three times (IsolationForest, GNN,
autoencoder quantities), the host-history index and the per-conn host steps and token fields
once per model and per call (a piece of rows re-derived them over the whole table). Inside a
``scope()`` each of those is computed once per table object and handed out again, bit for bit
what the featuriser computes without it (tests/unit/features/test_table_memo.py).

The scope also lets ``zeekml score`` compute these before the models exist: none of them needs
torch or a model's config, so the pipeline builds them for the baseline and the input while the
background thread still imports torch and scikit-learn (``zeekml.pipeline.chunked``,
``prepare``).

Outside a scope nothing is kept (watch, dask workers, tests and training featurise as always).
Entries are keyed by the table object (held through a weak reference, so the memo never keeps a
table alive, and a new table at a recycled ``id`` is never served another's results) and a key
naming the computation; arrays handed out are read-only, so a caller that wrote into one would
fail at once instead of changing what the next featuriser gets. Every result is a pure
function of its table and key, so a scope opened by another thread (the scope is per process,
not per thread) can only share work, never change what a featuriser gets.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import TypeVar

import numpy as np
import pyarrow as pa

T = TypeVar("T")


class TableMemo:
    """Results per (table object, key). See the module docstring."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple[weakref.ref, dict[Hashable, object]]] = {}

    def get(self, table: pa.Table, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` for ``(table, key)``, computed on the first call and remembered."""
        entry = self._tables.get(id(table))
        if entry is None or entry[0]() is not table:
            # a table seen for the first time, or a new one at a dead table's id
            entry = (weakref.ref(table), {})
            self._tables[id(table)] = entry
        found = entry[1].get(key, _MISSING)
        if found is _MISSING:
            found = _read_only(compute())
            entry[1][key] = found
        return found   # type: ignore[return-value]

    def peek(self, table: pa.Table, key: Hashable) -> object | None:
        """What ``get`` computed for ``(table, key)``, or None when it has not (this table
        object, not an equal one)."""
        entry = self._tables.get(id(table))
        if entry is None or entry[0]() is not table:
            return None
        found = entry[1].get(key, _MISSING)
        return None if found is _MISSING else found

    def __getstate__(self) -> dict:
        # results belong to table objects of this process: a copy sent to another (a detector
        # holding one, pickled to a --dask worker) starts empty; weak references do not pickle
        return {}

    def __setstate__(self, state: dict) -> None:
        self._tables = {}

    def __len__(self) -> int:
        return sum(len(v) for ref, v in self._tables.values() if ref() is not None)

    def drop_dead(self) -> None:
        """Forget the results of tables no longer alive (a scope held open over many tables,
        ``pipeline.chunked``'s chunks, would otherwise keep every one's results to its end)."""
        for key in [k for k, (ref, _) in list(self._tables.items()) if ref() is None]:
            self._tables.pop(key, None)


_MISSING = object()
_lock = threading.Lock()
_active: list[TableMemo] = []


def _read_only(value: T) -> T:
    """``value`` with every numpy array in it (itself, in a list or tuple, in a dataclass's
    fields) made read-only."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, (list, tuple)):
        for v in value:
            _read_only(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _read_only(getattr(value, f.name))
    return value


@contextlib.contextmanager
def scope() -> Iterator[TableMemo]:
    """Share featurisation per table until the block ends (nested scopes share the outer one's
    memo); everything kept is dropped at the end."""
    with _lock:
        memo = _active[-1] if _active else TableMemo()
        _active.append(memo)
    try:
        yield memo
    finally:
        with _lock:
            _active.pop()


def drop_dead() -> None:
    """``TableMemo.drop_dead`` of the open scope's memo, if one is open."""
    with _lock:
        memo = _active[-1] if _active else None
    if memo is not None:
        memo.drop_dead()


def active() -> bool:
    """Whether a ``scope()`` is open."""
    return bool(_active)


def memoised(table: pa.Table, key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, shared for ``(table, key)`` while a ``scope()`` is open (computed each
    call otherwise)."""
    memo = _active[-1] if _active else None
    if memo is None:
        return compute()
    return memo.get(table, key, compute)

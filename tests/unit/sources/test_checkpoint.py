"""Checkpoints: atomic (temp file, fsync, rename, dir fsync), previous generation kept, damage
detected, a failed write (ENOSPC) leaves the old one intact."""
from __future__ import annotations

import errno
import os
import types

import pytest

import zeekml.sources.checkpoint as ckpt
from zeekml._core.zeek_format import ZeekHeader
from zeekml.sources.checkpoint import (Checkpoint, CheckpointError, CheckpointStore, FileState,
                                       header_from_dict, header_to_dict)


def _cp(offset: int) -> Checkpoint:
    return Checkpoint(files={"abc": FileState("abc", offset=offset, line=3, fmt="zeek-tsv",
                                              header=header_to_dict(ZeekHeader(separator=b"\t|")),
                                              tail="00ff", path="/x/conn.log")},
                      outputs={"verdicts.jsonl": offset * 2})


def test_round_trip_and_generations(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load().generation == 0 and store.load().files == {}
    store.commit(_cp(10))
    store.commit(_cp(20))
    cp = store.load()
    assert cp.generation == 2 and cp.files["abc"].offset == 20
    assert cp.outputs == {"verdicts.jsonl": 40}
    assert header_from_dict(cp.files["abc"].header).separator == b"\t|"
    prev = ckpt.decode(open(store.prev_path, "rb").read())
    assert prev.generation == 1 and prev.files["abc"].offset == 10
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "checkpoint.json.prev"]


@pytest.mark.parametrize("damage", [b"", b"{", b'{"format": "zeekml-checkpoint"}'])
def test_damaged_current_falls_back_to_previous(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    store.commit(_cp(10))
    store.commit(_cp(20))
    with open(store.path, "wb") as f:
        f.write(damage)
    assert store.load().files["abc"].offset == 10


def test_flipped_byte_is_detected(tmp_path):
    store = CheckpointStore(tmp_path)
    store.commit(_cp(10))
    store.commit(_cp(20))
    data = bytearray(open(store.path, "rb").read())
    i = data.index(b'"offset":20') + 10
    data[i] = ord("9")
    open(store.path, "wb").write(bytes(data))
    assert store.load().files["abc"].offset == 10


def test_enospc_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.commit(_cp(10))
    before = open(store.path, "rb").read()
    fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake.path = os.path

    def full(fd, data):
        os.write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    fake.write = full
    monkeypatch.setattr(ckpt, "os", fake)
    cp = _cp(30)
    with pytest.raises(CheckpointError, match="No space left"):
        store.commit(cp)
    monkeypatch.setattr(ckpt, "os", os)
    assert open(store.path, "rb").read() == before
    assert cp.generation == 0                    # not advanced by the failed commit
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert store.load().files["abc"].offset == 10


def test_unknown_fields_are_ignored_when_loading():
    fs = FileState.from_dict({"content_id": "x", "offset": 5, "future_field": 1})
    assert fs.offset == 5


def test_completed_ids_move_to_the_ledger_and_stay_known(tmp_path):
    store = CheckpointStore(tmp_path)
    cp = _cp(1)
    cp.done = {f"id{i}" for i in range(10)}
    store.commit(cp)
    assert not os.path.exists(store.ledger_path)         # few: kept in the checkpoint itself
    cp.done |= {f"id{i}" for i in range(10, 200)}
    store.commit(cp)
    assert os.path.exists(store.ledger_path)
    body = ckpt.decode(open(store.path, "rb").read())
    assert body.done == set()                            # the checkpoint stays small
    cp.done.add("late")
    store.commit(cp)
    again = CheckpointStore(tmp_path).load()
    assert again.done == {f"id{i}" for i in range(200)} | {"late"}
    assert again.files["abc"].offset == 1

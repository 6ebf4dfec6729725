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


# -- hand-edited checkpoints (issue 17): validated on load, a clear message, a sane recovery ----

def _write_edited(store: CheckpointStore, **edits) -> None:
    """A checkpoint as a person with an editor (and sha256sum) would leave it: checksum valid."""
    good = _cp(10)
    other = FileState("def", offset=7, line=1, fmt="zeek-json", path="/x/other.log")
    st = good.files["abc"]
    for k, v in edits.items():
        setattr(st, k, v)
    good.files["def"] = other
    os.makedirs(store.directory, exist_ok=True)
    with open(store.path, "wb") as f:
        f.write(ckpt.encode(good))


@pytest.mark.parametrize("edits,what", [
    ({"offset": -5}, "offset -5"), ({"offset": "abc"}, "offset 'abc'"),
    ({"offset": True}, "offset True"), ({"offset": 2 ** 63}, "offset 9223372036854775808"),
    ({"line": -1}, "line -1"), ({"header": {"separator": "zz"}}, "header is damaged"),
    ({"complete": "yes"}, "complete 'yes'"), ({"fmt": 3}, "fmt 3"),
])
def test_damaged_file_entry_is_reread_from_the_start(tmp_path, caplog, edits, what):
    store = CheckpointStore(tmp_path)
    _write_edited(store, **edits)
    cp = store.load()
    assert cp.files["abc"] == FileState("abc", path="/x/conn.log")   # from the start
    assert cp.files["def"].offset == 7                                # the rest stands
    assert cp.outputs == {"verdicts.jsonl": 20}
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert store.path in msg and "/x/conn.log" in msg and what in msg and "from its start" in msg


@pytest.mark.parametrize("outputs", [{"verdicts.jsonl": -1}, {"verdicts.jsonl": "abc"}])
def test_damaged_output_lengths_fall_back_to_the_previous_generation(tmp_path, outputs):
    store = CheckpointStore(tmp_path)
    store.commit(_cp(10))
    store.commit(_cp(20))
    cp = _cp(30)
    cp.outputs = outputs
    with open(store.path, "wb") as f:
        f.write(ckpt.encode(cp))
    assert store.load().files["abc"].offset == 10


def test_offset_past_the_end_of_its_file_rereads_it(tmp_path, caplog):
    log_path = tmp_path / "conn.log"
    log_path.write_bytes(b'{"ts":1.0}\n{"ts":2.0}\n')
    from zeekml.sources.fingerprint import fingerprint_file
    cid = fingerprint_file(str(log_path)).content_id
    store = CheckpointStore(tmp_path / "out")
    cp = Checkpoint(files={
        cid: FileState(cid, offset=10 ** 18, line=2, fmt="zeek-json", tail="00", path=str(log_path)),
        "gone": FileState("gone", offset=10 ** 18, path=str(tmp_path / "gone.log")),
        "elsewhere": FileState("elsewhere", offset=10 ** 18, path=str(log_path)),
    })
    store.commit(cp)
    loaded = store.load()
    assert loaded.files[cid] == FileState(cid, fmt="zeek-json", path=str(log_path))
    # a file that is gone, or whose path now holds other content, is the tailer's to judge
    assert loaded.files["gone"].offset == 10 ** 18 and loaded.files["elsewhere"].offset == 10 ** 18
    assert "lies past its end (22 bytes)" in caplog.text and str(log_path) in caplog.text


def test_offset_within_a_gzip_archive_is_not_judged_by_its_compressed_size(tmp_path):
    import gzip
    log_path = tmp_path / "conn.log.gz"
    log_path.write_bytes(gzip.compress(b'{"ts":1.0}\n' * 1000))
    from zeekml.sources.fingerprint import fingerprint_file
    cid = fingerprint_file(str(log_path)).content_id
    store = CheckpointStore(tmp_path / "out")
    store.commit(Checkpoint(files={cid: FileState(cid, offset=11_000, path=str(log_path)),
                                   "x": FileState("x")}))
    assert store.load().files[cid].offset == 11_000
    store.commit(Checkpoint(files={cid: FileState(cid, offset=10 ** 18, path=str(log_path))}))
    assert store.load().files[cid].offset == 0

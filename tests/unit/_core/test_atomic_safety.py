"""Atomic replacement and planted links: temporary files have unpredictable names created with
O_EXCL, a link at the target is replaced (never written through), modes are 0640 or the one the
file already had."""
from __future__ import annotations

import os
import stat

import pytest

from zeekml._core import atomic
from zeekml._core.atomic import atomic_write, atomic_write_held, create_temp
from zeekml.sources.checkpoint import Checkpoint, CheckpointStore

SECRET = b"root's secret\n"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    return path


def test_temp_names_are_unpredictable_and_not_the_pid(tmp_path):
    names = set()
    for _ in range(5):
        name, fd = create_temp(str(tmp_path / "calibration.json"))
        os.close(fd)
        names.add(os.path.basename(name))
    assert len(names) == 5
    assert all(n.startswith("calibration.json.") and n.endswith(".tmp") for n in names)
    assert not any(str(os.getpid()) in n.split(".")[2] for n in names)


def test_predictable_temp_names_planted_as_links_are_left_alone(tmp_path, victim):
    # what an attacker could plant before: <name>.<pid>.tmp pointing at a file of theirs choosing
    path = tmp_path / "calibration.json"
    (tmp_path / f"calibration.json.{os.getpid()}.tmp").symlink_to(victim)
    atomic_write(str(path), b"{}\n")
    assert path.read_bytes() == b"{}\n" and victim.read_bytes() == SECRET


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path, victim):
    path = tmp_path / "summary.json"
    path.symlink_to(victim)
    atomic_write(str(path), b"new")
    assert not path.is_symlink() and path.read_bytes() == b"new"
    assert victim.read_bytes() == SECRET


def test_create_temp_never_opens_an_existing_name(tmp_path, victim, monkeypatch):
    # the random part is forced to collide with a planted link: O_EXCL refuses it, a new name
    # is drawn
    tokens = iter(["planted", "fresh"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    (tmp_path / "f.planted.tmp").symlink_to(victim)
    name, fd = create_temp(str(tmp_path / "f"))
    os.close(fd)
    assert name.endswith("f.fresh.tmp") and victim.read_bytes() == SECRET


def test_new_files_are_0640_and_a_chosen_mode_survives_rewrites(tmp_path):
    path = str(tmp_path / "verdicts.log")
    old = os.umask(0o022)
    try:
        atomic_write(path, b"1")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        os.chmod(path, 0o644)          # e.g. so that a zeek user outside the group reads it
        atomic_write(path, b"2")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    finally:
        os.umask(old)


def test_atomic_write_held_returns_the_published_file(tmp_path):
    path = str(tmp_path / "v.log")
    fd, st = atomic_write_held(path, b"data")
    try:
        assert os.fstat(fd).st_ino == st.st_ino == os.stat(path).st_ino
        assert os.pread(fd, 10, 0) == b"data"
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["v.log"]


def test_checkpoint_temp_file_is_not_the_predictable_one(tmp_path, victim):
    (tmp_path / f"checkpoint.json.{os.getpid()}.tmp").symlink_to(victim)
    store = CheckpointStore(tmp_path)
    store.commit(Checkpoint())
    store.commit(Checkpoint())
    assert victim.read_bytes() == SECRET
    assert store.load().generation == 2
    assert not [n for n in os.listdir(tmp_path)
                if n.endswith(".tmp") and not os.path.islink(tmp_path / n)]

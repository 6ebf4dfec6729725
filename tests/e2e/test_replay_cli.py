"""``zeekml replay`` end to end through click's CliRunner (built-in engine; CI has no Zeek)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.parse import read_table

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "zeek-btest", "Traces")
WIKI = os.path.join(DATA, "wikipedia.pcap")


def test_replay_builtin_writes_conn_and_flow_logs(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out), "--engine", "builtin", "--no-score"])
    assert r.exit_code == 0, r.output
    assert "engine: builtin" in r.output
    conn = read_table([str(out / "conn.log")])
    assert conn.num_rows == 34
    assert set(conn.column("proto").to_pylist()) == {"tcp", "udp"}
    flows = read_table([str(out / "zeekml_flow.log")])
    assert flows.num_rows == 34
    assert sorted(flows.column("uid").to_pylist()) == sorted(conn.column("uid").to_pylist())
    text = (out / "conn.log").read_text()
    assert "#path\tconn" in text and text.rstrip().splitlines()[-1].startswith("#close")


def test_replay_json(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out), "--engine", "builtin",
                                  "--no-score", "--json", "--flow-packets", "4"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "conn.log").read_text().splitlines()]
    assert len(rows) == 34
    s0 = next(x for x in rows if x["conn_state"] == "S0")
    assert "duration" not in s0 and "id.orig_h" in s0 and isinstance(s0["ts"], float)
    flows = [json.loads(line) for line in (out / "zeekml_flow.log").read_text().splitlines()]
    assert max(f["n_pkts"] for f in flows) == 4


def test_replay_then_score(tmp_path):
    out = tmp_path / "out"
    # 34 conns: --fpr 0.1, as the default 0.001 is refused for a 10-conn baseline
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out), "--engine", "builtin",
                                  "--fpr", "0.1", "--conn-notices"])
    assert r.exit_code == 0, r.output
    assert (out / "verdicts.jsonl").exists() and (out / "zeekml_notice.log").exists()
    assert (out / "zeekml_incident.log").exists()


def test_damaged_capture_exit_code_and_packet_number(tmp_path):
    bad = tmp_path / "cut.pcap"
    data = open(WIKI, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", str(bad), "--out", str(out), "--engine", "builtin",
                                  "--no-score"])
    assert r.exit_code == 4, r.output
    assert "packet " in r.output and "truncated" in r.output
    assert read_table([str(out / "conn.log")]).num_rows > 0


def test_missing_input_and_unavailable_zeek(tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["replay", str(tmp_path / "nope.pcap"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    monkeypatch.setenv("PATH", str(tmp_path))  # no zeek here
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(tmp_path / "o"), "--engine", "zeek"])
    assert r.exit_code == 7, r.output
    assert "builtin" in r.output


def test_engine_zeek_runs_zeek_in_a_temp_dir(tmp_path, monkeypatch):
    """A stand-in ``zeek`` on PATH: we check the command line and that its logs are collected."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    baseline = os.path.join(os.path.dirname(DATA), "Baseline", "opt.basic", "conn.log")
    fake = bindir / "zeek"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"$@\" > {tmp_path}/args\n"
                    f"pwd > {tmp_path}/cwd\n"
                    f"cp {baseline} conn.log\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out), "--no-score",
                                  "--flow-packets", "8"])
    assert r.exit_code == 0, r.output
    assert "engine: zeek" in r.output
    args = (tmp_path / "args").read_text()
    assert "-r " + os.path.abspath(WIKI) in args and "ZeekML::flow_packets=8" in args
    assert "zeek-scripts" in args
    assert "-C" not in args.split()  # Zeek's default: checksums validated
    assert (tmp_path / "cwd").read_text().strip() != str(out)  # ran in a temporary directory
    assert (out / "conn.log").read_text() == open(baseline).read()
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(tmp_path / "out2"), "--no-score",
                                  "--ignore-checksums"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "args").read_text().split()[0] == "-C"
    # a link planted where Zeek's conn.log is copied to is refused, its target untouched
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out3 = tmp_path / "out3"
    out3.mkdir()
    (out3 / "conn.log").symlink_to(victim)
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out3), "--no-score"])
    assert r.exit_code == 6, r.output
    assert "conn.log" in r.output and "Traceback" not in r.output
    assert victim.read_text() == "precious\n"


def test_builtin_validates_checksums_unless_ignored(tmp_path):
    """mpls-in-vlan.pcap's IPv4 header checksums are bad: Zeek 8.2.2 (default) made no
    connection of it (weird bad_IP_checksum), and with -C three."""
    trace = os.path.join(DATA, "mpls-in-vlan.pcap")
    r = CliRunner().invoke(main, ["replay", trace, "--out", str(tmp_path / "a"), "--engine",
                                  "builtin", "--no-score"])
    assert r.exit_code == 0, r.output
    assert "packets: 3  connections: 0  bad checksums: 3 (--ignore-checksums" in r.output
    assert read_table([str(tmp_path / "a" / "conn.log")]).num_rows == 0
    r = CliRunner().invoke(main, ["replay", trace, "--out", str(tmp_path / "b"), "--engine",
                                  "builtin", "--no-score", "--ignore-checksums"])
    assert r.exit_code == 0, r.output
    assert "bad checksums" not in r.output
    assert read_table([str(tmp_path / "b" / "conn.log")]).num_rows == 3


@pytest.mark.skipif(shutil.which("zeek") is None, reason="zeek not installed")
def test_engine_zeek_when_installed(tmp_path):  # pragma: no cover - CI has no zeek
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(out), "--engine", "zeek", "--no-score"])
    assert r.exit_code == 0, r.output
    assert read_table([str(out / "conn.log")]).num_rows == 34


def test_hostile_pcap_never_crashes(tmp_path):
    """Random, truncated and length-lying frames, IP fragments, then a record cut short."""
    import random
    import struct

    rng = random.Random(7)
    wiki = open(WIKI, "rb").read()
    frames, off = [], 24
    while off + 16 <= len(wiki):
        caplen = struct.unpack_from("<I", wiki, off + 8)[0]
        frames.append(wiki[off + 16:off + 16 + caplen])
        off += 16 + caplen
    out = bytearray(wiki[:24])
    for i in range(3000):
        f = bytearray(rng.choice(frames))
        kind = i % 4
        if kind == 0:
            f = f[:rng.randrange(len(f) + 1)]
        elif kind == 1 and len(f) > 18:
            f[16:18] = struct.pack("!H", rng.randrange(65536))  # IPv4 total length lies
        elif kind == 2 and len(f) > 22:
            f[20:22] = struct.pack("!H", 0x2000 | rng.randrange(8192))  # fragments
        else:
            for _ in range(4):
                f[rng.randrange(len(f))] = rng.randrange(256)
        out += struct.pack("<IIII", 1300475167 + i, 0, len(f), len(f) + rng.randrange(3)) + bytes(f)
    out += struct.pack("<IIII", 1300480000, 0, 500, 500) + b"\x00" * 10  # truncated last record
    p = tmp_path / "hostile.pcap"
    p.write_bytes(bytes(out))
    r = CliRunner().invoke(main, ["replay", str(p), "--out", str(tmp_path / "o"), "--engine",
                                  "builtin", "--no-score"])
    assert r.exit_code == 4, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "packet 3001" in r.output
    assert read_table([str(tmp_path / "o" / "conn.log")]).num_rows > 0


MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "models")


@pytest.mark.skipif(not os.path.exists(os.path.join(MODELS, "gnn-base", "config.json")),
                    reason="models/gnn-base not shipped")
def test_replay_scores_with_the_learned_detectors_on_the_device_given(tmp_path, monkeypatch):
    """replay scores as ``zeekml score`` does: the shipped learned detectors, on ``--device``."""
    import torch

    import zeekml.pipeline.fitted as fitted

    def run(out, *args):
        r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(tmp_path / out), "--engine",
                                      "builtin", "--fpr", "0.1", *args])
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / out / "verdicts.jsonl").read_text().splitlines()[0])["scores"]

    assert {"iforest", "gnn", "mae"} <= run("cpu", "--device", "cpu").keys()
    assert run("iforest", "--no-models").keys() == {"iforest"}

    # the device reaches the detectors: with a (pretended) GPU, --device auto asks for cuda
    devices = []
    load = fitted.load_model_detectors  # the one loader of the detectors the pipeline calls
    monkeypatch.setattr(fitted, "load_model_detectors",
                        lambda models_dir, device: devices.append(device) or load(models_dir, "cpu"))
    judge = fitted.baseline_judge       # and the baseline check's classifier
    monkeypatch.setattr(fitted, "baseline_judge", lambda options, check=None: devices.append(
        options.device) or judge(dataclasses.replace(options, device="cpu"), check))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run("auto", "--device", "auto")
    assert devices == ["cuda", "cuda"]


@pytest.mark.parametrize("command", ["replay", "score"])
def test_device_cuda_without_cuda_is_a_one_line_error(tmp_path, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    src = WIKI if command == "replay" else os.path.join(DATA, "..", "Baseline", "opt.basic", "conn.log")
    r = CliRunner().invoke(main, [command, src, "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)   # no traceback
    assert r.output.splitlines() == ["zeekml: error: --device cuda was asked for but torch sees no "
                                     "CUDA device here; use --device cpu (or auto: CUDA when present)"]
    assert not (tmp_path / "o" / "conn.log").exists()  # stopped before reading the capture

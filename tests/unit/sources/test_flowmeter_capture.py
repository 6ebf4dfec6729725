"""Capture reading: pcap (usec/nsec, both byte orders), pcapng, damaged files reported by packet."""
from __future__ import annotations

import io
import os
import struct

import dpkt
import pytest

from zeekml._core.errors import InputNotFound
from zeekml.pipeline.replay import replay_builtin
from zeekml.sources.pcap import CaptureError, iter_capture

A, B = "10.0.0.1", "192.0.2.7"


def ip4(src, dst, proto, payload):
    import socket
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def udp(sport, dport, data=b""):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def eth(ip):
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip


def frames(n=5):
    return [(1000.0 + i * 0.25, eth(ip4(A, B, 17, udp(5000, 53 if i % 2 else 6000, b"q" * i))))
            for i in range(n)]


def pcap_bytes(pkts, le=True, nsec=False, linktype=1):
    e = "<" if le else ">"
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, f in pkts:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nsec else 1e6))
        out += struct.pack(e + "IIII", sec, frac, len(f), len(f)) + f
    return out


@pytest.mark.parametrize("le", [True, False])
@pytest.mark.parametrize("nsec", [True, False])
def test_pcap_variants(tmp_path, le, nsec):
    p = tmp_path / "x.pcap"
    p.write_bytes(pcap_bytes(frames(), le=le, nsec=nsec))
    got = list(iter_capture(str(p)))
    assert [(round(t, 6), lt) for t, _, lt in got] == [(round(t, 6), 1) for t, _ in frames()]
    assert [f for _, f, _ in got] == [f for _, f in frames()]


def test_pcapng(tmp_path):
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf, linktype=1)
    for ts, f in frames():
        w.writepkt(f, ts=ts)
    p = tmp_path / "x.pcapng"
    p.write_bytes(buf.getvalue())
    got = list(iter_capture(str(p)))
    assert len(got) == 5 and got[2][0] == pytest.approx(1000.5) and got[0][2] == 1


@pytest.mark.parametrize("cut", [5, 24 + 10, 24 + 16 + 20, None])
def test_truncated_capture_reports_packet_number_after_processing_earlier_packets(tmp_path, cut):
    data = pcap_bytes(frames())
    if cut is None:  # bogus captured length in the 3rd record header
        rec = 24
        for _ in range(2):
            caplen = struct.unpack_from("<I", data, rec + 8)[0]
            rec += 16 + caplen
        data = data[:rec + 8] + struct.pack("<I", 0x7FFFFFF0) + data[rec + 12:]
        expect_pkt, expect_done = 3, 2
    else:
        data = data[:-cut] if cut < 24 else data[:len(data) - cut]
        expect_done = None
    p = tmp_path / "bad.pcap"
    p.write_bytes(data)
    seen = []
    with pytest.raises(CaptureError) as ei:
        for t, f, lt in iter_capture(str(p)):
            seen.append(t)
    assert ei.value.packet is not None and f"packet {ei.value.packet}" in str(ei.value)
    assert ei.value.packet == len(seen) + 1
    if expect_done is not None:
        assert (ei.value.packet, len(seen)) == (expect_pkt, expect_done)
    out = tmp_path / "out"
    os.makedirs(out)
    res = replay_builtin([str(p)], str(out))
    assert res.error is not None and res.packets == len(seen)
    assert (out / "conn.log").read_text().count("\n") >= 8  # header + the rows read so far


def test_not_a_capture_and_missing_file(tmp_path):
    p = tmp_path / "x.pcap"
    p.write_bytes(b"hello world, not a pcap")
    with pytest.raises(CaptureError):
        list(iter_capture(str(p)))
    with pytest.raises(InputNotFound):
        list(iter_capture(str(tmp_path / "nope.pcap")))

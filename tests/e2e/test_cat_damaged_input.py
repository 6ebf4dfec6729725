"""`zeekml cat` on damaged input, as a user runs it (a real process, real standard input): a cut
or damaged gzip gives its records before the damage and one error line, exit 4, whether it is
named or piped in; nothing read is left unmentioned."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.resp_h\tproto\tconn_state\n"
          b"#types\ttime\tstring\taddr\taddr\tenum\tstring\n")


def records(n: int, first: int = 0) -> bytes:
    return b"".join(b"%d.5\tC%d\t10.0.0.1\t10.0.0.2\ttcp\tSF\n" % (1_700_000_000 + i, i)
                    for i in range(first, first + n))


def cat(*args: str, stdin: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "zeekml", "cat", *args]
    if stdin is None:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    with open(stdin, "rb") as f:
        return subprocess.run(command, stdin=f, capture_output=True, timeout=120)


def cut_gzip(path: Path) -> int:
    """A gzip of 20,000 records cut in half; how many whole records zlib can still give."""
    whole = gzip.compress(HEADER + records(20_000))
    cut = whole[: len(whole) // 2]
    path.write_bytes(cut)
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)
    return text[: text.rfind(b"\n") + 1].count(b"\n") - HEADER.count(b"\n")


def damaged_gzip(path: Path) -> int:
    """A gzip whose deflate data is destroyed after 5,000 records (a reserved block type)."""
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = c.compress(HEADER + records(5_000)) + c.flush(zlib.Z_FULL_FLUSH)
    tail = bytearray(c.compress(records(5_000, 5_000)) + c.flush())
    tail[0] = 0x07
    path.write_bytes(head + bytes(tail))
    return 5_000


@pytest.mark.parametrize("make", [cut_gzip, damaged_gzip], ids=["cut", "damaged"])
def test_stdin_reads_a_damaged_gzip_as_a_named_file_does(tmp_path, make):
    path = tmp_path / "conn.log.gz"
    kept = make(path)
    named = cat(str(path), "-f", "uid")
    piped = cat("-", "-f", "uid", stdin=path)
    for r in (named, piped):
        assert r.returncode == 4, r.stderr
        lines = r.stdout.decode().splitlines()
        assert len(lines) == kept and json.loads(lines[-1]) == {"uid": f"C{kept - 1}"}
        err = r.stderr.decode().splitlines()
        assert len(err) == 1 and "archive ends early or is damaged" in err[0], err
        assert "Traceback" not in r.stderr.decode() and "Aborted" not in r.stderr.decode()
    assert piped.stdout == named.stdout
    assert piped.stderr.decode() == named.stderr.decode().replace(str(path), "<stdin>", 1)


def test_records_quarantined_before_the_damage_are_reported(tmp_path):
    path = tmp_path / "conn.log.gz"
    whole = gzip.compress(HEADER + b"not a record\n" + records(20_000))
    path.write_bytes(whole[: len(whole) // 2])
    r = cat(str(path), "-f", "uid")
    assert r.returncode == 4
    assert "1 malformed record(s) quarantined" in r.stderr.decode()


def test_eve_events_not_printed_are_counted(tmp_path):
    flow = {"timestamp": "2021-06-06T15:59:46.457984+0200", "flow_id": 5, "event_type": "flow",
            "src_ip": "10.0.0.1", "src_port": 5000, "dest_ip": "10.0.0.2", "dest_port": 53,
            "proto": "UDP", "flow": {"pkts_toserver": 1, "pkts_toclient": 1,
                                     "bytes_toserver": 60, "bytes_toclient": 90,
                                     "start": "2021-06-06T15:59:46.457984+0200",
                                     "end": "2021-06-06T15:59:46.500000+0200"}}
    dns = {"timestamp": "2021-06-06T15:59:46.457984+0200", "event_type": "dns",
           "src_ip": "10.0.0.1", "dest_ip": "10.0.0.2", "proto": "UDP"}
    tls = dict(dns, event_type="tls")
    path = tmp_path / "eve.json"
    path.write_text("".join(json.dumps(e) + "\n" for e in (dns, flow, dns, tls)))
    r = cat(str(path), "-f", "ts")
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 1
    assert r.stderr.decode().splitlines() == [
        f"zeekml: {path}: 3 Suricata event(s) other than flow and alert not printed "
        "(dns: 2, tls: 1)"]

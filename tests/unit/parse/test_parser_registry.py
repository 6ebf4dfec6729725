"""``make_parser``: the one format -> parser registry of read_log, the tail and the Dask reader."""
import pytest

from zeekml._core.errors import UnknownFormat
from zeekml._core.zeek_format import ZeekHeader
from zeekml.parse import FORMATS, Quarantine, make_parser

SAMPLES = {
    "zeek-tsv": b"#separator \\x09\n#fields\tts\tuid\n#types\ttime\tstring\n1.5\tCa\n",
    "zeek-csv": b"ts,uid,id.orig_h\n1.5,Ca,10.0.0.1\n",
    "zeek-json": b'{"ts":1.5,"uid":"Ca"}\n',
    "suricata-eve": b'{"timestamp":"2024-01-01T00:00:00.000000+0000","event_type":"dns"}\n',
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_has_a_parser_that_reads_its_sample(fmt):
    q = Quarantine()
    p = make_parser(fmt, "sample", q)
    rows = sum(b.num_rows for b in [*p.feed(SAMPLES[fmt]), *p.finish()])
    assert q.count == 0
    assert rows == 1   # eve: the dns event is a row of its own (other, not conn) batch


def test_resume_arguments_reach_the_parser():
    h = ZeekHeader()
    p = make_parser("zeek-tsv", "x", Quarantine(), max_line_bytes=100, start_offset=7,
                    start_line=3, header=h)
    assert (p.max_line_bytes, p.offset, p.line_no, p.header) == (100, 7, 3, h)


def test_unknown_format_and_misplaced_header_are_errors():
    with pytest.raises(UnknownFormat, match="unknown format 'pcap'"):
        make_parser("pcap", "x", Quarantine())
    with pytest.raises(ValueError, match="only for Zeek TSV"):
        make_parser("zeek-json", "x", Quarantine(), header=ZeekHeader())

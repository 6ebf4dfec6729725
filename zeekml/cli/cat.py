"""``zeekml cat``: records as typed JSON lines, like zeek-cut for analysts."""
from __future__ import annotations

import gzip
import json
import sys
from typing import IO, Iterator

import click

from zeekml.parse import Quarantine, read_log
from zeekml.parse.batch import LogBatch
from zeekml.parse.reader import CHUNK_BYTES, GZIP_MAGIC, detect_format, make_parser

STDIN_NAME = "<stdin>"


def json_value(v):
    """Typed JSON value: bytes as text; bytes that are not UTF-8 stay lossless as the
    surrogate escapes Python's ``surrogateescape`` gives (``\\udcff`` for byte 0xff)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, list):
        return [json_value(x) for x in v]
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return v


def read_stream(stream: IO[bytes], quarantine: Quarantine,
                name: str = STDIN_NAME) -> Iterator[LogBatch]:
    """The records of a non-seekable byte stream (stdin), as ``read_log`` reads a file: the
    format is detected from the first 64 KiB, gzip by its magic; memory stays bounded."""
    head = stream.read(2)
    if head == GZIP_MAGIC:
        # GzipFile needs the magic back: chain what was read with the rest of the stream
        stream = gzip.GzipFile(fileobj=_Prefixed(head, stream), mode="rb")
        head = b""
    while len(head) < 64 << 10:
        more = stream.read((64 << 10) - len(head))
        if not more:
            break
        head += more
    parser = make_parser(detect_format(name, head), name, quarantine)
    yield from parser.feed(head)
    while data := stream.read(CHUNK_BYTES):
        yield from parser.feed(data)
    yield from parser.finish()


class _Prefixed:
    """A read-only stream: ``prefix`` then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: IO[bytes]):
        self.prefix, self.stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            out, self.prefix = (self.prefix, b"") if n < 0 or n >= len(self.prefix) else \
                (self.prefix[:n], self.prefix[n:])
            return out
        return self.stream.read(n)


@click.command("cat")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--fields", "-f", default=None, help="Comma-separated columns to print, in order.")
@click.option("--path", "log_path", default=None, help="Only records of this #path (e.g. conn).")
def cat(files: tuple[str, ...], fields: str | None, log_path: str | None) -> None:
    """Print the records of Zeek/Suricata logs as JSON lines (time as float seconds, counts as
    ints, sets as lists, unset as null). Malformed records are reported on stderr.
    A FILE of ``-`` reads standard input (plain or gzip)."""
    wanted = [f.strip() for f in fields.split(",")] if fields else None
    q = Quarantine()
    out = sys.stdout
    for path in files:
        batches = read_stream(sys.stdin.buffer, q) if path == "-" else read_log(path, q)
        for b in batches:
            if log_path and b.log_path != log_path:
                continue
            names = b.batch.schema.names
            cols = [b.batch.column(n).to_pylist() for n in names]
            for i in range(b.num_rows):
                if wanted:
                    rec = {n: json_value(cols[names.index(n)][i]) if n in names else None
                           for n in wanted}
                else:
                    rec = {n: json_value(c[i]) for n, c in zip(names, cols)}
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
    if q.count:
        for r in q.records[:10]:
            click.echo(f"zeekml: quarantined {r.describe()}", err=True)
        click.echo(f"zeekml: {q.count} malformed record(s) quarantined", err=True)


COMMANDS = [cat]

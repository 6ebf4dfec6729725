"""``zeekml cat``: records as typed JSON lines, like zeek-cut for analysts."""
from __future__ import annotations

import collections
import json
import sys
from typing import IO, Iterator

import click

from zeekml.parse import Quarantine, read_log
from zeekml.parse.batch import LogBatch
from zeekml.parse.gzstream import GzipStream
from zeekml.parse.suricata_eve import is_other_event_batch
from zeekml.parse.reader import (ARCHIVE_ERRORS, CHUNK_BYTES, GZIP_MAGIC, damaged_input,
                                 detect_format, make_parser)

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
    format is detected from the first 64 KiB, gzip by its magic; memory stays bounded. A cut or
    damaged gzip yields its records before the damage, then raises ``UnreadableInput``, as
    ``read_log`` does for a file."""
    head = stream.read(2)
    if head == GZIP_MAGIC:
        # the reader of files, so that stdin keeps what a damaged archive held before its damage
        stream = GzipStream(_Prefixed(head, stream), name)
        head = b""
    damage: Exception | None = None
    try:
        while len(head) < 64 << 10:
            more = stream.read((64 << 10) - len(head))
            if not more:
                break
            head += more
    except ARCHIVE_ERRORS as e:
        damage = e      # the whole lines of ``head`` before it are still records
    parser = make_parser(detect_format(name, head), name, quarantine)
    yield from parser.feed(head)
    try:
        while damage is None and (data := stream.read(CHUNK_BYTES)):
            yield from parser.feed(data)
    except ARCHIVE_ERRORS as e:
        damage = e
    yield from parser.finish()
    if damage is not None:
        raise damaged_input(damage, parser) from damage


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

    def close(self) -> None:
        """Standard input stays open: it is not ours to close."""


@click.command("cat")
# readable=False: a file without read permission is the reader's one-line error, exit 4
# (unreadable input), not click's usage error, exit 2
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, readable=False))
@click.option("--fields", "-f", default=None, help="Comma-separated columns to print, in order.")
@click.option("--path", "log_path", default=None, help="Only records of this #path (e.g. conn).")
def cat(files: tuple[str, ...], fields: str | None, log_path: str | None) -> None:
    """Print the records of Zeek/Suricata logs as JSON lines (time as float seconds, counts as
    ints, sets as lists, unset as null). Malformed records are reported on stderr.
    A FILE of ``-`` reads standard input (plain or gzip)."""
    wanted = [f.strip() for f in fields.split(",")] if fields else None
    q = Quarantine()
    out = sys.stdout
    try:
        for path in files:
            batches = read_stream(sys.stdin.buffer, q) if path == "-" else read_log(path, q)
            not_printed: collections.Counter[str] = collections.Counter()
            try:
                for b in batches:
                    if is_other_event_batch(b):
                        # eve events other than flows and alerts carry nothing but their type
                        not_printed.update(b.batch.column("event_type").to_pylist())
                        continue
                    if log_path and b.log_path != log_path:
                        continue
                    _write_records(out, b, wanted)
            finally:
                # said also when the file fails later, so that no record goes unmentioned
                if not_printed:
                    kinds = ", ".join(f"{k}: {n:,}" for k, n in not_printed.most_common())
                    click.echo(f"zeekml: {STDIN_NAME if path == '-' else path}: "
                               f"{sum(not_printed.values()):,} Suricata event(s) other than flow "
                               f"and alert not printed ({kinds})", err=True)
    finally:
        if q.count:
            for r in q.records[:10]:
                click.echo(f"zeekml: quarantined {r.describe()}", err=True)
            click.echo(f"zeekml: {q.count} malformed record(s) quarantined", err=True)


def _write_records(out: IO[str], b: LogBatch, wanted: list[str] | None) -> None:
    """The rows of ``b`` as JSON lines: every column, or the ``wanted`` ones in order."""
    names = b.batch.schema.names
    cols = [b.batch.column(n).to_pylist() for n in names]
    for i in range(b.num_rows):
        if wanted:
            rec = {n: json_value(cols[names.index(n)][i]) if n in names else None
                   for n in wanted}
        else:
            rec = {n: json_value(c[i]) for n, c in zip(names, cols)}
        out.write(json.dumps(rec, separators=(",", ":")) + "\n")


COMMANDS = [cat]

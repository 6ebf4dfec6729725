"""Open a log file of any supported format (plain or gzip) and stream its batches."""
from __future__ import annotations

import gzip
import json
import os
import zlib
from typing import IO, Iterable, Iterator

import pyarrow as pa

from zeekml._core.errors import InputNotFound, UnknownFormat, UnreadableInput
from zeekml._core.zeek_format import ZeekHeader
from zeekml.parse.batch import LogBatch
from zeekml.parse.lines import LineFeeder
from zeekml.parse.reject import Quarantine
from zeekml.parse.suricata_eve import SuricataEveParser
from zeekml.parse.zeek_json import ZeekJsonParser
from zeekml.parse.zeek_tsv import ZeekTsvParser
from zeekml.parse.gzstream import GzipStream

CHUNK_BYTES = 4 << 20
GZIP_MAGIC = b"\x1f\x8b"

FORMATS = ("zeek-tsv", "zeek-csv", "zeek-json", "suricata-eve")

ARCHIVE_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)
"""What reading a damaged or cut archive (``GzipStream``) or a failing stream raises."""


def open_binary(path: str) -> IO[bytes]:
    """Open ``path`` for reading, transparently gunzipping ``.gz`` content (found by magic)."""
    if not os.path.exists(path):
        raise InputNotFound("no such file", path)
    if os.path.isdir(path):
        raise UnreadableInput("is a directory", path)
    try:
        f = open(path, "rb")
        magic = f.read(2)
        f.seek(0)
    except OSError as e:
        raise UnreadableInput(f"cannot open: {e.strerror}", path) from e
    if magic == GZIP_MAGIC:
        return GzipStream(f, path)  # yields the records before any damage, as zcat does
    return f


def detect_format(path: str, head: bytes | None = None) -> str:
    """One of ``FORMATS``, from the first bytes of the (uncompressed) file."""
    if head is None:
        with open_binary(path) as f:
            try:
                head = f.read(64 << 10)
            except (OSError, EOFError, zlib.error) as e:
                raise UnreadableInput(f"unreadable archive: {e}", path) from e
    if head.startswith(b"#") and (b"#separator" in head[:4096] or b"#fields" in head[:4096]):
        return "zeek-tsv"  # btest baselines put a `### BTest ...` line before the header
    first = head.split(b"\n", 1)[0].strip()
    if first.startswith(b"{"):
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):  # a hostile first line nested thousands deep
            obj = None
        if isinstance(obj, dict):
            if "event_type" in obj:
                return "suricata-eve"
            return "zeek-json"
        # a first line cut by the 64 KiB head, or malformed: decide by keys seen in it
        if b'"event_type"' in first:
            return "suricata-eve"
        return "zeek-json"
    if b"," in first:
        names = first.split(b",")
        if b"ts" in names and (b"id.orig_h" in names or b"uid" in names):
            return "zeek-csv"
    if not head:
        return "zeek-tsv"  # empty file: reads as no records
    raise UnknownFormat("not a Zeek TSV/JSON/CSV log or a Suricata eve.json file", path)


PARSERS: dict[str, tuple[type[LineFeeder], dict]] = {
    "zeek-tsv": (ZeekTsvParser, {}),
    "zeek-csv": (ZeekTsvParser, {"csv": True}),
    "zeek-json": (ZeekJsonParser, {}),
    "suricata-eve": (SuricataEveParser, {}),
}
"""Format (``FORMATS``) -> parser class and its fixed keyword arguments."""


def make_parser(fmt: str, path: str, quarantine: Quarantine, *,
                max_line_bytes: int | None = None, start_offset: int = 0, start_line: int = 0,
                header: ZeekHeader | None = None) -> LineFeeder:
    """The incremental parser of format ``fmt`` (one of ``FORMATS``) for ``path``: the one
    registry that ``read_log``, the live tail and the Dask reader use.

    Args:
        fmt: the format, as ``detect_format`` names it.
        path: the file (named in quarantined records and errors).
        quarantine: where malformed records go.
        max_line_bytes: longer lines are quarantined (default: the parsers' 1 MiB).
        start_offset: byte offset of the first byte fed (resuming a file; default 0).
        start_line: line number of the first line fed (default 0).
        header: Zeek TSV only: the header in force at ``start_offset`` (default: none yet).
    """
    try:
        cls, kwargs = PARSERS[fmt]
    except KeyError:
        raise UnknownFormat(f"unknown format {fmt!r}", path) from None
    kwargs = dict(kwargs, start_offset=start_offset, start_line=start_line)
    if max_line_bytes is not None:
        kwargs["max_line_bytes"] = max_line_bytes
    if header is not None:
        if cls is not ZeekTsvParser:
            raise ValueError(f"a header is only for Zeek TSV, not {fmt}")
        kwargs["header"] = header
    return cls(path, quarantine, **kwargs)


def read_log(path: str | os.PathLike, quarantine: Quarantine | None = None,
             fmt: str | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LogBatch]:
    """Stream the records of one file as ``LogBatch``es, in file order.

    Memory stays bounded by ``chunk_bytes`` plus the parser's line cap. A gzip archive that
    ends early (still being written, or damaged) yields what it held, then raises
    ``UnreadableInput``.
    """
    path = os.fspath(path)
    q = quarantine if quarantine is not None else Quarantine()
    parser = make_parser(fmt or detect_format(path), path, q)
    with open_binary(path) as f:
        while True:
            try:
                data = f.read(chunk_bytes)
            except ARCHIVE_ERRORS as e:
                yield from parser.finish()
                raise damaged_input(e, parser) from e
            if not data:
                break
            yield from parser.feed(data)
        yield from parser.finish()


def damaged_input(error: Exception, parser: LineFeeder) -> UnreadableInput:
    """The one-line error for input that failed after ``parser`` was given (and finished) every
    whole line before the damage: names the file and the byte its kept records end at."""
    return UnreadableInput(f"archive ends early or is damaged ({error}); "
                           f"kept the records before byte {parser.consumed_offset}", parser.source)


def read_table(paths: Iterable[str | os.PathLike] | str | os.PathLike,
               quarantine: Quarantine | None = None, log_path: str | None = None) -> pa.Table:
    """All records of ``paths`` (of one log kind) in one table; columns are unified by name.

    ``log_path`` keeps only batches of that Zeek ``#path`` (e.g. ``"conn"``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    tables = []
    for p in paths:
        for b in read_log(p, quarantine):
            if log_path is None or b.log_path == log_path or not b.log_path:
                tables.append(pa.Table.from_batches([b.batch]))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")

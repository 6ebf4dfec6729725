"""``zeekml cat``: records as typed JSON lines, like zeek-cut for analysts."""
from __future__ import annotations

import json
import sys

import click

from zeekml.parse import Quarantine, read_log


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


@click.command("cat")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--fields", "-f", default=None, help="Comma-separated columns to print, in order.")
@click.option("--path", "log_path", default=None, help="Only records of this #path (e.g. conn).")
def cat(files: tuple[str, ...], fields: str | None, log_path: str | None) -> None:
    """Print the records of Zeek/Suricata logs as JSON lines (time as float seconds, counts as
    ints, sets as lists, unset as null). Malformed records are reported on stderr."""
    wanted = [f.strip() for f in fields.split(",")] if fields else None
    q = Quarantine()
    out = sys.stdout
    for path in files:
        for b in read_log(path, q):
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

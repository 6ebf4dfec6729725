"""Batch archives: files, directories of rotated logs and ``.gz`` archives, in a stable order.

Reading a ``.gz`` as far as it decompresses is ``zeekml.parse.gzstream.GzipStream`` (the parser
side opens files, and sources import parse, not the reverse).
"""
from __future__ import annotations

import logging
import os
import re
import stat
from typing import Iterable

from zeekml._core.errors import InputNotFound

log = logging.getLogger(__name__)

# In a directory we take the logs that hold conn records: Zeek's conn logs in every rotation
# layout (conn.log, conn.2024-01-01-10-00-00.log, conn-24-01-01_10.00.00.log,
# conn.10:00:00-11:00:00.log.gz, conn__<open>__<close>__.log) and Suricata's eve files.
CONN_NAME = re.compile(r"^(conn[._\-].*|eve.*\.json(\.gz)?|.*suricata.*\.json(\.gz)?|.*labeled.*)$")
SKIP_SUFFIXES = (".pcap", ".pcapng", ".trace", ".md", ".txt", ".config", ".tmp", ".part")


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files named directly, plus the conn-record logs found under directories (recursively).

    Raises ``InputNotFound`` for a path that does not exist. Directory contents are sorted by
    path, which orders Zeek's rotated files by their timestamps. Under a directory, anything
    that is not a regular file (a FIFO, a socket, a device) is skipped with a warning and never
    opened: opening a FIFO blocks until someone writes to it.
    """
    out: list[str] = []
    seen: set[str] = set()
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            raise InputNotFound("no such file or directory", p)
        if os.path.isdir(p):
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in filenames:
                    if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                        continue
                    if CONN_NAME.match(name):
                        full = os.path.join(dirpath, name)
                        if is_regular_file(full):
                            found.append(full)
            files = sorted(found)
        else:
            files = [p]
        for f in files:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def is_regular_file(path: str) -> bool:
    """Whether ``path`` is (or links to) a regular file; warns naming anything else."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        log.warning("%s: skipped: %s", path, e.strerror)
        return False
    if stat.S_ISREG(mode):
        return True
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    log.warning("%s: skipped: %s, not a log file", path, kind)
    return False

"""Batch archives: files, directories of rotated logs and ``.gz`` archives, in a stable order."""
from __future__ import annotations

import os
import re
from typing import Iterable

from zeekml._core.errors import InputNotFound

# In a directory we take the logs that hold conn records: Zeek's conn logs in every rotation
# layout (conn.log, conn.2024-01-01-10-00-00.log, conn-24-01-01_10.00.00.log,
# conn.10:00:00-11:00:00.log.gz, conn__<open>__<close>__.log) and Suricata's eve files.
CONN_NAME = re.compile(r"^(conn[._\-].*|eve.*\.json(\.gz)?|.*suricata.*\.json(\.gz)?|.*labeled.*)$")
SKIP_SUFFIXES = (".pcap", ".pcapng", ".trace", ".md", ".txt", ".config", ".tmp", ".part")


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files named directly, plus the conn-record logs found under directories (recursively).

    Raises ``InputNotFound`` for a path that does not exist. Directory contents are sorted by
    path, which orders Zeek's rotated files by their timestamps.
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
                        found.append(os.path.join(dirpath, name))
            files = sorted(found)
        else:
            files = [p]
        for f in files:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out

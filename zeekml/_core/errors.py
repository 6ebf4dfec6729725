"""Domain exceptions. Library code raises these; only ``cli.py`` turns them into exit codes."""
from __future__ import annotations

import os


class ZeekmlError(Exception):
    """Base error carrying the file and line it is about, so messages can name them."""

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        return where + self.message


class InputNotFound(ZeekmlError):
    """A path given by the user does not exist."""

    exit_code = 2


class UnknownFormat(ZeekmlError):
    """A file is neither Zeek TSV, Zeek JSON nor Suricata eve.json."""

    exit_code = 3


class UnreadableInput(ZeekmlError):
    """A file exists but cannot be read (permissions, corrupt gzip, ...)."""

    exit_code = 4


class ModelError(ZeekmlError):
    """Weights missing, corrupt (sha256 mismatch) or built for another feature schema."""

    exit_code = 5


class OutputError(ZeekmlError):
    """An output cannot be written (disk full, permissions)."""

    exit_code = 6

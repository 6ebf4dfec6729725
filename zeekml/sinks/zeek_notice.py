"""``zeekml_notice.log``: alerts in the columns of Zeek's notice.log, plus ``score``, ``model`` and
``community_id`` (the conn's Community ID v1, the column Corelight's Zeek plugin adds to notice.log,
so a SIEM joins a notice to the same flow in Zeek's and Suricata's logs)."""
from __future__ import annotations

import os

from zeekml._core.zeek_format import format_header, format_record
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.zeek_log import ZeekLogWriter

NOTICE_FILE = "zeekml_notice.log"
NOTICE_LOG_PATH = "zeekml_notice"

NOTICE_FIELDS: list[tuple[str, str]] = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("fuid", "string"),
    ("file_mime_type", "string"), ("file_desc", "string"), ("proto", "enum"), ("note", "enum"),
    ("msg", "string"), ("sub", "string"), ("src", "addr"), ("dst", "addr"), ("p", "port"),
    ("n", "count"), ("peer_descr", "string"), ("actions", "set[enum]"),
    ("email_dest", "set[string]"), ("suppress_for", "interval"), ("score", "double"),
    ("model", "string"), ("community_id", "string"),
]
_NAMES = [n for n, _ in NOTICE_FIELDS]
_TYPES = [t for _, t in NOTICE_FIELDS]


class NoticeWriter:
    """Writes alerting verdicts as Zeek notices (``#path zeekml_notice``) to ``path``, or with
    ``path=None`` keeps the lines in memory (``take_lines``; ``header()`` for a new file) for a
    caller that writes them itself (``zeekml watch`` appends them with its checkpoint)."""

    def __init__(self, path: str | os.PathLike | None, suppress_for: float = 3600.0):
        self.suppress_for = suppress_for
        self.path = os.fspath(path) if path is not None else None
        self._log = ZeekLogWriter(path, NOTICE_LOG_PATH, NOTICE_FIELDS) if path is not None else None
        self._lines: list[bytes] = []
        self._count = 0

    @property
    def count(self) -> int:
        """Notices written."""
        return self._log.count if self._log is not None else self._count

    @staticmethod
    def header() -> bytes:
        """The header lines a new ``zeekml_notice.log`` starts with (``#open``: now)."""
        return format_header(NOTICE_LOG_PATH, _NAMES, _TYPES)

    def _record(self, v: Verdict) -> dict:
        return {
            "ts": v.ts, "uid": v.uid, "id.orig_h": v.orig_h, "id.orig_p": v.orig_p,
            "id.resp_h": v.resp_h, "id.resp_p": v.resp_p, "proto": v.proto, "note": v.note,
            "msg": v.msg, "sub": v.sub, "src": v.orig_h, "dst": v.resp_h, "p": v.resp_p,
            "peer_descr": "zeekml", "actions": ["Notice::ACTION_LOG"],
            "suppress_for": self.suppress_for, "score": v.score, "model": v.model,
            "community_id": v.community_id,
        }

    def line(self, v: Verdict) -> bytes:
        """The notice line of one alerting verdict, not written (``write_line`` writes it)."""
        rec = self._record(v)
        return format_record((rec.get(n) for n in _NAMES), _TYPES)

    def write_line(self, line: bytes) -> None:
        """Write one notice line made by ``line``."""
        if self._log is not None:
            self._log.write_line(line)
        else:
            self._lines.append(line)
            self._count += 1

    def write(self, v: Verdict) -> None:
        """Write one alerting verdict as a notice."""
        self.write_line(self.line(v))

    def take_lines(self) -> bytes:
        """In-memory mode: the lines written since the last call, joined."""
        data, self._lines = b"".join(self._lines), []
        return data

    def close(self) -> None:
        """Write ``#close`` and close the file (nothing in memory mode)."""
        if self._log is not None:
            self._log.close()

"""``zeekml_notice.log``: alerts in the columns of Zeek's notice.log, plus ``score`` and ``model``."""
from __future__ import annotations

import os

from zeekml.scoring.verdict import Verdict
from zeekml.sinks.zeek_log import ZeekLogWriter

NOTICE_FIELDS: list[tuple[str, str]] = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("fuid", "string"),
    ("file_mime_type", "string"), ("file_desc", "string"), ("proto", "enum"), ("note", "enum"),
    ("msg", "string"), ("sub", "string"), ("src", "addr"), ("dst", "addr"), ("p", "port"),
    ("n", "count"), ("peer_descr", "string"), ("actions", "set[enum]"),
    ("email_dest", "set[string]"), ("suppress_for", "interval"), ("score", "double"),
    ("model", "string"),
]


class NoticeWriter:
    """Writes alerting verdicts as Zeek notices (``#path zeekml_notice``)."""

    def __init__(self, path: str | os.PathLike, suppress_for: float = 3600.0):
        self.suppress_for = suppress_for
        self._log = ZeekLogWriter(path, "zeekml_notice", NOTICE_FIELDS)

    @property
    def count(self) -> int:
        return self._log.count

    def write(self, v: Verdict) -> None:
        self._log.write({
            "ts": v.ts, "uid": v.uid, "id.orig_h": v.orig_h, "id.orig_p": v.orig_p,
            "id.resp_h": v.resp_h, "id.resp_p": v.resp_p, "proto": v.proto, "note": v.note,
            "msg": v.msg, "sub": v.sub, "src": v.orig_h, "dst": v.resp_h, "p": v.resp_p,
            "peer_descr": "zeekml", "actions": ["Notice::ACTION_LOG"],
            "suppress_for": self.suppress_for, "score": v.score, "model": v.model,
        })

    def close(self) -> None:
        self._log.close()

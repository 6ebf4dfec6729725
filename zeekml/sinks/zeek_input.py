"""The verdict file that Zeek's Input framework reads (``zeek-scripts/scripts/verdicts.zeek``).

zeekml keeps its recent verdicts in one Zeek-format TSV file (``#path zeekml_verdicts``), keyed
by ``verdict_id``. Zeek reads it as a table in ``REREAD`` mode: when the file's inode or mtime
changes, Zeek re-reads the whole file and raises ``Input::EVENT_NEW`` only for ids it has not
seen, so each verdict becomes exactly one ``NOTICE``.

That only works if Zeek never sees a half-written file, so :class:`VerdictFeedbackWriter`
writes the WHOLE file to a temporary file in the same directory, fsyncs it, renames it over
the old one (atomic on POSIX) and fsyncs the directory. The set of verdicts in the file is
bounded (the last ``max_verdicts``, none older than ``max_age`` seconds) so the file and each
re-read stay small.

Every rewrite must also LOOK changed to Zeek. Its Ascii reader in REREAD mode compares only
``(st_ino, st_mtime)`` with what it saw last, and ``st_mtime`` there is whole seconds. A rename
gives a fresh inode, but once the old file is unlinked the file system may hand its inode
number to the next temporary file: two rewrites within one second then alternate between two
inode numbers and can repeat a pair Zeek saw, so Zeek skips the new verdicts. The writer
therefore keeps every file it published open (read-only) until the file system clock has moved
past that file's mtime second: a held inode number cannot be reused, and once the second has
passed, a new file has another mtime. No published ``(inode, mtime second)`` pair repeats.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import os
import stat
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

from zeekml._core.atomic import atomic_write_held
from zeekml._core.errors import OutputError
from zeekml._core.zeek_format import (DEFAULT_SEPARATOR, ZeekHeader, apply_meta_line, format_close,
                                      format_header, format_value, parse_field,
                                      parse_separator_line)

log = logging.getLogger(__name__)

VERDICT_LOG_PATH = "zeekml_verdicts"
"""The ``#path`` of the verdict file."""

VERDICT_FIELDS: list[tuple[str, str]] = [
    ("verdict_id", "string"),
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
    ("note", "string"),
    ("score", "double"),
    ("model", "string"),
    ("msg", "string"),
    ("sub", "string"),
]
"""``(name, Zeek type)`` in column order. ``verdict_id`` is the ``ZeekML::VerdictIdx`` record,
the rest the ``ZeekML::Verdict`` record of verdicts.zeek; a test keeps them equal."""

TRANSPORT_PROTOS = ("tcp", "udp", "icmp", "unknown_transport")
"""Zeek's ``transport_proto`` enum values: the only values Zeek accepts in ``proto``."""

# the fields of a ``scoring.verdict.Verdict`` a verdict file row is made of
_VERDICT_ROW = ("alert", "verdict_id", "model", "uid", "ts", "orig_h", "orig_p", "resp_h",
                "resp_p", "proto", "note", "score", "msg", "sub")

INCIDENT_LOG_PATH = "zeekml_incidents"
"""The ``#path`` of the incident file."""

INCIDENT_FIELDS: list[tuple[str, str]] = [
    ("incident_id", "string"),
    ("ts", "time"),
    ("last_ts", "time"),
    ("host", "addr"),
    ("role", "string"),
    ("uid", "string"),
    ("p", "port"),
    ("proto", "enum"),
    ("conns", "count"),
    ("alerts", "count"),
    ("peers", "count"),
    ("score", "double"),
    ("model", "string"),
    ("msg", "string"),
    ("sub", "string"),
]
"""``(name, Zeek type)`` in column order. ``incident_id`` is the ``ZeekML::IncidentIdx`` record,
the rest the ``ZeekML::Incident`` record of verdicts.zeek (a test keeps them equal): ``ts`` and
``last_ts`` its first and last alert, ``host`` and ``role`` (``orig``: the host started the conns,
``resp``: it received them), ``uid`` its top conn, ``p``/``proto`` its most alerted responder
port, ``conns``/``alerts``/``peers`` its counts, ``score`` its rank score, ``model`` its detectors,
``msg`` its description and ``sub`` the line ``zeekml_incident.log`` has as ``sub``."""


class InputFileWriter:
    """Keeps recent rows of a Zeek Input-framework table file and rewrites the file atomically
    when they change (the rules of the module docstring). Subclasses say what a row is.

    Args:
        path: the file.
        max_rows: keep at most this many rows, the most recently added (default 10000).
        max_age: drop rows added more than this many seconds ago (default 3600.0; ``None`` =
            no age limit). Zeek re-raises nothing for a dropped row.
        clock: wall clock in seconds, for tests (default ``time.time``).

    If ``path`` already holds a file of the same layout (zeekml restarted), its rows are kept, so
    rows added again after a restart keep their keys and Zeek does not raise them twice.
    """

    log_path = ""
    """The ``#path`` of the file."""
    fields: list[tuple[str, str]] = []
    """``(name, Zeek type)`` in column order; the first column is the table's index."""
    what = "row"
    """What a row is, for messages."""

    def __init__(self, path: str | os.PathLike, max_rows: int = 10000,
                 max_age: float | None = 3600.0, clock: Callable[[], float] = time.time):
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = os.fspath(path)
        self.max_rows = max_rows
        self.max_age = max_age
        self.clock = clock
        self.skipped = 0
        self._skipped_reported = 0
        self.writes = 0
        self._names = [n for n, _ in self.fields]
        self._types = [t for _, t in self.fields]
        # key -> (time added, formatted line), oldest first; a row added since the last render
        # holds its column values instead, formatted when first rendered: of a run's many
        # alerts only the last ``max_rows`` stay, and the rest are never formatted
        self._entries: OrderedDict[str, tuple[float, bytes | list[Any]]] = OrderedDict()
        self._dirty = False
        # descriptors of the files published (and the one found at start), with their mtime
        # second, held until a newer file has a later mtime second (module docstring)
        self._held: list[tuple[int, int]] = []
        self._hold_existing()
        self._load_existing()

    def _row(self, item: Any) -> tuple[str, list[Any] | None] | None:
        """``(key, column values)`` of ``item``; values ``None``: Zeek would reject the line;
        ``None``: not for Zeek at all (not counted as skipped)."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    # the row set

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def add(self, item: Any) -> bool:
        """Add one row; returns ``True`` if its key is new (a key already kept is left as it is)."""
        row = self._row(item)
        if row is None:
            return False
        key, values = row
        if key in self._entries:
            return False
        if values is None:
            self.skipped += 1
            log.debug("%s %s cannot be read by Zeek; not sent", self.what, key)
            return False
        self._entries[key] = (self.clock(), values)
        self._dirty = True
        self._prune()
        return True

    def add_many(self, items: Iterable[Any]) -> int:
        """Add rows; returns how many were new."""
        return sum(1 for v in items if self.add(v))

    def write(self, items: Iterable[Any]) -> int:
        """Add rows and rewrite the file if anything changed; returns how many were new."""
        n = self.add_many(items)
        self.flush()
        self.report_skipped()
        return n

    def report_skipped(self) -> None:
        """Warn once about the rows skipped since the last report."""
        if self.skipped > self._skipped_reported:
            log.warning("%s: %d %ss Zeek could not read (no valid address, port or time) were "
                        "not sent to Zeek", self.path, self.skipped - self._skipped_reported,
                        self.what)
            self._skipped_reported = self.skipped

    def _prune(self) -> bool:
        changed = False
        while len(self._entries) > self.max_rows:
            self._entries.popitem(last=False)
            changed = True
        if self.max_age is not None:
            cutoff = self.clock() - self.max_age
            while self._entries:
                key, (added, _) = next(iter(self._entries.items()))
                if added >= cutoff:
                    break
                del self._entries[key]
                changed = True
        if changed:
            self._dirty = True
        return changed

    # -----------------------------------------------------------------------------------------
    # the file

    def render(self) -> bytes:
        """The whole file as it would be written now."""
        now = self.clock()
        for key in [k for k, (_, line) in self._entries.items() if not isinstance(line, bytes)]:
            added, values = self._entries[key]
            self._entries[key] = (added, _format_line(values, self._types))
        return (format_header(self.log_path, self._names, self._types, open_ts=now)
                + b"".join(line for _, line in self._entries.values())
                + format_close(now))

    def flush(self, force: bool = False) -> bool:
        """Rewrite the file if the row set changed (or ``force``); returns whether it did.

        Temp file in the same directory, fsync, atomic rename, directory fsync: a reader sees
        the old file or the new one, never a part. Raises ``OutputError`` on failure (the old
        file is then untouched).
        """
        self._prune()
        if not (self._dirty or force):
            return False
        try:
            fd, st = atomic_write_held(self.path, self.render())
        except OSError as e:
            raise OutputError(f"cannot write the {self.what} file: {e.strerror}", self.path) from e
        self._hold(fd, int(st.st_mtime))
        self._dirty = False
        self.writes += 1
        return True

    def ensure_exists(self) -> bool:
        """Write the file (header only if no rows) when there is none, so that Zeek's stream
        finds a file from the start; returns whether it wrote."""
        if os.path.exists(self.path):
            return False
        return self.flush(force=True)

    def _hold(self, fd: int, mtime_s: int) -> None:
        """Keep ``fd`` open; release the files of earlier mtime seconds: their inode numbers
        may be reused from now on, but never with their old mtime second."""
        keep = []
        for held_fd, held_s in self._held:
            if held_s < mtime_s:
                os.close(held_fd)
            else:
                keep.append((held_fd, held_s))
        self._held = keep + [(fd, mtime_s)]

    def _hold_existing(self) -> None:
        """A file left by an earlier run is held too: Zeek may have seen it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            self._held.append((fd, int(st.st_mtime)))
        else:
            os.close(fd)

    def release(self) -> None:
        """Close the held files (``close`` does it after the last write)."""
        for fd, _ in self._held:
            os.close(fd)
        self._held = []

    def close(self) -> None:
        """Write what changed, then release the held files. While the process lives on after
        that, a later writer of the same path starts over from what it finds."""
        try:
            self.flush()
        finally:
            self.release()

    def __del__(self) -> None:
        # descriptors are not left open by a writer dropped without close()
        for fd, _ in getattr(self, "_held", ()):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "InputFileWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_existing(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
            header, rows, lines = _read(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("%s: not a %s file we can read (%s); starting empty", self.path,
                        self.what, e)
            return
        if header.fields != self._names or header.types != self._types:
            log.warning("%s: %s file of another layout; starting empty", self.path, self.what)
            return
        key_name = self._names[0]
        for row, line in zip(rows, lines):
            key = row.get(key_name)
            if isinstance(key, bytes) and key:
                self._entries[key.decode("utf-8", "surrogateescape")] = (mtime, line)
        self._prune()


class VerdictFeedbackWriter(InputFileWriter):
    """Keeps the recent verdicts and rewrites the verdict file atomically when they change.

    Args:
        path: the verdict file (Zeek's ``ZeekML::verdict_file``).
        max_verdicts: keep at most this many verdicts, the most recently added (default 10000).
        max_age: drop verdicts added more than this many seconds ago (default 3600.0;
            ``None`` = no age limit). Zeek re-raises nothing for a dropped verdict.
        alerts_only: only verdicts with ``alert`` true go to Zeek (default ``True``).
        clock: wall clock in seconds, for tests (default ``time.time``).

    If ``path`` already holds a verdict file (zeekml restarted), its verdicts are kept, so
    verdicts scored again after a restart keep their ids and Zeek does not raise them twice.

    Verdicts without a full 4-tuple (an address or port missing or invalid) are skipped and
    counted in ``skipped``: Zeek's Input framework would reject the line.
    """

    log_path = VERDICT_LOG_PATH
    fields = VERDICT_FIELDS
    what = "verdict"

    def __init__(self, path: str | os.PathLike, max_verdicts: int = 10000,
                 max_age: float | None = 3600.0, alerts_only: bool = True,
                 clock: Callable[[], float] = time.time):
        if max_verdicts < 1:
            raise ValueError("max_verdicts must be at least 1")
        self.alerts_only = alerts_only
        super().__init__(path, max_rows=max_verdicts, max_age=max_age, clock=clock)

    @property
    def max_verdicts(self) -> int:
        """The most verdicts kept."""
        return self.max_rows

    def add(self, verdict: Any) -> bool:
        """Add one verdict (a ``zeekml.scoring.verdict.Verdict`` or a mapping with its fields).

        Returns ``True`` if it is new; a verdict id already kept is left as it is.
        """
        return super().add(verdict)

    def _row(self, verdict: Any) -> tuple[str, list[Any] | None] | None:
        # a Verdict's fields read as they are (``to_dict`` copies its scores and Suricata
        # alerts, which the file does not carry)
        rec = (dict(verdict) if isinstance(verdict, Mapping)
               else {f: getattr(verdict, f, None) for f in _VERDICT_ROW})
        if self.alerts_only and not rec.get("alert", True):
            return None
        vid = rec.get("verdict_id") or ""
        if not vid:
            from zeekml.scoring.verdict import verdict_id
            vid = verdict_id(str(rec.get("model", "")), str(rec.get("uid", "")),
                             float(rec.get("ts") or 0.0))
        return vid, _record_values(vid, rec)


class IncidentFeedbackWriter(InputFileWriter):
    """Keeps the recent incidents in the incident file (``#path zeekml_incidents``) that the
    Zeek package raises as ``ZeekML::Suspicious_Host`` notices, one per ``incident_id``.

    Args:
        path: the incident file (Zeek's ``ZeekML::incident_file``; by default
            ``incident_feedback_path`` of the verdict file).
        max_incidents: keep at most this many incidents, the most recently added (default 10000).
        max_age: drop incidents added more than this many seconds ago (default 3600.0; ``None``
            = no age limit).
        clock: wall clock in seconds, for tests (default ``time.time``).

    Takes ``zeekml.scoring.incidents.Incident`` objects or their ``to_dict()`` (an
    ``incidents.jsonl`` line). An incident whose host is not an address, or whose times are not
    finite, is skipped and counted in ``skipped``.
    """

    log_path = INCIDENT_LOG_PATH
    fields = INCIDENT_FIELDS
    what = "incident"

    def __init__(self, path: str | os.PathLike, max_incidents: int = 10000,
                 max_age: float | None = 3600.0, clock: Callable[[], float] = time.time):
        super().__init__(path, max_rows=max_incidents, max_age=max_age, clock=clock)

    def _row(self, incident: Any) -> tuple[str, list[Any] | None] | None:
        rec = incident.to_dict() if hasattr(incident, "to_dict") else dict(incident)
        iid = str(rec.get("incident_id") or "")
        return iid, _incident_values(iid, rec) if iid else None


def incident_feedback_path(verdict_path: str | os.PathLike) -> str:
    """The incident file beside the verdict file ``verdict_path`` (``--zeek-feedback``): a
    trailing ``.log`` becomes ``.incidents.log``, any other name gets ``.incidents.log`` added.
    verdicts.zeek derives ``ZeekML::incident_file`` from ``ZeekML::verdict_file`` by the same
    rule (``incident_file_for``), so one setting on each side is enough."""
    path = os.fspath(verdict_path)
    return (path[:-len(".log")] if path.endswith(".log") else path) + ".incidents.log"


class ZeekFeedback:
    """The files ``--zeek-feedback PATH`` keeps for the Zeek package: the incident file
    (``incident_feedback_path``: one ``ZeekML::Suspicious_Host`` notice per incident) and the
    verdict file ``PATH`` (one notice per alerting conn, only with ``conn_notices``; without it
    the verdict file is kept with no new rows, so the package's verdict stream still finds it).

    Args:
        path: the verdict file.
        conn_notices: also send every alerting conn (``--conn-notices``; default ``False``).
        clock: wall clock in seconds, for tests (default ``time.time``).
    """

    def __init__(self, path: str | os.PathLike, conn_notices: bool = False,
                 clock: Callable[[], float] = time.time):
        self.conn_notices = conn_notices
        self.verdicts = VerdictFeedbackWriter(path, clock=clock)
        self.incidents = IncidentFeedbackWriter(incident_feedback_path(path), clock=clock)

    @property
    def paths(self) -> dict[str, str]:
        """``summary.json`` output names -> paths."""
        return {"zeek_feedback": self.verdicts.path, "zeek_incidents": self.incidents.path}

    def write(self, alerts: Iterable[Any] = (), incidents: Iterable[Any] = ()) -> int:
        """Add alerting verdicts (kept only with ``conn_notices``) and incidents, then rewrite
        what changed (a missing file is written, header only if empty); returns how many rows
        were new. Idempotent: a verdict or incident id already in the file is not added again,
        so a window written again after a crash adds nothing for Zeek."""
        n = self.verdicts.add_many(alerts) if self.conn_notices else 0
        n += self.incidents.add_many(incidents)
        for w in (self.verdicts, self.incidents):
            if not w.ensure_exists():
                w.flush()
            w.report_skipped()
        return n

    def release(self) -> None:
        """Release both files without writing (``write`` has written what it added)."""
        self.verdicts.release()
        self.incidents.release()

    def close(self) -> None:
        """Write what changed and release both files."""
        try:
            self.verdicts.close()
        finally:
            self.incidents.close()


# ---------------------------------------------------------------------------------------------
# helpers

def _addr(value: Any) -> str | None:
    """The address as Zeek's ``addr`` parser reads it, or None. An IPv6 zone id
    (``fe80::1%eth0``) is valid for Python but Zeek rejects the whole line, so it is dropped:
    Zeek's ``addr`` type has no zone either."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        ip = ipaddress.IPv6Address(ip.packed)
    return str(ip)


def _port(value: Any) -> int | None:
    try:
        p = int(value)
    except (TypeError, ValueError):
        return None
    return p if 0 <= p <= 65535 else None


def _text(value: Any) -> str | bytes:
    if value is None:
        return ""
    return value if isinstance(value, (str, bytes)) else str(value)


def _optional_text(value: Any) -> str | bytes | None:
    """An ``&optional`` string column: absent or empty is unset (``-``). Zeek's Input reader
    reads ``(empty)`` as empty only in sets and vectors; in a string it is the literal text."""
    text = _text(value)
    return text if text not in ("", b"") else None


def _record_values(vid: str, rec: dict) -> list[Any] | None:
    orig_h, resp_h = _addr(rec.get("orig_h")), _addr(rec.get("resp_h"))
    orig_p, resp_p = _port(rec.get("orig_p")), _port(rec.get("resp_p"))
    if orig_h is None or resp_h is None or orig_p is None or resp_p is None:
        return None
    proto = str(rec.get("proto") or "").lower()
    if proto not in TRANSPORT_PROTOS:
        proto = "unknown_transport"
    try:
        ts = float(rec.get("ts") or 0.0)
        score = float(rec.get("score") if rec.get("score") is not None else math.nan)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(ts):
        return None
    return [vid, ts, _text(rec.get("uid")), orig_h, orig_p, resp_h, resp_p, proto,
            _text(rec.get("note") or "ZeekML::Anomalous_Flow"), score, _text(rec.get("model")),
            _optional_text(rec.get("msg")), _optional_text(rec.get("sub"))]


def _finite_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _count(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _top_port(ports: Any) -> tuple[int | None, str | None]:
    """``(port, transport proto)`` of an incident's first ``resp_ports`` entry (``"445/tcp"``);
    ``(None, None)`` when there is none or it is not a port Zeek reads."""
    if not ports:
        return None, None
    num, _, proto = str(ports[0]).partition("/")
    p = _port(num)
    if p is None:
        return None, None
    proto = proto.lower()
    return p, proto if proto in TRANSPORT_PROTOS else "unknown_transport"


def _incident_values(iid: str, rec: dict) -> list[Any] | None:
    from zeekml.sinks.triage import incident_sub

    host = _addr(rec.get("host"))
    first, last = _finite_float(rec.get("first_ts")), _finite_float(rec.get("last_ts"))
    if host is None or first is None or last is None:
        return None
    top = (rec.get("top_conns") or [{}])[0] or {}
    p, proto = _top_port(rec.get("resp_ports"))
    score = _finite_float(rec.get("score"))
    return [iid, first, last, host, _text(rec.get("role")), _optional_text(top.get("uid")), p,
            proto, _count(rec.get("conns")), _count(rec.get("alerts")),
            _count(rec.get("n_peers")), math.nan if score is None else score,
            _text(",".join(str(d) for d in rec.get("detectors") or [])),
            _optional_text(rec.get("description")), _optional_text(incident_sub(rec))]


def _format_line(values: list[Any], types: list[str]) -> bytes:
    # An empty required string (uid, note, model, role) is an empty field: Zeek's Input reader reads
    # it as "" (the string "(empty)" would be the literal text). Never the last column (sub,
    # optional), where Zeek's line splitting would drop it and reject the line.
    line = DEFAULT_SEPARATOR.join(
        b"" if t == "string" and v in ("", b"") else format_value(v, t, first_field=(i == 0))
        for i, (v, t) in enumerate(zip(values, types))) + b"\n"
    # Zeek's Input framework unescapes ``\xHH`` but not ``\\``: write a literal backslash as
    # ``\x5c``, which both Zeek and our reader decode. Every escape sequence format_value
    # makes starts with a backslash and is ``\\`` or ``\xHH`` (hex digits never end in a
    # backslash), so replacing ``\\`` left to right touches only escaped backslashes.
    return line.replace(b"\\\\", b"\\x5c")


def _read(path: str) -> tuple[ZeekHeader, list[dict[str, Any]], list[bytes]]:
    """Parse a Zeek-format TSV file: header, typed rows by field name, and the raw lines. Only a
    regular file is read (a FIFO planted there would block the read forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read()
    header = ZeekHeader()
    rows: list[dict[str, Any]] = []
    raw_lines: list[bytes] = []
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        if line.startswith(b"#separator "):
            header = ZeekHeader(separator=parse_separator_line(line))
            continue
        if line.startswith(b"#"):
            apply_meta_line(header, line)
            continue
        if not header.fields:
            raise ValueError("record before #fields")
        parts = line.split(header.separator)
        if len(parts) != len(header.fields):
            raise ValueError(f"{len(parts)} fields, expected {len(header.fields)}")
        rows.append({name: parse_field(raw, typ, header)
                     for name, typ, raw in zip(header.fields, header.types, parts)})
        raw_lines.append(line + b"\n")
    return header, rows, raw_lines


def read_verdict_file(path: str | os.PathLike) -> tuple[ZeekHeader, list[dict[str, Any]]]:
    """Read a verdict file back: its header and one dict per verdict (strings as bytes).

    A small reader for checks and tests; ``zeekml.parse`` is the general one.
    """
    header, rows, _ = _read(os.fspath(path))
    return header, rows


__all__ = ["INCIDENT_FIELDS", "INCIDENT_LOG_PATH", "IncidentFeedbackWriter", "InputFileWriter",
           "TRANSPORT_PROTOS", "VERDICT_FIELDS", "VERDICT_LOG_PATH", "VerdictFeedbackWriter",
           "ZeekFeedback", "incident_feedback_path", "read_verdict_file"]

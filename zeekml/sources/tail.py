"""Follow a live Zeek log directory: new lines, rotations, archives, restarts.

``DirectoryFollower`` walks a directory tree (any of Zeek's layouts: standalone ``conn.log`` +
``conn.<open>.log``; zeekctl ``current/`` + dated archive directories of ``.log.gz``; the
supervisor's ``log-queue/conn__<open>__<close>__.log`` + archives), picks the conn logs (names as
``zeekml.sources.archive.CONN_NAME``), and reads each *file identity* once
(``zeekml.sources.fingerprint``): the live file, its renamed copy and its gzip archive share one
identity and one offset. Watchdog events wake it early; a periodic rescan finds whatever events
were lost.

Rules:

- A plain file is read with ``pread`` from the identity's offset; the parser only consumes whole
  lines, so a partial last line waits for its end.
- A renamed or deleted file stays open and is read to its end (as ``tail -F``), then closed after
  ``orphan_grace_seconds`` without growth.
- A gzip archive is read only when no plain copy of the same identity exists, from the
  identity's offset to its end, and only when it is whole (a ``.gz`` being written by zeekctl's
  ``archive-log`` is skipped until its trailer is there) or has not changed for
  ``gzip_settle_seconds`` (a truncated or damaged archive, which will never be whole). It is read
  as ``zcat`` does (``zeekml.parse.gzstream``): the records before the damage are kept, and a
  warning names the file and the byte reached; it is read again only if it changes.
- A last line without ``\n`` is a record once its file is finished (as ``score`` reads it): when
  a renamed-away or deleted file is closed, and at the end of ``watch --once``
  (``final_pass``) for a file unchanged for ``unterminated_settle_seconds``.
- A symlink is followed only when it stays inside the watched tree (``allow_symlinks_out``
  allows others) and its target has the link's owner (or the link is root's or ours): a link
  planted by another user never makes a root-run watch copy someone else's file into its
  outputs. The file opened must be the file checked (same device and inode).
- Finished identities (``checkpoint.retirable``) leave the per-file progress for the ``done``
  ledger, so the checkpoint stays small however many files the directory holds.
- A file that shrank below the offset, whose head changed under an open descriptor, or whose bytes
  before the checkpoint offset differ from the recorded ``tail`` holds new content (Zeek restarted
  without rotating and truncated it, or the inode was reused): it is read from offset 0.
- The end of a whole gzip archive marks the identity done: it is never read again. ``#close``
  as the last line of a plain file closes it; it is done once no plain copy is left (data
  appended after ``#close``, which Zeek never writes, is still read).

The follower never commits anything: ``snapshot()`` returns each identity's progress as of the
batches returned so far, which ``zeekml.watch`` commits together with its outputs.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import stat
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

from zeekml._core.errors import UnknownFormat
from zeekml.parse.batch import LogBatch
from zeekml.parse.gzstream import GzipStream
from zeekml.parse.lines import LineFeeder
from zeekml.parse.reader import FORMATS, detect_format
from zeekml.parse.reader import make_parser as parser_for
from zeekml.parse.reject import Quarantine
from zeekml.sources.archive import CONN_NAME, SKIP_SUFFIXES
from zeekml.sources.checkpoint import (FileState, Presence, header_from_dict, header_to_dict,
                                       retirable)
from zeekml.sources.fingerprint import (TAIL_BYTES, Fingerprint, FingerprintCache, fingerprint_fd,
                                        open_regular, read_head, stat_key, tail_digest)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 256 << 10
MAX_DEPTH = 6
SUPPORTED_FORMATS = ("zeek-tsv", "zeek-json", "zeek-csv", "suricata-eve")
LIVE_NAME = re.compile(r"^(conn\.log|conn\.json|eve\.json)$")
"""Names Zeek (standalone, zeekctl ``current/``) and Suricata keep writing to; any other name
of a conn log is a rotated or static file, finished once read to its end."""


def make_parser(fmt: str, source: str, quarantine: Quarantine, max_line_bytes: int,
                state: FileState) -> LineFeeder:
    """An incremental parser for ``fmt`` resuming at ``state`` (offset, line, TSV header)."""
    if fmt not in FORMATS:
        raise UnknownFormat(f"cannot follow {fmt!r} logs", source)
    header = header_from_dict(state.header) if fmt in ("zeek-tsv", "zeek-csv") else None
    return parser_for(fmt, source, quarantine, max_line_bytes=max_line_bytes,
                      start_offset=state.offset, start_line=state.line, header=header)


@dataclass
class _Candidate:
    path: str
    st: os.stat_result
    fp: Fingerprint


class _Reader:
    """Reads one identity from one file (plain: pread on an open fd; gzip: a whole archive)."""

    def __init__(self, state: FileState, cand: _Candidate, fmt: str, quarantine: Quarantine,
                 max_line_bytes: int, now: float):
        self.state = state
        self.path = cand.path
        self.dev, self.ino = cand.fp.dev, cand.fp.ino
        self.compressed = cand.fp.compressed
        self.fmt = fmt
        self.parser = make_parser(fmt, cand.path, quarantine, max_line_bytes, state)
        self.read_offset = state.offset
        self.last_growth = now
        self.orphan = False
        self.renamed = False
        self.dead = False
        self.damaged = ""           # why a gzip archive could not be read to its end
        self.stat_key = stat_key(cand.st)
        self.behind_since: float | None = None
        self._fd = -1
        self._gz: GzipStream | None = None
        raw = open_regular(cand.path)
        st = os.fstat(raw.fileno())
        if (st.st_dev, st.st_ino) != (cand.fp.dev, cand.fp.ino):
            # the path now names another file (a symlink swapped after it was checked)
            raw.close()
            raise OSError(f"{cand.path} changed between its check and its opening")
        if self.compressed:
            self._gz = GzipStream(raw, cand.path)
            self._skip = state.offset
        else:
            self._fd = os.dup(raw.fileno())
            raw.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._gz is not None:
            self._gz.close()
            self._gz = None
        self.dead = True

    def size(self) -> int | None:
        if self._fd < 0:
            return None
        try:
            return os.fstat(self._fd).st_size
        except OSError:
            return None

    def head_id(self) -> str | None:
        return fingerprint_fd(self._fd) if self._fd >= 0 else None

    def read(self, chunk: int, now: float) -> tuple[list[LogBatch], bool]:
        """Read at most ``chunk`` bytes; returns the batches and whether any byte was read."""
        if self.dead:
            return [], False
        if self._gz is not None:
            return self._read_gz(chunk)
        size = self.size()
        if size is None:
            return [], False
        if size < self.read_offset:
            log.warning("%s: shrank from %d to %d bytes: truncated in place, the new content "
                        "is read from the start", self.path, self.read_offset, size)
            self.close()
            return [], False
        if size == self.read_offset:
            self.behind_since = None
            return [], False
        data = os.pread(self._fd, min(chunk, size - self.read_offset), self.read_offset)
        if not data:
            return [], False
        if self.behind_since is None:
            self.behind_since = now
        self.read_offset += len(data)
        self.last_growth = now
        out = self.parser.feed(data)
        self._update_state(closing_line=b"#close" in data)
        if self.read_offset >= size:
            self.behind_since = None
        return out, True

    def _read_gz(self, chunk: int) -> tuple[list[LogBatch], bool]:
        try:
            while self._skip > 0:
                n = len(self._gz.read(min(self._skip, 1 << 20)))
                if n == 0:
                    break
                self._skip -= n
            data = self._gz.read(chunk) if self._skip == 0 else b""
        except (OSError, EOFError, zlib.error) as e:
            # GzipStream has handed on every whole line before the damage: those records are
            # kept (the offset is theirs); the archive is read again only if it changes
            self.damaged = str(e)
            log.warning("%s: truncated or damaged gzip archive: %s; kept the records before it "
                        "(%d lines)", self.path, e, self.parser.line_no)
            self._update_state(closing_line=False)
            self.close()
            return [], True
        if not data:
            out = self.parser.finish()
            self._update_state(closing_line=False)
            self.state.complete = True
            self.close()
            return out, True
        self.read_offset += len(data)
        out = self.parser.feed(data)
        self._update_state(closing_line=False)
        return out, True

    def pending_bytes(self) -> int:
        """Bytes read but not consumed: an unterminated last line (plain files)."""
        return self.read_offset - self.state.offset if self._fd >= 0 else 0

    def finish_line(self) -> list[LogBatch]:
        """The file is finished: its unterminated last line is a record (or quarantined), as
        ``score`` reads the end of a file. The offset moves past it."""
        if self.dead or self._gz is not None or self.pending_bytes() <= 0:
            return []
        log.info("%s: last line has no newline; read as the file's last record (%d bytes)",
                 self.path, self.pending_bytes())
        out = self.parser.finish()
        self._update_state(closing_line=False)
        return out

    def _update_state(self, closing_line: bool) -> None:
        st = self.state
        st.offset = self.parser.consumed_offset
        st.line = self.parser.line_no
        st.path = self.path
        st.fmt = self.fmt
        st.updated = time.time()
        if self.fmt == "zeek-tsv":
            st.header = header_to_dict(self.parser.header)
        if closing_line and self._fd >= 0 and st.offset > 0:
            before = os.pread(self._fd, min(st.offset, 4096), st.offset - min(st.offset, 4096))
            last = before[:-1].rsplit(b"\n", 1)[-1]
            if last.startswith(b"#close"):
                st.complete = True

    def refresh_tail(self) -> None:
        """Record the digest of the bytes before the offset (plain files; gzip content is fixed)."""
        st = self.state
        if self._fd >= 0 and st.offset > 0:
            n = min(st.offset, TAIL_BYTES)
            try:
                st.tail = tail_digest(os.pread(self._fd, n, st.offset - n))
            except OSError:
                pass


class DirectoryFollower:
    """Follows every conn log under ``root``; see the module docstring for the rules.

    Args:
        root: the Zeek log directory.
        states: per-identity progress from the last checkpoint (copied, not mutated).
        done: identities read to their end; never opened again.
        quarantine: where malformed lines go.
        max_line_bytes: longer lines are quarantined (default 1 MiB).
        rescan_seconds: full directory rescan period (default 2.0), whatever the events said.
        use_events: also react to watchdog file-system events (default ``True``).
        exclude: directories never to read (the output directory).
        chunk_bytes: bytes read from one file per step (default 256 KiB).
        orphan_grace_seconds: a renamed-away or deleted file is closed after this long at its end
            (default 2.0).
        idle_close_seconds: any file without growth is closed after this long (default 60.0);
            the rescan reopens it if it grows.
        name_filter: which file names are logs to follow (default: conn logs).
        allow_symlinks_out: follow symlinks whose target is outside ``root`` (default
            ``False``: skipped with a warning). A link whose target has another owner than the
            link (unless the link is root's or ours) is skipped either way.
        gzip_settle_seconds: an archive that is not whole is read (to its damage) once it has
            not changed for this long (default 30.0); before, it is taken for one being written.
        unterminated_settle_seconds: ``final_pass`` reads a last line without ``\n`` as a
            record only in a file unchanged for this long (default 5.0): a writer may be
            halfway through it.
        retire_idle_seconds: finished identities (``checkpoint.retirable``) idle this long
            leave the checkpoint for the ``done`` ledger (default 300.0).
        retention_seconds: ... and those of which only damaged archives are left, after this
            long (default 86400.0).
        wall_clock: wall time (``FileState.updated`` is wall time); tests inject one.
    """

    def __init__(self, root: str | os.PathLike, states: dict[str, FileState] | None = None,
                 quarantine: Quarantine | None = None, *, done: Iterable[str] = (),
                 max_line_bytes: int = 1 << 20,
                 rescan_seconds: float = 2.0, use_events: bool = True,
                 exclude: Iterable[str] = (), chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 orphan_grace_seconds: float = 2.0, idle_close_seconds: float = 60.0,
                 name_filter: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 allow_symlinks_out: bool = False, gzip_settle_seconds: float = 30.0,
                 unterminated_settle_seconds: float = 5.0, retire_idle_seconds: float = 300.0,
                 retention_seconds: float = 86400.0,
                 wall_clock: Callable[[], float] = time.time):
        self.root = os.fspath(root)
        self.states: dict[str, FileState] = copy.deepcopy(states or {})
        self.done: set[str] = set(done)
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        self.max_line_bytes = max_line_bytes
        self.rescan_seconds = rescan_seconds
        self.use_events = use_events
        self.exclude = [os.path.realpath(p) for p in exclude]
        self.chunk_bytes = chunk_bytes
        self.orphan_grace_seconds = orphan_grace_seconds
        self.idle_close_seconds = idle_close_seconds
        self.name_filter = name_filter or _is_conn_log
        self.clock = clock
        self.allow_symlinks_out = allow_symlinks_out
        self.gzip_settle_seconds = gzip_settle_seconds
        self.unterminated_settle_seconds = unterminated_settle_seconds
        self.retire_idle_seconds = retire_idle_seconds
        self.retention_seconds = retention_seconds
        self.wall_clock = wall_clock
        self._real_root = os.path.realpath(self.root)
        self._euid = os.geteuid() if hasattr(os, "geteuid") else -1
        self._damaged: dict[str, tuple] = {}      # identity -> stat key of its damaged archive
        self._pending_gz: dict[str, _Candidate] = {}   # archives not whole, not yet settled
        self.retired = 0
        self.cache = FingerprintCache()
        self.readers: dict[str, _Reader] = {}
        self.rescans = 0
        self.caught_up = False
        self._last_rescan = -float("inf")
        self._rescan_requested = threading.Event()
        self._wake = threading.Event()
        self._observer = None
        self._warned: set[str] = set()
        self._pending_ids: dict[str, float] = {}   # identities seen with unread bytes, no reader
        self._bytes_per_record = 256.0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.use_events and self._observer is None:
            try:
                from watchdog.events import FileSystemEventHandler
                from watchdog.observers import Observer
            except ImportError:  # pragma: no cover - watchdog is a dependency
                log.warning("watchdog is not installed; relying on the periodic rescan")
                return
            follower = self

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event):
                    if event.event_type in ("created", "moved", "deleted"):
                        follower._rescan_requested.set()
                    follower._wake.set()

            obs = Observer()
            obs.schedule(_Handler(), self.root, recursive=True)
            obs.daemon = True
            try:
                obs.start()
            except OSError as e:
                log.warning("file-system events unavailable (%s); relying on the periodic "
                            "rescan", e)
                return
            self._observer = obs

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        for r in self.readers.values():
            r.close()
        self.readers.clear()

    def wait(self, timeout: float) -> None:
        """Sleep until a file-system event or ``timeout`` seconds."""
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- reading -----------------------------------------------------------------------------

    def poll(self, max_records: int = 10_000, max_bytes: int = 64 << 20) -> list[LogBatch]:
        """Batches of whatever is new, up to about ``max_records`` records (a soft limit)."""
        now = self.clock()
        if self._rescan_requested.is_set() or now - self._last_rescan >= self.rescan_seconds:
            self._rescan_requested.clear()
            self.rescan()
        out: list[LogBatch] = []
        records = 0
        nbytes = 0
        progressed = True
        while progressed and records < max_records and nbytes < max_bytes:
            progressed = False
            for cid in list(self.readers):
                r = self.readers[cid]
                before = r.read_offset
                # read about as many bytes as the records still wanted take (soft window limit)
                want = int((max_records - records) * self._bytes_per_record) + 1
                batches, did = r.read(min(self.chunk_bytes, max(4096, want)), now)
                nbytes += r.read_offset - before
                if did:
                    progressed = True
                n = sum(b.num_rows for b in batches)
                if n:
                    self._bytes_per_record = 0.8 * self._bytes_per_record + \
                        0.2 * max(16.0, (r.read_offset - before) / n)
                for b in batches:
                    out.append(b)
                    records += b.num_rows
                if r.dead or r.state.complete:
                    if not r.dead:
                        r.close()
                    del self.readers[cid]
                    if r.damaged:
                        self._damaged[cid] = r.stat_key
                    if r.state.complete and r.compressed:
                        self.done.add(cid)
                        self.states.pop(cid, None)
                if records >= max_records:
                    break
        self.caught_up = not progressed
        out += self._close_idle(now)
        return out

    def final_pass(self) -> list[LogBatch]:
        """What ``watch --once`` reads before it ends, once caught up (``caught_up`` turns
        false when there is more to poll): archives that are not whole are opened now (to their damage; read
        further if they become whole later, from
        the offset reached), and the unterminated last line of every file unchanged for
        ``unterminated_settle_seconds`` is read as a record (``score`` reads it so)."""
        now = self.clock()
        for cid, cand in list(self._pending_gz.items()):
            if cid not in self.readers and cid not in self.done:
                self._start_reader(cid, cand, now)
                if cid in self.readers:
                    self.caught_up = False      # more to read: the caller polls again
        self._pending_gz.clear()
        out: list[LogBatch] = []
        wall = self.wall_clock()
        for r in self.readers.values():
            if r.pending_bytes() <= 0 or r.size() != r.read_offset:
                continue
            try:
                mtime = os.fstat(r._fd).st_mtime
            except OSError:
                continue
            if wall - mtime >= self.unterminated_settle_seconds:
                out += r.finish_line()
        return out

    def snapshot(self) -> tuple[dict[str, FileState], set[str]]:
        """Progress of every identity as of the batches returned so far (copies): the partly
        read ones, and the ids of those read to their end."""
        for r in self.readers.values():
            r.refresh_tail()
        return copy.deepcopy(self.states), set(self.done)

    def lag_seconds(self) -> float:
        """Seconds since the oldest unread data was first noticed (0 when caught up)."""
        now = self.clock()
        since = [r.behind_since for r in self.readers.values() if r.behind_since is not None]
        since += list(self._pending_ids.values())
        return max(0.0, now - min(since)) if since else 0.0

    def bytes_behind(self) -> int:
        total = 0
        for r in self.readers.values():
            size = r.size()
            if size is not None:
                total += max(0, size - r.read_offset)
        return total

    # -- scanning ----------------------------------------------------------------------------

    def scan_paths(self) -> list[str]:
        """Every followed log under ``root``, in path order."""
        found: list[str] = []
        root_depth = self.root.rstrip(os.sep).count(os.sep)
        for dirpath, dirnames, filenames in os.walk(self.root):
            if os.path.realpath(dirpath) in self.exclude or \
                    dirpath.count(os.sep) - root_depth >= MAX_DEPTH:
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                    continue
                if self.name_filter(name):
                    path = os.path.join(dirpath, name)
                    if self._link_allowed(path):
                        found.append(path)
        return sorted(found)

    def _link_allowed(self, path: str) -> bool:
        """False for a symlink not to follow (warned once per link and target)."""
        try:
            lst = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISLNK(lst.st_mode):
            return True
        target = os.path.realpath(path)
        why = ""
        if not self.allow_symlinks_out and \
                os.path.commonpath([self._real_root, target]) != self._real_root:
            why = "points out of the watched directory (--follow-symlinks-out allows it)"
        else:
            try:
                owner = os.stat(path).st_uid
            except OSError:
                return False
            if owner != lst.st_uid and lst.st_uid not in (0, self._euid):
                why = (f"is owned by uid {lst.st_uid} and its target by uid {owner}: a link "
                       "planted by another user is never followed")
        if why:
            key = f"link:{path}->{target}"
            if key not in self._warned and len(self._warned) < 100_000:
                self._warned.add(key)
                log.warning("%s: symlink to %s skipped: it %s", path, target, why)
            return False
        return True

    def rescan(self) -> None:
        """Find every identity under ``root``; open readers for those with unread content."""
        now = self.clock()
        self._last_rescan = now
        self.rescans += 1
        by_id: dict[str, list[_Candidate]] = {}
        seen_inodes: dict[tuple[int, int], str] = {}
        for path in self.scan_paths():
            try:
                st = os.stat(path)
            except OSError:
                continue
            fp = self.cache.get(path, st)
            if fp is None:
                continue
            by_id.setdefault(fp.content_id, []).append(_Candidate(path, st, fp))
            seen_inodes[(fp.dev, fp.ino)] = fp.content_id

        # open readers: follow renames, notice replaced content and orphans
        for cid, r in list(self.readers.items()):
            if r.compressed:
                continue
            now_id = seen_inodes.get((r.dev, r.ino))
            if now_id is None:
                r.orphan = True
                continue
            r.orphan = False
            if now_id != cid or r.head_id() not in (None, cid):
                log.warning("%s: content replaced under the same inode (truncated in place "
                            "or inode reused); the new content is read from the start", r.path)
                r.close()
                del self.readers[cid]
                continue
            for c in by_id.get(cid, []):
                if (c.fp.dev, c.fp.ino) == (r.dev, r.ino) and c.path != r.path:
                    log.info("%s: renamed to %s; still following it", r.path, c.path)
                    r.path = c.path
                    r.renamed = True

        self._pending_ids.clear()
        self._pending_gz.clear()
        self._retire(by_id)
        for cid, cands in by_id.items():
            if cid in self.done:
                continue
            plain = [c for c in cands if not c.fp.compressed]
            state = self.states.get(cid)
            if state is not None and state.complete:
                # #close was its last line. Zeek writes nothing after it; if something does,
                # it is read all the same. Once no plain copy is left it is done for good.
                if not plain:
                    self.done.add(cid)
                    del self.states[cid]
                    continue
                if max(c.st.st_size for c in plain) <= state.offset:
                    continue
                log.warning("%s: data after #close; reading it", plain[0].path)
                state.complete = False
            r = self.readers.get(cid)
            if r is not None:
                best = max(plain, key=lambda c: c.st.st_size, default=None)
                size = r.size()
                if (best is None or size is None or best.st.st_size <= size
                        or r.read_offset < size):
                    continue
                # another copy holds more than the one being read, which is at its end: switch
                log.info("%s: a copy of %s holds more; reading it instead", best.path, r.path)
                r.close()
                del self.readers[cid]
            self._open(cid, plain, [c for c in cands if c.fp.compressed], now)

    def _retire(self, by_id: dict[str, list[_Candidate]]) -> None:
        """Move finished identities from ``states`` to ``done`` (``checkpoint.retirable``)."""
        present: dict[str, Presence] = {}
        for cid, cands in by_id.items():
            if cid not in self.states:
                continue
            plain = [c for c in cands if not c.fp.compressed]
            offset = self.states[cid].offset
            live = any(LIVE_NAME.match(os.path.basename(c.path)) for c in cands)
            unread = any(c.st.st_size > offset for c in plain) if plain else None
            present[cid] = Presence(unread=unread, live=live)
        idle = {cid: st for cid, st in self.states.items() if cid not in self.readers}
        gone = retirable(idle, present, self.wall_clock(), self.retire_idle_seconds,
                         self.retention_seconds)
        for cid in gone:
            del self.states[cid]
            self.done.add(cid)
            self._damaged.pop(cid, None)
        if gone:
            self.retired += len(gone)
            log.debug("retired %d finished files (%d kept)", len(gone), len(self.states))

    def _open(self, cid: str, plain: list[_Candidate], gz: list[_Candidate], now: float) -> None:
        state = self.states.get(cid)
        for cand in sorted(plain, key=lambda c: -c.st.st_size):
            verdict = self._resumable(cand, state)
            if verdict == "wait":
                return  # nothing past the offset (or a shorter copy): the rescan looks again
            if verdict == "reset":
                log.warning("%s: content differs from the checkpoint at byte %d (rewritten "
                            "in place or inode reused); reading it from the start",
                            cand.path, state.offset)
                state = self._reset(cid)
            self._start_reader(cid, cand, now)
            return
        if not gz:
            return
        for cand in gz:
            if self.cache.gzip_whole(cand.path, cand.st):
                self._start_reader(cid, cand, now)
                return
        wall = self.wall_clock()
        for cand in gz:
            if self._damaged.get(cid) == stat_key(cand.st):
                return      # read to its damage and reported; again only if it changes
            if wall - cand.st.st_mtime >= self.gzip_settle_seconds:
                # not whole and unchanged for a while: truncated or damaged, never to be whole
                self._start_reader(cid, cand, now)
                return
        self._pending_ids.setdefault(cid, now)
        self._pending_gz[cid] = gz[0]
        log.debug("%s: gzip archive not whole yet; waiting", gz[0].path)

    def _resumable(self, cand: _Candidate, state: FileState | None) -> str:
        """``read`` from the offset, ``wait`` (nothing new) or ``reset`` (other content).

        A file shorter than the offset with the same head is taken for a shorter copy (or a
        truncation that has not regrown yet) and waits: reading it again could only repeat
        records. Once it is longer than the offset, the bytes before the offset decide.
        """
        if state is None or state.offset == 0:
            return "read" if cand.st.st_size > 0 else "wait"
        if cand.st.st_size <= state.offset:
            return "wait"
        if not state.tail:
            return "read"
        n = min(state.offset, TAIL_BYTES)
        try:
            with open(cand.path, "rb") as f:
                f.seek(state.offset - n)
                same = tail_digest(f.read(n)) == state.tail
        except OSError:
            return "wait"
        return "read" if same else "reset"

    def _reset(self, cid: str) -> FileState:
        state = FileState(content_id=cid)
        self.states[cid] = state
        return state

    def _start_reader(self, cid: str, cand: _Candidate, now: float) -> None:
        state = self.states.get(cid)
        if state is None:
            state = self.states[cid] = FileState(content_id=cid)
        fmt = state.fmt
        if not fmt:
            try:
                fmt = detect_format(cand.path, read_head(cand.path, cand.fp.compressed))
            except (UnknownFormat, OSError) as e:
                if cid not in self._warned:
                    self._warned.add(cid)
                    log.warning("%s: not followed: %s", cand.path, e)
                return
            if fmt not in SUPPORTED_FORMATS:
                return
        try:
            reader = _Reader(state, cand, fmt, self.quarantine, self.max_line_bytes, now)
        except OSError as e:
            log.warning("%s: cannot open: %s", cand.path, e)
            return
        reader.behind_since = now
        self.readers[cid] = reader
        log.debug("%s: reading identity %s from byte %d", cand.path, cid, state.offset)

    def _close_idle(self, now: float) -> list[LogBatch]:
        """Close readers idle at their end; a renamed-away or deleted file is finished then,
        so its unterminated last line is read as a record."""
        out: list[LogBatch] = []
        for cid, r in list(self.readers.items()):
            idle = now - r.last_growth
            if r.compressed:
                continue
            if (r.orphan and idle >= self.orphan_grace_seconds) or idle >= self.idle_close_seconds:
                size = r.size()
                if size is not None and size > r.read_offset:
                    continue
                if r.orphan or r.renamed:
                    out += r.finish_line()
                r.refresh_tail()
                r.close()
                del self.readers[cid]
        return out


def _is_conn_log(name: str) -> bool:
    return bool(CONN_NAME.match(name))

"""Checkpoints of the live tailer: how far each file identity has been processed.

One JSON document holds, per file identity (``fingerprint.content_id``), the byte offset just
past the last fully processed line and the parser state needed to resume there (the TSV header,
the line number), plus the committed length of every output file. ``zeekml watch`` commits it
right after the outputs of a window are written and fsynced, so the outputs and the offsets move
together: on restart the outputs are cut back to the committed lengths and reading resumes at the
committed offsets, which replays at most the uncommitted window.

A commit never leaves an empty or half-written checkpoint: the document goes to a temporary file
in the same directory, is fsynced, the current generation is kept as ``<name>.prev`` (a hard
link), the temporary file is renamed over ``<name>`` and the directory is fsynced. Each document
carries a sha256 of its body; a damaged current generation falls back to the previous one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from zeekml._core.atomic import atomic_write, fsync_dir, write_temp
from zeekml._core.errors import OutputError
from zeekml.sources import CHECKPOINT_FILE
from zeekml._core.zeek_format import ZeekHeader
from zeekml.sources.fingerprint import fingerprint_file

log = logging.getLogger(__name__)

FORMAT = "zeekml-checkpoint"
VERSION = 1
MAX_OFFSET = 1 << 63
"""Offsets and line counts are below this (``pread`` takes a signed 64-bit offset)."""
GZIP_MAX_RATIO = 1032
"""Deflate expands at most 1032:1, so an archive of n bytes holds under 1032 * n + 64 bytes."""


class CheckpointError(OutputError):
    """A checkpoint could not be written (the previous one is still in place)."""


@dataclass
class FileState:
    """Progress in one file identity.

    Attributes:
        content_id: the identity (``fingerprint.content_id``).
        offset: uncompressed byte offset just past the last fully processed line.
        line: lines consumed before ``offset`` (for quarantine line numbers).
        fmt: ``zeek-tsv`` or ``zeek-json``.
        header: the TSV header in effect at ``offset`` (``header_to_dict``), ``None`` for JSON.
        tail: ``fingerprint.tail_digest`` of the bytes before ``offset`` ("" at 0).
        complete: nothing more will ever be appended (``#close`` seen, or a whole gzip archive).
        path: where it was last read (for people; identity never depends on it).
        updated: wall time of the last change.
    """

    content_id: str
    offset: int = 0
    line: int = 0
    fmt: str = ""
    header: dict | None = None
    tail: str = ""
    complete: bool = False
    path: str = ""
    updated: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FileState":
        """Raises ``ValueError`` naming the first field that is not what a commit writes."""
        if not isinstance(d, dict):
            raise ValueError(f"file entry is a {type(d).__name__}, not an object")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        st = cls(**known)
        st.validate()
        return st

    def validate(self) -> None:
        """Raises ``ValueError`` when a field could not have been written by a commit."""
        for name in ("offset", "line"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_OFFSET:
                raise ValueError(f"{name} {v!r} is not a byte offset/line count "
                                 f"(an integer from 0 to 2**63-1)")
        for name in ("content_id", "fmt", "tail", "path"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} {getattr(self, name)!r} is not a string")
        if not isinstance(self.complete, bool):
            raise ValueError(f"complete {self.complete!r} is not true/false")
        if isinstance(self.updated, bool) or not isinstance(self.updated, (int, float)):
            raise ValueError(f"updated {self.updated!r} is not a time")
        if self.header is not None:
            try:
                header_from_dict(self.header)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise ValueError(f"header is damaged ({type(e).__name__}: {e})") from None


@dataclass
class Checkpoint:
    """Everything a restart needs: per-identity progress and the committed output lengths.

    ``context`` names the context journal of ``zeekml watch`` and its committed length (conns
    kept for detectors that look at neighbouring conns, pending ones included).

    ``done`` holds the identities read to their end (``#close`` seen, whole archive read): only
    their ids are kept, and once there are many they move to the ledger file
    ``<name>.done`` (written before the checkpoint that drops them), so the document committed
    every window stays small however many archives the directory holds.
    """

    generation: int = 0
    files: dict[str, FileState] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    outputs: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    written_at: float = 0.0
    context: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict:
        return {"generation": self.generation, "written_at": self.written_at,
                "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
                "done": sorted(self.done),
                "outputs": dict(sorted(self.outputs.items())), "stats": self.stats,
                "context": self.context}

    @classmethod
    def from_body(cls, body: dict, where: str = "checkpoint") -> "Checkpoint":
        """Raises ``ValueError`` when the document as a whole is damaged.

        A file entry that is not what a commit writes (a hand-edited offset of -5 or "abc", a
        damaged header) does not condemn the rest: that file is read again from its start,
        with a warning naming ``where`` and the file.
        """
        if not isinstance(body, dict):
            raise ValueError("checkpoint body is not an object")
        files = {}
        for k, v in _mapping(body.get("files", {}), "files").items():
            try:
                st = FileState.from_dict(v)
                if st.content_id != k:
                    raise ValueError(f"content_id {st.content_id!r} differs from its key")
            except (ValueError, TypeError) as e:
                path = v.get("path", "") if isinstance(v, dict) else ""
                log.warning("%s: entry of %s (%s) is damaged: %s; that file is read again from "
                            "its start", where, path or "a file", k, e)
                st = FileState(content_id=str(k), path=path if isinstance(path, str) else "")
            files[k] = st
        done = body.get("done", [])
        if not isinstance(done, list) or not all(isinstance(x, str) for x in done):
            raise ValueError("done is not a list of file identities")
        outputs = {}
        for k, v in _mapping(body.get("outputs", {}), "outputs").items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_OFFSET:
                raise ValueError(f"committed length of {k} is {v!r}, not a byte count")
            outputs[k] = v
        return cls(generation=int(body.get("generation", 0)), files=files, done=set(done),
                   outputs=outputs, stats=dict(_mapping(body.get("stats", {}), "stats")),
                   written_at=float(body.get("written_at", 0.0)),
                   context=dict(_mapping(body.get("context", {}), "context")))


@dataclass(frozen=True)
class Presence:
    """Where an identity is in the watched tree now, for ``retirable``.

    Attributes:
        unread: a plain copy holds bytes past the offset (``None``: only gzip copies, whose
            uncompressed size is unknown without reading them).
        live: a copy has a name Zeek (or Suricata) still writes to (``conn.log``, ``eve.json``).
    """

    unread: bool | None
    live: bool


def retirable(states: dict[str, FileState], present: dict[str, Presence], now: float,
              idle_seconds: float, retention_seconds: float) -> list[str]:
    """Identities whose progress no longer needs to be kept: they move to ``done`` (the ledger).

    Without retirement every file without ``#close`` (every JSON log) stays in the checkpoint
    for ever, and the document committed every window grows with the number of files (8 MB for
    10k small files). An identity is finished, and retired, when no reader holds it (the caller
    leaves those out) and, ``age`` being the seconds since its last read (``FileState.updated``):

    - it is read to the end of every plain copy, none has a live name, and ``age >=
      idle_seconds`` (rotated away and idle: Zeek never appends to a rotated file);
    - it is gone from the tree and ``age >= idle_seconds`` (deleted or moved out: nothing is
      left to read);
    - only gzip copies are left (damaged ones: a whole archive is done when read) and ``age >=
      retention_seconds``.

    A file under a live name is never retired, however old: Zeek may write to it again.
    Data appended to a retired file is not read (its identity is done).
    """
    out = []
    for cid, st in states.items():
        age = now - st.updated
        p = present.get(cid)
        if p is None:
            if age >= idle_seconds:
                out.append(cid)
        elif p.live or p.unread:
            continue
        elif p.unread is None:
            if age >= retention_seconds:
                out.append(cid)
        elif age >= idle_seconds:
            out.append(cid)
    return out


def _mapping(v: Any, name: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{name} is not an object")
    return v


def _size_bound(st: FileState) -> int | None:
    """Most uncompressed bytes the file at ``st.path`` can hold, when ``st.offset`` is past its
    size on disk and it still has identity ``st.content_id``; else ``None`` (no question, or
    the file is gone or holds other content). Only such files are fingerprinted, so loading a
    checkpoint of many files reads no heads in the usual case."""
    if not st.path or st.offset == 0:
        return None
    try:
        size = os.stat(st.path).st_size
    except OSError:
        return None
    if st.offset <= size:
        return None   # within any file of that size: nothing to read (the tailer judges the rest)
    fp = fingerprint_file(st.path)
    if fp is None or fp.content_id != st.content_id:
        return None
    return GZIP_MAX_RATIO * size + 64 if fp.compressed else size


def header_to_dict(h: ZeekHeader | None) -> dict | None:
    if h is None:
        return None
    return {"separator": h.separator.hex(), "set_separator": h.set_separator.hex(),
            "empty_field": h.empty_field.hex(), "unset_field": h.unset_field.hex(),
            "path": h.path, "open": h.open, "fields": list(h.fields), "types": list(h.types)}


def header_from_dict(d: dict | None) -> ZeekHeader | None:
    if not d:
        return None
    return ZeekHeader(separator=bytes.fromhex(d["separator"]),
                      set_separator=bytes.fromhex(d["set_separator"]),
                      empty_field=bytes.fromhex(d["empty_field"]),
                      unset_field=bytes.fromhex(d["unset_field"]),
                      path=d.get("path", ""), open=d.get("open"),
                      fields=list(d.get("fields", [])), types=list(d.get("types", [])))


def _digest(body_text: str) -> str:
    return hashlib.sha256(body_text.encode()).hexdigest()


def encode(cp: Checkpoint) -> bytes:
    body_text = json.dumps(cp.body(), sort_keys=True, separators=(",", ":"))
    return (json.dumps({"format": FORMAT, "version": VERSION, "sha256": _digest(body_text)})[:-1]
            + ',"body":' + body_text + "}\n").encode()


def decode(data: bytes, where: str = "checkpoint") -> Checkpoint:
    """Parse and verify a checkpoint document; raises ``ValueError`` when it is not intact."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a zeekml checkpoint")
    if doc.get("version") != VERSION:
        raise ValueError(f"checkpoint version {doc.get('version')} (expected {VERSION})")
    body = doc.get("body")
    if _digest(json.dumps(body, sort_keys=True, separators=(",", ":"))) != doc.get("sha256"):
        raise ValueError("checkpoint checksum mismatch")
    return Checkpoint.from_body(body, where)


class CheckpointStore:
    """Reads and atomically commits the checkpoint ``<directory>/<name>``.

    Args:
        directory: where the checkpoint lives (created if missing).
        name: file name (default ``checkpoint.json``); the previous generation is
            ``<name>.prev``.
    """

    LEDGER_BATCH = 64
    """Ids in ``done`` beyond the ledger that trigger a ledger rewrite."""

    def __init__(self, directory: str | os.PathLike, name: str = CHECKPOINT_FILE):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, name)
        self.prev_path = self.path + ".prev"
        self.ledger_path = self.path + ".done"
        self._ledger: set[str] = set()
        self.commits = 0
        self.generation = 0     # of the newest checkpoint loaded or committed

    def load(self) -> Checkpoint:
        """The newest intact generation (current, else previous), or an empty checkpoint.

        A file whose offset lies past the end of the file still holding its identity at its
        recorded path was replaced or truncated (or the offset was edited): it is read again
        from its start, with a warning, as the tailer does for a file that shrinks.
        """
        self._ledger = self._load_ledger()
        cp = self._load_main()
        cp.done |= self._ledger
        for cid, st in list(cp.files.items()):
            size = _size_bound(st)
            if size is not None and st.offset > size:
                log.warning("%s: checkpoint offset %d of %s lies past its end (%d bytes); the "
                            "file was replaced or truncated, reading it again from the start",
                            self.path, st.offset, st.path, size)
                cp.files[cid] = FileState(content_id=cid, fmt=st.fmt, path=st.path)
        return cp

    def _load_ledger(self) -> set[str]:
        try:
            with open(self.ledger_path, "rb") as f:
                doc = json.loads(f.read())
            if doc.get("sha256") != _digest(json.dumps(doc.get("done"), separators=(",", ":"))):
                raise ValueError("checksum mismatch")
            return set(doc["done"])
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("%s: damaged ledger of completed files (%s); they may be read again",
                      self.ledger_path, e)
            return set()

    def _load_main(self) -> Checkpoint:
        for path in (self.path, self.prev_path):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("%s: cannot read checkpoint: %s", path, e.strerror)
                continue
            try:
                cp = decode(data, path)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
                log.warning("%s: damaged checkpoint (%s); trying the previous generation", path, e)
                continue
            if path == self.prev_path:
                log.warning("%s: using the previous checkpoint generation", path)
            self.generation = max(self.generation, cp.generation)
            return cp
        return Checkpoint()

    def commit(self, cp: Checkpoint) -> None:
        """Write ``cp`` as the new generation. Raises ``CheckpointError``; the old one stays."""
        new_done = cp.done - self._ledger
        if len(new_done) > self.LEDGER_BATCH:
            ledger = self._ledger | cp.done
            text = json.dumps(sorted(ledger), separators=(",", ":"))
            try:   # write=os.write: this module's os, where fault-injection tests patch it
                atomic_write(self.ledger_path, (
                    '{"sha256":"%s","done":%s}\n' % (_digest(text), text)).encode(), write=os.write)
            except OSError as e:
                raise CheckpointError(f"cannot write the ledger: {e.strerror}",
                                      self.ledger_path) from e
            self._ledger = ledger
            new_done = set()
        body_cp = Checkpoint(cp.generation, cp.files, new_done, cp.outputs, cp.stats,
                             cp.written_at, cp.context)
        old_generation = cp.generation
        cp.generation = body_cp.generation = max(self.generation, cp.generation) + 1
        cp.written_at = body_cp.written_at = time.time()
        data = encode(body_cp)
        tmp = None
        try:
            os.makedirs(self.directory, exist_ok=True)
            # an unpredictable temporary name (O_EXCL): a link planted at a guessable one
            # would make this write land on its target
            tmp = write_temp(self.path, data, write=os.write)
            if os.path.exists(self.path):
                link_tmp = self.prev_path + ".tmp"
                try:
                    os.unlink(link_tmp)
                except FileNotFoundError:
                    pass
                os.link(self.path, link_tmp)
                os.replace(link_tmp, self.prev_path)
            os.replace(tmp, self.path)
            fsync_dir(self.directory)
        except OSError as e:
            cp.generation = old_generation
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise CheckpointError(f"cannot write checkpoint: {e.strerror}", self.path) from e
        self.commits += 1
        self.generation = cp.generation

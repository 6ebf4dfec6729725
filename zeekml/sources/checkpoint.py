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

from zeekml._core.atomic import write_fsync
from zeekml._core.errors import OutputError
from zeekml._core.zeek_format import ZeekHeader

log = logging.getLogger(__name__)

FORMAT = "zeekml-checkpoint"
VERSION = 1


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
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


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
    def from_body(cls, body: dict) -> "Checkpoint":
        return cls(generation=int(body.get("generation", 0)),
                   files={k: FileState.from_dict(v) for k, v in body.get("files", {}).items()},
                   done=set(body.get("done", [])),
                   outputs={k: int(v) for k, v in body.get("outputs", {}).items()},
                   stats=dict(body.get("stats", {})),
                   written_at=float(body.get("written_at", 0.0)),
                   context=dict(body.get("context", {})))


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


def decode(data: bytes) -> Checkpoint:
    """Parse and verify a checkpoint document; raises ``ValueError`` when it is not intact."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a zeekml checkpoint")
    if doc.get("version") != VERSION:
        raise ValueError(f"checkpoint version {doc.get('version')} (expected {VERSION})")
    body = doc.get("body")
    if _digest(json.dumps(body, sort_keys=True, separators=(",", ":"))) != doc.get("sha256"):
        raise ValueError("checkpoint checksum mismatch")
    return Checkpoint.from_body(body)


def _write_whole(path: str, data: bytes) -> None:
    """Temp file, fsync, rename over ``path``, directory fsync."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write_fsync(tmp, data, write=os.write)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Reads and atomically commits the checkpoint ``<directory>/<name>``.

    Args:
        directory: where the checkpoint lives (created if missing).
        name: file name (default ``checkpoint.json``); the previous generation is
            ``<name>.prev``.
    """

    LEDGER_BATCH = 64
    """Ids in ``done`` beyond the ledger that trigger a ledger rewrite."""

    def __init__(self, directory: str | os.PathLike, name: str = "checkpoint.json"):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, name)
        self.prev_path = self.path + ".prev"
        self.ledger_path = self.path + ".done"
        self._ledger: set[str] = set()
        self.commits = 0
        self.generation = 0     # of the newest checkpoint loaded or committed

    def load(self) -> Checkpoint:
        """The newest intact generation (current, else previous), or an empty checkpoint."""
        self._ledger = self._load_ledger()
        cp = self._load_main()
        cp.done |= self._ledger
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
                cp = decode(data)
            except (ValueError, KeyError, TypeError) as e:
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
            try:
                _write_whole(self.ledger_path, (
                    '{"sha256":"%s","done":%s}\n' % (_digest(text), text)).encode())
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
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.directory, exist_ok=True)
            write_fsync(tmp, data, write=os.write)
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
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CheckpointError(f"cannot write checkpoint: {e.strerror}", self.path) from e
        self.commits += 1
        self.generation = cp.generation

"""``zeekml watch``: score a live Zeek log directory, window by window, exactly once.

The loop: the ``DirectoryFollower`` hands over new conn records; they gather in a window that
closes after ``window_seconds`` (default 1 s) or ``window_records`` (default 10 000). A closed
window is scored with the detectors fitted once at start (``pipeline.fitted``, the code
``zeekml score`` runs, so a conn gets the same verdict live and
in batch), its verdicts, notices and quarantined lines are appended to the outputs and fsynced,
the Zeek feedback file is rewritten, and only then is the checkpoint committed with the new file
offsets *and* the new output lengths.

Exactly once across crashes: at start the outputs are cut back to the lengths in the last
checkpoint and reading resumes at its offsets, so a kill -9 at any point replays at most the one
uncommitted window and its output is never doubled. A first start commits an empty checkpoint
before it writes anything, so outputs without a checkpoint were not written by this watch (a
``score`` output, or the checkpoint was deleted): they are refused (``OutputError``, exit 6)
unless ``overwrite`` is set, never cut back to nothing. The verdict sink also drops any verdict id it
has already written (a bounded set seeded from the end of ``verdicts.jsonl``).

Backpressure: when a write fails (disk full, I/O error) the window's partial output is cut back,
the loop stops reading and retries with backoff until the write succeeds; nothing is dropped.
Zeek keeps writing its logs meanwhile and the loop catches up afterwards.

Detectors: those of ``zeekml score`` (the IsolationForest and the shipped learned models). A
per-conn detector's verdict depends on that conn alone: its window is scored at once (in this
process or, with ``score_workers``, in forked processes while the next window is read:
``live.pool``), its lines rendered column by column (``sinks.verdicts``). The learned GNN, autoencoder and MoE
detectors score a conn with the conns around it (graph windows either way in time, host
histories of up to an hour back): ``LiveContext`` keeps the conns they need, holds each conn
back until its forward context has arrived (plus ``context_lateness`` for records Zeek writes
late) and scores it among them (``live.context``), as ``zeekml score`` does on the whole log
(``zeekml.scoring.context``, shared with ``--dask``); the kept conns live in a context journal
committed with the checkpoint (``live.journal``).

Calibration: ``live.calibration``. Outputs and the verdict-id filter: ``live.outputs``.
The verdict-id filter is a set plus a deque (O(1) per id); after windows ``malloc_trim``
(``live.malloc``) hands freed heap pages back, so RSS stays flat once that set is full.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import struct
import sys
import threading
import time
from collections import Counter
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.atomic import atomic_write
from zeekml._core.device import configure_torch
from zeekml._core.errors import OutputError, ZeekmlError
from zeekml._core.outfile import open_output
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch
from zeekml.parse.reject import Quarantine
from zeekml.pipeline.live.calibration import calibrate
from zeekml.pipeline.live.context import LiveContext, score_due
from zeekml.pipeline.live.journal import ContextJournal, WriteFn
from zeekml.pipeline.live.malloc import fix_mmap_threshold, release_heap, rss, trim_heap
from zeekml.pipeline.live.incidents import OPEN_INCIDENTS, STATE_KEY, LiveIncidents
from zeekml.pipeline.live.inflight import ClosedWindow, InFlight, Releases, Windows
from zeekml.pipeline.live.options import (INCIDENT_NOTICES, INCIDENTS, LOCK, NOTICES, OUTPUTS,
                                          QUARANTINE, STATS, VERDICTS, Stopped, WatchOptions,
                                          WatchStats)
from zeekml.pipeline.live.outputs import OutputFiles, VerdictDedup, fields_line
from zeekml.pipeline.live.pool import (DetectorPool, Release, ScorePool, one_thread,
                                       render_allowed, score_window)
from zeekml.scoring.allowlist import Allowlist
from zeekml.scoring.calibrate import fpr_text
from zeekml.scoring.context import horizons
from zeekml.scoring.evidence import SURICATA_KEY, SuricataAlerts, live_suricata_join
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.jsonl import QuarantineWriter
from zeekml.sinks.run_outputs import SUMMARY_FILE
from zeekml.sinks.triage import (BASELINE_FILE, incident_line, incident_notice_header,
                                 incident_notice_lines)
from zeekml.sinks.verdicts import RenderedVerdicts, add_suricata_alerts
from zeekml.sinks.zeek_notice import NoticeWriter
from zeekml.sources.checkpoint import CheckpointStore
from zeekml.sources.tail import DirectoryFollower

log = logging.getLogger(__name__)

# what a `zeekml score` run leaves in its --out that watch never writes (``--overwrite``)
SCORE_ONLY_FILES = (SUMMARY_FILE, BASELINE_FILE)


def _file_sig(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


# While behind with detectors that have a time context, a window is scored as one release
# batch (its conns are due at once): as big as the detectors score in this many seconds, so the
# window's fixed costs (the GNN's 25 s of graph context around a batch, the models' per-call
# set-up, fsyncs, the checkpoint) are spread over more conns without one window holding the
# verdicts of all its conns back longer than that.
CATCH_UP_SECONDS = 5.0


def context_speed(speed: float | None, conns: int, seconds: float) -> float | None:
    """``speed`` (conns scored per second of release, or None) updated with one release of
    ``conns`` in ``seconds`` (releases of fewer than 100 conns say little and are skipped)."""
    if conns < 100 or seconds <= 0:
        return speed
    now = conns / seconds
    return now if speed is None else 0.7 * speed + 0.3 * now


# A window that closes with input left unread (its record limit reached while behind) decides
# no release of the live context: its newest ts is behind what is waiting to be read, so a
# release then leaves out conns that are due already, and they make the next one the longer
# (docs/results/watch.md, "releases that stay short"). At most this many windows in a row are
# held so, so that a watcher catching up on a long backlog still releases as it goes (each
# window at most catch_up_factor x window_records records).
MAX_HELD_WINDOWS = 4


def hold_release(caught_up: bool, held: int, once: bool) -> bool:
    """Whether a window closing now leaves the live context's release to a later window:
    while input is left unread (``caught_up`` False) and fewer than ``MAX_HELD_WINDOWS``
    windows in a row were held (``held``). Never with ``once``: it reads what exists at once,
    and its releases stay those of a window sequence fixed by the input alone."""
    return not once and not caught_up and held < MAX_HELD_WINDOWS


def catch_up_records(opts: WatchOptions, speed: float | None) -> int:
    """Records per window while behind, with detectors that have a time context: what they
    score in ``CATCH_UP_SECONDS`` at ``speed``, between ``window_records`` and
    ``catch_up_factor`` times that (the latter until a speed is known)."""
    most = opts.window_records * opts.catch_up_factor
    if speed is None:
        return most
    return int(min(most, max(opts.window_records, speed * CATCH_UP_SECONDS)))


class Watcher:
    """Follows ``root`` and writes verdicts to ``out_dir``; ``run()`` until stopped.

    Args:
        root: the Zeek log directory.
        out_dir: where verdicts, notices, quarantine, checkpoint, calibration and stats go.
        options: see ``WatchOptions``.
        on_status: called with the stats dict every ``status_seconds``.
        write: ``os.pwrite``-like function for the outputs (fault injection in tests).
    """

    def __init__(self, root: str | os.PathLike, out_dir: str | os.PathLike,
                 options: WatchOptions | None = None,
                 on_status: Callable[[dict], None] | None = None,
                 write: WriteFn | None = None):
        self.root = os.fspath(root)
        self.out_dir = os.fspath(out_dir)
        self.options = options or WatchOptions()
        self.on_status = on_status
        self._write = write
        self.stats = WatchStats()
        self._stop = threading.Event()
        self._follower: DirectoryFollower | None = None
        self._pending_quarantine = QuarantineWriter(None)   # lines kept for the window's commit
        self._quarantine = Quarantine(sink=self._pending_quarantine.write)
        self._ctx: LiveContext | None = None
        self._ctx_speed: float | None = None    # conns/s of releases with a time context
        self._journal: ContextJournal | None = None
        self._pool: ScorePool | None = None
        self._dpool: DetectorPool | None = None
        self._threads_saved: contextlib.ExitStack | None = None   # one_thread's, to undo
        self._trimmed = 0.0
        self._allowlist: Allowlist | None = None
        self._allowlist_sig: tuple[int, int] | None = None
        self._incidents: LiveIncidents | None = None
        self._open_view: list | None = None     # the incidents OPEN_INCIDENTS holds, if known

    @property
    def follower(self) -> DirectoryFollower | None:
        """The directory follower while ``run`` reads (None before and after)."""
        return self._follower

    @property
    def pool(self) -> ScorePool | DetectorPool | None:
        """The scoring processes while ``run`` uses them (``score_workers`` > 0): a
        ``ScorePool`` of whole windows for per-conn detectors, a ``DetectorPool`` sharing out
        the detectors with a time context."""
        return self._pool if self._pool is not None else self._dpool

    def request_stop(self) -> None:
        """Finish the current window, commit and return from ``run`` (signal-handler safe)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.wake()

    # -- setup -------------------------------------------------------------------------------

    def _lock(self) -> int:
        path = os.path.join(self.out_dir, LOCK)
        self._lock_made = not os.path.lexists(path)   # removed again by a refused start
        fd = open_output(path, truncate=False)   # OutputError (exit 6), no symlinks, 0640
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise OutputError("another zeekml watch is using this output directory", path) from e
        return fd

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> WatchStats:
        """Follow, score and commit until stopped (or, with ``once``, until caught up)."""
        opts = self.options
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory: {e.strerror}", self.out_dir) from e
        if not os.path.isdir(self.root):
            from zeekml._core.errors import InputNotFound
            raise InputNotFound("no such directory", self.root)
        # a bad allowlist is the user's one-line error before anything is read or written
        if opts.score.allowlist:
            self._allowlist_sig = _file_sig(opts.score.allowlist)
            self._allowlist = Allowlist.load(opts.score.allowlist)
        lock_fd = self._lock()
        fix_mmap_threshold()
        # Arrow's default pool (mimalloc) keeps freed segments: with the system allocator RSS
        # is 15-20 MB lower (bench/watch.py --rss-probe); the previous pool is back after run()
        arrow_pool = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())
        self.stats.started_at = time.time()
        self._t0 = time.monotonic()
        self._last_status = self._t0
        self._records_at_status = 0
        store = CheckpointStore(self.out_dir)
        try:
            cp = store.load()
            self._check_fresh_outputs(cp)
        except BaseException:
            if self._lock_made:     # a refused start leaves the directory as it found it
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.out_dir, LOCK))
            os.close(lock_fd)
            pa.set_memory_pool(arrow_pool)
            raise
        outputs = OutputFiles(self.out_dir, cp.outputs, self._write,
                              conn_notices=opts.score.conn_notices,
                              fields={NOTICES: fields_line(NoticeWriter.header()),
                                      INCIDENT_NOTICES: fields_line(incident_notice_header())})
        # the open incidents' alerts as of the last commit (the outputs were cut back to it)
        self._incidents = LiveIncidents(lateness=opts.context_lateness,
                                        state=cp.stats.get(STATE_KEY))
        # Suricata alerts read but not yet joined onto their flow (scoring.evidence)
        self._suricata = SuricataAlerts(state=cp.stats.get(SURICATA_KEY))
        feedback = None
        try:
            if cp.generation == 0:
                # first start: an empty checkpoint before any output, so that outputs without
                # a checkpoint are known not to be ours (``_check_fresh_outputs``)
                cp.outputs = dict(outputs.lengths)
                store.commit(cp)
            dedup = VerdictDedup(opts.dedup_capacity)
            dedup.seed_from(outputs.path(VERDICTS), outputs.lengths[VERDICTS])
            try:
                fitted = calibrate(self.root, self.out_dir, opts, cp, self.stats, self._stop,
                                   self._calibration_wait,
                                   on_baseline=self._incidents.set_baseline)
                self._incidents.alert_rate = fpr_text(fitted.fpr, fitted.effective_fpr)
            except Stopped:
                self.stats.state = "stopped"
                return self.stats
            except OSError as e:   # calibration.json or the baseline log (a full disk): exit 6
                raise OutputError(f"cannot write the calibration: {e.strerror or e}",
                                  self.out_dir) from e
            back, fwd = horizons(fitted)
            if back > 0 or fwd > 0:
                self._journal = ContextJournal(self.out_dir, cp.context, self._write,
                                               opts.journal_compact_bytes,
                                               opts.journal_compact_ratio)
                threads = opts.context_threads
                if threads is None:
                    # the learned detectors loaded torch with the cores free then
                    threads = configure_torch() if "torch" in sys.modules else 1
                self._ctx = LiveContext(fitted, opts.context_lateness, opts.context_max_rows,
                                        opts.context_batch_seconds, opts.context_release_wait,
                                        threads=threads, idle_wait=(
                                            opts.context_idle_wait if opts.score_workers > 0
                                            and not opts.once else None))
                try:
                    self._ctx.replay(self._journal.read())
                except (ZeekmlError, ValueError, KeyError, struct.error, pa.ArrowException) as e:
                    raise ZeekmlError(
                        f"damaged context journal ({type(e).__name__}: {e}); the conns it holds "
                        "back cannot be restored: use a new --out",
                        os.path.join(self.out_dir, self._journal.name)) from e
                log.info("detectors with a time context: %g s back, %g s forward; %d conns "
                         "restored (%d pending)", back, fwd, self._ctx.rows, self._ctx.pending)
                self._context_stats()
            if opts.score.zeek_feedback:
                from zeekml.sinks.zeek_input import ZeekFeedback
                feedback = ZeekFeedback(opts.score.zeek_feedback,
                                        conn_notices=opts.score.conn_notices)
            if self._ctx is None and opts.score_workers > 0:
                self._pool = ScorePool(fitted, opts.score_workers, self._allowlist)
            elif opts.score_workers > 0:
                self._threads_saved = one_thread()
                self._dpool = DetectorPool(fitted, opts.score_workers)
                log.info("detectors shared out to %d scoring processes: %s", len(self._dpool),
                         ", ".join(f"{d.name} -> {'watcher' if o < 0 else f'process {o}'}"
                                   for d, o in zip(fitted.detectors, self._dpool.owner)))
            follower = DirectoryFollower(
                self.root, cp.files, self._quarantine, done=cp.done,
                max_line_bytes=opts.max_line_bytes,
                rescan_seconds=opts.rescan_seconds, use_events=opts.use_events,
                exclude=[self.out_dir], allow_symlinks_out=opts.follow_symlinks_out)
            self._follower = follower
            follower.start()
            self.stats.state = "running"
            try:
                self._loop(follower, fitted, outputs, dedup, feedback, store, cp)
            finally:
                # the files read, counted while the follower still holds them: the final
                # status below comes after it stopped (it said "0/0 files" after a --once run)
                self._count_files(follower)
                follower.stop()
                self._follower = None
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._dpool is not None:
                self._dpool.close()
                self._dpool = None
            if self._threads_saved is not None:
                self._threads_saved.close()
                self._threads_saved = None
            outputs.close()
            if self._journal is not None:
                self._journal.close()
            self._status_maybe(self._follower, force=True)
            os.close(lock_fd)
            pa.set_memory_pool(arrow_pool)
        return self.stats

    def _check_fresh_outputs(self, cp) -> None:
        """Without a checkpoint the outputs would be cut back to nothing: refuse non-empty ones
        (exit 6: this output directory cannot be written without destroying what it holds)
        unless ``overwrite``."""
        if cp.generation > 0 or cp.outputs:
            return
        held = []
        for name in OUTPUTS:
            try:
                size = os.lstat(os.path.join(self.out_dir, name)).st_size
            except FileNotFoundError:
                continue
            except OSError as e:
                raise OutputError(f"cannot read: {e.strerror}", os.path.join(self.out_dir, name)) from e
            if size > 0:
                held.append(f"{name} ({size:,} bytes)")
        if not held:
            return
        if not self.options.overwrite:
            raise OutputError(
                f"holds {', '.join(held)} but no intact watch checkpoint (a score output, or "
                "checkpoint.json and .prev were deleted or damaged): give another --out, or "
                "--overwrite to replace them", self.out_dir)
        log.warning("%s: --overwrite: replacing %s (no watch checkpoint)", self.out_dir,
                    ", ".join(held))
        # a score run's own files, which watch does not write: left, `zeekml report` would
        # read that run's summary beside this watch's verdicts
        for name in SCORE_ONLY_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.out_dir, name))

    def _loop(self, follower, fitted, outputs, dedup, feedback, store, cp) -> None:
        opts = self.options
        final_done = False      # --once: follower.final_pass() was read
        window: list = []
        window_rows = 0
        window_started: float | None = None
        dirty = False
        q_seen = self._quarantine.count
        pool = self._pool
        finish_window = functools.partial(self._finish_window, outputs=outputs, dedup=dedup,
                                          feedback=feedback, store=store, cp=cp)
        flight: InFlight = (Releases(finish_window, self._dpool) if self._dpool is not None
                             else Windows(finish_window, len(pool) if pool is not None else 0))
        held = 0               # windows in a row that left the release to a later one

        try:
            if feedback is not None:
                # both files from the start (header only until something alerts): the Zeek
                # package's input streams open them when Zeek starts, not at the first alert;
                # a full disk here stalls as any output does
                self._durably(feedback.write)
            while True:
                stopping = self._stop.is_set()
                # behind (unread bytes left after the last read): windows of up to 4x
                # window_records, so the fixed costs of a window (fsyncs, the checkpoint, the
                # detectors' per-call overhead) are paid less often while catching up
                limit = opts.window_records * (1 if follower.caught_up else opts.catch_up_factor)
                if self._ctx is not None and not follower.caught_up:
                    limit = catch_up_records(opts, self._ctx_speed)
                want = max(1, limit - window_rows)
                got = [] if stopping else follower.poll(max_records=want)
                if opts.once and not stopping and not got and follower.caught_up \
                        and not final_done:
                    # --once ends with what exists now: unterminated last lines, archives
                    # that will never be whole (read to their damage)
                    final_done = True
                    got = follower.final_pass()
                now = time.monotonic()
                for b in got:
                    self.stats.records_read += b.num_rows
                    if is_conn_batch(b):
                        window.append(b)
                        window_rows += b.num_rows
                        self.stats.conn_records += b.num_rows
                    else:
                        self.stats.other_records += b.num_rows
                        self._suricata.add(b)
                if got or not follower.caught_up or self._quarantine.count != q_seen:
                    dirty = True
                    q_seen = self._quarantine.count
                    if window_started is None:
                        window_started = now
                idle = follower.caught_up and not got
                if opts.once and idle and self._ctx is not None and self._ctx.pending:
                    dirty = True       # --once: the conns held back for their context are due now
                if opts.once and idle and self._incidents.alerts:
                    dirty = True       # --once: the open incidents close at its end
                due = dirty and (stopping or window_rows >= limit
                                 or (window_started is not None
                                     and now - window_started >= opts.window_seconds)
                                 or (opts.once and idle))
                if due and self._allowlist_changed():
                    flight.finish(0)   # the windows sent so far were scored with the old rules
                    if pool is not None:
                        pool.close()
                        self._pool = pool = ScorePool(fitted, len(pool), self._allowlist)
                if due:
                    flight.before_close()
                    hold = self._ctx is not None and not stopping \
                        and hold_release(follower.caught_up, held, opts.once)
                    held = held + 1 if hold else 0
                    flight.closed(self._close_window(window, follower, fitted,
                                                     flush=opts.once and idle and not stopping,
                                                     hold=hold))
                    window, window_rows, window_started, dirty = [], 0, None, False
                flight.settle(stopping, idle, opts.once)
                self._status_maybe(follower)
                if stopping:
                    self.stats.state = "stopped"
                    return
                if opts.once and idle and not dirty and self._incidents.alerts:
                    # the last window's alerts (scored in a worker) came in with finish():
                    # one more, empty window closes their incidents
                    continue
                if opts.once and idle and not dirty:
                    self.stats.state = "done"
                    return
                if idle:
                    if window_started is not None:
                        # a window is open: read what arrives in bigger bites (a tenth of the
                        # window) instead of waking on every write, whose small batches cost
                        # about twice as much per record to parse and gather
                        left = max(0.0, opts.window_seconds - (now - window_started))
                        flight.wait(min(left, opts.window_seconds / 10, 0.1), self._stop)
                    elif flight.busy:
                        flight.wait(0.1, self._stop)
                    else:
                        follower.wait(min(opts.rescan_seconds, opts.status_seconds, 1.0))
        except Stopped:
            log.warning("stopped while the output was not writable; the last windows were not "
                        "committed and will be read again")
            self.stats.state = "stopped (stalled)"

    def _allowlist_changed(self) -> bool:
        """Reload the allowlist when its file changed (checked as each window closes: one
        stat); the windows closed from now on are scored with the new rules. A file that no
        longer loads keeps the rules loaded, with a warning (a typo must not stop the watch)."""
        path = self.options.score.allowlist
        if not path:
            return False
        sig = _file_sig(path)
        if sig == self._allowlist_sig:
            return False
        self._allowlist_sig = sig
        try:
            new = Allowlist.load(path)
        except ZeekmlError as e:
            self.stats.last_error = str(e)
            log.warning("allowlist not reloaded (%s); keeping its %d rules loaded before", e,
                        len(self._allowlist))
            return False
        log.warning("allowlist %s reloaded: %d rules (were %d)", path, len(new),
                    len(self._allowlist))
        self._allowlist = new
        return True

    def _close_window(self, window, follower, fitted, flush: bool = False,
                      hold: bool = False) -> ClosedWindow:
        """Take what the window's commit needs now (its conns go to be scored, its quarantined
        lines and the follower's progress are kept) and go on reading. With ``hold`` (and a
        live context) the window's conns only join the context; nothing is released
        (``hold_release``)."""
        table = conn_table(window) if window else None
        qlines = self._pending_quarantine.take_lines()
        files, done = follower.snapshot()
        self.stats.windows += 1
        t = pc.max(table.column("ts")).as_py() if table is not None and table.num_rows else None
        ctx = self._ctx
        if ctx is not None and hold:
            if table is not None:
                ctx.add(table)
            log.debug("window of %d conns closed at %.3f (watermark %.3f, %d pending): release "
                      "held, input left unread", table.num_rows if table is not None else 0,
                      time.time(), ctx.watermark, ctx.pending)
            w = ClosedWindow(RenderedVerdicts(), None, qlines, files, done, ctx.journal_delta())
            table = CONN_SCHEMA.empty_table()
        elif ctx is not None and self._dpool is not None:
            if table is not None:
                ctx.add(table)
            own, dets = ctx.due(fitted, flush=flush,
                                idle=not self._dpool.busy and not self._dpool.queued)
            rel = self._dpool.submit(own, dets, fitted)
            if log.isEnabledFor(logging.DEBUG):
                ts = pc.min_max(own.column("ts")).as_py() if own.num_rows else None
                log.debug("window of %d conns closed at %.3f (watermark %.3f, %d pending): "
                          "%s", table.num_rows if table is not None else 0, time.time(),
                          ctx.watermark, ctx.pending,
                          f"release {rel.number} of {own.num_rows} conns, ts "
                          f"{ts['min']} .. {ts['max']}" if ts else "nothing released")
            w = ClosedWindow(None, None, qlines, files, done, ctx.journal_delta(),
                        release=rel, allowlist=self._allowlist)
            table = own
        elif ctx is not None:
            if table is not None:
                ctx.add(table)
            t0 = time.monotonic()
            with release_heap():         # the learned detectors' big arrays (live.malloc)
                released = ctx.release(fitted, flush=flush)
            self._ctx_speed = context_speed(self._ctx_speed, len(released),
                                            time.monotonic() - t0)
            scored = render_allowed(released, self._allowlist)
            w = ClosedWindow(scored, None, qlines, files, done, ctx.journal_delta())
            table = released.table
        elif self._pool is not None and table is not None and table.num_rows:
            w = ClosedWindow(None, self._pool.submit(table), qlines, files, done)
        else:
            w = ClosedWindow(score_window(table, fitted, self._allowlist), None, qlines, files, done)
        w.suricata, w.suricata_state = live_suricata_join(self._suricata, table, t)
        w.log_time, w.flush, w.conns = t, flush, table
        return w

    def _released(self, rel: Release, allowlist: Allowlist | None) -> RenderedVerdicts:
        """The rendered verdicts of a release scored by the ``DetectorPool``: what
        ``LiveContext.release`` and ``render_allowed`` make of the same scores."""
        raw = self._dpool.collect(rel)
        self._ctx_speed = context_speed(self._ctx_speed, rel.own.num_rows, rel.seconds)
        return render_allowed(score_due(rel.own, rel.dets, rel.fitted, raw), allowlist)

    def _finish_window(self, w: ClosedWindow, *, outputs, dedup, feedback, store, cp) -> None:
        """Write the window's verdicts, notices and quarantined lines, then commit the
        checkpoint with the follower's progress as of the window's close."""
        if w.release is not None:
            scored = self._released(w.release, w.allowlist)
        else:
            scored = w.scored if w.scored is not None else self._pool.result(w.ticket)
        ids, lines = scored.ids, scored.lines
        if w.suricata:
            add_suricata_alerts(lines, w.suricata)
        keep: list[bytes] | None = None
        if dedup.capacity > 0:
            add = dedup.add
            fresh = [add(i) for i in ids]
            if not all(fresh):
                keep = [line for line, f in zip(lines, fresh) if f]
                self.stats.duplicates_dropped += len(ids) - len(keep)
        else:
            fresh = None
        notices = NoticeWriter(None)
        alerts: list[Verdict] = []
        alert_rows: list[int] = []
        notes: Counter[str] = Counter()
        for i, v in scored.alerts:
            if fresh is not None and not fresh[i]:
                continue
            alert_rows.append(i)
            if w.suricata and i in w.suricata:
                v.suricata_alerts = w.suricata[i]
            notices.write(v)
            alerts.append(v)
            notes[v.note] += 1
        written = lines if keep is None else keep
        incidents = self._incidents
        incidents.add(alerts, w.log_time, w.conns, alert_rows)
        closed, still_open = incidents.update(flush=w.flush)
        parts = {VERDICTS: b"".join(written), QUARANTINE: b"".join(w.quarantine),
                 NOTICES: notices.take_lines() if self.options.score.conn_notices else b"",
                 INCIDENTS: b"".join(map(incident_line, closed)),
                 INCIDENT_NOTICES: incident_notice_lines(closed)}
        if parts[NOTICES] and outputs.lengths[NOTICES] == 0:
            parts[NOTICES] = NoticeWriter.header() + parts[NOTICES]
        if parts[INCIDENT_NOTICES] and outputs.lengths[INCIDENT_NOTICES] == 0:
            parts[INCIDENT_NOTICES] = incident_notice_header() + parts[INCIDENT_NOTICES]
        self._durably(lambda: outputs.append(parts))
        journal, ctx = self._journal, self._ctx
        if journal is not None:
            if journal.needs_compaction(lambda: ctx.nbytes):
                snap = ctx.snapshot()
                self._durably(lambda: journal.rewrite(snap))
            else:
                self._durably(lambda: journal.append(w.journal or b""))
            cp.context = journal.committed()
            self._context_stats()
        if feedback is not None and (alerts or closed):
            # the closed incidents (and, with --conn-notices, the alerts) for Zeek: added by
            # id, so a window written again after a crash adds nothing (exactly once)
            self._durably(lambda: feedback.write(alerts, closed))
        cp.files, cp.done = w.files, w.done
        cp.outputs = dict(outputs.lengths)
        self.stats.scored += len(ids)
        self.stats.verdicts_written += len(written)
        self.stats.alerts += len(alerts)
        for k, n in notes.items():
            self.stats.alerts_by_note[k] = self.stats.alerts_by_note.get(k, 0) + n
        cp.stats = {"verdicts_written": self.stats.verdicts_written, "alerts": self.stats.alerts,
                    STATE_KEY: incidents.state()}
        if w.suricata_state:
            cp.stats[SURICATA_KEY] = w.suricata_state
        self._durably(lambda: store.commit(cp))
        if (closed or still_open or w.flush) and not self._open_view_is(still_open):
            # a view of the incidents as they grow, rewritten whole: incidents.jsonl is the
            # exactly-once record. Not rewritten while they are the very incidents written
            # last (``LiveIncidents.update`` gives the same objects until an alert comes or one
            # closes): rendering every open incident after each window cost more than the
            # windows' verdicts
            try:
                atomic_write(os.path.join(self.out_dir, OPEN_INCIDENTS),
                             b"".join(map(incident_line, still_open)))
                self._open_view = list(still_open)
            except OSError as e:
                self._open_view = None
                log.warning("cannot write %s: %s", OPEN_INCIDENTS, e)
        if journal is not None:
            journal.after_commit()
        self.stats.commits += 1
        self.stats.checkpoint_generation = cp.generation
        self.stats.incidents = {"open": len(still_open), "open_alerts": len(incidents.alerts),
                                "closed": incidents.closed}
        now = time.monotonic()
        if now - self._trimmed >= 0.1:
            trim_heap()     # the freed pages of the window's arrays (see live.malloc)
            self._trimmed = now

    def _open_view_is(self, still_open: list) -> bool:
        """Whether ``OPEN_INCIDENTS`` holds just ``still_open`` (the same objects, in order)."""
        last = self._open_view
        return last is not None and len(last) == len(still_open) \
            and all(a is b for a, b in zip(last, still_open))

    def _context_stats(self) -> None:
        c = self._ctx
        self.stats.context = {
            "back_s": c.back, "forward_s": c.fwd, "lateness_s": c.lateness, "rows": c.rows,
            "pending": c.pending, "late": c.late, "evicted_early": c.evicted_early,
            "released_early": c.released_early,
            "journal_bytes": self._journal.length if self._journal else 0}

    def _durably(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` until it succeeds; on output errors wait and retry (backpressure). With
        ``--once`` the retries end after ``once_stall_seconds`` (the run stops as stalled, exit 6)."""
        delay = self.options.retry_seconds
        give_up = time.monotonic() + self.options.once_stall_seconds if self.options.once else None
        while True:
            try:
                fn()
                if self.stats.stalled:
                    log.warning("output writable again; resuming")
                self.stats.stalled = False
                return
            except OutputError as e:
                self.stats.stalls += 1
                self.stats.stalled = True
                self.stats.last_error = str(e)
                log.warning("output stalled (%s); retrying in %.1f s, nothing is dropped", e, delay)
                self._status_maybe(self._follower, force=False)
                if give_up is not None and time.monotonic() >= give_up:
                    log.warning("--once: an output stayed unwritable for %.0f s; stopping",
                                self.options.once_stall_seconds)
                    raise Stopped from e
                if self._stop.wait(delay):
                    raise Stopped from e
                delay = min(delay * 2, self.options.max_retry_seconds)

    def _calibration_wait(self, follower: DirectoryFollower, collected: int) -> None:
        self._status_maybe(follower, force=False, calibrating=collected)

    # -- status ------------------------------------------------------------------------------

    def _count_files(self, follower: DirectoryFollower) -> None:
        """The follower's figures in ``stats``: lag, bytes behind, files tracked and open."""
        s = self.stats
        s.lag_s = follower.lag_seconds()
        s.bytes_behind = follower.bytes_behind()
        s.files_tracked = len(follower.states) + len(follower.done)
        s.files_open = len(follower.readers)
        s.rescans = follower.rescans

    def _status_maybe(self, follower: DirectoryFollower | None, force: bool = False,
                      calibrating: int | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.options.status_seconds:
            return
        s = self.stats
        dt = now - self._last_status
        if dt > 0:
            s.records_per_s = (s.records_read - self._records_at_status) / dt
        self._last_status = now
        self._records_at_status = s.records_read
        s.quarantined = self._quarantine.count
        s.quarantine_by_reason = dict(self._quarantine.by_reason)
        if follower is not None:
            self._count_files(follower)
        if calibrating is not None:
            # a baseline period is read to its end, however many conns it holds
            wanted = (self.options.baseline_records
                      if self.options.score.baseline_period() is None else None)
            s.calibration = {"collected": calibrating, "wanted": wanted}
        s.rss_bytes = rss()
        s.updated_at = time.time()
        d = s.to_dict()
        try:
            atomic_write(os.path.join(self.out_dir, STATS), (json.dumps(d, indent=1) + "\n").encode())
        except OSError as e:
            log.debug("cannot write stats: %s", e)
        if self.on_status is not None:
            self.on_status(d)

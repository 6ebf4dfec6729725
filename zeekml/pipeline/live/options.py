"""Settings, counters, output file names and the status line of ``zeekml watch``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from zeekml.pipeline.options import ScoreOptions
from zeekml.sinks.jsonl import QUARANTINE_FILE
from zeekml.sinks.triage import INCIDENT_NOTICE_FILE, INCIDENTS_FILE
from zeekml.sinks.verdicts import VERDICTS_FILE
from zeekml.sinks.zeek_notice import NOTICE_FILE

VERDICTS = VERDICTS_FILE
NOTICES = NOTICE_FILE
QUARANTINE = QUARANTINE_FILE
INCIDENTS = INCIDENTS_FILE
INCIDENT_NOTICES = INCIDENT_NOTICE_FILE
OUTPUTS = (VERDICTS, NOTICES, QUARANTINE, INCIDENTS, INCIDENT_NOTICES)
CALIBRATION = "calibration.json"
BASELINE_LOG = "calibration-baseline.log"
FEEDBACK_LOG = "calibration-feedback.log"
STATS = "stats.json"
LOCK = "watch.lock"


class Stopped(Exception):
    """Stop requested while waiting (for a writable output, or for baseline conns)."""


@dataclass
class WatchOptions:
    """Settings of ``zeekml watch``.

    Args:
        score: detectors, fpr, seed, baseline logs and the Zeek feedback file, as for ``score``.
        baseline_records: without ``score.baseline``, calibrate on this many first conns
            (default 10000).
        recalibrate: ignore a calibration saved in the output directory.
        window_seconds: a window closes this long after its first record (default 1.0).
        window_records: ... or when it holds this many records (default 10000).
        catch_up_factor: while behind (unread bytes after a read), windows hold up to this many
            times ``window_records`` (default 4), which spreads a window's fixed costs.
        rescan_seconds: full directory rescan period (default 2.0).
        use_events: react to watchdog events between rescans (default ``True``).
        once: process what exists now, then exit.
        status_seconds: status callback and stats file period (default 5.0).
        max_line_bytes: longer input lines are quarantined (default 1 MiB).
        retry_seconds: first backoff when an output write fails (default 0.5; doubles to
            ``max_retry_seconds``, default 10.0).
        once_stall_seconds: with ``once``, how long one output may stay unwritable before the
            run stops as stalled (default 60.0): a one-shot run must end, a live one waits for
            the disk as long as it takes.
        dedup_capacity: verdict ids remembered to drop duplicates (default 200000).
        context_lateness: detectors with a time context: how many seconds behind the newest
            ``ts`` a conn may still arrive and be counted as context of its neighbours (default
            300, Zeek's TCP inactivity timeout); each conn's verdict waits that long plus the
            detectors' forward horizon (see ``LiveContext``).
        context_max_rows: at most this many conns kept as context and pending (default 1000000).
        context_batch_seconds: held-back conns are released in batches spanning this many
            seconds of ``ts`` (default 60) ...
        context_release_wait: ... but conns that are due wait at most this many seconds of
            wall-clock time for their batch to fill (default 5; None: until it is full),
            counted from the last release when they are due at the first check after it.
        context_idle_wait: ... and at most this many while ``score_workers`` processes score
            the learned detectors and none of them has a release in hand (default 2; None: as
            long as ``context_release_wait``): a batch fills to spread each release's fixed
            costs, which is worth waiting for only while the processes have work; with them
            idle, the conns due go at once, so the releases come as fast as the processes
            score them (not with ``once``, whose releases stay fixed by the input).
        context_threads: the detectors of a release score side by side in this many threads
            (default 1: in turn; None: as many as torch was given, the cores free when the
            models loaded, ``zeekml._core.device``). Not the default until measured on a quiet
            2-core machine: on the shared one (load 6-8) two threads gained nothing
            (docs/results/watch.md).
        score_workers: score in this many forked processes while this one goes on reading
            (default 0: in this process). Per-conn detectors only: each process scores whole
            windows. With detectors that have a time context (the learned ones): each process
            owns some of the detectors and scores their share of every release, this process
            the rest (``live.pool.DetectorPool``); every process then runs torch on one thread,
            and the verdicts are the bytes of this process scoring alone at one thread.
        journal_compact_bytes: the context journal is rewritten whole once it is past this
            size (default 64 MiB) ...
        journal_compact_ratio: ... and this many times the size of the conns it holds
            (default 4).
        overwrite: replace outputs found in the output directory without a watch checkpoint
            (default ``False``: refused with an ``OutputError``, exit 6).
        follow_symlinks_out: follow symlinks in the log directory whose target is outside it
            (default ``False``: skipped with a warning; see ``sources.tail``).
    """

    score: ScoreOptions = field(default_factory=ScoreOptions)
    baseline_records: int = 10_000
    recalibrate: bool = False
    window_seconds: float = 1.0
    window_records: int = 10_000
    catch_up_factor: int = 4
    rescan_seconds: float = 2.0
    use_events: bool = True
    once: bool = False
    status_seconds: float = 5.0
    max_line_bytes: int = 1 << 20
    retry_seconds: float = 0.5
    max_retry_seconds: float = 10.0
    once_stall_seconds: float = 60.0
    dedup_capacity: int = 200_000
    context_lateness: float = 300.0
    context_max_rows: int = 1_000_000
    context_batch_seconds: float = 60.0
    context_release_wait: float | None = 5.0
    context_idle_wait: float | None = 2.0
    context_threads: int | None = 1
    score_workers: int = 0
    journal_compact_bytes: int = 64 << 20
    journal_compact_ratio: float = 4.0
    overwrite: bool = False
    follow_symlinks_out: bool = False


@dataclass
class WatchStats:
    """Counters of one ``watch`` process (written to ``OUTDIR/stats.json``)."""

    started_at: float = 0.0
    updated_at: float = 0.0
    state: str = "starting"
    records_read: int = 0
    conn_records: int = 0
    other_records: int = 0
    scored: int = 0
    verdicts_written: int = 0
    duplicates_dropped: int = 0
    alerts: int = 0
    alerts_by_note: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    commits: int = 0
    checkpoint_generation: int = 0
    stalls: int = 0
    stalled: bool = False
    last_error: str = ""
    records_per_s: float = 0.0
    lag_s: float = 0.0
    bytes_behind: int = 0
    files_tracked: int = 0
    files_open: int = 0
    rescans: int = 0
    rss_bytes: int = 0
    calibration: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)
    incidents: dict = field(default_factory=dict)   # open (alerts kept) and closed (written)

    def to_dict(self) -> dict:
        """The counters as a JSON-ready dict."""
        return asdict(self)


def status_line(d: dict) -> str:
    """One human line from a stats dict."""
    cal = d.get("calibration") or {}
    if d["state"] == "calibrating" and "collected" in cal:
        # conns are collected for the baseline, not yet scored: records/s would read 0
        wanted = f"/{cal['wanted']:,}" if cal.get("wanted") else ""
        return (f"calibrating: baseline {cal['collected']:,}{wanted} conns, "
                f"{d['files_open']}/{d['files_tracked']} files")
    line = (f"{d['state']}: {d['records_per_s']:,.0f} records/s, lag {d['lag_s']:.1f} s, "
            f"{d['scored']:,} scored, {d['alerts']:,} alerts, {d['quarantined']:,} quarantined, "
            f"{d['files_open']}/{d['files_tracked']} files")
    c = d.get("context") or {}
    if c:
        line += f", {c.get('pending', 0):,} held for context"
        if c.get("late"):
            line += f" ({c['late']:,} late)"
    if d.get("stalled"):
        line += f", STALLED: {d['last_error']}"
    return line

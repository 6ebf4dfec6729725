"""The settings and the summary of one scoring run, shared by batch, Dask and live scoring."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np

from zeekml._core.errors import ZeekmlError
from zeekml.flows.select import earliest_rows, format_time, rows_in_range


# How each command takes another baseline, named in the messages that ask for one (a too small
# or infected baseline): each command's own options, never one it does not have
SCORE_BASELINE_OPTIONS = "--baseline, --baseline-fraction, --baseline-until or --baseline-range"
WATCH_BASELINE_OPTIONS = "--baseline, --baseline-records, --baseline-until or --baseline-range"
REPLAY_BASELINE_OPTIONS = ("a longer capture, or `zeekml score` of the conn.log it wrote with "
                           "--baseline")


DEFAULT_CHUNK_ROWS = 50_000
"""Conns scored together beyond ``chunked.ONE_TABLE_CHUNKS`` chunks, with learned detectors
(without them twice as many: ``ScoreOptions.rows_per_chunk``). Peak memory grows with it (the
chunk, its context rows, its verdicts rendered as text, and with the chunks overlapped in lanes
the next chunk's working set beside them) and so does the speed of the learned models' batched
inference. Measured on two 1M-conn logs with the shipped models (``bench/README.md``, "Archives
beyond one chunk"): 50k-conn chunks in lanes score as fast as 100k-conn chunks did before the
lanes or faster (5-13% on a quiet box, within the noise on a loaded one), at a 12% lower peak;
100k-conn chunks in lanes peaked 11-16% above the code before, for no consistent gain in time."""


@dataclass
class ScoreOptions:
    """Settings of one scoring run.

    Args:
        fpr: target false-positive rate of the combined score (any detector past its
            threshold) on held-out baseline conns (default 0.001).
        baseline: logs of a period taken as normal, to fit and calibrate on. Default: the
            earliest ``baseline_fraction`` of the scored records by ``ts``.
        baseline_fraction: share of the input taken as baseline when no other choice is
            given (default 0.3).
        baseline_until: the input's conns with ``ts`` before this epoch time are the baseline
            (default None).
        baseline_range: ``(start, end)`` epoch times: the input's conns with
            ``start <= ts < end`` are the baseline (default None).
        seed: makes fitting reproducible.
        zeek_feedback: also write the files that the Zeek package reads (the incident file,
            and the verdict file: its rows only with ``conn_notices``).
        conn_notices: also one notice per alerting conn (``zeekml_notice.log``, and the
            verdict file's rows for Zeek); default ``False``: one ``ZeekML::Suspicious_Host``
            notice per incident only (``--conn-notices``).
        baseline_options: how the running command takes another baseline, for the messages
            that ask for one (default ``zeekml score``'s options; ``watch`` and ``replay`` have
            others).
    """

    fpr: float = 0.001
    baseline: list[str] = field(default_factory=list)
    baseline_fraction: float = 0.3
    baseline_until: float | None = None
    baseline_range: tuple[float, float] | None = None
    seed: int = 0
    zeek_feedback: str | None = None
    conn_notices: bool = False
    detectors: list[str] = field(default_factory=lambda: ["iforest"])
    models_dir: str | None = None   # learned detectors; None = none, "" = the shipped models/
    device: str = "cpu"
    dask: str | None = None         # "local", "local:N" or a scheduler address
    split_bytes: int = 64 << 20     # Dask: plain files larger than this are cut into tasks
    allowlist: str | None = None    # TOML [[rule]] file: matching conns are scored, never alert
    feedback: str | None = None     # feedback.jsonl: its benign conns join the baseline
    # score: conns scored together; an input of over two chunks is spilled to a temporary file
    # and scored chunk by chunk, so memory does not grow with it (zeekml.pipeline.chunked).
    # None: 50k conns with learned detectors (their working sets side by side set the peak),
    # 100k without (nothing to bound there, and 1M conns took 5% longer in 50k-conn chunks)
    chunk_rows: int | None = None
    baseline_options: str = SCORE_BASELINE_OPTIONS

    def rows_per_chunk(self) -> int:
        """``chunk_rows``, or what it defaults to for this run's detectors."""
        if self.chunk_rows is not None:
            return self.chunk_rows
        return DEFAULT_CHUNK_ROWS if self.models_dir is not None else 2 * DEFAULT_CHUNK_ROWS

    def baseline_period(self) -> tuple[float | None, float | None] | None:
        """``(start, end)`` of the baseline period asked (None = open), or None when the
        baseline is a fraction of the input (or ``baseline`` files)."""
        if self.baseline_range is not None:
            return float(self.baseline_range[0]), float(self.baseline_range[1])
        if self.baseline_until is not None:
            return None, float(self.baseline_until)
        return None

    def baseline_rows(self, ts: np.ndarray) -> np.ndarray:
        """Sorted indices of the baseline conns among conns of times ``ts`` (``ts_sort_key``):
        those of the period asked, else the earliest ``baseline_fraction`` (at least one).
        A period that holds no conn is a ``ZeekmlError`` naming the input's time span."""
        period = self.baseline_period()
        if period is None:
            return earliest_rows(ts, self.baseline_fraction, min_rows=1)
        rows = rows_in_range(ts, *period)
        if len(rows) == 0 and len(ts):
            finite = ts[np.isfinite(ts)]
            span = (f"the input spans {format_time(float(finite.min()))} to "
                    f"{format_time(float(finite.max()))}" if len(finite) else "no conn has a ts")
            start, end = period
            asked = (f"before {format_time(end)}" if start is None else
                     f"from {format_time(start)} to {format_time(end)}")
            raise ZeekmlError(f"no conns {asked} to take as baseline: {span}")
        return rows


@dataclass
class ScoreSummary:
    """Counts, thresholds and output paths of one scoring run (``summary.json``)."""

    files: int = 0
    files_failed: list[tuple[str, str]] = field(default_factory=list)
    # the error of each of files_failed, in order (not in summary.json): what a run that read
    # nothing exits with (``failed_exit_code``)
    file_errors: list[ZeekmlError] = field(default_factory=list, repr=False, compare=False)
    tasks_retried: list[dict] = field(default_factory=list)   # --dask: path, start, end, step, attempts
    records_read: int = 0
    conn_records: int = 0
    other_records: int = 0
    quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    scored: int = 0
    baseline_records: int = 0
    feedback_baseline: int | None = None   # --feedback: input conns it added to the baseline
    alerts: int = 0
    alerts_by_note: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, dict] = field(default_factory=dict)
    effective_fpr: float | None = None   # what the thresholds deliver together (>= --fpr)
    calibration: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    def failed_exit_code(self) -> int:
        """The exit code of a run none of whose files could be read: the one code their errors
        share (3 every file of an unknown format, 4 every file unreadable), else 1."""
        codes = {e.exit_code for e in self.file_errors}
        return codes.pop() if len(codes) == 1 else ZeekmlError.exit_code

    @property
    def flows_per_s(self) -> float:
        """Conns scored per second of the whole run."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """The fields and ``flows_per_s``, as written to ``summary.json``; ``feedback_baseline``
        only with ``--feedback`` (a run without it writes the keys it always wrote)."""
        d = asdict(dataclasses.replace(self, file_errors=[]))
        del d["file_errors"]
        if d["feedback_baseline"] is None:
            del d["feedback_baseline"]
        d["flows_per_s"] = self.flows_per_s
        return d

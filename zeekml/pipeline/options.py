"""The settings and the summary of one scoring run, shared by batch, Dask and live scoring."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ScoreOptions:
    """Settings of one scoring run.

    Args:
        fpr: target false-positive rate of each detector's threshold on the baseline.
        baseline: logs of a period taken as normal, to fit and calibrate on. Default: the
            earliest ``baseline_fraction`` of the scored records by ``ts``.
        seed: makes fitting reproducible.
        zeek_feedback: also write the verdict file that the Zeek package reads.
    """

    fpr: float = 0.001
    baseline: list[str] = field(default_factory=list)
    baseline_fraction: float = 0.3
    seed: int = 0
    zeek_feedback: str | None = None
    detectors: list[str] = field(default_factory=lambda: ["iforest"])
    models_dir: str | None = None   # learned detectors; None = none, "" = the shipped models/
    device: str = "cpu"
    dask: str | None = None         # "local", "local:N" or a scheduler address
    split_bytes: int = 64 << 20     # Dask: plain files larger than this are cut into tasks


@dataclass
class ScoreSummary:
    """Counts, thresholds and output paths of one scoring run (``summary.json``)."""

    files: int = 0
    files_failed: list[tuple[str, str]] = field(default_factory=list)
    tasks_retried: list[dict] = field(default_factory=list)   # --dask: path, start, end, step, attempts
    records_read: int = 0
    conn_records: int = 0
    other_records: int = 0
    quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    scored: int = 0
    baseline_records: int = 0
    alerts: int = 0
    alerts_by_note: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def flows_per_s(self) -> float:
        """Conns scored per second of the whole run."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """The fields and ``flows_per_s``, as written to ``summary.json``."""
        d = asdict(self)
        d["flows_per_s"] = self.flows_per_s
        return d

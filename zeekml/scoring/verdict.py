"""The verdict: one scored conn, as every sink (notice log, Zeek feedback file, JSON lines) sees it."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

# Every `note` zeekml writes; zeek-scripts/scripts/main.zeek declares the same names in
# `redef enum Notice::Type`, and a test keeps the two lists equal.
NOTE_TYPES: tuple[str, ...] = (
    "ZeekML::Anomalous_Flow",   # an unsupervised detector's calibrated score is over threshold
    "ZeekML::Intrusion",        # a supervised head says malicious
    "ZeekML::Botnet_Activity",  # a botnet-family head names a family
)


def verdict_id(model: str, uid: str, ts: float) -> str:
    """Stable id of one model's verdict on one conn, so sinks and Zeek can drop duplicates."""
    h = hashlib.sha1(f"{model}|{uid}|{ts:.6f}".encode()).hexdigest()
    return "V" + h[:16]


@dataclass
class Verdict:
    """A scored conn.

    ``score`` is the combined calibrated score (1.0 = at the alert threshold), ``scores`` the raw
    per-detector scores, ``sub`` the top contributing features as ``name=value`` text.
    """

    ts: float
    uid: str
    orig_h: str | None
    orig_p: int | None
    resp_h: str | None
    resp_p: int | None
    proto: str | None
    score: float
    alert: bool
    model: str
    note: str = "ZeekML::Anomalous_Flow"
    msg: str = ""
    sub: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    verdict_id: str = ""

    def __post_init__(self) -> None:
        if not self.verdict_id:
            self.verdict_id = verdict_id(self.model, self.uid, self.ts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

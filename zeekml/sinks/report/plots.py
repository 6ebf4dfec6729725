"""The report's plots as inline SVG (matplotlib, Agg): no network and no script to view them.

Text from logs never goes into a plot (hosts and uids live in the HTML tables, escaped there);
labels are our own words and detector names made safe for matplotlib's mathtext.
"""
from __future__ import annotations

import io
import re
from datetime import datetime, timezone

import numpy as np

_SAFE = re.compile(r"[^A-Za-z0-9_.:+-]")


def safe_label(text: str) -> str:
    """Detector names into plot labels: keep a plain subset (``$`` would start mathtext)."""
    return _SAFE.sub("_", text)[:40] or "?"


def _figure(figsize: tuple[float, float]):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=figsize)


def _svg(fig, salt: str) -> str:
    import matplotlib
    import matplotlib.pyplot as plt
    buf = io.StringIO()
    # a salt per figure keeps the ids inside each inlined SVG unique within the one HTML page
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        # no date or creator: the same run gives the same plots
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]   # drop the XML prolog and DOCTYPE: invalid inside HTML


def timeline_svg(ts: np.ndarray, alert: np.ndarray, model: np.ndarray, detectors: list[str]) -> str | None:
    """Alerts per time bin, stacked by the detector that raised them; None without alerts."""
    a_ts = ts[alert]
    if len(a_ts) == 0:
        return None
    lo, hi = float(np.min(ts)), float(np.max(ts))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 61)
    fig, ax = _figure((9, 2.8))
    bottom = np.zeros(len(bins) - 1)
    centers = [datetime.fromtimestamp(b, timezone.utc) for b in bins[:-1]]
    width = (bins[1] - bins[0]) / 86400.0
    for name in detectors:
        counts, _ = np.histogram(a_ts[model[alert] == name], bins)
        if counts.sum() == 0:
            continue
        ax.bar(centers, counts, width=width, bottom=bottom, align="edge", label=safe_label(name))
        bottom += counts
    ax.set_ylabel("alerts per bin")
    ax.set_xlabel("time (UTC)")
    ax.legend(loc="upper right", fontsize=8)
    fig.autofmt_xdate()
    return _svg(fig, "timeline")


def score_distribution_svg(name: str, scores: np.ndarray, index: int) -> str | None:
    """Histogram of one detector's calibrated scores (log count), with its threshold at 1.0.

    A calibrated score is 0 at the baseline's median and 1 at the threshold; the conns below the
    median (negative in ``verdicts.jsonl``) are counted at 0, so what a person reads is never
    negative."""
    s = scores[np.isfinite(scores)]
    if len(s) == 0:
        return None
    fig, ax = _figure((4.4, 2.8))
    hi = max(float(np.quantile(s, 0.999)), 1.5)
    lo = 0.0
    ax.hist(np.clip(s, lo, hi), bins=60, range=(lo, hi), color="#4477aa", log=True)
    ax.axvline(1.0, color="#cc3311", linestyle="--", label="threshold (1.0)")
    n_over = int((s >= 1.0).sum())
    ax.set_title(f"{safe_label(name)}: {n_over:,} of {len(s):,} at or over threshold", fontsize=9)
    ax.set_xlabel("calibrated score (0 = baseline median, up to the 99.9th percentile)")
    ax.set_ylabel("conns")
    ax.legend(fontsize=8)
    return _svg(fig, f"scores{index}")

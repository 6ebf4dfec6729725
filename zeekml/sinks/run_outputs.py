"""The output directory of one scoring run: verdicts, notices, quarantine, feedback, summary."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Iterable

from zeekml._core.errors import OutputError
from zeekml._core.outfile import OutputFile
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.jsonl import QUARANTINE_FILE, QuarantineWriter
from zeekml.sinks.verdicts import VERDICTS_FILE, RenderedVerdicts, VerdictWriter
from zeekml.sinks.zeek_notice import NOTICE_FILE, NoticeWriter


class ScoreOutputs:
    """Opens ``verdicts.jsonl``, ``zeekml_notice.log`` and ``quarantine.jsonl`` in ``out_dir``;
    verdicts can be written in several calls (as results stream in); ``finish`` writes the
    notices in ts order, the Zeek feedback file (alerts only) and ``summary.json``.

    Notices are held until ``finish``: verdicts keep the input's order (files in path order: an
    IoT-23 directory before a Zeek one, Suricata beside Zeek, several inputs), but an analyst reading
    ``zeekml_notice.log`` expects Zeek's own order, by time. Alerts are few, so holding them is
    cheap; a run that fails before ``finish`` leaves a notice log with the header only."""

    def __init__(self, out_dir: str, zeek_feedback: str | None = None):
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory: {e.strerror}", out_dir) from e
        self.out_dir = out_dir
        self.zeek_feedback = zeek_feedback
        self.quarantine = QuarantineWriter(os.path.join(out_dir, QUARANTINE_FILE))
        self._verdicts: VerdictWriter | None = None
        self._notices: NoticeWriter | None = None
        self.notes: Counter[str] = Counter()
        self.scored = 0
        self._alerts: list[Verdict] = []

    def _open(self) -> None:
        if self._verdicts is None:
            self._notices = NoticeWriter(os.path.join(self.out_dir, NOTICE_FILE))
            self._verdicts = VerdictWriter(os.path.join(self.out_dir, VERDICTS_FILE))

    def write(self, verdicts: Iterable[Verdict]) -> None:
        """Verdict objects, rendered one by one."""
        verdicts = list(verdicts)
        self._open()
        self._verdicts.write(verdicts)
        self.scored += len(verdicts)
        self._alerting(v for v in verdicts if v.alert)

    def write_rendered(self, data: bytes, n: int, alerts: Iterable[Verdict]) -> None:
        """``n`` verdicts already rendered as ``verdicts.jsonl`` lines, plus their alerts."""
        self._open()
        self._verdicts.write_lines(data, n)
        self.scored += n
        self._alerting(alerts)

    def write_batch(self, rendered: RenderedVerdicts) -> None:
        """Verdicts rendered by ``sinks.verdicts.render_verdicts``."""
        self.write_rendered(rendered.data(), len(rendered), [v for _, v in rendered.alerts])

    def _alerting(self, alerts: Iterable[Verdict]) -> None:
        for v in alerts:
            self.notes[v.note] += 1
            self._alerts.append(v)

    def _write_notices(self) -> None:
        # stable: alerts of one ts keep the input's order; an unset or NaN ts goes last
        for v in sorted(self._alerts, key=_ts_order):
            self._notices.write(v)

    def close(self) -> None:
        """Close every file, even when one fails (a full disk): then the first
        ``OutputError`` is raised once all are closed. Closing again does nothing."""
        first: OutputError | None = None
        for w in (self._verdicts, self._notices, self.quarantine):
            if w is None:
                continue
            try:
                w.close()
            except OutputError as e:
                first = first or e
        if first is not None:
            raise first

    def finish(self, summary: dict) -> dict[str, str]:
        """Close everything, write the feedback file and ``summary.json``; returns the paths."""
        self._open()
        try:
            self._write_notices()
        except BaseException:
            self.close()
            raise
        self.close()
        outputs = {"verdicts": self._verdicts.path, "notices": self._notices.path,
                   "quarantine": self.quarantine.path,
                   "summary": os.path.join(self.out_dir, "summary.json")}
        if self.zeek_feedback:
            from zeekml.sinks.zeek_input import VerdictFeedbackWriter
            VerdictFeedbackWriter(self.zeek_feedback).write(self._alerts)
            outputs["zeek_feedback"] = self.zeek_feedback
        summary = dict(summary)
        summary["outputs"] = {**summary.get("outputs", {}), **outputs}
        with OutputFile(outputs["summary"]) as f:   # no symlinks, mode 0640
            f.write(json.dumps(summary, indent=2).encode())
        return outputs


def _ts_order(v: Verdict) -> tuple[bool, float]:
    """Sort key by ts; an unset or NaN ts sorts last."""
    missing = v.ts is None or v.ts != v.ts
    return (missing, 0.0 if missing else float(v.ts))

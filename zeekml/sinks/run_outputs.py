"""The output directory of one scoring run: verdicts, notices, quarantine, feedback, summary."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Iterable

from zeekml._core.errors import OutputError
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.jsonl import QuarantineWriter, VerdictWriter
from zeekml.sinks.zeek_notice import NoticeWriter


class ScoreOutputs:
    """Opens ``verdicts.jsonl``, ``zeekml_notice.log`` and ``quarantine.jsonl`` in ``out_dir``;
    verdicts can be written in several calls (as results stream in); ``finish`` writes the
    Zeek feedback file (alerts only) and ``summary.json``."""

    def __init__(self, out_dir: str, zeek_feedback: str | None = None):
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory: {e.strerror}", out_dir) from e
        self.out_dir = out_dir
        self.zeek_feedback = zeek_feedback
        self.quarantine = QuarantineWriter(os.path.join(out_dir, "quarantine.jsonl"))
        self._verdicts: VerdictWriter | None = None
        self._notices: NoticeWriter | None = None
        self.notes: Counter[str] = Counter()
        self.scored = 0
        self._alerts: list[Verdict] = []

    def _open(self) -> None:
        if self._verdicts is None:
            self._notices = NoticeWriter(os.path.join(self.out_dir, "zeekml_notice.log"))
            self._verdicts = VerdictWriter(os.path.join(self.out_dir, "verdicts.jsonl"))

    def write(self, verdicts: Iterable[Verdict]) -> None:
        self._open()
        for v in verdicts:
            self._verdicts.write(v)
            self.scored += 1
            if v.alert:
                self._notices.write(v)
                self.notes[v.note] += 1
                if self.zeek_feedback:
                    self._alerts.append(v)

    def write_rendered(self, lines: str, n: int, alerts: list[Verdict]) -> None:
        """``n`` verdicts already rendered as ``verdicts.jsonl`` lines, plus their alerts."""
        self._open()
        self._verdicts.write_lines(lines, n)
        self.scored += n
        for v in alerts:
            self._notices.write(v)
            self.notes[v.note] += 1
            if self.zeek_feedback:
                self._alerts.append(v)

    def close(self) -> None:
        for w in (self._verdicts, self._notices, self.quarantine):
            if w is not None:
                w.close()

    def finish(self, summary: dict) -> dict[str, str]:
        """Close everything, write the feedback file and ``summary.json``; returns the paths."""
        self._open()
        self.close()
        outputs = {"verdicts": self._verdicts.path, "notices": self._notices._log.path,
                   "quarantine": self.quarantine.path,
                   "summary": os.path.join(self.out_dir, "summary.json")}
        if self.zeek_feedback:
            from zeekml.sinks.zeek_input import VerdictFeedbackWriter
            VerdictFeedbackWriter(self.zeek_feedback).write(self._alerts)
            outputs["zeek_feedback"] = self.zeek_feedback
        summary = dict(summary)
        summary["outputs"] = {**summary.get("outputs", {}), **outputs}
        with open(outputs["summary"], "w") as f:
            json.dump(summary, f, indent=2)
        return outputs

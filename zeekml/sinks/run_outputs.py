"""The output directory of one scoring run: verdicts, notices, quarantine, feedback, summary."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Iterable

from zeekml._core.errors import OutputError
from zeekml._core.outfile import OutputFile
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.jsonl import QUARANTINE_FILE, QuarantineWriter
from zeekml.sinks.verdicts import VERDICTS_FILE, RenderedVerdicts, VerdictWriter
from zeekml.sinks.zeek_notice import NOTICE_FILE, NoticeWriter

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


class ScoreOutputs:
    """Opens ``verdicts.jsonl``, ``quarantine.jsonl`` and, with ``conn_notices``,
    ``zeekml_notice.log`` in ``out_dir``; verdicts can be written in several calls (as results
    stream in); ``finish`` writes the conn notices in ts order, the Zeek feedback files and
    ``summary.json``.

    Args:
        out_dir: the output directory (made if missing).
        zeek_feedback: the verdict file the Zeek package reads (``--zeek-feedback``), or None.
            The incident file is written beside it (``sinks.zeek_input.ZeekFeedback``), with the
            incidents of the run's ``incidents.jsonl``.
        conn_notices: one notice per alerting conn in ``zeekml_notice.log`` and in the verdict
            file (``--conn-notices``; default ``False``: incidents only, one
            ``ZeekML::Suspicious_Host`` each, in ``zeekml_incident.log``). Without it, a
            ``zeekml_notice.log`` left in ``out_dir`` by an earlier run is removed, so that the
            directory holds no notices this run did not make.

    Notices are held until ``finish``: verdicts keep the input's order (files in path order: an
    IoT-23 directory before a Zeek one, Suricata beside Zeek, several inputs), but an analyst reading
    ``zeekml_notice.log`` expects Zeek's own order, by time. Only with ``conn_notices`` are the
    alerts held: as their notice lines, and as objects for a Zeek feedback file; without it they
    are counted by note (an infected archive scored with a known-bad classifier alerts on most
    of its conns). A run that fails before ``finish`` leaves a notice log with the header only."""

    def __init__(self, out_dir: str, zeek_feedback: str | None = None, conn_notices: bool = False):
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory: {e.strerror}", out_dir) from e
        if zeek_feedback is not None:
            # checked before any scoring: found missing at ``finish``, a long run's outputs
            # would be left without summary.json
            where = os.path.dirname(os.path.abspath(zeek_feedback))
            if not os.path.isdir(where):
                raise OutputError("cannot write the --zeek-feedback file: its directory does "
                                  "not exist", zeek_feedback)
            if not os.access(where, os.W_OK):
                raise OutputError("cannot write the --zeek-feedback file: its directory is not "
                                  "writable", zeek_feedback)
        self.out_dir = out_dir
        self.zeek_feedback = zeek_feedback
        self.conn_notices = conn_notices
        self.quarantine = QuarantineWriter(os.path.join(out_dir, QUARANTINE_FILE))
        self._verdicts: VerdictWriter | None = None
        self._notices: NoticeWriter | None = None
        self.notes: Counter[str] = Counter()
        self.scored = 0
        # with conn_notices: each alert's notice line and where it sorts (``_ts_order``),
        # written in ts order at ``finish``; the alerting verdicts themselves only for the Zeek
        # feedback file (a line is a third of a Verdict's memory)
        self._notice_keys: list[tuple[bool, float]] = []
        self._notice_lines: list[bytes] = []
        self._alerts: list[Verdict] = []

    def _open(self) -> None:
        if self._verdicts is None:
            notices = os.path.join(self.out_dir, NOTICE_FILE)
            if self.conn_notices:
                self._notices = NoticeWriter(notices)
            else:
                _remove_stale(notices)
            self._verdicts = VerdictWriter(os.path.join(self.out_dir, VERDICTS_FILE))

    def write(self, verdicts: Iterable[Verdict]) -> None:
        """Verdict objects, rendered one by one."""
        verdicts = list(verdicts)
        alerts = [v for v in verdicts if v.alert]
        self._open()
        self._verdicts.write(verdicts)
        self.scored += len(verdicts)
        self.notes.update(v.note for v in alerts)
        self._keep(alerts)

    def write_rendered(self, data: bytes, n: int, notes: Counter, alerts: Iterable[Verdict] = ()
                       ) -> None:
        """``n`` verdicts already rendered as ``verdicts.jsonl`` lines, their alerts counted by
        note and, with ``conn_notices`` (``wants_alerts``), the alerting verdicts themselves."""
        self._open()
        self._verdicts.write_lines(data, n)
        self.scored += n
        self.notes.update(notes)
        self._keep(alerts)

    def write_batch(self, rendered: RenderedVerdicts) -> None:
        """Verdicts rendered by ``sinks.verdicts.render_verdicts``."""
        self.write_rendered(rendered.data(), len(rendered), rendered.notes,
                            [v for _, v in rendered.alerts])

    @property
    def wants_alerts(self) -> bool:
        """Whether the alerting verdicts are needed as objects (``conn_notices``)."""
        return self.conn_notices

    def _keep(self, alerts: Iterable[Verdict]) -> None:
        if not self.conn_notices:
            return
        for v in alerts:
            self._notice_keys.append(_ts_order(v))
            self._notice_lines.append(self._notices.line(v))
            if self.zeek_feedback:
                self._alerts.append(v)
        # a caller that counted alerts without handing them over would lose their notices
        if len(self._notice_lines) != sum(self.notes.values()):
            raise RuntimeError(f"{sum(self.notes.values()):,} alerts counted but "
                               f"{len(self._notice_lines):,} given for the conn notices")

    def _write_notices(self) -> None:
        if self._notices is None:
            return
        # stable: alerts of one ts keep the input's order; an unset or NaN ts goes last
        keys = self._notice_keys
        for i in sorted(range(len(keys)), key=keys.__getitem__):
            self._notices.write_line(self._notice_lines[i])

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
        """Close everything, write the Zeek feedback files and ``summary.json``; returns the
        paths. ``summary["outputs"]["incidents"]``, when there, names the run's
        ``incidents.jsonl``, whose incidents go to the Zeek incident file."""
        self._open()
        try:
            self._write_notices()
        except BaseException:
            self.close()
            raise
        self.close()
        outputs = {"verdicts": self._verdicts.path}
        if self._notices is not None:
            outputs["notices"] = self._notices.path
        outputs.update(quarantine=self.quarantine.path,
                       summary=os.path.join(self.out_dir, SUMMARY_FILE))
        if self.zeek_feedback:
            outputs.update(self._write_zeek_feedback(summary.get("outputs", {}).get("incidents")))
        summary = dict(summary)
        summary["outputs"] = {**summary.get("outputs", {}), **outputs}
        with OutputFile(outputs["summary"]) as f:   # no symlinks, mode 0640
            f.write(json.dumps(summary, indent=2).encode())
        return outputs


    def _write_zeek_feedback(self, incidents_path: str | None) -> dict[str, str]:
        """The Zeek package's files: the incidents this run wrote to ``incidents.jsonl`` (read
        back: that file is the run's record of them, whichever path built them) and, with
        ``conn_notices``, the alerting verdicts."""
        from zeekml.sinks.zeek_input import ZeekFeedback

        incidents: list[dict] = []
        if incidents_path:
            try:
                with open(incidents_path, "rb") as f:
                    incidents = [json.loads(line) for line in f if line.strip()]
            except (OSError, ValueError) as e:
                raise OutputError(f"cannot read back the incidents for Zeek: {e}",
                                  incidents_path) from e
        else:
            log.warning("%s: no incidents were made in this run: the Zeek incident file gets "
                        "none", self.zeek_feedback)
        fb = ZeekFeedback(self.zeek_feedback, conn_notices=self.conn_notices)
        try:
            fb.write(self._alerts, incidents)
        finally:
            fb.release()     # a failed write raises its own error, not a second one
        return fb.paths


def _remove_stale(path: str) -> None:
    """Remove an earlier run's output that this run does not write (never through a link: a
    link there is removed itself)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise OutputError("is a directory, where an earlier run's output was", path) from None
    except OSError as e:
        raise OutputError(f"cannot remove an earlier run's output: {e.strerror}", path) from e
    log.info("%s: removed (an earlier run's conn notices; this run writes them only with "
             "--conn-notices)", path)


def _ts_order(v: Verdict) -> tuple[bool, float]:
    """Sort key by ts; an unset or NaN ts sorts last."""
    missing = v.ts is None or v.ts != v.ts
    return (missing, 0.0 if missing else float(v.ts))

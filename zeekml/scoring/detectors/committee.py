"""``committee``: known-bad classifiers that alert together, as one detector.

Classifiers finetuned from different bases (a causal moe, mae, gnn) make different false alarms on
traffic unlike their training data, while the malware they were taught looks bad to most of
them (``docs/results/detection.md``, "Committees"). A committee directory holds no weights: its
``config.json`` names member classifier directories, siblings of it (plain directory names, each
pinned by the sha256 of its files as its manifest lists them), and how many of them must agree::

    {"kind": "committee", "schema_version": 1, "label_field": "label",
     "classes": ["Benign", "Malicious"], "detector": false,
     "members": [{"dir": "malicious-cmoe", "files": {"config.json": "...", "weights.pt": "..."}}, ...],
     "vote": 2, "operating_point": {"cut": 0.5, ...}}

A member's P(malicious) is first rescaled so that its own trained cut sits at 0.5 (piecewise
linear: 0 -> 0, cut -> 0.5, 1 -> 1); the committee's score is the ``vote``-th largest of these,
so it reaches 0.5 exactly when ``vote`` members reach their own cuts. ``scoring.registry`` sends
the directory here through the classifier factory (``detectors.classifier.COMPOSITES``): it is a
classifier to the rest of zeekml (trained cut, "baseline looks infected", ``ZeekML::Intrusion``).
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.scoring.detectors.base import load_model_dir, read_config, read_manifest
from zeekml.scoring.detectors.classifier import (COMPOSITES, NOTES, ClassifierDetector, ScoreParts,
                                                 read_operating_point)

SCHEMA_VERSION = 1
# the committee's own cut on its score: a member at its trained cut is rescaled to this
MEMBER_CUT = 0.5


def rescale(p: np.ndarray, cut: float) -> np.ndarray:
    """``p`` mapped piecewise linearly so that 0 -> 0, ``cut`` -> 0.5 and 1 -> 1 (monotone, so
    a member reaches its own cut exactly when the rescaled value reaches 0.5)."""
    # a NaN would sort above every probability and count as a vote: it is no vote
    p = np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0), 0.0, 1.0)
    if cut >= 1.0:
        return np.where(p >= 1.0, 1.0, 0.5 * p)
    return np.where(p < cut, MEMBER_CUT * p / cut, MEMBER_CUT + MEMBER_CUT * (p - cut) / (1.0 - cut))


def _member_dir(model_dir: str, entry: object) -> tuple[str, dict]:
    """The sibling directory a ``members`` entry names, and the file hashes it pins."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dir"), str) \
            or not isinstance(entry.get("files"), dict) or not entry["files"]:
        raise ModelError("config.json \"members\" entries need \"dir\" and \"files\"", model_dir)
    name = entry["dir"]
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ModelError(f"committee member {name!r} is not a plain directory name (members are "
                         "siblings of the committee directory)", model_dir)
    return os.path.join(os.path.dirname(os.path.abspath(model_dir)), name), entry["files"]


class CommitteeDetector:
    """Known-bad classifiers that must agree, as a ``Detector``.

    Anomalous here means known-bad to at least ``vote`` of the member classifiers: the score of a
    conn is the ``vote``-th largest of the members' P(malicious), each rescaled so its own trained
    cut is 0.5 (``rescale``), in [0, 1]. Nothing is fitted on the baseline; the threshold is set
    on the baseline like any classifier's, or is the committee's trained cut (0.5) when the
    baseline looks infected.

    Args:
        model_dir: a committee directory (config ``"kind": "committee"``).
        device: where the members run (default "cpu").
    """

    # learns nothing from the baseline: its scores of baseline conns are out of sample already
    # (``pipeline.fitted.calibration_scores``)
    fits_baseline = False
    # its calls on different tables may run at once (``pipeline.side_by_side.Lanes``' widths):
    # it keeps nothing between calls but each table's own probabilities, and its models and
    # featurisers are read-only
    calls_side_by_side = True

    def __init__(self, model_dir: str, device: str = "cpu"):
        config, state = load_model_dir(model_dir)
        if config.get("kind") != "committee":
            raise ModelError(f"not a committee (kind {config.get('kind')!r})", model_dir)
        if config.get("schema_version") != SCHEMA_VERSION:
            raise ModelError(f"committee schema {config.get('schema_version')!r} != {SCHEMA_VERSION}",
                             model_dir)
        if state is not None:
            raise ModelError("a committee holds no weights (its members do)", model_dir)
        field = config.get("label_field")
        if field not in NOTES:
            raise ModelError(f"a committee of {field!r} classifiers is not a known-bad detector", model_dir)
        entries = config.get("members")
        if not isinstance(entries, list) or len(entries) < 2:
            raise ModelError("config.json \"members\" must list at least two classifier directories",
                             model_dir)
        vote = config.get("vote")
        if isinstance(vote, bool) or not isinstance(vote, int) or not 1 <= vote <= len(entries):
            raise ModelError(f"config.json \"vote\" must be a count from 1 to {len(entries)}, not {vote!r}",
                             model_dir)
        self.members: list[ClassifierDetector] = []
        for entry in entries:
            d, files = _member_dir(model_dir, entry)
            if not os.path.isdir(d):
                raise ModelError(f"committee member {entry['dir']!r} is missing (no directory {d})",
                                 model_dir)
            # the member's own load checks its files against its manifest; this checks that the
            # manifest still lists the files the committee was made of
            if read_manifest(d)["files"] != files:
                raise ModelError(f"committee member {entry['dir']!r} is not the classifier the "
                                 "committee was made of (its files changed)", model_dir)
            try:
                member = ClassifierDetector(d, device)
            except ModelError as e:
                raise ModelError(f"committee member {entry['dir']!r}: {e.message}",
                                 model_dir) from None
            if member.note != NOTES[field]:
                raise ModelError(f"committee member {entry['dir']!r} is not a {field!r} classifier", model_dir)
            self.members.append(member)
        self.vote = vote
        self.classes = list(config.get("classes") or ["Benign", "Malicious"])
        self.name = "clf-" + os.path.basename(os.path.normpath(model_dir))
        self.note = NOTES[field]
        self.context_seconds = max(m.context_seconds for m in self.members)
        self.forward_context_seconds = max(m.context_seconds if m.forward_context_seconds is None
                                           else m.forward_context_seconds for m in self.members)
        # each member's own context (``scoring.context.context_parts``): with a graph member
        # the committee has no key of its own, but its host-history members still need only
        # their hosts' latest conns, not every conn of their 1-5 h
        self.context_parts = list(self.members)
        keys = {m.context_key for m in self.members}
        # a member without a key (gnn) sees every conn around, so the committee must too
        self.context_key = keys.pop() if len(keys) == 1 else None
        self.model_dir = model_dir
        self.trained_cut = read_operating_point(config, model_dir)
        self.decision_threshold = float(self.trained_cut["cut"]) if self.trained_cut else MEMBER_CUT

    def fit(self, table: pa.Table) -> CommitteeDetector:
        """Nothing to fit: the members' knowledge is their training; calibration sets the bar."""
        return self

    def _combine(self, ps: list[np.ndarray]) -> np.ndarray:
        q = np.vstack([rescale(p, m.decision_threshold) for p, m in zip(ps, self.members)])
        # the vote-th largest member: at 0.5 or above exactly when `vote` members are at their cut
        return np.sort(q, axis=0)[len(self.members) - self.vote]

    def score(self, table: pa.Table) -> np.ndarray:
        """The ``vote``-th largest rescaled member probability of every row, ``[n]``."""
        if table.num_rows == 0:
            return np.zeros(0)
        return self._combine([m.score(table) for m in self.members])

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, the other rows of ``table`` as context only."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self._combine([m.score_rows(table, rows) for m in self.members])

    def score_parts(self, table: pa.Table, parts: int) -> ScoreParts:
        """``score(table)`` as the members' parts (``ClassifierDetector.score_parts``), the
        costliest member's first: the members are independent, so they and the parts of each
        run side by side."""
        split = [m.score_parts(table, parts) for m in self.members]
        order = sorted(range(len(split)), key=lambda i: -float(getattr(self.members[i], "cost", 1.0)))
        calls = [c for i in order for c in split[i].calls]

        def combine(results: list) -> np.ndarray:
            given = iter(results)                      # in ``calls``' order: member by member
            got = {i: [next(given) for _ in split[i].calls] for i in order}
            return self._combine([sp.combine(got[i]) for i, sp in enumerate(split)])

        return ScoreParts(calls, combine)

    def flag_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """Whether the committee's score of each of ``rows`` reaches its ``decision_threshold``
        (``score_rows(table, rows) >= decision_threshold``, the same decisions), each member run
        only on the rows its vote can still decide: once ``vote`` members are at the cut, or
        too few are left to get there, a row is settled (a 2-of-3 committee whose first two
        members agree never runs the third on that row). The members run cheapest first (their
        ``cost``, ``classifier.RELATIVE_COST``; the order of the config among equals), so the
        costliest judges the fewest rows: a count of votes does not depend on the order (the
        shipped committee's check of 1,000 conns: 0.21-0.25 -> 0.13-0.15 CPU s).

        Shapes:
            rows ``[n]`` -> ``[n]`` bool
        """
        rows = np.asarray(rows, dtype=np.int64)
        cut = float(self.decision_threshold)
        votes = np.zeros(len(rows), dtype=np.int64)
        open_ = np.ones(len(rows), dtype=bool)
        members = sorted(self.members, key=lambda m: float(getattr(m, "cost", 1.0)))
        for left, m in zip(range(len(members) - 1, -1, -1), members):
            todo = np.flatnonzero(open_)
            if len(todo) == 0:
                break
            # the vote-th largest rescaled value reaches the cut exactly when `vote` members'
            # rescaled values do
            votes[todo] += rescale(m.score_rows(table, rows[todo]), m.decision_threshold) >= cut
            open_[todo] = (votes[todo] < self.vote) & (votes[todo] + left >= self.vote)
        return votes >= self.vote

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Each member's P(malicious) against its cut, per row: how many agreed (the
        probabilities the rows were scored with, ``ClassifierDetector.scored_bad``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        ps = [m.scored_bad(table, rows) for m in self.members]
        out = []
        for i in range(len(rows)):
            agree = sum(p[i] >= m.decision_threshold for p, m in zip(ps, self.members))
            parts = [f"{m.name}={p[i]:.3f}/{m.decision_threshold:.3g}" for p, m in zip(ps, self.members)]
            out.append(f"{agree} of {len(self.members)} agree (need {self.vote}): " + ",".join(parts))
        return out


def committee_config(member_dirs: list[str], vote: int, operating_point: dict | None = None,
                     label_field: str = "label", detector: bool = False) -> dict:
    """The ``config.json`` of a committee of ``member_dirs`` (sibling classifier directories,
    each pinned by its manifest's file hashes) in which ``vote`` must agree; write it with
    ``zeekml.train.artifact.save_model_dir(out, "committee", config, None, ...)``."""
    members = [{"dir": os.path.basename(os.path.normpath(d)), "files": read_manifest(d)["files"]}
               for d in member_dirs]
    config = {"schema_version": SCHEMA_VERSION, "label_field": label_field,
              "classes": list(read_config(member_dirs[0]).get("classes") or []), "members": members, "vote": int(vote),
              "detector": bool(detector), "pretrained": False}
    if operating_point is not None:
        config["operating_point"] = dict(operating_point)
    return config


COMPOSITES["committee"] = CommitteeDetector

"""``classifier``: a finetuned known-bad classifier (what ``zeekml finetune`` writes) as a detector.

Anomaly detectors ask "unlike the baseline?"; a classifier asks "like the malware it was taught?".
That is what catches an infected archive with no clean period, where the attack is part of the
baseline. Any finetuned directory of a registered kind with a head works (moe, dense, mae, gnn);
``scoring.registry.load_model_detectors`` sends a directory here (``register_classifier``) when
its config says it is a classifier (``detectors.base.is_classifier``).

The score of a conn is the probability the head gives to the malicious classes (every class but
``Benign``); its threshold is calibrated on the baseline like every other detector's, so at most
``fpr/n`` of the baseline's conns pass it, whatever the head's own calibration. A directory that
``zeekml finetune`` wrote also keeps its trained operating point (config ``"operating_point"``:
the cut on that probability chosen on benign conns it did not train on); when the baseline looks
infected, calibration uses that cut instead (``scoring.calibrate.calibrate_with_cuts``), since an
infected baseline's quantile sits above the malware's own probabilities.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.features.table_memo import TableMemo
from zeekml.scoring.detectors.base import HEAD_ROWS, head_proba, read_config
from zeekml.scoring.registry import register_classifier

log = logging.getLogger(__name__)

# Classes that are not "bad": a head's probability of anything else is the score.
NOT_BAD = ("benign", "background", "normal")
# The Zeek notice a classifier raises (zeek-scripts/scripts/main.zeek): a Malicious/Benign head
# is an intrusion detector, a family head (detailed label) names botnet activity.
NOTES = {"label": "ZeekML::Intrusion", "detailedlabel": "ZeekML::Botnet_Activity"}


def bad_classes(classes: list[str]) -> np.ndarray:
    """Indices of the classes whose probability counts as known-bad (not Benign/Background)."""
    return np.array([i for i, c in enumerate(classes) if not str(c).lower().startswith(NOT_BAD)],
                    dtype=np.int64)


# A head's CPU per conn judged, relative to the autoencoder's: the committee runs its cheapest
# members first, so the costliest judges only the conns they leave undecided (the same
# decisions in any order). Measured on bench/score_speed.py's baseline check (1,000 conns of
# 30,000, one torch thread): mae 0.027 s, gnn 0.095 s, moe 0.17 s; again in session 41 (the
# malicious-* members): mae 0.019, gnn 0.071, moe 0.118, a causal_window moe's stream head
# ("causal") 0.061 s. Speed only: a stale figure never changes a decision.
RELATIVE_COST = {"mae": 1.0, "gnn": 3.5, "moe": 6.0, "dense": 6.0, "causal": 3.2}


class _TokenHead:
    """moe/dense: the head on the pooled host-token sequence (full attention), or on the conn's
    stream embedding (a ``causal_window`` base finetuned with ``procedure="lp"``: each conn one
    token of its host's stream, ``LoadedTokenModel.stream_proba``)."""

    def __init__(self, model_dir: str, device: str):
        from zeekml.scoring.detectors.token import LoadedTokenModel

        self.m = LoadedTokenModel.from_dir(model_dir, device)
        if self.m.head is None:
            raise ModelError("config says classifier but there is no classifier head", model_dir)
        self.classes = self.m.classes
        self.context_seconds = self.m.context_seconds
        self.forward_context_seconds = 0.0
        self.context_key: str | None = "id.orig_h"
        self.context_key_rows = self.m.context_key_rows
        self.cost = RELATIVE_COST["causal" if self.m.causal else self.m.kind]

    @property
    def part_rows(self) -> int | None:
        """``run``'s batch: rows cut at its multiples run in the same batches (``score_parts``).
        A causal model's rows do not depend on each other (``stream_embedding``); its head runs
        ``HEAD_ROWS`` at a time."""
        return HEAD_ROWS if self.m.causal else self.m.infer_rows

    def proba(self, table: pa.Table, rows: np.ndarray | None) -> np.ndarray:
        if self.m.causal:
            return self.m.stream_proba(table, rows)
        return self.m.run(self.m.tokens(table, rows=rows), want=("proba",))["proba"]


class _MAEHead:
    """mae: the head on the autoencoder's embedding."""

    def __init__(self, model_dir: str, device: str):
        from zeekml.scoring.detectors.mae import LoadedMAE

        self.m = LoadedMAE.from_dir(model_dir, device)
        if self.m.head is None:
            raise ModelError("config says classifier but there is no classifier head", model_dir)
        self.classes = self.m.classes
        self.context_seconds = self.m.featurizer.context_seconds
        self.forward_context_seconds = 0.0
        self.context_key = "id.orig_h"
        self.context_key_rows = self.m.context_key_rows

    @property
    def part_rows(self) -> int | None:
        """``run``'s batch: rows cut at its multiples run in the same batches (``score_parts``)."""
        return self.m.infer_rows

    def proba(self, table: pa.Table, rows: np.ndarray | None) -> np.ndarray:
        # only ``rows`` featurised, the rest of ``table`` their host history (the baseline
        # check asks for 1,000 of 30,000 conns): ``modalities(table).take(rows)``'s values;
        # the encoder alone runs (``LoadedMAE.run``: the same bits of the embedding the head
        # reads, without the decoder's half of the multiply-adds)
        return self.m.run(self.m.modalities(table, rows=rows), want=("proba",))["proba"]


class _GNNHead:
    """gnn: the head on the flow-graph embedding of each conn."""

    def __init__(self, model_dir: str, device: str):
        from zeekml.scoring.detectors.gnn import load_bundle

        self.bundle, _ = load_bundle(model_dir, device)
        if self.bundle.model.head is None:
            raise ModelError("config says classifier but there is no classifier head", model_dir)
        self.device = device
        self.classes = self.bundle.classes
        g = self.bundle.graph
        self.context_seconds = (g.context_windows + g.max_conn_windows + 2) * g.window
        self.forward_context_seconds = self.context_seconds
        self.context_key = None
        self.context_key_rows: int | None = None
        # not split (``score_parts``): each part would build and run the graph neighbourhood
        # of its rows, and the parts' neighbourhoods overlap
        self.part_rows: int | None = None

    def proba(self, table: pa.Table, rows: np.ndarray | None) -> np.ndarray:
        """Class probabilities ``[n, C]`` of ``rows`` (every row when None). The flow
        embeddings are the gnn detector's (``embed_rows``: with ``rows``, only their graph
        neighbourhood is built and run, with the bits of the whole table's graphs), and the head
        runs on them padded (``head_proba``), so that a row's probabilities do not depend on the
        rows beside it: ``score_rows == score[rows]`` exactly."""
        from zeekml.scoring.detectors.gnn import embed_rows, ready

        model = ready(self.bundle.model, self.device)
        idx = np.arange(table.num_rows, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        h = embed_rows(self.bundle, table, None if rows is None else idx, device=self.device)[idx]
        return head_proba(model.classify, h, len(self.classes), self.device)


HEADS = {"moe": _TokenHead, "dense": _TokenHead, "mae": _MAEHead, "gnn": _GNNHead}
# Classifier directories made of other classifiers, by config "kind" (no weights, no model kind
# of their own): ``detectors.committee`` adds itself here when the registry imports it.
COMPOSITES: dict[str, Callable[[str, str], Any]] = {}


@dataclass(frozen=True)
class ScoreParts:
    """``score(table)`` as calls that may run side by side (``pipeline.fitted.score_calls``):
    ``combine`` of their results, in ``calls``' order, is ``score(table)`` bit for bit. ``calls``
    come costliest first (the order to start them in)."""

    calls: list[Callable[[], Any]]
    combine: Callable[[list[Any]], np.ndarray]


def part_bounds(n: int, parts: int, align: int | None) -> list[int]:
    """Where ``n`` rows split into at most ``parts`` runs of about equal size, every cut at a
    multiple of ``align`` (``[0, n]``: not split; so with no ``align``, or under two of them).
    A model that runs its rows in batches of ``align`` in order then runs every part in the
    batches it runs the whole in, and gives each row the same bits."""
    if not align or parts <= 1 or n < 2 * align:
        return [0, n]
    cuts = sorted({int(round(n * i / parts / align)) * align for i in range(1, parts)})
    return [0, *[c for c in cuts if 0 < c < n], n]


def read_operating_point(config: dict, model_dir: str) -> dict | None:
    """The trained cut of a classifier's config (``"operating_point"``, written by ``zeekml
    finetune``: ``train.metrics.trained_cut``), checked; None when the config has none."""
    op = config.get("operating_point")
    if op is None:
        return None
    cut = op.get("cut") if isinstance(op, dict) else None
    if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0.0 < float(cut) <= 1.0:
        raise ModelError(f"config.json \"operating_point\" needs a \"cut\" probability in (0, 1], "
                         f"not {cut!r}", model_dir)
    return dict(op)


class ClassifierDetector:
    """A finetuned classifier as a ``Detector``.

    Anomalous here means known-bad: the score of a conn is the probability its head gives to the
    malicious classes (every class but Benign/Background), in [0, 1]. Nothing is fitted on the
    baseline (the weights stay as trained); its threshold is set on the baseline like the other
    detectors', so a classifier that flags the baseline's conns raises its own bar, unless the
    baseline looks infected and the directory has a trained cut (``trained_cut``), which is then
    the bar.

    Args:
        model_dir: a finetuned model directory (config has ``label_field`` and ``classes``).
        device: where the model runs (default "cpu").
    """

    # learns nothing from the baseline: its scores of baseline conns are out of sample already
    # (``pipeline.fitted.calibration_scores``)
    fits_baseline = False
    # its calls on different tables may run at once (``pipeline.side_by_side.Lanes``' widths):
    # it keeps nothing between calls but each table's own probabilities, and its models and
    # featurisers are read-only
    calls_side_by_side = True

    def __init__(self, model_dir: str, device: str = "cpu"):
        config = read_config(model_dir)
        kind = config.get("kind")
        field = config.get("label_field")
        if field not in NOTES:
            raise ModelError(f"a classifier of {field!r} is not a known-bad detector (needs a head "
                             "trained on label or detailedlabel)", model_dir)
        if kind not in HEADS:
            raise ModelError(f"no classifier detector for kind {kind!r} "
                             f"({', '.join(sorted([*HEADS, *COMPOSITES]))})", model_dir)
        self.head = HEADS[kind](model_dir, device)
        # relative CPU per conn (RELATIVE_COST): the order a committee runs its members in
        self.cost = getattr(self.head, "cost", RELATIVE_COST.get(kind, max(RELATIVE_COST.values())))
        self.classes = list(self.head.classes)
        self.bad = bad_classes(self.classes)
        if len(self.bad) == 0 or len(self.bad) == len(self.classes):
            raise ModelError(f"classes {self.classes} do not split into benign and malicious ones",
                             model_dir)
        # the directory's name: two classifiers of one kind stay apart in verdicts and thresholds
        self.name = "clf-" + os.path.basename(os.path.normpath(model_dir))
        self.note = NOTES[field]
        self.context_seconds = self.head.context_seconds
        self.forward_context_seconds = self.head.forward_context_seconds
        self.context_key = self.head.context_key
        # a host-history head reads its originator's latest conns only (``scoring.context``)
        self.context_key_rows = self.head.context_key_rows
        self.model_dir = model_dir
        # the cut chosen at finetune time (None: an older directory without one); it is also the
        # probability at which this classifier calls a baseline conn bad (baseline_infection)
        self.trained_cut = read_operating_point(config, model_dir)
        self.decision_threshold = float(self.trained_cut["cut"]) if self.trained_cut else 0.5
        # the class probabilities of each table object ``score`` scored (key "proba"), and of
        # the rows ``score_rows`` scored of it (key "rows": a list of (rows, probabilities);
        # a chunk of a large input is scored so, among its context), while the table lives:
        # its alerts are explained with the probabilities they were scored with instead of by
        # running the model on them again, and an infected archive alerts on most of its conns
        # (the shipped committee on bench/score_speed.py's 100k-conn log: 84,509 alerts, whose
        # explanations took as long as scoring every conn)
        self._scored = TableMemo()

    def fit(self, table: pa.Table) -> ClassifierDetector:
        """Nothing to fit: a classifier's knowledge is its training; calibration sets its bar."""
        return self

    def _bad_proba(self, p: np.ndarray) -> np.ndarray:
        return p[:, self.bad].sum(axis=1).astype(np.float64)

    def score(self, table: pa.Table) -> np.ndarray:
        """P(malicious classes) of every row, ``[n]``."""
        if table.num_rows == 0:
            return np.zeros(0)
        return self._kept_bad(table, lambda: self.head.proba(table, None))

    def _kept_bad(self, table: pa.Table, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """P(malicious) of every row of ``table`` from its class probabilities, ``compute()``d
        unless kept for this table object, and kept (``scored_proba``)."""
        self._scored.drop_dead()
        return self._bad_proba(self._scored.get(table, "proba", compute))

    def score_parts(self, table: pa.Table, parts: int) -> ScoreParts:
        """``score(table)`` in up to ``parts`` calls that may run side by side, over runs of
        rows cut at multiples of the head's batch (``part_bounds``: each row gets the bits
        ``score`` gives it, in the same batch); one call for a head that is not split (the
        gnn's) or a table under two batches. ``combine`` keeps the probabilities for the
        explanations, as ``score`` does. Why: a token classifier scoring a baseline or an
        input alone kept one thread busy while the other idled (the committee on 300k conns:
        13 s of the run's 43)."""
        bounds = part_bounds(table.num_rows, parts, getattr(self.head, "part_rows", None))
        if len(bounds) == 2:
            calls = [functools.partial(self.head.proba, table, None)]
        else:
            calls = [functools.partial(self.head.proba, table, np.arange(a, b, dtype=np.int64))
                     for a, b in zip(bounds[:-1], bounds[1:])]

        def combine(ps: list[np.ndarray]) -> np.ndarray:
            return self._kept_bad(table, lambda: ps[0] if len(ps) == 1 else np.concatenate(ps))

        return ScoreParts(calls, combine)

    def scored_proba(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, C]`` of ``rows``: those ``score(table)``, or a
        ``score_rows(table, ...)`` that scored all of them, gave them when it scored this table
        object, else computed now (as ``score_rows`` does). For the explanations, which say
        what the scores were made of. ``score`` and ``score_rows`` never read them: their bits
        must not depend on whether (or on which thread's schedule) the table was scored
        before."""
        rows = np.asarray(rows, dtype=np.int64)
        p = self._scored.peek(table, "proba")
        if p is not None:
            return p[rows]
        for done, q in reversed(self._scored.peek(table, "rows") or []):
            # ``done`` sorted and distinct (``score_rows``): where each of ``rows`` is in it
            at = np.minimum(np.searchsorted(done, rows), len(done) - 1)
            if len(done) and (done[at] == rows).all():
                return q[at]
        return self.head.proba(table, rows)

    def scored_bad(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """P(malicious classes) of ``rows`` as ``scored_proba`` gives them, ``[n]``."""
        return self._bad_proba(self.scored_proba(table, rows))

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, the other rows of ``table`` as context only."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        p = self.head.proba(table, rows)
        # kept for ``scored_proba`` (sorted and distinct, so that it finds rows by bisection)
        self._scored.drop_dead()
        done, first = np.unique(rows, return_index=True)
        kept = p[first]
        done.flags.writeable = kept.flags.writeable = False
        self._scored.get(table, "rows", list).append((done, kept))
        return self._bad_proba(p)

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """The head's most likely classes and their probabilities, per row (those it was scored
        with, ``scored_proba``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        p = self.scored_proba(table, rows)
        return [",".join(f"p_{self.classes[j]}={p[i, j]:.3f}" for j in np.argsort(-p[i])[:top])
                for i in range(len(rows))]


@register_classifier
def classifier_detector(model_dir: str, device: str = "cpu") -> Any:
    """The known-bad detector of a finetuned model directory (verified against its manifest),
    or of a directory of classifiers (``COMPOSITES``: a committee)."""
    composite = COMPOSITES.get(read_config(model_dir).get("kind"))
    if composite is not None:
        return composite(model_dir, device)
    return ClassifierDetector(model_dir, device)

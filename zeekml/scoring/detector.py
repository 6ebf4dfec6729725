"""The contracts of scoring: ``Detector`` (anything that scores conns) and ``ModelKind`` (a kind of
learned model, which turns a model directory into a ``Detector``).

Implementations live in ``zeekml.scoring.detectors`` (``IsolationForestDetector`` is re-exported
here: the honest baseline every learned model is compared against). Both are structural
``typing.Protocol``\\ s: nothing subclasses them; ``tests/unit/scoring/test_model_kind_contract.py``
checks every registered kind against them.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from zeekml.scoring.detectors.iforest import IsolationForestDetector

__all__ = ["Detector", "ModelKind", "IsolationForestDetector"]


@runtime_checkable
class Detector(Protocol):
    """Scores conns; higher = more anomalous.

    Attributes:
        name: appears in verdicts (``scores``, ``model``) and thresholds.
        note: the Zeek notice type it raises (``ZeekML::Anomalous_Flow``).
        context_seconds: how far back in time other conns can change a conn's score (0 for a
            per-conn detector). Split (``--dask``) and live scoring give each piece this much
            context (``zeekml.scoring.context``).
        forward_context_seconds: the same forward; None = as far as ``context_seconds``.
        context_key: a column whose value a context conn must share with the conn scored (the
            host-history models: ``"id.orig_h"``), or None.
    """

    name: str
    note: str
    context_seconds: float
    forward_context_seconds: float | None
    context_key: str | None

    def fit(self, table: pa.Table) -> "Detector":
        """Fit on a baseline period (a learned model only keeps its reference set)."""
        ...

    def score(self, table: pa.Table) -> np.ndarray:
        """Score of every row of ``table``, ``[n]``."""
        ...

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, the other rows serving as context only."""
        ...

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """One short reason per row of ``rows`` (the notice's ``msg``)."""
        ...


@runtime_checkable
class ModelKind(Protocol):
    """A kind of learned model, as inference sees it (training registers its own half:
    ``zeekml.train.registry``).

    Attributes:
        name: the kind (``config.json``'s ``kind``, ``--model``'s choice).
        schema_version: the feature schema its model directories must carry.
    """

    name: str
    schema_version: int

    def detector(self, model_dir: str, device: str = "cpu") -> Detector:
        """The ``Detector`` of a model directory of this kind (verified against its manifest)."""
        ...

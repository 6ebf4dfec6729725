"""The combined score: the largest calibrated detector score (1.0 = at its threshold)."""
from __future__ import annotations

import numpy as np


def combine(calibrated: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Combined score and, per conn, the index (into ``calibrated``'s order) of the top detector.

    The maximum keeps each detector's own false-positive budget meaningful: a conn alerts when any
    detector puts it past that detector's calibrated threshold.
    """
    names = list(calibrated)
    if not names:
        raise ValueError("no detector scores to combine")
    stack = np.stack([np.nan_to_num(calibrated[n], nan=-np.inf) for n in names])
    top = np.argmax(stack, axis=0)
    return stack[top, np.arange(stack.shape[1])], top

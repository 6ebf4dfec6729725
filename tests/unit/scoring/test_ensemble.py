"""``combine``: the combined score is the largest calibrated detector score; ``top`` names the
detector (index in the dict's order) that gave it. Exact values on hand-built scores."""
from __future__ import annotations

import numpy as np
import pytest

from zeekml.scoring.ensemble import combine


def test_max_and_top_detector_per_conn():
    score, top = combine({"iforest": np.array([0.5, 2.0, -1.0]),
                          "gnn": np.array([1.5, 1.0, -0.5]),
                          "mae": np.array([0.25, 1.999, -3.0])})
    assert score.tolist() == [1.5, 2.0, -0.5]
    assert top.tolist() == [1, 0, 1]


def test_nan_never_wins():
    score, top = combine({"a": np.array([np.nan, 0.3]), "b": np.array([0.2, np.nan])})
    assert score.tolist() == [0.2, 0.3]
    assert top.tolist() == [1, 0]


def test_all_nan_gives_minus_infinity_and_the_first_detector():
    score, top = combine({"a": np.array([np.nan]), "b": np.array([np.nan])})
    assert score.tolist() == [-np.inf]
    assert top.tolist() == [0]


def test_ties_go_to_the_first_detector_in_order():
    score, top = combine({"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0])})
    assert score.tolist() == [1.0, 0.0] and top.tolist() == [0, 0]
    _, top = combine({"b": np.array([1.0]), "a": np.array([1.0])})
    assert top.tolist() == [0]


def test_one_detector_passes_through():
    x = np.array([0.1, 1.0, 7.5])
    score, top = combine({"iforest": x})
    assert score.tolist() == [0.1, 1.0, 7.5] and top.tolist() == [0, 0, 0]


def test_no_conns():
    score, top = combine({"a": np.array([]), "b": np.array([])})
    assert score.shape == (0,) and top.shape == (0,)


def test_no_detectors_is_an_error():
    with pytest.raises(ValueError, match="no detector scores"):
        combine({})

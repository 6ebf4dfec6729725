"""``zeekml.pipeline.dask``: which other tasks a task's context is gathered from."""
import numpy as np

from zeekml.pipeline.dask import neighbour_tasks


def _parts(*ranges):
    return [np.arange(a, b, dtype=np.float64) for a, b in ranges]


def test_context_reaches_back_and_forward_by_their_own_horizons():
    """A causal model reads a host's earlier conns only: 5 h back need not fetch 5 h of later
    tasks too (the chunks take ``back`` and ``fwd`` apart the same way)."""
    parts = _parts((0, 10), (10, 20), (30, 40), (60, 70))
    lo, hi, earlier, later = neighbour_tasks(parts, 2, back=25.0, fwd=1.0)
    assert (lo, hi) == (5.0, 40.0)
    assert earlier == [0, 1] and later == []
    lo, hi, earlier, later = neighbour_tasks(parts, 2, back=1.0, fwd=25.0)
    assert (lo, hi) == (29.0, 64.0)
    assert earlier == [] and later == [3]


def test_no_context_without_a_horizon_or_a_set_ts():
    parts = _parts((0, 10), (10, 20))
    assert neighbour_tasks(parts, 0, 0.0, 0.0) is None
    parts.append(np.full(3, np.nan))
    assert neighbour_tasks(parts, 2, 60.0, 60.0) is None
    # unset ts elsewhere never count as near
    assert neighbour_tasks(parts, 1, 60.0, 60.0)[2:] == ([0], [])

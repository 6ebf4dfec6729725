"""Windows while ``watch`` is behind, with detectors that have a time context: as big as they
score in ``CATCH_UP_SECONDS`` (their fixed costs spread over more conns, no window holding its
verdicts back longer than that), within ``window_records`` .. ``catch_up_factor`` x that."""
from __future__ import annotations

from zeekml.pipeline.live.options import WatchOptions
from zeekml.pipeline.live.watcher import CATCH_UP_SECONDS, catch_up_records, context_speed


def test_catch_up_windows_follow_the_scoring_speed_within_bounds():
    opts = WatchOptions(window_records=1000, catch_up_factor=4)
    assert catch_up_records(opts, None) == 4000             # no speed known yet: as before
    assert catch_up_records(opts, 100.0) == 1000            # slow: never below a window
    assert catch_up_records(opts, 500.0) == int(500 * CATCH_UP_SECONDS)
    assert catch_up_records(opts, 1e6) == 4000              # fast: at most catch_up_factor x


def test_speed_is_a_moving_average_of_releases_big_enough_to_say_something():
    assert context_speed(None, 50, 1.0) is None              # too few conns
    assert context_speed(None, 1000, 0.0) is None
    s = context_speed(None, 1000, 2.0)
    assert s == 500.0
    assert context_speed(s, 3000, 2.0) == 0.7 * 500.0 + 0.3 * 1500.0
    assert context_speed(s, 10, 5.0) == s


class _Slow:
    """A detector whose score is a function of its rows alone (and takes a little time)."""

    def __init__(self, name: str, k: float):
        self.name, self.k = name, k

    def score(self, table):
        import time

        import numpy as np
        time.sleep(0.01)
        return np.asarray(table.column("ts").to_pylist(), dtype=float) * self.k


def test_detectors_side_by_side_give_the_scores_they_give_in_turn():
    import numpy as np
    import pyarrow as pa

    from zeekml.pipeline.live.context import score_in_threads
    torch = __import__("pytest").importorskip("torch")
    table = pa.table({"ts": [1.0, 2.0, 3.5]})
    dets = [_Slow("a", 1.0), _Slow("b", 2.0), _Slow("c", -1.0)]
    assert score_in_threads(dets, table, 1) is None         # in turn: score_batch scores them
    before = torch.get_num_threads()
    got = score_in_threads(dets, table, 2)
    assert list(got) == ["a", "b", "c"]
    for d in dets:
        np.testing.assert_array_equal(got[d.name], d.score(table))
    assert torch.get_num_threads() == before                # the kernels' threads set back

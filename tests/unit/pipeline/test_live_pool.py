"""``watch --score-workers`` with detectors that have a time context: how the detectors are
shared out between the scoring processes and the watcher (``live.pool.assign``)."""
from __future__ import annotations

from zeekml.pipeline.live.pool import assign


def test_one_process_takes_the_costliest_detector_and_the_watcher_the_rest():
    # the shipped detectors' shares of the live scoring cost (docs/results/watch.md):
    # iforest 4%, gnn 21%, mae 14%, moe 61%; the watcher starts 20% loaded with its own work
    assert assign([4.0, 21.0, 14.0, 61.0], 1) == [-1, -1, -1, 0]


def test_two_processes_split_the_rest_with_the_watcher():
    # moe -> process 0, gnn -> the idle process 1 (21), mae -> the watcher (20 < 21: 34),
    # iforest -> process 1 (21 < 34)
    assert assign([4.0, 21.0, 14.0, 61.0], 2) == [1, 1, -1, 0]


def test_without_a_watcher_share_equal_costs_alternate_and_ties_go_to_a_process():
    assert assign([1.0, 1.0, 1.0, 1.0], 2, watcher_share=0.0) == [0, 1, -1, 0]
    assert assign([5.0], 1) == [0]
    assert assign([], 3) == []


def test_more_processes_than_detectors_leave_some_idle():
    owner = assign([3.0, 2.0], 4)
    assert owner == [0, 1]

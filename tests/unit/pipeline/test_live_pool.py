"""``watch --score-workers`` with detectors that have a time context: how the detectors are
shared out between the scoring processes and the watcher (``live.pool.assign``)."""
from __future__ import annotations

from zeekml.pipeline.live.pool import assign, loads, rebalanced


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


def test_a_measured_watcher_load_replaces_the_share():
    # the watcher already busy with 10 of its own: the costliest (8) goes to the process, the
    # next (6) too (8 < 10), the last (3) to the watcher (10 < 14)
    assert assign([3.0, 6.0, 8.0], 1, watcher_load=10.0) == [-1, 0, 0]
    assert assign([3.0, 6.0, 8.0], 1, watcher_load=0.0) == [-1, -1, 0]


def test_loads_of_a_share_out():
    assert loads([0, -1, 1, 0], [1.0, 2.0, 4.0, 8.0], 2, 0.5) == [9.0, 4.0, 2.5]


def test_rebalanced_moves_detectors_only_for_a_real_gain():
    # shared out by costs that proved wrong: the process got the IsolationForest and the
    # autoencoder, the watcher the MoE and the GNN, which measured live cost most
    names_costs = [0.3, 1.3, 0.5, 2.0]          # iforest, gnn, mae, moe (CPU s)
    owner = [0, -1, 0, -1]
    new = rebalanced(owner, names_costs, 1, watcher_load=2.0)
    assert new is not None and new[3] == 0      # the MoE to the process
    assert max(loads(new, names_costs, 1, 2.0)) < max(loads(owner, names_costs, 1, 2.0))
    # already as good as it gets: kept (moving costs the state a detector keeps)
    assert rebalanced(new, names_costs, 1, watcher_load=2.0) is None
    # a gain under 15% is not worth it
    assert rebalanced([0, -1], [1.0, 1.0], 1, watcher_load=0.1) is None

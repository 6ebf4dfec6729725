"""bench/classifiers_unseen.py's pieces on hand-built detectors and conns: a committee flags by
its vote, a classifier at its trained cut (NaN never flags), and flags are counted per
(originator, port, proto) group. The benchmark itself (which needs ../shared/data) is run by
hand."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest
from bench_script import load_bench



@pytest.fixture(scope="module")
def cu():
    return load_bench("classifiers_unseen")


class Classifier:
    decision_threshold = 0.7

    def score(self, table):
        return np.array([0.9, 0.7, np.nan, 0.2])


class Committee:
    def flag_rows(self, table, rows):
        return [r % 2 == 0 for r in rows]

    def score(self, table):          # never read: the vote decides
        raise AssertionError("a committee flags by flag_rows")


def test_flagged_at_the_trained_cut_or_by_the_vote(cu):
    t = pa.table({"x": [1, 2, 3, 4]})
    np.testing.assert_array_equal(cu.flagged(Classifier(), t), [True, True, False, False])
    np.testing.assert_array_equal(cu.flagged(Committee(), t), [True, False, True, False])


def test_group_flags_counts_per_group_largest_first(cu):
    key = [("a", 23, "tcp"), ("b", 53, "udp"), ("a", 23, "tcp"), ("a", 23, "tcp"), ("b", 53, "udp"),
           ("c", 0, "icmp")]
    flags = {"x": np.array([1, 0, 1, 0, 1, 1], bool), "y": np.zeros(6, bool)}
    got = cu.group_flags(key, flags, 2)
    assert got == [{"orig_h": "a", "resp_p": 23, "proto": "tcp", "conns": 3, "flagged": {"x": 2, "y": 0}},
                   {"orig_h": "b", "resp_p": 53, "proto": "udp", "conns": 2, "flagged": {"x": 1, "y": 0}}]


def test_markdown_lists_each_capture_then_its_groups(cu):
    r = {"classifiers": ["x", "y"], "captures": {"cap": {
        "conns": 6, "flagged": {"x": 4, "y": 0},
        "groups": [{"orig_h": "a", "resp_p": 23, "proto": "tcp", "conns": 3, "flagged": {"x": 2, "y": 0}}]}}}
    assert cu.markdown(r).splitlines() == ["| capture: conns, or group | x | y |", "|---|---|---|",
                                           "| **cap**: 6 | **4** | **0** |", "| a -> 23/tcp: 3 | 2 | 0 |"]

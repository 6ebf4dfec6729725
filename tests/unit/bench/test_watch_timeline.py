"""bench/watch.py --timeline: the releases read back from a ``watch -vv`` log (the lines
``live.watcher`` and ``live.pool`` write at debug level), in the three forms the
pool's line has had. The benchmark itself is run by hand."""
from __future__ import annotations


import pytest
from bench_script import load_bench


W, P = "DEBUG zeekml.pipeline.live.watcher: ", "DEBUG zeekml.pipeline.live.pool: "
LOG = "".join(line + "\n" for line in [
    W + 'window of 5150 conns closed at 1000.5 (watermark 1000.3, 125013 pending): release 0 of '
        '29382 conns, ts 969.5 .. 975.3',
    P + "release 0: 29382 conns sent at 1000.4, the watcher's own share 3.38 s, then 0.02 s "
        'waiting for the processes, done at 1004.0; CPU s: gnn 2.42',
    W + 'window of 10000 conns closed at 1006.5 (watermark 1002.5, 125001 pending): release 1 of '
        '9979 conns, ts 975.4 .. 977.5',
    P + 'release 1: 9979 conns decided at 1006.5, sent at 1006.5, answers in at 1008.0 (0.00 s '
        "waited for them), the watcher's own share 1.45 s, collected at 1009.0; CPU s: gnn 0.99",
    W + 'window of 11 conns closed at 1012.5 (watermark 1012.0, 12 pending): release 2 of 55 '
        'conns, ts 977.6 .. 987.0',
    P + 'release 2: 55 conns decided at 1012.5, sent at 1012.5, answers in at 1012.8 (0.00 s '
        "waited for them), the watcher's own share 0.01 s (312 minor page faults), collected at "
        "1012.9; CPU s: gnn 0.01, moe 0.03",
    P + 'release 3: 0 conns decided at 1013.0, sent at 0.000, answers in at 0.000 (0.00 s waited '
        "for them), the watcher's own share 0.00 s, collected at 1013.0; CPU s:",
])


@pytest.fixture(scope="module")
def bench():
    return load_bench("watch", "watch_bench")


def test_timeline_of_a_watch_log(bench, tmp_path):
    path = tmp_path / "w.log"
    path.write_text(LOG)
    got = bench.timeline(str(path), hold=25.0)
    rel = got["releases"]
    assert [r["conns"] for r in rel] == [29382, 9979, 55]
    assert [r["closed"] for r in rel] == [0.0, 6.0, 12.0]
    assert [r["stale_s"] for r in rel] == [0.2, 4.0, 0.5]
    # 1000.5 - 969.5 - 25 = 6.0 past the hold-back when decided, 3.5 s to score
    assert (rel[0]["oldest_at_decision_s"], rel[0]["took_s"], rel[0]["oldest_at_answer_s"]) \
        == (6.0, 3.5, 9.5)
    assert (rel[1]["took_s"], rel[1]["oldest_at_answer_s"]) == (2.5, 8.6)
    # the line's newest form also says the own share's page faults; each form its CPU seconds
    assert "own_faults" not in rel[1] and rel[2]["own_faults"] == 312
    assert rel[1]["cpu_s"] == {"gnn": 0.99} and rel[2]["cpu_s"] == {"gnn": 0.01, "moe": 0.03}
    # the steady phase: releases of more than 1,000 conns, the last of them left out
    assert got["steady"]["releases"] == 1 and got["steady"]["conns_min_median_max"] == [29382] * 3

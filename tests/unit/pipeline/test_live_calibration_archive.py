"""``watch --once`` calibration reads what exists now, archives that will never be whole
included: a cut ``.gz`` that is the only conn log gives its records before the cut, with a
warning naming the byte reached, as the watch loop itself reads it."""
from __future__ import annotations

import gzip
import logging
import threading

from zeekml.pipeline.live.calibration import _collect_baseline
from zeekml.pipeline.live.options import WatchOptions, WatchStats
from zeekml.sources.checkpoint import Checkpoint

HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.resp_h\tproto\tconn_state\n"
          b"#types\ttime\tstring\taddr\taddr\tenum\tstring\n")


def records(n: int) -> bytes:
    return b"".join(b"%d.5\tC%d\t10.0.0.1\t10.0.0.2\ttcp\tSF\n" % (1_700_000_000 + i, i)
                    for i in range(n))


def test_once_calibrates_on_the_records_of_a_cut_archive(tmp_path, caplog):
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    out.mkdir()
    whole = gzip.compress(HEADER + records(20_000))
    (logs / "conn.2019-01-01.log.gz").write_bytes(whole[: len(whole) // 2])
    opts = WatchOptions(once=True, use_events=False, baseline_records=50_000)
    with caplog.at_level(logging.WARNING):
        table = _collect_baseline(str(logs), str(out), opts, Checkpoint(), WatchStats(),
                                  threading.Event(), lambda follower, n: None)
    assert 1_000 < table.num_rows < 20_000
    assert table.column("uid").to_pylist()[-1] == f"C{table.num_rows - 1}"
    assert "conn.2019-01-01.log.gz: truncated or damaged gzip archive" in caplog.text
    assert "compressed byte" in caplog.text

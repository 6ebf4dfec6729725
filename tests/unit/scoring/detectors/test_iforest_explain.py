"""The IsolationForest's explanation: the features furthest from the baseline, in their own units
beside the baseline's median or share (issue 16 item 2: no raw log-space values)."""
from __future__ import annotations

import os

import numpy as np

from zeekml.scoring.detectors.iforest import IsolationForestDetector
from zeekml.scoring.explain import feature_value_text
from zeekml.train.data import load_conns

LOG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
                   "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


def test_feature_values_in_words():
    assert feature_value_text("log1p_duration", float(np.log1p(503.2)), float(np.log1p(3.11)),
                              0.0) == "duration 503 s, 162x the baseline median 3.11 s"
    assert feature_value_text("log1p_orig_ip_bytes", float(np.log1p(6644)), float(np.log1p(44)),
                              0.0) == "orig_ip_bytes 6,644, 151x the baseline median 44"
    assert feature_value_text("conn_state_RSTO", 1.0, 0.0, 0.003) == \
        "conn_state RSTO, in 0.3% of the baseline's conns"
    assert feature_value_text("service_dns", 0.0, 1.0, 0.97) == \
        "not service dns, unlike 97.0% of the baseline's conns"
    assert feature_value_text("resp_p_ephemeral", 1.0, 0.0, 0.2) == \
        "responder port >= 49152, in 20.0% of the baseline's conns"
    assert feature_value_text("history_up_D", 3.0, 0.0, 0.1) == \
        "history letter D x3, where the baseline median is 0"
    assert feature_value_text("history_len", 2.0, 8.0, 0.0) == "history length 2, 0.25x the baseline median 8"
    # one wording with the baseline-of-its-kind explanation (Deviation.text), less the kind
    assert feature_value_text("log1p_resp_bytes", float(np.log1p(40)), float(np.log1p(800)), 0.0) == \
        "resp_bytes 40, 1/20 of the baseline median 800"
    assert feature_value_text("missing_duration", 1.0, 0.0, 0.05) == \
        "duration unset, in 5.0% of the baseline's conns"


def test_explanations_compare_each_conn_with_its_baseline():
    t = load_conns([LOG])
    det = IsolationForestDetector(n_estimators=50).fit(t.slice(0, 200))
    rows = np.argsort(-det.score(t))[:5]
    texts = det.explain(t, rows)
    assert len(texts) == 5
    for text in texts:
        parts = text.split("; ")
        # led by the values no baseline conn had, when it has any (test_iforest_unseen.py)
        assert len(parts) == 3 + parts[0].startswith("never in the baseline: ")
        # every part names the baseline; no log-space feature names are left
        assert all("baseline" in p for p in parts) and "log1p" not in text
    # the numbers are the conn's own: its duration as Zeek logged it, among all features
    from zeekml.scoring.explain import _num

    durs = t.column("duration").to_pylist()
    row = next(r for r in rows if durs[r] is not None and durs[r] > 1)
    full = det.explain(t, np.array([row]), top=len(det.featurizer.feature_names))[0]
    assert f"duration {_num(durs[row])} s, " in full

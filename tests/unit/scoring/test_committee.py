"""The ``committee`` detector (issue 14): known-bad classifiers of different bases that must
agree, as one classifier directory. Real tiny finetuned members (mae twice, moe), the detector
contract, the vote's meaning, and the directories it refuses (by name, in one line)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from test_model_kind_contract import LOG, TINY, check_contract

from zeekml._core.errors import ModelError
from zeekml.scoring.detectors.committee import CommitteeDetector, committee_config, rescale
from zeekml.scoring.registry import load_model_detectors

torch = pytest.importorskip("torch")


def test_rescale_puts_each_members_cut_at_one_half():
    p = np.array([0.0, 0.25, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(rescale(p, 0.8), [0.0, 0.15625, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rescale(p, 0.5), [0.0, 0.25, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(rescale(p, 1.0), [0.0, 0.125, 0.4, 0.45, 1.0])
    np.testing.assert_allclose(rescale(np.array([np.nan, 0.9]), 0.8), [0.0, 0.75])   # NaN: no vote


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three tiny classifiers finetuned on the 400-conn IoT-23 slice, siblings in one folder,
    with trained cuts: mae (seeds 0 and 1: different heads) and moe."""
    from zeekml.train.artifact import update_config
    from zeekml.train.data import labels_of, load_conns, sample_shots, temporal_split
    from zeekml.train.registry import get_trainer

    table = load_conns([LOG])
    labels = labels_of(table, "label")
    early, _ = temporal_split(table)
    root = tmp_path_factory.mktemp("committee")
    dirs = []
    for kind, seed, cut in (("mae", 0, 0.5), ("mae", 1, 0.6), ("moe", 0, 0.5)):
        base = str(root / f"{kind}-base")
        if not os.path.exists(base):
            get_trainer(kind).pretrain(table, base, sources=[LOG], seed=0, epochs=1, device="cpu",
                                       **TINY[kind])
        out = str(root / f"{kind}-{seed}")
        get_trainer(kind).finetune(base, table, labels, sample_shots(labels, early, k=8, seed=seed),
                                   hide_service=False, seed=seed, out=out, sources=[LOG],
                                   label_field="label", epochs=1, device="cpu", **TINY[kind])
        update_config(out, {"operating_point": {"cut": cut, "fpr": 0.01, "chosen_by": "test"}})
        dirs.append(out)
    return table, dirs


def make(members_dirs, out, vote, **kw) -> str:
    from zeekml.train.artifact import save_model_dir

    return save_model_dir(str(out), "committee", committee_config(members_dirs, vote, **kw), None, [])


def test_a_committee_is_a_known_bad_detector(members):
    table, dirs = members
    out = make(dirs, os.path.join(os.path.dirname(dirs[0]), "clf-committee"), 2,
               operating_point={"cut": 0.5, "fpr": 0.01, "chosen_by": "vote"})
    (det,) = load_model_detectors(out)                  # --models naming it, as score does
    assert isinstance(det, CommitteeDetector)
    assert det.name == "clf-clf-committee" and det.note == "ZeekML::Intrusion"
    assert det.decision_threshold == 0.5 and det.trained_cut["chosen_by"] == "vote"
    assert det.context_key == "id.orig_h"               # all three members key on the originator
    assert det.fit(table.slice(0, 200)) is det
    whole = check_contract(det, table)
    assert ((whole >= 0) & (whole <= 1)).all()
    assert "agree (need 2)" in det.explain(table, np.array([0]))[0]


@pytest.mark.parametrize("vote", [1, 2, 3])
def test_the_score_reaches_one_half_when_vote_members_reach_their_cuts(members, vote, tmp_path):
    table, dirs = members
    out = make(dirs, os.path.join(os.path.dirname(dirs[0]), f"vote{vote}"), vote)
    det = CommitteeDetector(out)
    ps = [m.score(table) for m in det.members]
    cuts = [m.decision_threshold for m in det.members]
    assert cuts == [0.5, 0.6, 0.5]
    agree = np.sum([p >= c for p, c in zip(ps, cuts)], axis=0)
    s = det.score(table)
    np.testing.assert_array_equal(s >= 0.5, agree >= vote)
    q = np.sort(np.vstack([rescale(p, c) for p, c in zip(ps, cuts)]), axis=0)
    np.testing.assert_allclose(s, q[3 - vote])
    # no operating point stored: the committee's own bar is still "vote members at their cut"
    assert det.decision_threshold == 0.5 and det.trained_cut is None


@pytest.mark.parametrize("vote", [1, 2, 3])
def test_flag_rows_decides_as_the_score_running_members_only_where_undecided(members, vote):
    table, dirs = members
    det = CommitteeDetector(make(dirs, os.path.join(os.path.dirname(dirs[0]), f"vote{vote}"), vote))
    rows = np.arange(0, table.num_rows, 3)
    want = det.score_rows(table, rows) >= det.decision_threshold
    seen: list[int] = []
    for m in det.members:
        inner = m.score_rows
        m.score_rows = lambda t, r, inner=inner: (seen.append(len(r)), inner(t, r))[1]
    np.testing.assert_array_equal(det.flag_rows(table, rows), want)
    assert seen[0] == len(rows) and len(seen) <= 3
    # the last member runs only on rows the first two left open: they disagree (2 of 3),
    # neither flags (1 of 3: none left to run), both flag (3 of 3)
    if len(seen) == 3:
        assert seen[2] <= seen[1] <= len(rows)
    if vote == 2:
        assert len(seen) < 3 or seen[2] < len(rows)


def test_refusals_are_one_line_naming_the_directory(members, tmp_path):
    table, dirs = members
    root = os.path.dirname(dirs[0])

    def refused(config_edit, match):
        d = os.path.join(root, f"bad-{abs(hash(match)) % 10**8}")
        make(dirs, d, 2)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        config_edit(cfg)
        from zeekml.train.artifact import update_config

        update_config(d, cfg)
        with pytest.raises(ModelError, match=match) as e:
            load_model_detectors(d)
        assert e.value.path == d and "\n" not in str(e.value)
        shutil.rmtree(d)

    refused(lambda c: c.update(vote=4), "\"vote\" must be a count from 1 to 3, not 4")
    refused(lambda c: c.update(vote=True), "\"vote\" must be a count")
    refused(lambda c: c.update(members=c["members"][:1]), "at least two classifier directories")
    refused(lambda c: c["members"][0].update(dir="../mae-0"), "not a plain directory name")
    refused(lambda c: c["members"][0].update(dir="gone"), "member 'gone' is missing")
    refused(lambda c: c["members"][1]["files"].update({"weights.pt": "0" * 64}),
            "not the classifier the committee was made of")
    refused(lambda c: c.update(label_field="service"), "committee of 'service' classifiers")


def test_a_base_cannot_be_a_member(members, tmp_path):
    table, dirs = members
    root = os.path.dirname(dirs[0])
    d = make([dirs[0], os.path.join(root, "mae-base")], os.path.join(root, "with-base"), 1)
    with pytest.raises(ModelError, match="member 'mae-base': a classifier of None is not a known-bad") as e:
        CommitteeDetector(d)
    assert e.value.path == d


SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
                       "models", "malicious-committee")


@pytest.mark.skipif(not os.path.exists(os.path.join(SHIPPED, "config.json")),
                    reason="models/malicious-committee not shipped")
def test_the_shipped_committee_loads_its_three_members(members):
    """``--models models/malicious-committee``: its sibling members (the causal moe's stream
    classifier, mae, gnn) verify and load, off by default, and on the IoT-23 slice its alerts are
    the conns 2 of them flag."""
    from zeekml.scoring.registry import detector_dirs

    table, _ = members
    (det,) = load_model_detectors(SHIPPED)
    assert isinstance(det, CommitteeDetector) and det.vote == 2
    assert [os.path.basename(m.model_dir) for m in det.members] == \
        ["malicious-cmoe", "malicious-mae", "malicious-gnn"]
    assert det.members[0].head.m.causal
    assert [m.context_key_rows for m in det.members] == [17, 32, None]   # the gnn member counts by time
    assert det.context_key is None                      # the gnn member sees every conn around
    assert SHIPPED not in detector_dirs(os.path.dirname(SHIPPED))   # off by default
    s = det.score(table)
    agree = np.sum([m.score(table) >= m.decision_threshold for m in det.members], axis=0)
    np.testing.assert_array_equal(s >= det.decision_threshold, agree >= 2)


def test_a_committee_scores_a_conn_among_its_members_contexts(members):
    """Its context is the union of its members' (``context_parts``): each host-history member
    declares its originator's latest conns (``context_key_rows``), so a target gets those, not
    every conn of the widest hour, and scores as in the whole log."""
    from zeekml.scoring.context import InContext, context_parts, detectors_in_context

    table, dirs = members
    det = CommitteeDetector(make(dirs, os.path.join(os.path.dirname(dirs[0]), "ctx"), 2))
    assert context_parts(det) == det.members
    assert [m.context_key_rows for m in det.members] == [32, 32, 8]   # mae's SEQ_LEN; tiny moe's seq_len
    whole = det.score(table)
    targets = np.arange(300, 330, dtype=np.int64)
    (ctx,) = detectors_in_context([det], table, targets)
    assert isinstance(ctx, InContext) and ctx.context.num_rows < 300
    assert np.array_equal(ctx.score(table.take(targets)), whole[targets])


def test_an_mae_member_featurises_only_the_rows_asked_with_the_whole_tables_bits(members):
    """The baseline check asks for 1,000 of a baseline's conns: the autoencoder member featurises
    those (the rest of the table their host history), with the values of featurising all."""
    table, dirs = members
    det = CommitteeDetector(make(dirs, os.path.join(os.path.dirname(dirs[0]), "vote2"), 2))
    head = det.members[0].head
    rows = np.array([3, 0, 250, 17], dtype=np.int64)
    want = head.m.run(head.m.modalities(table).take(rows))["proba"]
    asked: list[int] = []
    inner = head.m.featurizer.transform
    head.m.featurizer.transform = lambda t, *a, rows=None, **k: (
        asked.append(t.num_rows if rows is None else len(rows)), inner(t, *a, rows=rows, **k))[1]
    np.testing.assert_array_equal(head.proba(table, rows), want)
    assert asked == [len(rows)]


@pytest.mark.parametrize("vote", [1, 2, 3])
def test_flag_rows_runs_the_cheapest_members_first_with_the_same_decisions(members, vote):
    table, dirs = members
    det = CommitteeDetector(make(dirs, os.path.join(os.path.dirname(dirs[0]), f"vote{vote}"), vote))
    assert [m.cost for m in det.members] == [1.0, 1.0, 6.0]     # mae, mae, moe (RELATIVE_COST)
    rows = np.arange(0, table.num_rows, 2)
    want = det.score_rows(table, rows) >= det.decision_threshold
    det.members[2].cost, det.members[0].cost = 0.5, 9.0           # now: moe, mae (seed 1), mae (seed 0)
    seen: list[tuple[str, int]] = []
    for i, m in enumerate(det.members):
        inner = m.score_rows
        m.score_rows = lambda t, r, inner=inner, i=i: (seen.append((i, len(r))), inner(t, r))[1]
    np.testing.assert_array_equal(det.flag_rows(table, rows), want)
    assert [i for i, _ in seen] == [2, 1, 0][:len(seen)] and seen[0][1] == len(rows)


def test_alerts_are_explained_with_the_probabilities_they_were_scored_with(members):
    """An infected archive alerts on most conns: explaining them must not run every member's
    model on them again. After ``score(table)`` the explanations read the probabilities that
    score computed (no model call), with the text a fresh detector computes, while the table
    lives; an equal but other table object, or none scored, runs the models as before."""
    import gc
    import weakref

    table, dirs = members
    det = CommitteeDetector(make(dirs, os.path.join(os.path.dirname(dirs[0]), "explained"), 2))
    calls = []
    for m in det.members:
        inner = m.head.proba
        m.head.proba = lambda t, r, inner=inner: (calls.append(r is None), inner(t, r))[1]
    rows = np.array([7, 0, 399, 7, 120])
    fresh = CommitteeDetector(det.model_dir).explain(table, rows)
    det.score(table)
    assert calls == [True, True, True]
    calls.clear()
    assert det.explain(table, rows) == fresh
    assert det.members[0].explain(table, rows) == \
        CommitteeDetector(det.model_dir).members[0].explain(table, rows)
    assert calls == []                               # the scores' probabilities, no model run
    other = table.slice(0)                           # equal rows, another table object
    assert det.explain(other, rows) == fresh and calls == [False, False, False]
    # score_rows never reads what score kept (its bits must not hang on the schedule)
    calls.clear()
    det.score_rows(table, rows)
    assert calls == [False, False, False]
    # a chunk is scored by score_rows among its context: its alerts are explained with those
    # probabilities too (any of the rows scored, in any order), others by running the models
    ctx = table.slice(0)
    calls.clear()
    det.score_rows(ctx, np.array([399, 5, 120, 7, 0, 7]))
    assert calls == [False, False, False]
    calls.clear()
    assert det.explain(ctx, rows) == fresh and calls == []
    assert det.explain(ctx, np.array([6])) == CommitteeDetector(det.model_dir).explain(table, np.array([6]))
    assert calls == [False, False, False]
    # nothing keeps a scored table alive, and a later score lets go of the dead one's results
    t2 = table.slice(0)
    ref = weakref.ref(t2)
    det.score(t2)
    del t2
    gc.collect()
    assert ref() is None
    det.score(table.slice(0, 10))
    # kept: table, ctx, and the slice of 10 until the next score (the dead t2's are dropped)
    assert all(len(m._scored._tables) == 3 for m in det.members)


@pytest.mark.parametrize("parts", [2, 3])
def test_score_parts_give_the_bits_of_score_and_keep_its_probabilities(members, parts, monkeypatch):
    """``score_parts`` (run side by side by ``pipeline.fitted.score_calls``) cuts each
    token or autoencoder member's rows at multiples of its inference batch, so every row is
    run in the batch ``score`` runs it in: the combined parts are ``score``'s bits, and each
    member keeps the probabilities for the explanations as ``score`` does. The batch is made
    64 rows here so the 400-conn table splits (the gnn head is never split)."""
    from zeekml.scoring.detectors import mae, token
    from zeekml.scoring.detectors.classifier import part_bounds

    monkeypatch.setattr(token, "INFER_BATCH", 64)
    monkeypatch.setattr(mae, "INFER_BATCH", 64)
    table, dirs = members
    path = make(dirs, os.path.join(os.path.dirname(dirs[0]), f"parts{parts}"), 2)
    whole = CommitteeDetector(path)
    want = whole.score(table)
    det = CommitteeDetector(path)
    assert [m.head.part_rows for m in det.members] == [64, 64, 64]
    split = det.score_parts(table, parts)
    bounds = part_bounds(table.num_rows, parts, 64)
    assert len(bounds) == parts + 1 and all(b % 64 == 0 for b in bounds[1:-1])
    assert len(split.calls) == 3 * parts
    got = split.combine([call() for call in split.calls])
    np.testing.assert_array_equal(got, want)
    for m, w in zip(det.members, whole.members):
        np.testing.assert_array_equal(m._scored.peek(table, "proba"), w._scored.peek(table, "proba"))
    # the costliest member's parts come first (the order side_by_side starts them in)
    assert det.members[2].cost == max(m.cost for m in det.members)
    first = split.calls[0]
    assert first.args[0] is table and first.func.__self__ is det.members[2].head


def test_part_bounds_cut_at_whole_batches():
    from zeekml.scoring.detectors.classifier import part_bounds

    assert part_bounds(5000, 2, 1024) == [0, 2048, 5000]
    assert part_bounds(10000, 3, 1024) == [0, 3072, 7168, 10000]
    assert part_bounds(2047, 2, 1024) == [0, 2047]          # under two batches: whole
    assert part_bounds(5000, 1, 1024) == [0, 5000]
    assert part_bounds(5000, 2, None) == [0, 5000]           # a head that is not split

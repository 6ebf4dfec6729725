"""The pure helpers of bench/fewshot_eval.py (budgets by fraction of a temporal share, skip rules,
metrics, the tables of docs/results/fewshot.md) on hand-built inputs; the benchmark itself is
run by hand."""
from __future__ import annotations


import numpy as np
import pytest
from bench_script import load_bench



@pytest.fixture(scope="module")
def fe():
    return load_bench("fewshot_eval")


def test_earliest_share_takes_the_earliest_rows_of_the_share_by_time(fe):
    #            row: 0    1    2    3    4       5    6    7
    ts = np.array([5.0, 1.0, 3.0, 3.0, np.inf, 2.0, 0.5, 9.0])
    share = np.array([0, 1, 2, 3, 4, 5])            # rows 6 and 7 are the test part
    assert fe.earliest_share(ts, share, 0.5).tolist() == [1, 2, 5]       # ts 1, 2, then the first 3.0
    assert fe.earliest_share(ts, share, 4 / 6).tolist() == [1, 2, 3, 5]  # both 3.0s, by row order
    assert fe.earliest_share(ts, share, 1.0).tolist() == [0, 1, 2, 3, 4, 5]   # unset ts last
    assert fe.earliest_share(ts, share, 0.01).tolist() == [1]             # at least one row
    assert 6 not in fe.earliest_share(ts, share, 1.0)                     # never outside the share


def test_earliest_share_grows_with_the_fraction(fe):
    rng = np.random.default_rng(0)
    ts = rng.random(1000)
    share = np.sort(rng.choice(1000, 700, replace=False))
    prev: set = set()
    for f in (0.01, 0.05, 0.10, 0.20):
        rows = fe.earliest_share(ts, share, f)
        assert len(rows) == round(700 * f)
        assert prev <= set(rows.tolist())
        assert ts[rows].max() <= np.sort(ts[share])[len(rows) - 1]
        prev = set(rows.tolist())


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_earliest_share_refuses_a_fraction_outside_0_1(fe, bad):
    with pytest.raises(ValueError, match="fraction"):
        fe.earliest_share(np.zeros(3), np.arange(3), bad)


def test_budget_names(fe):
    assert [fe.budget_name(fraction=f) for f in (0.01, 0.05, 0.1, 0.2)] == ["1%", "5%", "10%", "20%"]
    assert fe.budget_name(shots=10) == "10-shot"
    with pytest.raises(ValueError):
        fe.budget_name(fraction=0.1, shots=10)
    assert sorted(["10-shot", "20%", "1%", "5%"], key=fe.budget_order) == ["1%", "5%", "20%", "10-shot"]


def test_labels_keep_benign_and_malicious_only(fe):
    y = fe.binary_labels(np.array(["Benign", "Background", None, "Malicious", "-"], dtype=object))
    assert y.tolist() == ["Benign", None, None, "Malicious", None]
    assert fe.labeled(np.array([0, 1, 2, 3]), y).tolist() == [0, 3]


def test_skip_reason(fe):
    test = ["Benign"] * 10 + ["Malicious"] * 10
    assert fe.skip_reason(["Benign", "Malicious"], test) is None
    assert fe.skip_reason(["Benign"] * 73, test) == "its 73 labeled conns are all Benign"
    assert fe.skip_reason([], test) == "no labeled conns"
    assert fe.skip_reason(["Benign", "Malicious"], ["Benign"] * 985 + ["Malicious"]) == \
        "the test set holds 1 Malicious conns (fewer than 10)"


def test_scores_macro_f1_and_auroc_of_p_malicious(fe):
    y = ["Benign", "Benign", "Malicious", "Malicious"]
    # columns in the model's class order (here Malicious first): argmax = M, B, M, B
    proba = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8]])
    s = fe.scores(y, proba, ["Malicious", "Benign"])
    # Benign: tp 1, fp 1, fn 1 -> F1 0.5; Malicious likewise -> macro 0.5
    assert s["macro_f1"] == pytest.approx(0.5)
    # P(M) = .6 .3 .9 .2 for B B M M: pairs (M > B): .9>.6 .9>.3 .2<.6 .2<.3 -> 2/4
    assert s["auroc"] == pytest.approx(0.5)
    perfect = fe.scores(y, np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.4, 0.6]]), ["Benign", "Malicious"])
    assert perfect == {"macro_f1": 1.0, "auroc": 1.0}


def test_scores_refuse_a_misshapen_proba_and_leave_auroc_unset_on_one_class(fe):
    with pytest.raises(ValueError, match="shape"):
        fe.scores(["Benign"], np.ones((2, 2)), ["Benign", "Malicious"])
    assert fe.scores(["Benign", "Benign"], np.array([[0.9, 0.1], [0.2, 0.8]]),
                     ["Benign", "Malicious"])["auroc"] is None


def test_relative_gain_is_the_papers_framing(fe):
    assert fe.relative_gain(0.8, 0.75) == pytest.approx(6.6667, abs=1e-4)
    assert fe.relative_gain(0.7, 0.8) == pytest.approx(-12.5)
    assert np.isnan(fe.relative_gain(0.5, 0.0))


def test_parse_pretrain_overrides(fe):
    got = fe.parse_pretrain(["moe:epochs=1", "gnn:epochs=2"])
    assert got["moe"]["epochs"] == 1 and got["gnn"]["epochs"] == 2
    assert got["moe"]["max_sequences"] == fe.PRETRAIN["moe"]["max_sequences"]
    assert fe.PRETRAIN["moe"]["epochs"] != 1          # the defaults are not changed in place
    for bad in ("xgb:epochs=1", "moe:epochs", "moe:epochs=two", "moe"):
        with pytest.raises(ValueError, match="KIND:KEY=INT"):
            fe.parse_pretrain([bad])


def _run(kind, model, seed, f1, budget="5%", capture="strato-008", auroc=0.9):
    return {"capture": capture, "kind": kind, "budget": budget, "seed": seed, "model": model,
            "macro_f1": f1, "auroc": auroc}


def test_summarise_and_render(fe):
    runs = [_run("gnn", "pretrained", 0, 0.8), _run("gnn", "pretrained", 1, 0.9),
            _run("gnn", "scratch", 0, 0.7), _run("gnn", "scratch", 1, 0.8),
            _run("-", "gbt", 0, 0.95), _run("-", "gbt", 1, 0.95),
            _run("moe", "pretrained", 0, 0.5),
            {"capture": "ctu-8-1", "kind": "-", "budget": "1%", "seed": 0, "model": "*",
             "reason": "its 73 labeled conns are all Benign", "train_rows": 73}]
    s = fe.summarise(runs)
    assert s[("gnn", "strato-008", "5%", "pretrained")] == pytest.approx((0.85, 0.05, 2))
    # the kind-free tree is the yardstick of every kind
    assert s[("gnn", "strato-008", "5%", "gbt")] == s[("moe", "strato-008", "5%", "gbt")] == pytest.approx((0.95, 0, 2))
    assert ("gnn", "ctu-8-1", "1%", "*") not in s
    text = fe.render(runs)
    # headline: gnn has 1 cell; moe has no scratch run, so no cell; probe and gbt+emb never ran
    assert text.startswith("| kind | cells |")
    assert "| gnn | 1 | +13.33% | 1/1 | 0/1 | - | - | - |" in text
    assert "| moe |" not in text
    assert "| strato-008 | 5% | 0.850 ± 0.050 | 0.750 ± 0.050 | - | 0.950 ± 0.000 | - | 2 | +13.33% |" in text
    assert "pretrained vs scratch **+13.33%**" in text
    assert "ahead of scratch in 1/1 cells, ahead of the GBT in 0/1" in text
    assert "- ctu-8-1 1%: its 73 labeled conns are all Benign" in text


def test_merge_runs_keeps_each_run_once(fe):
    a = [_run("-", "gbt", 0, 0.95), _run("gnn", "pretrained", 0, 0.8)]
    b = [_run("-", "gbt", 0, 0.95), _run("moe", "pretrained", 0, 0.7)]
    merged = fe.merge_runs(a, b)
    assert [(r["kind"], r["model"]) for r in merged] == [("-", "gbt"), ("gnn", "pretrained"), ("moe", "pretrained")]
    assert fe.summarise(merged)[("gnn", "strato-008", "5%", "gbt")][2] == 1


def test_parse_finetune_settings(fe):
    assert fe.parse_finetune(["procedure=full", "ft_lr_scale=0.05", "patience=3"]) == {
        "procedure": "full", "ft_lr_scale": 0.05, "patience": 3}
    assert fe.parse_finetune([]) == {}
    for bad in ("procedure", "=full", "procedure="):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            fe.parse_finetune([bad])


def test_compare_before_and_after_against_the_better_scratch(fe):
    def cell(budget, pre, scr, gbt):
        return [_run("gnn", "pretrained", 0, pre, budget), _run("gnn", "scratch", 0, scr, budget),
                _run("-", "gbt", 0, gbt, budget)]

    before = cell("1%", 0.5, 0.6, 0.55) + cell("10%", 0.8, 0.8, 0.9) + cell("20%", 0.7, 0.5, 0.5)
    # after: pretrained up everywhere, and the scratch twin down at 1% (so only the stricter
    # reading, against the better of the two scratch twins, shows 10% as a win and 1% as a loss)
    after = cell("1%", 0.58, 0.4, 0.55) + cell("10%", 0.85, 0.8, 0.9) + [_run("gnn", "pretrained", 0, 0.9, "5%")]
    lines = fe.compare(before, after)
    assert lines[0].startswith("| kind | cells | before: pre > scratch |") and len(lines) == 3
    # cells scored in both files only: 1% and 10% (20% ran before only, 5% has no scratch twin)
    # vs the better scratch: 1% 0.58 vs 0.6 (-3.33%), 10% 0.85 vs 0.8 (+6.25%)
    # after's pretrained vs before's: 0.58 vs 0.5 (+16%), 0.85 vs 0.8 (+6.25%)
    assert lines[2] == ("| gnn | 2 | 0/2 | -8.33% | 0/2 | 2/2 | +25.62% | +25.62% | 1/2 | 1/2 | +1.46% "
                        "| 2/2 | +11.12% |")

    cells = fe.compare_cells(before, after)
    assert cells[2:] == ["| gnn | strato-008 | 1% | 0.500 | 0.600 | 0.580 | 0.400 | 0.550 | - |",
                         "| gnn | strato-008 | 10% | 0.800 | 0.800 | 0.850 | 0.800 | 0.900 | - |"]

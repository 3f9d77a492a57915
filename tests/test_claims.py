"""The claims policy (pairs.claims) on synthetic records: verdicts only for declared comparisons, Holm over the
declared family, none carried by diverged fits, no direction word where the interval spans 0; and a run's final
rounds flagged where a published folder has already shown them."""
import re

import pytest

from pairs.claims import EXPLORATORY, INCONCLUSIVE, Comparison, holm, judge, said, share_interval, status
from pairs.protocol import FitRecord, Protocol
from pairs.tables import comparisons
from pairs.config import FitConfig

ROUNDS = range(20)
BASE = {k: 0.15 + 0.01 * (k % 5) for k in ROUNDS}


def shifted(by, noise=0.002):
    return {k: v + by + noise * ((-1) ** k) for k, v in BASE.items()}


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.04, 0.30 -> x4, x3, x2, x1 = 0.04, 0.06, 0.08, 0.30, kept monotone
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # the running maximum
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    nan = holm([float("nan"), 0.01])
    assert nan[0] != nan[0] and nan[1] == pytest.approx(0.01)  # NaN is not in the family


def test_holm_applies_over_the_declared_family_only():
    a = Comparison("x", "a", BASE, shifted(-0.004, noise=0.008), declared=True)
    p_alone = judge([a])[0]["holm_pvalue"]
    others = [Comparison("x", f"o{i}", BASE, shifted(0.0, noise=0.01), declared=True) for i in range(3)]
    undeclared = [Comparison("x", f"u{i}", BASE, shifted(0.0, noise=0.01)) for i in range(5)]
    rows = judge([a] + others + undeclared)
    assert rows[0]["t_pvalue"] == pytest.approx(p_alone)  # alone, Holm is the raw p
    assert rows[0]["holm_pvalue"] == pytest.approx(holm([r["t_pvalue"] for r in rows[:4]])[0])
    assert rows[0]["holm_pvalue"] > p_alone
    assert all(r["verdict"] == EXPLORATORY and r["holm_pvalue"] != r["holm_pvalue"] for r in rows[4:])


def test_a_clear_declared_difference_gets_its_direction():
    row = judge([Comparison("MLP", "AL vs plain", BASE, shifted(-0.02), declared=True, expect="lower")])[0]
    assert row["verdict"] == "lower" and status(row) == "supported" and row["ci_high"] < 0
    row = judge([Comparison("MLP", "AL vs plain", BASE, shifted(-0.02), declared=True, expect="higher")])[0]
    assert status(row) == "contradicted"


def test_a_difference_carried_by_diverged_fits_is_inconclusive():
    # the plain side diverges in six rounds (error 0.45): with them the treated side is significantly lower, without
    # them the two are the same
    broke = frozenset({1, 3, 7, 11, 14, 18})
    plain = dict(BASE) | {k: 0.45 for k in broke}
    treated = shifted(0.0, noise=0.003)
    row = judge([Comparison("ConvNet", "AL vs plain", plain, treated, broke, True, "lower")])[0]
    assert row["holm_pvalue"] < 0.05 and row["ci_high"] < 0 and row["n_kept"] == 14
    assert row["verdict"] == INCONCLUSIVE
    assert "without the 6 rounds with a diverged fit" in said(row)


def test_no_direction_word_where_the_interval_spans_zero():
    row = judge([Comparison("MLP", "WS+AL vs AL", BASE, shifted(-0.001, noise=0.01), declared=True,
                            expect="lower")])[0]
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == INCONCLUSIVE
    assert not re.search(r"\b(lower|higher|supported|significant)\b", said(row).replace("(the paper: lower)", ""))


def test_an_undeclared_comparison_has_no_verdict():
    row = judge([Comparison("MLP", "WS+AL vs WS", BASE, shifted(-0.02))])[0]
    assert row["verdict"] == EXPLORATORY and "**" not in said(row)


def test_few_rounds_give_no_verdict():
    few = {k: BASE[k] for k in range(3)}
    row = judge([Comparison("MLP", "AL vs plain", few, {k: v - 0.05 for k, v in few.items()}, declared=True)])[0]
    assert row["verdict"].startswith(INCONCLUSIVE)


def test_the_share_of_the_gap_carries_the_published_means_uncertainty():
    first, arm = shifted(0.04), shifted(0.02)  # the first arm 4 points above "published" 0.17, the arm 2
    share, lo, hi = share_interval(first, arm, 0.17, 0.0)
    assert share == pytest.approx(0.5)
    _, lo2, hi2 = share_interval(first, arm, 0.17, 0.003)
    assert lo2 < lo and hi2 > hi  # a published mean with its own error widens the interval
    assert share_interval(first, arm, 0.17, 0.003) == (share, lo2, hi2)  # deterministic


def record(variant, rnd, test_error, train_error=0.0, epochs=20):
    return FitRecord(stage="final", config=FitConfig(variant, 25, epochs), round=rnd, fold=None, seed=rnd, pairs=10,
                     data_seed=rnd, train_loss=(0.5,) * epochs, main_loss=(0.5,) * epochs, aux_loss=(0.0,) * epochs,
                     scores=((epochs, train_error, test_error),), param_count=1, s_per_epoch=0.1)


def test_the_papers_claims_are_the_declared_family_of_a_report():
    records = [record(v, k, BASE[k] + d) for k in ROUNDS for v, d in
               (("MLP", 0.03), ("MLP_WS", 0.01), ("MLP_AL", 0.0), ("MLP_WS_AL", 0.0))]
    records = [r if not (r.variant == "MLP" and r.round in (2, 9)) else record("MLP", r.round, 0.5, train_error=0.5)
               for r in records]
    cmp = comparisons(records).set_index("comparison")
    assert list(cmp.index[cmp.declared]) == ["WS vs plain", "AL vs plain", "AL vs WS", "WS+AL vs AL"]
    assert cmp.loc["WS+AL vs WS", "verdict"] == EXPLORATORY
    assert cmp.loc["WS vs plain", "n_kept"] == 18  # the two diverged plain rounds
    assert cmp.loc["WS+AL vs AL", "expect"] == "lower"  # the paper's MLP result
    assert status(cmp.loc["AL vs plain"].to_dict() | {"expect": "lower"}) == "supported"


def test_final_rounds_already_shown_by_a_published_folder_are_flagged():
    from flows.report import PUBLISHED, seen_by
    assert "docs/results" in seen_by(Protocol())  # the study's rounds: every folder of base seed 0
    assert "docs/results" not in seen_by(Protocol(), folder=PUBLISHED)  # not itself
    assert seen_by(Protocol(final_seed=987654)) == ()
    assert seen_by(Protocol(pairs=300)) == ()  # other pairs per split: other draws

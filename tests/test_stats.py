import math

import pytest
from scipy import stats as st

from pairs.stats import diverged, mean_std, paired


def test_mean_std_by_hand():
    assert mean_std([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_paired_on_known_numbers():
    a = [0.18, 0.20, 0.15, 0.22, 0.19, 0.17]
    b = [0.14, 0.15, 0.13, 0.16, 0.15, 0.16]
    p = paired(a, b)
    d = [y - x for x, y in zip(a, b)]
    assert p.n == 6 and p.mean_diff == pytest.approx(sum(d) / 6)
    # by hand: t = mean / (sd / sqrt(n)), CI = mean +- t_{0.975, 5} * sd / sqrt(n)
    sd = math.sqrt(sum((x - p.mean_diff) ** 2 for x in d) / 5)
    assert p.ci_high - p.mean_diff == pytest.approx(2.5705818366 * sd / math.sqrt(6), rel=1e-8)
    assert p.t_pvalue == pytest.approx(st.ttest_rel(b, a).pvalue)
    assert (p.ci_low, p.ci_high) == pytest.approx(tuple(st.ttest_rel(b, a).confidence_interval()), rel=1e-12)
    assert p.wilcoxon_pvalue == pytest.approx(st.wilcoxon(d).pvalue)
    assert p.t_pvalue < 0.01 and p.ci_high < 0


def test_identical_variants_and_divergence():
    p = paired([0.1, 0.2], [0.1, 0.2])
    assert p.mean_diff == 0 and p.t_pvalue == 1.0 and p.wilcoxon_pvalue == 1.0
    assert diverged(0.45) and not diverged(0.05)

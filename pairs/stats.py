"""Statistics over rounds: mean +- standard deviation, and paired comparisons of two variants.

A paired comparison uses the same rounds (same data, same seeds) for both variants: the difference
b - a per round, its mean with a 95% t confidence interval, the paired t-test and Wilcoxon signed-rank
p-values. A fit whose training error stays near chance (>= 0.4) diverged; see `diverged`.
"""
import math
from dataclasses import dataclass

DIVERGED_TRAIN_ERROR = 0.4
DIVERGED_MIN_EPOCHS = 10  # before this, a fit at chance may just not have learned yet: not called diverged
MIN_PAIRED_ROUNDS = 5  # fewer paired rounds: no test, interval or claim is reported


def mean_std(values):
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def diverged(train_error):
    """A fit that ends with training error near chance has diverged (or never learned); only said of fits of at
    least DIVERGED_MIN_EPOCHS epochs."""
    return train_error >= DIVERGED_TRAIN_ERROR


@dataclass(frozen=True)
class Paired:
    n: int
    mean_diff: float  # mean of b - a
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float


def paired(a, b):
    """Compare b against a over the same rounds: mean difference b - a, 95% CI, t-test and Wilcoxon."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(d)
    m, sd = mean_std(d)
    if n < 2:
        return Paired(n, m, math.nan, math.nan, math.nan, math.nan)
    from scipy import stats as st  # here, not at import: the command line checks its input without it
    # the t interval by hand: st.ttest_rel(b, a).confidence_interval() is the same interval, but it rounds in another
    # order (the last bit of some bounds differs), which would change the published statistics.csv files
    half = st.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    t_p = float(st.ttest_rel(b, a).pvalue) if sd > 0 else (1.0 if m == 0 else 0.0)
    w_p = float(st.wilcoxon(d).pvalue) if any(d) else 1.0
    return Paired(n, m, m - half, m + half, t_p, w_p)

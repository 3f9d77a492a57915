"""The claims policy: what a report may say about a comparison, decided here and nowhere else.

- Every paired comparison is stated as estimates: the mean difference (b - a) with its 95% t interval, on all
  rounds and on the rounds where neither side diverged (pairs.stats.diverged).
- A verdict ("lower", "higher") is said only of a comparison declared before the run: the paper's own claims for
  the study's grid (`PAPER`), each arm against the first for a study of arms (the file's structure declares it).
  It needs the paired t-test, two-sided, below ALPHA after Holm's correction over the declared family, both on all
  rounds and without the diverged fits, in the same direction; otherwise the verdict is "inconclusive".
- A comparison nobody declared is exploratory: estimates, no verdict. No direction word where the interval spans 0
  (a Holm-significant difference never has one that does).
- Timings: each configuration's s/epoch is one measurement of a stacked training on a possibly shared machine;
  reports show it and never compare it (BENCHMARKS.md compares speeds from interleaved repeats).
"""
import math
from dataclasses import dataclass

from .stats import MIN_PAIRED_ROUNDS, mean_std, paired

ALPHA = 0.05
INCONCLUSIVE = "inconclusive"
EXPLORATORY = "exploratory (not declared)"
# the paper's claims about test error, per architecture: (comparison, expected direction of b - a); the direction of
# "WS+AL vs AL" is the paper's own result for that architecture (lower for MLP, higher for ConvNet)
PAPER = ("WS vs plain", "AL vs plain", "AL vs WS", "WS+AL vs AL")


@dataclass(frozen=True)
class Comparison:
    """b against a over the rounds both have: {round: error} each, and the rounds where either side diverged."""
    label: str  # what is compared (an architecture, a variant)
    name: str  # which comparison ("AL vs plain", an arm's name)
    a: dict
    b: dict
    diverged: frozenset = frozenset()
    declared: bool = False
    expect: str = ""  # the declared direction, "lower" or "higher", where the declaration names one


def holm(pvalues):
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    out, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out


def _estimate(c, keep):
    rounds = sorted(k for k in c.a.keys() & c.b.keys() if keep(k))
    return paired([c.a[k] for k in rounds], [c.b[k] for k in rounds])


def judge(comparisons):
    """One row per comparison: estimates on all rounds and without diverged fits, Holm-adjusted p-values over the
    declared ones, and the verdict the policy allows."""
    every = [_estimate(c, lambda k: True) for c in comparisons]
    kept = [_estimate(c, lambda k, c=c: k not in c.diverged) for c in comparisons]
    family = [i for i, c in enumerate(comparisons) if c.declared]
    adjusted = {}
    for name, est in (("all", every), ("kept", kept)):
        ps = holm([est[i].t_pvalue if est[i].n >= MIN_PAIRED_ROUNDS else math.nan for i in family])
        adjusted[name] = dict(zip(family, ps))
    rows = []
    for i, c in enumerate(comparisons):
        e, k = every[i], kept[i]
        p_all, p_kept = adjusted["all"].get(i, math.nan), adjusted["kept"].get(i, math.nan)
        rows.append({"label": c.label, "comparison": c.name, "declared": c.declared, "expect": c.expect,
                     "n": e.n, "diff_mean": e.mean_diff, "ci_low": e.ci_low, "ci_high": e.ci_high,
                     "t_pvalue": e.t_pvalue, "holm_pvalue": p_all,
                     "n_kept": k.n, "diff_mean_kept": k.mean_diff, "ci_low_kept": k.ci_low,
                     "ci_high_kept": k.ci_high, "holm_pvalue_kept": p_kept,
                     "verdict": verdict(c.declared, e, k, p_all, p_kept)})
    return rows


def verdict(declared, every, kept, p_all, p_kept):
    """"lower"/"higher" (b against a), "inconclusive", or exploratory."""
    if not declared:
        return EXPLORATORY
    if min(every.n, kept.n) < MIN_PAIRED_ROUNDS:
        return f"{INCONCLUSIVE} (fewer than {MIN_PAIRED_ROUNDS} paired rounds)"
    signs = {math.copysign(1, every.mean_diff), math.copysign(1, kept.mean_diff)}
    if p_all < ALPHA and p_kept < ALPHA and len(signs) == 1:
        return "lower" if every.mean_diff < 0 else "higher"
    return INCONCLUSIVE


def status(row):
    """A declared claim's status: its verdict against the direction the claim expected."""
    if not row["expect"] or row["verdict"] not in ("lower", "higher"):
        return row["verdict"]
    return "supported" if row["verdict"] == row["expect"] else "contradicted"


def points(d, lo, hi, unit=""):
    """A difference and its interval in points: '-1.00 (95% CI -2.00 to +0.00)'; no interval below 2 rounds."""
    if lo != lo:
        return f"{100 * d:+.2f}{unit}"
    return f"{100 * d:+.2f}{unit} (95% CI {100 * lo:+.2f} to {100 * hi:+.2f})"


def said(row):
    """A comparison in words: estimates always, both subsets where they differ, the verdict last."""
    text = f"{points(row['diff_mean'], row['ci_low'], row['ci_high'], ' points')} over {int(row['n'])} rounds"
    if row["declared"]:
        text += f", Holm p={row['holm_pvalue']:.3g}"
    if row["n_kept"] != row["n"]:
        text += (f"; without the {int(row['n'] - row['n_kept'])} rounds with a diverged fit "
                 f"{points(row['diff_mean_kept'], row['ci_low_kept'], row['ci_high_kept'])}")
        if row["declared"]:
            text += f", Holm p={row['holm_pvalue_kept']:.3g}"
    return f"{text}: **{status(row)}**" if row["declared"] else text


def mean_interval(values):
    """The mean of values with its 95% t interval (NaN bounds below two values)."""
    from scipy import stats as st
    n, (m, sd) = len(values), mean_std(values)
    if n < 2:
        return m, math.nan, math.nan
    half = st.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def share_interval(first, arm, published_mean, published_se, draws=10000, seed=0):
    """The share of the gap (first arm's mean - the published mean) that an arm closes ((first - arm) / gap), with a
    95% percentile bootstrap interval: rounds resampled in pairs, the published mean drawn from its standard error
    (the paper's std / sqrt(its rounds)). Deterministic (one fixed generator)."""
    import numpy as np
    rounds = sorted(first.keys() & arm.keys())
    a, b = np.array([first[k] for k in rounds]), np.array([arm[k] for k in rounds])
    share = (a.mean() - b.mean()) / (a.mean() - published_mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rounds), size=(draws, len(rounds)))
    pub = rng.normal(published_mean, published_se, size=draws)
    boot = (a[idx].mean(1) - b[idx].mean(1)) / (a[idx].mean(1) - pub)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(share), float(lo), float(hi)

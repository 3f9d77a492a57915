"""The report's figures: each function returns matplotlib Figures and writes nothing.

They are built on `matplotlib.figure.Figure`, not pyplot: no backend is chosen and no global figure is left
open, so importing or calling this module changes nothing for a caller that uses matplotlib itself.
`Figure.savefig` picks its own canvas from the file name (pairs.report writes them).
"""
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .models import architecture
from .stats import diverged, mean_std


def loss_curves(records):
    """Mean training loss per epoch of each variant over the rounds with its 95% CI: {architecture: Figure}."""
    from scipy.stats import t

    figures = {}
    for arch in dict.fromkeys(architecture(r.variant) for r in records):
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for variant in dict.fromkeys(r.variant for r in records if architecture(r.variant) == arch):
            curves = [r.train_loss for r in records if r.variant == variant]
            stats = [mean_std(col) for col in zip(*curves)]
            half = t.ppf(0.975, max(len(curves) - 1, 1)) / len(curves) ** 0.5
            epochs, m = range(1, len(stats) + 1), [s[0] for s in stats]
            ax.plot(epochs, m, label=variant)
            # the log axis cannot show a band below zero: clip it at a tenth of the mean
            ax.fill_between(epochs, [max(a - half * s, a / 10) for a, s in stats],
                            [a + half * s for a, s in stats], alpha=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.25 on a 3-epoch axis
        ax.set(xlabel="epoch", ylabel="mean training loss", yscale="log",
               title=f"{arch}: average loss per epoch ({len(curves)} rounds, band: 95% CI)")
        ax.legend()
        figures[arch] = fig
    return figures


def _strip(ax, i, errs, colors=None):
    """A box of these errors at x = i, with each one as a dot beside it."""
    ax.boxplot([errs], positions=[i], widths=0.5, showfliers=False)
    ax.scatter([i + 0.15 * ((k % 5) - 2) / 2 for k in range(len(errs))], errs, c=colors, s=12, zorder=3)


def error_strip(records):
    """Test error of every final fit, per variant: diverged fits stand out in red."""
    variants = list(dict.fromkeys(r.variant for r in records))
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for i, v in enumerate(variants):
        group = [r for r in records if r.variant == v]
        errs = [100 * r.final_errors[1] for r in group]
        _strip(ax, i, errs, ["red" if diverged(r.final_errors[0]) else "C0" for r in group])
    ax.set_xticks(range(len(variants)), variants, rotation=30)
    ax.set(ylabel="test error %", title="Test error per variant over rounds (red: diverged)")
    return fig


def heatmap(t1):
    """Table 1's mean validation error per architecture x (epochs, batch size)."""
    archs = list(dict.fromkeys(t1.architecture))
    fig = Figure(figsize=(4.5 * len(archs), 3.2))
    for ax, arch in zip(fig.subplots(1, len(archs), squeeze=False)[0], archs):
        grid = t1[t1.architecture == arch].pivot_table(index="epochs", columns="batch_size", values="val_error_mean",
                                                       aggfunc="min") * 100  # with searched options: the best
        im = ax.imshow(grid.values, cmap="viridis_r")
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set(xlabel="batch size", ylabel="epochs", title=f"{arch}: val error %")
        for (i, j), v in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w")
        fig.colorbar(im, ax=ax)
    return fig


def beside_errors(labels, errors):
    """The test error of every final round of each row (`errors`: a list of fractions per label), on a log axis."""
    fig = Figure(figsize=(max(6, 0.45 * len(labels)), 4))
    ax = fig.subplots()
    for i, e in enumerate(errors):
        _strip(ax, i, [max(100 * v, 0.05) for v in e])  # (a round without errors, on the log axis)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right")
    ax.set(ylabel="test error %", yscale="log", title="Test error of every final round (# as in beside.md)")
    return fig

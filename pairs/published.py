"""The paper's numbers (the published EE-559 study), and every sentence a report says about them.

The paper's Table 1 (its search grid), Table 2 (its final evaluation) and what its search chose are data in
pairs/published_numbers/ (table1.csv, table2.csv, selection.csv), read when first asked for; reports merge them
in as `published_*` columns. In a report's prose "the paper" is this paper. Each sentence below is built from
those numbers and said only of what it concerns (an architecture or variant this run has), so a report of
another grid or other variants leaves out what does not apply to it.
"""
from functools import cache
from pathlib import Path

import pandas as pd

from .models import architecture

NUMBERS = Path(__file__).parent / "published_numbers"
PAIRS = 1000  # the paper's pairs per split: what its validation errors look divided by
ROUNDS = 20  # the paper's final rounds: its means' standard errors are its stds / sqrt(ROUNDS)


@cache
def _read(name):
    return pd.read_csv(NUMBERS / f"{name}.csv")


def table(name):
    """The paper's table1, table2 or selection (a copy: the caller may change it)."""
    return _read(name).copy()


def columns(name, keys, drop=()):
    """The paper's table `name` for a merge on `keys`: its other columns renamed published_*."""
    return table(name).drop(columns=list(drop)).rename(columns=lambda c: c if c in keys else f"published_{c}")


def test_error():
    """The paper's mean test error per variant."""
    return table("table2").set_index("variant").test_error_mean


def _retrained():
    """(architecture, searched (batch, epochs), final (batch, epochs)) of each architecture in the paper."""
    final = table("table2").drop_duplicates(["batch_size", "epochs"]).assign(
        architecture=lambda d: d.variant.map(lambda v: architecture(v))).drop_duplicates("architecture")
    chosen = table("selection").merge(final, on="architecture", suffixes=("", "_final"))
    return [(r.architecture, (r.batch_size, r.epochs), (r.batch_size_final, r.epochs_final))
            for r in chosen.itertuples()]


def choices():
    """What the paper chose from its search, and what it then trained its final models with (in its own words
    where it changed: the paper does not say on which pairs it compared)."""
    said = [f"{a} {b}/{e}" for a, (b, e), _ in _retrained()]
    changed = [f"{a} with batch size {b} ({e} epochs)" for a, searched, (b, e) in _retrained() if searched != (b, e)]
    return (f"The paper chose {' and '.join(said)} (batch/epochs) from its search" +
            (f", then trained its final {', '.join(changed)}: \"we also tested a batch size of 25 samples and achieved "
             "better performance\" (its text does not say on which pairs)" if changed else ""))


def normalisation(fold_pairs):
    """Why the paper's Table 1 validation errors sit far below its test errors (said beside Table 1)."""
    val, test = table("table1").val_error_mean, table("table2").test_error_mean
    about, spans = f"{100 * val.mean():.0f}%", f"{100 * test.min():.0f}-{100 * test.max():.0f}%"
    return f"""Validation errors here are fractions of each fold's pairs. The paper's validation errors (about
{about}) are ten times below its own final test errors ({spans}): consistent with dividing a fold's error count by
{PAIRS} instead of the fold's {fold_pairs} pairs. Its training errors with stds above their means are also
consistent with a few diverged fits.
"""


def differences(t2):
    """The variants whose mean test error is further from the paper's than either std (a description: the paper's
    rounds are not paired with these, so no test applies)."""
    lines = []
    for r in t2.itertuples():
        gap = r.test_error_mean - r.published_test_error_mean
        if abs(gap) > max(r.test_error_std, r.published_test_error_std):
            lines.append(f"- {r.variant}: {100 * r.test_error_mean:.2f}% here vs {100 * r.published_test_error_mean:.2f}"
                         f"% in the paper ({100 * gap:+.2f} points; stds {100 * r.test_error_std:.2f} and "
                         f"{100 * r.published_test_error_std:.2f}).")
    return "\n".join(lines) or "- none: every variant is within either std of the paper's number."


def procedure(variants):
    """Differences of procedure between the paper and a run: listed, not shown to cause any gap (an arm of a study
    such as al_gap tests one at a time). Each is said only where its variants are here."""
    archs = {architecture(v) for v in variants}
    causes = [f"the paper's final {a} used batch size {b}, chosen by a comparison its text does not describe; here\n"
              "the selection comes from cross-validation alone" for a, searched, (b, e) in _retrained()
              if a in archs and searched != (b, e)]
    causes.append("each round here draws its own pairs and seeds (the\npaper's draws are unknown)")
    causes.append("the paper's text does not say how it scaled its inputs; here they are raw (0..255)")
    if "ConvNet" in variants:  # its spread, far above its variants', is the paper's own number
        std = table("table2").set_index("variant").test_error_std["ConvNet"]
        causes.append(f"the paper's ConvNet std of {100 * std:.2f} points, far above its variants', is consistent "
                      "with\nfits that diverged there, as some do here (the 'diverged' column)")
    return f"Differences of procedure (none shown to cause a gap): {'; '.join(causes)}.\n"


def findings(t2):
    """The Table 2 paragraph on the paper's numbers: the differences beyond either std, and the differences of
    procedure."""
    return f"""Variants further from the paper than either std (described, not tested: the paper's rounds are not
paired with these):
{differences(t2)}

{procedure(list(t2.variant))}"""


def ws_al_beats_al(arch):
    """Whether the paper's WS+AL variant of this architecture has a lower test error than its AL variant."""
    published = test_error()
    return published[f"{arch}_WS_AL"] < published[f"{arch}_AL"]

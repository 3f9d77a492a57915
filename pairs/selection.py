"""Aggregation and selection, from fit records: Table 1 rows (per search cell: mean and std of train and validation
error, and the exact count of misclassified validation pairs), the selection by TIE_RULE over them (validation
folds only: the test pairs play no part), and Table 2 rows (per variant over the final rounds).
"""
from collections import defaultdict
from fractions import Fraction

from .models import architecture
from .protocol import DEFAULT, Choice, fold_size
from .stats import mean_std


def searched_options(records):
    """The settings a selection must carry besides batch size and epochs: the variant (where the search had
    another than an architecture's base variant) and every training option not at the study's default in
    some record (whether searched or set for all)."""
    variants = groupby(records, lambda r: architecture(r.variant)).values()
    searched = any(len({r.variant for r in rs}) > 1 or rs[0].variant != architecture(rs[0].variant) for rs in variants)
    return ((["variant"] if searched else [])
            + [k for k in DEFAULT.training() if {getattr(r.config, k) for r in records} != {getattr(DEFAULT, k)}])


def search_table(records):
    """Table 1 rows: per (architecture, batch size, searched options, epochs) the mean/std of train and
    validation error over the rounds x folds fits, and the misclassified validation pairs of them all
    (`val_errors` of `val_pairs`: what the selection compares, exactly)."""
    rows, options = [], searched_options(records)
    cell = lambda r: (architecture(r.variant), r.config.batch_size, *(getattr(r.config, k) for k in options))  # noqa: E731
    for (arch, batch, *values), group in groupby(records, cell).items():
        for e in sorted({e for r in group for e in r.train_error}):
            scored = [r for r in group if e in r.train_error]
            tr, va = mean_std([r.train_error[e] for r in scored]), mean_std([r.eval_error[e] for r in scored])
            rows.append({"architecture": arch, "batch_size": batch, **dict(zip(options, values)), "epochs": e,
                         "fits": len(scored), "train_error_mean": tr[0], "train_error_std": tr[1],
                         "val_error_mean": va[0], "val_error_std": va[1],
                         "val_errors": sum(round(r.eval_error[e] * fold_size(r)) for r in scored),
                         "val_pairs": sum(fold_size(r) for r in scored)})
    return rows


SCORES = ("architecture", "fits", "train_error_mean", "train_error_std", "val_error_mean", "val_error_std",
          "val_errors", "val_pairs")
TIE_RULE = ("lowest validation error, compared as counts of misclassified validation pairs (exact); ties go to "
            "fewer epochs, then the smaller batch size, then the lower std of the fold errors (the steadier "
            "candidate), then the candidate searched first")


def _rank(indexed):
    i, r = indexed
    return Fraction(r["val_errors"], r["val_pairs"]), r["epochs"], r["batch_size"], r["val_error_std"], i


def choose(table1_rows):
    """The Selection: per architecture the Choice (batch size, epochs, searched options) by TIE_RULE. Table 1 holds validation
    folds only: the test pairs play no part."""
    return {a: Choice.of({k: v for k, v in rows[0].items() if k not in SCORES})
            for a, rows in groupby(ranked(table1_rows), lambda r: r["architecture"]).items()}


def ranked(table1_rows):
    """Table 1's rows in TIE_RULE's order, best first."""
    return [r for _, r in sorted(enumerate(table1_rows), key=_rank)]


def tied(table1_rows):
    """Per architecture, the candidates with as few validation errors as the selected one (the selected first),
    when there are more than one: what the report names."""
    out = {}
    for a, rows in groupby(ranked(table1_rows), lambda r: r["architecture"]).items():
        best = Fraction(rows[0]["val_errors"], rows[0]["val_pairs"])
        same = [r for r in rows if Fraction(r["val_errors"], r["val_pairs"]) == best]
        if len(same) > 1:
            out[a] = same
    return out


def final_table(records):
    """Table 2 rows: per variant train/test error mean and std, parameters, s/epoch."""
    rows = []
    for (variant,), group in groupby(records, lambda r: (r.variant,)).items():
        cfg = group[0].config
        tr, te = mean_std([r.final_errors[0] for r in group]), mean_std([r.final_errors[1] for r in group])
        rows.append({"variant": variant, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "rounds": len(group),
                     "train_error_mean": tr[0], "train_error_std": tr[1],
                     "test_error_mean": te[0], "test_error_std": te[1],
                     "param_count": group[0].param_count,
                     "s_per_epoch": sum(r.s_per_epoch for r in group) / len(group)})
    return rows


def groupby(items, key):
    """{key(item): [items]}, keys in the order first seen, items in their order."""
    groups = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)

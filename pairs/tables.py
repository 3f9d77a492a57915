"""The report's tables: fit records (pairs.protocol.FitRecord) in, DataFrames out, nothing written.

Table 1 (search) and Table 2 (final) carry the published study's numbers beside ours as `published_*` columns;
errors are fractions in the frames (what the CSVs hold), and `display` turns a frame into what a reader looks
at: percentages, mean ± std. Paired comparisons use the same rounds (same pairs, same seeds) for both sides.
"""
import pandas as pd

from . import claims, published
from .models import architecture
from .groups import final_groups
from .protocol import options_text, selection_of
from .selection import final_table, groupby, search_table
from .stats import DIVERGED_MIN_EPOCHS, diverged, mean_std, paired

# technique vs its base, as the paper argues them
COMPARISONS = [("WS vs plain", "", "_WS"), ("AL vs plain", "", "_AL"), ("AL vs WS", "_WS", "_AL"),
               ("WS+AL vs AL", "_AL", "_WS_AL"), ("WS+AL vs WS", "_WS", "_WS_AL")]
PAIRED = ["n", "diff_mean", "ci_low", "ci_high", "t_pvalue"]
JUDGED = ["label", "comparison", "declared", "expect", "n", "diff_mean", "ci_low", "ci_high", "t_pvalue",
          "holm_pvalue", "n_kept", "diff_mean_kept", "ci_low_kept", "ci_high_kept", "holm_pvalue_kept", "verdict"]


def markdown(df):
    """A pipe table (pandas' to_markdown needs tabulate, which this project does not pin)."""
    cells = [[str(c) for c in df.columns]] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
                                              for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(df.columns)] + lines[1:]) + "\n"


def table1(records):
    """Table 1 (search): ours (correctly normalised per fold) beside the paper's."""
    keys = ["architecture", "epochs", "batch_size"]
    return pd.DataFrame(search_table(records)).merge(published.columns("table1", keys), on=keys, how="left")


def _diverged(records, variant, epochs):
    """How many of a variant's fits diverged (NaN where too few epochs to say)."""
    return (len(_broke({r.round: r for r in records if r.variant == variant}))
            if epochs >= DIVERGED_MIN_EPOCHS else float("nan"))


def table2(records):
    """Table 2 (final): ours beside the paper's, with the diverged fits counted."""
    ours = pd.DataFrame(final_table(records))
    ours["diverged"] = [_diverged(records, v, e) for v, e in zip(ours["variant"], ours["epochs"])]
    return ours.merge(published.columns("table2", ["variant"], drop=["param_count"]), on="variant", how="left")


def table2_row(records):
    """One configuration's Table 2 numbers from its final fits (the comparison view's metrics in MLflow)."""
    row = final_table(records)[0]
    out = {k: row[k] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std",
                               "param_count", "s_per_epoch", "rounds")}
    out["train_seconds"] = sum(r.s_per_epoch * r.config.epochs for r in records)  # the configuration's training
    if row["epochs"] >= DIVERGED_MIN_EPOCHS:
        out["diverged"] = sum(diverged(r.final_errors[0]) for r in records)
    return out


def _paired(a, b):
    """The paired comparison of b against a over the rounds both have ({round: error} each), as columns."""
    rounds = sorted(a.keys() & b.keys())
    p = paired([a[k] for k in rounds], [b[k] for k in rounds])
    return {"n": p.n, "diff_mean": p.mean_diff, "ci_low": p.ci_low, "ci_high": p.ci_high, "t_pvalue": p.t_pvalue,
            "wilcoxon_pvalue": p.wilcoxon_pvalue}


def _rounds(records):
    """{config: {round: record}} of final fits."""
    return {cfg: {r.round: r for r in rs} for cfg, rs in groupby(records, lambda r: r.config).items()}


def _broke(*sides):
    """The rounds where a fit of any side diverged (only said of fits of DIVERGED_MIN_EPOCHS epochs or more)."""
    return frozenset(k for side in sides for k, r in side.items()
                     if r.config.epochs >= DIVERGED_MIN_EPOCHS and diverged(r.final_errors[0]))


def _errors(side):
    return {k: r.final_errors[1] for k, r in side.items()}


def comparisons(records):
    """Each technique against its base over the same rounds, judged by the claims policy (pairs.claims): the
    paper's claims are declared (with the paper's direction), the rest exploratory."""
    by = {cfg.variant: rounds for cfg, rounds in _rounds(records).items()}
    found = []
    for arch in dict.fromkeys(architecture(v) for v in by):
        for name, base, treated in COMPARISONS:
            a, b = by.get(arch + base), by.get(arch + treated)
            if a and b:
                expect = ("lower" if name != "WS+AL vs AL" or published.ws_al_beats_al(arch) else "higher")
                found.append(claims.Comparison(arch, name, _errors(a), _errors(b), _broke(a, b),
                                               name in claims.PAPER, expect if name in claims.PAPER else ""))
    return pd.DataFrame(claims.judge(found), columns=JUDGED).rename(columns={"label": "architecture"})


def arms_table(records, protocol, arms):
    """Per variant and arm: test error over the rounds (mean with its 95% interval), and each later arm against the
    first, judged by the claims policy (the family: every later arm of every variant). Where the first arm trains
    the paper's model (no option away from the defaults), the share of the gap between the first arm and the
    study's published number that an arm closes, with a bootstrap interval that includes the published mean's own
    uncertainty; NaN else."""
    by_config = _rounds(records)
    target, spread = published.test_error(), published.table("table2").set_index("variant").test_error_std
    rows, base, found = [], {}, []
    for name, arm in arms:
        for g in final_groups(protocol, selection_of(arm), name):
            cfg = g.fits[0].config
            side = by_config[cfg]
            first, studys = base.setdefault(cfg.variant, (side, not options_text(cfg)))
            errs = _errors(side)
            m, lo, hi = claims.mean_interval(list(errs.values()))
            theirs = target.get(cfg.variant, float("nan")) if studys else float("nan")
            share = (float("nan"),) * 3
            if first is not side and theirs == theirs and len(errs) > 1:
                share = claims.share_interval(_errors(first), errs, theirs,
                                              spread[cfg.variant] / published.ROUNDS ** 0.5)
            rows.append({"variant": cfg.variant, "arm": name, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                         "test_error_mean": m, "test_error_std": mean_std(errs.values())[1], "mean_ci_low": lo,
                         "mean_ci_high": hi, "rounds": len(errs), "diverged": len(_broke(side)),
                         "published_test_error_mean": theirs,
                         "gap": mean_std(_errors(first).values())[0] - theirs, "share_of_gap_closed": share[0],
                         "share_low": share[1], "share_high": share[2]})
            if first is not side:
                found.append(claims.Comparison(cfg.variant, name, _errors(first), errs, _broke(first, side), True))
    judged = {(j["label"], j["comparison"]): j for j in claims.judge(found)}
    cols = [c for c in JUDGED if c not in ("label", "comparison", "declared", "expect")]
    rows = [r | {c: judged.get((r["variant"], r["arm"]), {}).get(c, float("nan") if c != "verdict" else "")
                 for c in cols} for r in rows]
    order = {v: i for i, v in enumerate(protocol.variants)}
    return pd.DataFrame(rows).sort_values("variant", key=lambda c: c.map(order), kind="stable")


def beside(studies):
    """Several studies' final rounds side by side (`studies`: {name: final records}): Table 2 with a study column,
    a row per configuration; each later study's rows against the first study's rows of the same architecture,
    paired over the rounds that drew the same pairs (exploratory: nobody declared these); and each row's test
    error per round ({round: error})."""
    rows, errors = [], []
    for study, records in studies.items():
        for cfg, group in groupby(records, lambda r: r.config).items():
            rows.append({"row": len(rows) + 1, "study": study, "options": options_text(cfg), **final_table(group)[0]})
            errors.append({(r.round, r.pairs, r.data_seed): r.final_errors[1] for r in group})
    first = next(iter(studies))
    compared = [{"row": b["row"], "against": a["row"], **{k: v for k, v in _paired(ea, eb).items() if k in PAIRED}}
                for b, eb in zip(rows, errors) for a, ea in zip(rows, errors)
                if b["study"] != first and a["study"] == first and architecture(a["variant"]) == architecture(b["variant"])]
    return pd.DataFrame(rows), pd.DataFrame(compared, columns=["row", "against", *PAIRED]), errors


def _pm(df, name):
    """Mean ± std in % of the columns name_mean and name_std ("—" where NaN: no such cell in the paper)."""
    return ["—" if m != m else f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(df[f"{name}_mean"],
                                                                                 df[f"{name}_std"])]


def display(df, kind, tested=True):
    """The table a reader looks at (kind: table1, table2, arms or beside): mean ± std in %, ours beside the
    study's. In the arms table, a variant's first arm is the reference ("—"), as is every arm when not `tested`."""
    batch_epochs = [f"{b}/{e}" for b, e in zip(df.batch_size, df.epochs)] if "batch_size" in df else None
    if kind == "table1":
        options = {c: df[c] for c in df.columns if c not in ("architecture", "batch_size", "epochs", "fits")
                   and not c.startswith(("train_", "val_", "published_"))}
        cols = {"architecture": df.architecture, "batch size": df.batch_size, **options, "epochs": df.epochs,
                "fits": df.fits, "train error %": _pm(df, "train_error"), "val error %": _pm(df, "val_error"),
                "published train %": _pm(df, "published_train_error"),
                "published val %": _pm(df, "published_val_error")}
    elif kind == "table2":
        cols = {"variant": df.variant, "batch/epochs": batch_epochs, "train error %": _pm(df, "train_error"),
                "test error %": _pm(df, "test_error"), "params": df.param_count,
                "s/epoch": [f"{s:.4f}" for s in df.s_per_epoch],
                "diverged": ["—" if d != d else int(d) for d in df.diverged],
                "published test %": _pm(df, "published_test_error"),
                "ours - published (points)": [f"{100 * (a - b):+.2f}" for a, b in zip(df.test_error_mean,
                                                                                      df.published_test_error_mean)],
                "published s/epoch": df.published_s_per_epoch}
    elif kind == "arms":
        shown = [tested and not first for first in ~df.variant.duplicated()]
        cols = {"variant": df.variant, "arm": df.arm, "batch/epochs": batch_epochs,
                "test error %": _pm(df, "test_error"),
                "mean, 95% CI %": [f"{100 * lo:.2f} to {100 * hi:.2f}" if tested and lo == lo else "—"
                                   for lo, hi in zip(df.mean_ci_low, df.mean_ci_high)],
                "diverged": df.diverged,
                "vs first arm (points, 95% CI)": [claims.points(d, lo, hi).replace("95% CI ", "") if s else "—"
                                                  for s, d, lo, hi in zip(shown, df.diff_mean, df.ci_low, df.ci_high)],
                "Holm p": [f"{v:.3g}" if s and v == v else "—" for s, v in zip(shown, df.holm_pvalue)],
                "verdict": [v if s else "—" for s, v in zip(shown, df.verdict)],
                "published %": [f"{100 * v:.2f}" if v == v else "—" for v in df.published_test_error_mean],
                "share of the gap closed (95% interval)": [
                    f"{100 * v:.0f}% ({100 * lo:.0f}% to {100 * hi:.0f}%)" if s and v == v else "—"
                    for s, v, lo, hi in zip(shown, df.share_of_gap_closed, df.share_low, df.share_high)]}
        if df.published_test_error_mean.isna().all():  # no arm trains the paper's model: nothing to compare with
            del cols["published %"], cols["share of the gap closed (95% interval)"]
    elif kind == "statistics":
        ci = lambda d, lo, hi: [claims.points(*v).replace("95% CI ", "") for v in zip(d, lo, hi)]  # noqa: E731
        p = lambda ps: ["—" if v != v else f"{v:.3g}" for v in ps]  # noqa: E731
        cols = {"architecture": df.architecture, "comparison": df.comparison,
                "the paper": [e if d else "—" for d, e in zip(df.declared, df.expect)], "rounds": df.n,
                "difference (points, 95% CI)": ci(df.diff_mean, df.ci_low, df.ci_high), "Holm p": p(df.holm_pvalue),
                "rounds without diverged": df.n_kept,
                "difference without diverged": ci(df.diff_mean_kept, df.ci_low_kept, df.ci_high_kept),
                "Holm p without diverged": p(df.holm_pvalue_kept),
                "verdict": [claims.status(r) for r in df.to_dict("records")]}
    else:
        cols = {"#": df.row, "study": df.study, "variant": df.variant, "options": df.options,
                "batch/epochs": batch_epochs, "rounds": df.rounds, "test error %": _pm(df, "test_error"),
                "train error %": _pm(df, "train_error"), "params": df.param_count,
                "s/epoch": [f"{s:.3f}" for s in df.s_per_epoch]}
    return pd.DataFrame(cols)

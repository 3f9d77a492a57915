"""The study's report: Table 1, Table 2, paired statistics and figures, beside the study's own numbers.

Inputs are fit records (pairs.protocol.FitRecord), which round-trip through JSON, so a report can be
rebuilt from what a run stored without training. The study's own numbers and choices are data in
pairs/study/ (table1.csv, table2.csv, selection.csv: what its search chose). Errors are fractions;
tables show percentages.
"""
import gzip
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .models import parse  # noqa: E402
from .protocol import (SCORES, TIE_RULE, FitRecord, final_groups, final_table, groupby, options_text,  # noqa: E402
                       search_table, tied)
from .stats import DIVERGED_MIN_EPOCHS, MIN_PAIRED_ROUNDS, diverged, mean_std, paired  # noqa: E402
from .train import Training  # noqa: E402

STUDY = Path(__file__).parent / "study"
# technique vs its base, as the study argues them
COMPARISONS = [("WS vs plain", "", "_WS"), ("AL vs plain", "", "_AL"),
               ("WS+AL vs AL", "_AL", "_WS_AL"), ("WS+AL vs WS", "_WS", "_WS_AL")]


def study_table(name):
    return pd.read_csv(STUDY / f"{name}.csv")


def _pm(mean, std):
    return "—" if mean != mean else f"{100 * mean:.2f} ± {100 * std:.2f}"  # NaN: no such cell in the study


def markdown(df):
    """A pipe table (pandas' to_markdown needs tabulate, which this project does not pin)."""
    cells = [[str(c) for c in df.columns]] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
                                              for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(df.columns)] + lines[1:]) + "\n"


def table1(records):
    """Table 1 (search): ours (correctly normalised per fold) beside the study's."""
    ours = pd.DataFrame(search_table(records))
    study = study_table("table1").rename(columns=lambda c: c if c in ("architecture", "epochs", "batch_size")
                                         else f"study_{c}")
    return ours.merge(study, on=["architecture", "epochs", "batch_size"], how="left")


def table2(records):
    """Table 2 (final): ours beside the study's, with the diverged fits counted."""
    ours = pd.DataFrame(final_table(records))
    ours["diverged"] = [sum(diverged(r.final_errors[0]) for r in records if r.variant == v)
                        if e >= DIVERGED_MIN_EPOCHS else float("nan") for v, e in zip(ours["variant"], ours["epochs"])]
    study = study_table("table2")[["variant", "batch_size", "epochs", "train_error_mean", "train_error_std",
                                   "test_error_mean", "test_error_std", "s_per_epoch"]]
    study = study.rename(columns=lambda c: c if c == "variant" else f"study_{c}")
    return ours.merge(study, on="variant", how="left")


def table2_row(records):
    """One configuration's Table 2 numbers from its final fits (the comparison view's metrics in MLflow)."""
    row = final_table(records)[0]
    out = {k: row[k] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std",
                               "param_count", "s_per_epoch", "rounds")}
    out["train_seconds"] = sum(r.s_per_epoch * r.config.epochs for r in records)  # the configuration's training
    if row["epochs"] >= DIVERGED_MIN_EPOCHS:
        out["diverged"] = sum(diverged(r.final_errors[0]) for r in records)
    return out


def display(df, kind):
    """The table a reader looks at: mean ± std in %, ours beside the study's."""
    if kind == "table1":
        options = {c: df[c] for c in df.columns if c not in ("architecture", "batch_size", "epochs", "fits")
                   and not c.startswith(("train_", "val_", "study_"))}
        cols = {"architecture": df.architecture, "batch size": df.batch_size, **options, "epochs": df.epochs,
                "fits": df.fits,
                "train error %": [_pm(m, s) for m, s in zip(df.train_error_mean, df.train_error_std)],
                "val error %": [_pm(m, s) for m, s in zip(df.val_error_mean, df.val_error_std)],
                "study train %": [_pm(m, s) for m, s in zip(df.study_train_error_mean, df.study_train_error_std)],
                "study val %": [_pm(m, s) for m, s in zip(df.study_val_error_mean, df.study_val_error_std)]}
    else:
        cols = {"variant": df.variant, "batch/epochs": [f"{b}/{e}" for b, e in zip(df.batch_size, df.epochs)],
                "train error %": [_pm(m, s) for m, s in zip(df.train_error_mean, df.train_error_std)],
                "test error %": [_pm(m, s) for m, s in zip(df.test_error_mean, df.test_error_std)],
                "params": df.param_count, "s/epoch": [f"{s:.4f}" for s in df.s_per_epoch],
                "diverged": ["—" if d != d else int(d) for d in df.diverged],
                "study test %": [_pm(m, s) for m, s in zip(df.study_test_error_mean, df.study_test_error_std)],
                "ours - study (points)": [f"{100 * (a - b):+.2f}" for a, b in zip(df.test_error_mean,
                                                                                  df.study_test_error_mean)],
                "study s/epoch": df.study_s_per_epoch}
    return pd.DataFrame(cols)


def comparisons(records):
    """Paired test-error differences of each technique against its base, over the same rounds."""
    by = {}
    for r in records:
        by.setdefault(r.variant, {})[r.round] = r
    rows = []
    for arch in dict.fromkeys(parse(v)[0] for v in by):
        for name, base, treated in COMPARISONS:
            a, b = by.get(arch + base), by.get(arch + treated)
            if not a or not b:
                continue
            rounds = sorted(a.keys() & b.keys())
            for subset in ("all rounds", "without diverged"):
                keep = [k for k in rounds if subset == "all rounds" or not (
                    diverged(a[k].final_errors[0]) or diverged(b[k].final_errors[0]))]
                p = paired([a[k].final_errors[1] for k in keep], [b[k].final_errors[1] for k in keep])
                rows.append({"architecture": arch, "comparison": name, "rounds": subset, "n": p.n,
                             "diff_mean": p.mean_diff, "ci_low": p.ci_low, "ci_high": p.ci_high,
                             "t_pvalue": p.t_pvalue, "wilcoxon_pvalue": p.wilcoxon_pvalue})
    return pd.DataFrame(rows, columns=["architecture", "comparison", "rounds", "n", "diff_mean", "ci_low", "ci_high",
                                       "t_pvalue", "wilcoxon_pvalue"])  # no pair of variants run: no rows


def _save(fig, out, name, svg=False):
    paths = [out / f"{name}.png"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    if svg:  # (no date, fixed ids: the same records give the same file)
        paths.append(out / f"{name}.svg")
        with plt.rc_context({"svg.hashsalt": "pairs"}):
            fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def loss_figures(records, out):
    """Mean training loss per epoch of each variant over the rounds with its 95% CI; one figure per architecture."""
    from scipy.stats import t

    paths = []
    for arch in dict.fromkeys(parse(r.variant)[0] for r in records):
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant in dict.fromkeys(r.variant for r in records if parse(r.variant)[0] == arch):
            curves = [r.train_loss for r in records if r.variant == variant]
            stats = [mean_std(col) for col in zip(*curves)]
            half = t.ppf(0.975, max(len(curves) - 1, 1)) / len(curves) ** 0.5
            epochs, m = range(1, len(stats) + 1), [s[0] for s in stats]
            ax.plot(epochs, m, label=variant)
            # the log axis cannot show a band below zero: clip it at a tenth of the mean
            ax.fill_between(epochs, [max(a - half * s, a / 10) for a, s in stats],
                            [a + half * s for a, s in stats], alpha=0.2)
        ax.set(xlabel="epoch", ylabel="mean training loss", yscale="log",
               title=f"{arch}: average loss per epoch ({len(curves)} rounds, band: 95% CI)")
        ax.legend()
        paths += _save(fig, out, f"loss_{arch}", svg=True)
    return paths


def _strip(ax, i, errs, colors=None):
    """A box of these errors at x = i, with each one as a dot beside it."""
    ax.boxplot([errs], positions=[i], widths=0.5, showfliers=False)
    ax.scatter([i + 0.15 * ((k % 5) - 2) / 2 for k in range(len(errs))], errs, c=colors, s=12, zorder=3)


def error_strip(records, out):
    """Test error of every final fit, per variant: diverged fits stand out in red."""
    variants = list(dict.fromkeys(r.variant for r in records))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, v in enumerate(variants):
        group = [r for r in records if r.variant == v]
        errs = [100 * r.final_errors[1] for r in group]
        _strip(ax, i, errs, ["red" if diverged(r.final_errors[0]) else "C0" for r in group])
    ax.set_xticks(range(len(variants)), variants, rotation=30)
    ax.set(ylabel="test error %", title="Test error per variant over rounds (red: diverged)")
    return _save(fig, out, "test_error_by_round")


def heatmap(t1, out):
    """Table 1's mean validation error per architecture x (epochs, batch size)."""
    archs = list(dict.fromkeys(t1.architecture))
    fig, axes = plt.subplots(1, len(archs), figsize=(4.5 * len(archs), 3.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        grid = t1[t1.architecture == arch].pivot_table(index="epochs", columns="batch_size", values="val_error_mean",
                                                       aggfunc="min") * 100  # with searched options: the best
        im = ax.imshow(grid.values, cmap="viridis_r")
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set(xlabel="batch size", ylabel="epochs", title=f"{arch}: val error %")
        for (i, j), v in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w")
        fig.colorbar(im, ax=ax)
    return _save(fig, out, "table1_heatmap")


def write_tables(out, name, df, shown):
    df.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown(shown))
    return [out / f"{name}.csv", out / f"{name}.md"]


def save_records(records, path):
    path.write_text(json.dumps([r.to_json() for r in records]))
    return path


def load_records(path):
    """Fit records from a pipeline's JSON (or the same gzipped, .json.gz, as docs/results keeps large ones)."""
    data = Path(path).read_bytes()
    return [FitRecord.from_json(d) for d in json.loads(gzip.decompress(data) if str(path).endswith(".gz") else data)]


def search_artifacts(records, out):
    """Table 1 (CSV, markdown), its heat map and the fit records, written to out."""
    t1 = table1(records)
    return write_tables(out, "table1", t1, display(t1, "table1")) + heatmap(t1, out) + [
        save_records(records, out / "search_fits.json")]


def final_artifacts(records, out):
    """Table 2, the paired statistics, the loss and error figures and the fit records, written to out."""
    t2 = table2(records)
    cmp = comparisons(records)
    return (write_tables(out, "table2", t2, display(t2, "table2")) + write_tables(out, "statistics", cmp, cmp)
            + loss_figures(records, out) + error_strip(records, out)
            + [save_records(records, out / "final_fits.json")])


def differences(t2):
    """The variants whose mean test error differs from the study's by more than either spread."""
    lines = []
    for r in t2.itertuples():
        gap = r.test_error_mean - r.study_test_error_mean
        if abs(gap) > max(r.test_error_std, r.study_test_error_std):
            lines.append(f"- {r.variant}: {100 * r.test_error_mean:.2f}% here vs {100 * r.study_test_error_mean:.2f}% "
                         f"in the study ({100 * gap:+.2f} points; spreads {100 * r.test_error_std:.2f} and "
                         f"{100 * r.study_test_error_std:.2f}).")
    return "\n".join(lines) or "- none: every variant is within the spread of the study's number."


def conclusions(t2, cmp):
    """Which of the study's claims hold here, decided from the paired statistics (all rounds)."""
    lines = []

    def row(arch, name):
        hit = cmp[(cmp.architecture == arch) & (cmp.comparison == name) & (cmp.rounds == "all rounds")]
        return hit.iloc[0] if len(hit) else None

    def verdict(r):
        if r is None or r.n < 2:
            return "not testable (too few rounds)"
        by_t, by_w = r.ci_high < 0 or r.ci_low > 0, r.wilcoxon_pvalue < 0.05
        word = "lower" if r.diff_mean < 0 else "higher"
        sig = {(True, True): "significant at 5% by both tests", (False, False): "not significant at 5% by either test",
               (True, False): "significant at 5% by the t-test only", (False, True): "significant at 5% by the "
               "Wilcoxon test only"}[by_t, by_w]
        return (f"{100 * r.diff_mean:+.2f} points (95% CI {100 * r.ci_low:+.2f} to {100 * r.ci_high:+.2f}, "
                f"t-test p={r.t_pvalue:.3g}, Wilcoxon p={r.wilcoxon_pvalue:.3g}): test error {word}, {sig}")

    for arch in dict.fromkeys(cmp.architecture):
        ws, al = row(arch, "WS vs plain"), row(arch, "AL vs plain")
        both_vs_al = row(arch, "WS+AL vs AL")
        lines.append(f"- **{arch}**: WS vs plain {verdict(ws)}; AL vs plain {verdict(al)}; WS+AL vs AL {verdict(both_vs_al)}.")
        if ws is not None and al is not None:
            holds = al.diff_mean < ws.diff_mean
            lines.append(f"  - \"AL helps more than WS\": {'holds' if holds else 'does not hold'} for {arch} by the "
                         f"point estimates ({100 * al.diff_mean:+.2f} vs {100 * ws.diff_mean:+.2f} points; the "
                         "difference of the two is not tested).")
        if both_vs_al is not None and both_vs_al.n >= 2:
            better = both_vs_al.ci_high < 0
            study = study_table("table2").set_index("variant").test_error_mean
            study_says = "yes" if study[f"{arch}_WS_AL"] < study[f"{arch}_AL"] else "no"
            lines.append(f"  - \"WS+AL beats AL\" (the study: {study_says}): "
                         f"{'yes' if better else 'not significantly'} here (the t-test's 95% CI "
                         f"{'lies below 0' if better else 'reaches 0 or above'}).")
    for arch in dict.fromkeys(parse(v)[0] for v in t2.variant):
        plain, ws = t2[t2.variant == arch], t2[t2.variant == f"{arch}_WS"]
        if len(plain) and len(ws):
            ratio = plain.param_count.iloc[0] / ws.param_count.iloc[0]
            t = ws.s_per_epoch.iloc[0] / plain.s_per_epoch.iloc[0]
            lines.append(f"- \"WS halves the parameters and lowers the time\" ({arch}): parameters /{ratio:.2f}; "
                         f"s/epoch x{t:.2f} ({'lower' if t < 1 else 'not lower'}).")
    return "\n".join(lines)


def study_choices():
    """What the study chose from its search, and what it then trained its final models with."""
    final = study_table("table2").drop_duplicates("batch_size epochs".split()).assign(
        architecture=lambda d: d.variant.map(lambda v: parse(v)[0])).drop_duplicates("architecture")
    chosen = study_table("selection").merge(final, on="architecture", suffixes=("", "_final"))
    said = [f"{r.architecture} {r.batch_size}/{r.epochs}" for r in chosen.itertuples()]
    changed = [f"{r.architecture} batch {r.batch_size_final}/{r.epochs_final} epochs" for r in chosen.itertuples()
               if (r.batch_size, r.epochs) != (r.batch_size_final, r.epochs_final)]
    return (f"The study chose {' and '.join(said)} (batch/epochs) from its search" +
            (f", then trained its final {', '.join(changed)} after trying it on the test set" if changed else ""))


def searched(protocol, study):
    """The Protocol line of a report: the profile's grid, or the study file's search."""
    p = protocol
    cv = f"{p.search_rounds} rounds x {p.folds}-fold cross-validation of the training pairs"
    if study is None or not study.space:
        return f"search over batch sizes {list(p.batch_sizes)} x epochs {list(p.epochs)}, {cv} on the base architectures"
    how = (f"Optuna (TPE) with {study.trials} trials per architecture, {study.batch} at a time" if study.method ==
           "optuna" else "a grid")
    space = "; ".join(f"{k} {v if isinstance(v, dict) else list(v)}" for k, v in study.space)
    final = f"; final rounds with {', '.join(f'{k}={v}' for k, v in study.final.items())}" if study.final else ""
    return f"`{Path(study.path).name}`: {how} over {space}, {cv}{final}"


def render(search, final, selection, protocol, meta, study=None):
    """REPORT.md: setup, Table 1, selection, Table 2, figures, statistics, conclusions, command."""
    t1, t2, cmp = table1(search), table2(final), comparisons(final)
    n_div = int(t2.diverged.sum())
    cmp_shown = cmp.assign(**{c: (100 * cmp[c]).round(2) for c in ("diff_mean", "ci_low", "ci_high")})
    p = protocol
    enough = protocol.final_rounds >= MIN_PAIRED_ROUNDS and not meta.get("smoke")
    epochs = min(t2.epochs)
    diverged_text = (f"Fits whose final training error is >= 40% count as diverged: {n_div} of {len(final)}."
                     if epochs >= DIVERGED_MIN_EPOCHS else f"With {epochs} epochs a fit near chance may not have "
                     f"learned yet: none is called diverged (that needs {DIVERGED_MIN_EPOCHS} epochs or more).")
    published = t1[[c for c in t1.columns if c.startswith("study_")]].notna().any().any()  # its grid's cells
    if enough and published:
        findings = f"""Differences from the study beyond the spread (reported as measured; the models and protocol were
not tuned towards the published numbers):
{differences(t2)}

Known causes of differences: the study's final MLP used batch size 25 picked on the test set, here
the selection comes from cross-validation alone; each round here draws its own pairs and seeds (the
study's draws are unknown); the study's ConvNet std of 4.99 points, far above its variants', suggests
fits that diverged there (raw 0..255 inputs make that likely), which the 'diverged' column counts here.
"""
    else:
        findings = ""
    if enough and len(cmp):
        statistics = f"""## Paired statistics (test error of the second variant minus the first, in points, same rounds)
{markdown(cmp_shown)}
## Conclusions
{conclusions(t2, cmp)}
"""
    elif enough:
        statistics = ""  # no variant and its base both ran (e.g. one selected configuration per architecture)
    else:
        statistics = f"""## Paired statistics and conclusions
Left out: {_not_enough(protocol, meta)}.
"""
    normalisation = f"""Validation errors here are fractions of each fold's pairs. The study's validation errors (about
2%) are ten times below its own final test errors (10-18%): consistent with dividing a fold's error count by
1000 instead of the fold's {p.pairs // p.folds} pairs. Its training errors with stds above their means also
suggest a few diverged fits.
""" if published else ""
    chosen = f"\n{study_choices()}; here the selection comes from cross-validation alone.\n" if published else ""
    return f"""# Comparing two MNIST digits: weight sharing and auxiliary losses — reproduction report
{banner(meta)}
## Setup
- **Data**: pairs of MNIST digits average-pooled 2x2 to 14x14; target 1 when the first digit <= the second.
  Each round draws {p.pairs} training pairs from MNIST train and {p.pairs} test pairs from MNIST test
  (2x{p.pairs} distinct images per split). Inputs {'standardised with the training set mean/std' if p.normalize else 'raw (0..255), as the study'}.
- **Models**: ConvNet and MLP, each plain, with weight sharing (WS), auxiliary digit loss (AL, weight {p.aux_weight}), both.
- **Protocol**: {searched(p, study)}; selection by lowest validation error (the rule under Selection);
  final evaluation {p.final_rounds} rounds x {len(t2)} variants. {'AdamW' if p.weight_decay else 'Adam'}, lr {p.lr}{' (or as searched)' * bool(study and study.space)}. Base seed {p.seed}.
- **Options beyond the study**: {', '.join(f'{k}={v}' for k, v in p.training().items()
                                        if v != getattr(Training(), k) and k not in ('lr', 'aux_weight', 'normalize'))
                                 or ('as selected (below)' if study and study.space else 'none')}.
- **Machine**: {meta.get('machine', '?')}; device {meta.get('device', '?')}; {meta.get('versions', '')}.
- **Wall time**: {meta.get('wall_time', 'see the pipeline run in MLflow')}.

## Table 1 — cross-validated search (mean ± std over {p.search_rounds * p.folds} fits per cell)
{normalisation}
{markdown(display(t1, 'table1'))}
![Table 1 heat map](table1_heatmap.png)

## Selection
{chr(10).join(f'- {a}: batch size {s["batch_size"]}, {s["epochs"]} epochs' + ''.join(
    f', {k}={v}' for k, v in s.items() if k not in ('batch_size', 'epochs')) for a, s in selection.items())}

Rule: {TIE_RULE}.
{ties(search)}{chosen}
## Table 2 — final evaluation (mean ± std over {p.final_rounds} rounds)
s/epoch is the per-fit share of the stacked training time (all rounds of a variant trained at once),
not comparable one to one with the study's one-model-at-a-time column. {diverged_text}

{markdown(display(t2, 'table2'))}
{findings}
![ConvNet loss](loss_ConvNet.png) ![MLP loss](loss_MLP.png)

![Test error by round](test_error_by_round.png)

{statistics}
## Command
`{meta.get('command', 'python -m flows')}` ({meta.get('launcher', 'started directly')})
"""


def ties(search):
    """The candidates tied with each selection, named, or nothing."""
    lines = []
    for arch, rows in tied(search_table(search)).items():
        keys = [k for k in rows[0] if k not in SCORES]
        differ = [k for k in keys if len({str(r[k]) for r in rows}) > 1]
        lines.append(f"- {arch}: {len(rows)} candidates tied at {rows[0]['val_errors']} of {rows[0]['val_pairs']} "
                     "validation pairs misclassified, told apart by the rule: " + "; ".join(
                         ", ".join(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in differ)
                         + (" (selected)" if i == 0 else "") for i, r in enumerate(rows)) + ".")
    return "\n".join(lines) + "\n" if lines else ""


def banner(meta):
    """The warning atop the report of a smoke run (the quick profile, or counts below its study's)."""
    if not meta.get("smoke"):
        return ""
    return (f"\n> **Smoke run** ({meta['smoke']}): the numbers below show that the pipeline runs end to end; they "
            "are not findings. Run the study's full counts for results.\n")


def _not_enough(protocol, meta):
    """Why a report states no test, interval or claim."""
    why = [f"{protocol.final_rounds} final round{'s' * (protocol.final_rounds != 1)}, and a paired test or interval "
           f"needs at least {MIN_PAIRED_ROUNDS}"] if protocol.final_rounds < MIN_PAIRED_ROUNDS else []
    return "; ".join(why + ([f"a smoke run ({meta['smoke']})"] if meta.get("smoke") else []))



def arms_table(records, protocol, arms):
    """Per variant and arm: test error over the rounds, its paired difference to the first arm (95% CI), and
    the share of the gap between the first arm and the study's published number that the difference closes."""
    by_config = {}
    for r in records:
        by_config.setdefault(r.config, {})[r.round] = r.final_errors[1]
    study = study_table("table2").set_index("variant").test_error_mean
    rows, base = [], {}
    for name, selection in arms:
        for g in final_groups(protocol, selection, name):
            cfg = g.fits[0].config
            errs = by_config[cfg]
            first = base.setdefault(cfg.variant, errs)
            rounds = sorted(errs.keys() & first.keys())
            p = paired([first[k] for k in rounds], [errs[k] for k in rounds])
            m, sd = mean_std(errs.values())
            gap = mean_std(first.values())[0] - study.get(cfg.variant, float("nan"))
            rows.append({"variant": cfg.variant, "arm": name, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                         "test_error_mean": m, "test_error_std": sd, "rounds": len(errs),
                         "diff_mean": p.mean_diff, "ci_low": p.ci_low, "ci_high": p.ci_high, "t_pvalue": p.t_pvalue,
                         "study_test_error_mean": study.get(cfg.variant, float("nan")), "gap": gap,
                         "share_of_gap_closed": -p.mean_diff / gap if gap else float("nan")})
    order = {v: i for i, v in enumerate(protocol.variants)}
    return pd.DataFrame(rows).sort_values("variant", key=lambda c: c.map(order), kind="stable")


def render_arms(table, study, protocol, meta):
    """REPORT.md of a study of fixed arms: each arm against the first, as points and as a share of the gap."""
    enough = protocol.final_rounds >= MIN_PAIRED_ROUNDS and not meta.get("smoke")
    shown = pd.DataFrame({
        "variant": table.variant, "arm": table.arm, "batch/epochs": [f"{b}/{e}" for b, e in zip(table.batch_size,
                                                                                              table.epochs)],
        "test error %": [_pm(m, s) for m, s in zip(table.test_error_mean, table.test_error_std)],
        "vs first arm (points, 95% CI)": [f"{100 * d:+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f})" if enough else "—"
                                          for d, lo, hi in zip(table.diff_mean, table.ci_low, table.ci_high)],
        "study %": [f"{100 * v:.2f}" for v in table.study_test_error_mean],
        "share of the gap closed": [f"{100 * v:.0f}%" if enough else "—" for v in table.share_of_gap_closed]})
    lines = [] if enough else [f"Differences, intervals and shares of the gap are left out: {_not_enough(protocol, meta)}."]
    for variant, rows in table.groupby("variant", sort=False) if enough else ():
        first, rest = rows.iloc[0], rows.iloc[1:]
        lines.append(f"- **{variant}**: {first.arm} {100 * first.test_error_mean:.2f}%, the study "
                     f"{100 * first.study_test_error_mean:.2f}% (gap {100 * first.gap:+.2f} points). " + "; ".join(
                         f"{r.arm}: {100 * -r.diff_mean:+.2f} points closed (95% CI {100 * -r.ci_high:+.2f} to "
                         f"{100 * -r.ci_low:+.2f}), {100 * r.share_of_gap_closed:.0f}% of the gap"
                         for r in rest.itertuples()) + ".")
        best = rows.loc[rows.test_error_mean.idxmin()]
        lines.append(f"  Left unexplained by the best arm ({best.arm}): "
                     f"{100 * (best.test_error_mean - best.study_test_error_mean):+.2f} points.")
    p = protocol
    return f"""# Study `{Path(study.path).stem}`: arms on paired rounds
{banner(meta)}
{study.description}

- **Study file**: `{study.path}`; {p.final_rounds} paired rounds (every arm on the same pairs and seeds), {p.pairs} pairs per split.
- **Machine**: {meta.get('machine', '?')}; device {meta.get('device', '?')}.
- **Wall time**: {meta.get('wall_time', '?')}.

{markdown(shown)}
Differences are paired (same rounds), second arm minus the first; "closed" is minus that difference, as a
share of the gap between the first arm and the study's published test error.

{chr(10).join(lines)}

## Command
`{meta.get('command', 'python -m flows')}` ({meta.get('launcher', 'started directly')})
"""


def arms_report(records, study, protocol, out, meta):
    """The arms table (CSV, markdown) and REPORT.md of a study of fixed arms, written to out."""
    table = arms_table(records, protocol, study.arms)
    paths = write_tables(out, "arms", table, table) + [save_records(records, out / "final_fits.json")]
    (out / "REPORT.md").write_text(render_arms(table, study, protocol, meta))
    return paths + [out / "REPORT.md"]


def full_report(search, final, selection, protocol, out, meta, study=None):
    """Everything: the stage artifacts and REPORT.md, written to out."""
    paths = search_artifacts(search, out) + final_artifacts(final, out)
    (out / "REPORT.md").write_text(render(search, final, selection, protocol, meta, study))
    return paths + [out / "REPORT.md"]


def beside(studies, out):
    """Several studies' final rounds in one place: Table 2 with a study column (a row per configuration), the
    test error of every round in one figure, and each later study's rows against the first study's rows of
    the same architecture, paired over the rounds that drew the same pairs. `studies`: {name: final records}.
    Written to out as beside.md, beside_table2.csv, beside_paired.csv and beside_test_error.png."""
    rows, errors = [], []
    for study, records in studies.items():
        for cfg, group in groupby(records, lambda r: r.config).items():
            rows.append({"row": len(rows) + 1, "study": study, "options": options_text(cfg), **final_table(group)[0]})
            errors.append({(r.round, r.pairs, r.data_seed): r.final_errors[1] for r in group})
    name = lambda r: f"#{r['row']} {r['study']} {r['variant']} {r['batch_size']}/{r['epochs']}"  # noqa: E731
    first, compared = next(iter(studies)), []
    for b, eb in zip(rows, errors):
        for a, ea in zip(rows, errors):
            if b["study"] != first and a["study"] == first and parse(a["variant"])[0] == parse(b["variant"])[0]:
                shared = sorted(eb.keys() & ea.keys())  # the same round, the same draw of pairs
                p = paired([ea[k] for k in shared], [eb[k] for k in shared])
                compared.append({"row": b["row"], "against": a["row"], "n": p.n, "diff_mean": p.mean_diff,
                                 "ci_low": p.ci_low, "ci_high": p.ci_high, "t_pvalue": p.t_pvalue})
    t2 = pd.DataFrame(rows)
    cmp = pd.DataFrame(compared, columns=["row", "against", "n", "diff_mean", "ci_low", "ci_high", "t_pvalue"])
    t2.to_csv(out / "beside_table2.csv", index=False)
    cmp.to_csv(out / "beside_paired.csv", index=False)
    shown = pd.DataFrame({"#": t2.row, "study": t2.study, "variant": t2.variant, "options": t2.options,
                          "batch/epochs": [f"{b}/{e}" for b, e in zip(t2.batch_size, t2.epochs)],
                          "rounds": t2.rounds,
                          "test error %": [_pm(m, s) for m, s in zip(t2.test_error_mean, t2.test_error_std)],
                          "train error %": [_pm(m, s) for m, s in zip(t2.train_error_mean, t2.train_error_std)],
                          "params": t2.param_count, "s/epoch": [f"{s:.3f}" for s in t2.s_per_epoch]})
    lines = ["# Final rounds beside each other", "", f"Studies: {', '.join(studies)}. Mean ± std over rounds; "
             "options: those not at the study's default.", "", markdown(shown),
             f"Each row against the rows of {first} of its architecture: the difference in test error (that row "
             "minus the other, points) over the rounds that drew the same pairs, 95% CI.", ""]
    lines += [f"- {name(rows[c.row - 1])} vs {name(rows[c.against - 1])}: {100 * c.diff_mean:+.2f} "
              f"({100 * c.ci_low:+.2f} to {100 * c.ci_high:+.2f}), n={c.n}" for c in cmp.itertuples()
              ] or ["- no two rows to compare"]
    (out / "beside.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
    for i, e in enumerate(errors):
        _strip(ax, i, [max(100 * v, 0.05) for v in e.values()])  # (a round without errors, on the log axis)
    ax.set_xticks(range(len(rows)), [f"#{r['row']} {r['variant']}" for r in rows], rotation=40, ha="right")
    ax.set(ylabel="test error %", yscale="log", title="Test error of every final round (# as in beside.md)")
    return [out / "beside_table2.csv", out / "beside_paired.csv", *_save(fig, out, "beside_test_error"),
            out / "beside.md"]

"""The study's report, written to a folder: REPORT.md, its tables (CSV, markdown), figures and fit records.

Inputs are fit records (pairs.protocol.FitRecord), which round-trip through JSON, so a report can be
rebuilt from what a run stored without training. The numbers come from pairs.tables, the figures from
pairs.figures, every sentence about the published paper from pairs.published; here the computed values
fill the report's templates, section by section (a section with nothing to say is left out), and the
files are written. Errors are fractions; tables show percentages.
"""
import gzip
import json
from pathlib import Path

import matplotlib

from . import figures, published, tables
from .models import parse
from .protocol import SCORES, TIE_RULE, FitRecord, search_table, tied
from .stats import DIVERGED_MIN_EPOCHS, MIN_PAIRED_ROUNDS
from .tables import arms_table, comparisons, display, markdown, table1, table2
from .train import Training

REPORT = """# Comparing two MNIST digits: weight sharing and auxiliary losses — reproduction report
{banner}
## Setup
{setup}

## Table 1 — cross-validated search (mean ± std over {fits} fits per cell)
{normalisation}
{table1}
![Table 1 heat map](table1_heatmap.png)

## Selection
{selection}

Rule: {rule}.
{ties}{chosen}
## Table 2 — final evaluation (mean ± std over {rounds} rounds)
s/epoch is the per-fit share of the stacked training time (all rounds of a variant trained at once),
not comparable one to one with the study's one-model-at-a-time column. {diverged}

{table2}
{findings}
{losses}

![Test error by round](test_error_by_round.png)

{statistics}
## Command
{command}
"""

SETUP = """- **Data**: pairs of MNIST digits average-pooled 2x2 to 14x14; target 1 when the first digit <= the second.
  Each round draws {p.pairs} training pairs from MNIST train and {p.pairs} test pairs from MNIST test
  (2x{p.pairs} distinct images per split). Inputs {inputs}.
- **Models**: ConvNet and MLP, each plain, with weight sharing (WS), auxiliary digit loss (AL, weight {p.aux_weight}), both.
- **Protocol**: {searched}; selection by lowest validation error (the rule under Selection);
  final evaluation {p.final_rounds} rounds x {variants} variants. {optimizer}, lr {p.lr}{as_searched}. Base seed {p.seed}.
- **Options beyond the study**: {options}.
- **Machine**: {machine}; device {device}; {versions}.
- **Wall time**: {wall_time}."""

ARMS = """# Study `{name}`: arms on paired rounds
{banner}
{description}

- **Study file**: `{path}`; {p.final_rounds} paired rounds (every arm on the same pairs and seeds), {p.pairs} pairs per split.
- **Machine**: {machine}; device {device}.
- **Wall time**: {wall_time}.

{table}
{legend}

{lines}

## Command
{command}
"""


def _save(fig, out, name, svg=False):
    """A figure as out/name.png (and .svg: no date, fixed ids, so the same records give the same file)."""
    paths = [out / f"{name}.png"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    if svg:
        paths.append(out / f"{name}.svg")
        with matplotlib.rc_context({"svg.hashsalt": "pairs"}):
            fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


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
    return (write_tables(out, "table1", t1, display(t1, "table1")) + _save(figures.heatmap(t1), out, "table1_heatmap")
            + [save_records(records, out / "search_fits.json")])


def final_artifacts(records, out):
    """Table 2, the paired statistics, the loss and error figures and the fit records, written to out."""
    t2, cmp = table2(records), comparisons(records)
    losses = [path for arch, fig in figures.loss_curves(records).items()
              for path in _save(fig, out, f"loss_{arch}", svg=True)]
    return (write_tables(out, "table2", t2, display(t2, "table2")) + write_tables(out, "statistics", cmp, cmp)
            + losses + _save(figures.error_strip(records), out, "test_error_by_round")
            + [save_records(records, out / "final_fits.json")])


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
            lines.append(f"  - \"WS+AL beats AL\" (the study: {'yes' if published.ws_al_beats_al(arch) else 'no'}): "
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


def searched(protocol, study):
    """The Protocol line of a report: the profile's grid, or the study file's search."""
    p = protocol
    cv = f"{p.search_rounds} rounds x {p.folds}-fold cross-validation of the training pairs"
    if study is None or not study.space:
        return f"search over batch sizes {list(p.batch_sizes)} x epochs {list(p.epoch_grid)}, {cv} on the base architectures"
    how = (f"Optuna (TPE) with {study.trials} trials per architecture, {study.batch} at a time" if study.method ==
           "optuna" else "a grid")
    space = "; ".join(f"{k} {v if isinstance(v, dict) else list(v)}" for k, v in study.space)
    final = f"; final rounds with {', '.join(f'{k}={v}' for k, v in study.final.items())}" if study.final else ""
    return f"`{Path(study.path).name}`: {how} over {space}, {cv}{final}"


def optimizer(records):
    """The optimizer these fits trained with, as pairs.train.optimizer picks it: AdamW where weight decay is set."""
    return " or ".join(sorted({"AdamW" if r.config.weight_decay else "Adam" for r in records}))


def setup(protocol, records, variants, meta, study):
    """The Setup section: data, models, protocol, options, machine and wall time."""
    p, space = protocol, bool(study and study.space)
    options = ", ".join(f"{k}={v}" for k, v in p.training().items()
                        if v != getattr(Training(), k) and k not in ("lr", "aux_weight", "normalize"))
    return SETUP.format(
        p=p, inputs="standardised with the training set mean/std" if p.normalize else "raw (0..255), as the study",
        searched=searched(p, study), variants=variants, optimizer=optimizer(records),
        as_searched=" (or as searched)" * space, options=options or ("as selected (below)" if space else "none"),
        machine=meta.get("machine", "?"), device=meta.get("device", "?"), versions=meta.get("versions", ""),
        wall_time=meta.get("wall_time", "see the pipeline run in MLflow"))


def selected(selection):
    """The Selection section's list: each architecture's batch size, epochs and selected options."""
    return "\n".join(f"- {a}: batch size {c.batch_size}, {c.epochs} epochs" + "".join(
        f", {k}={v}" for k, v in list(c.as_dict().items())[2:]) for a, c in selection.items())


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


def diverged_note(t2, fits):
    """How many fits diverged, or why none is called so."""
    epochs = min(t2.epochs)
    if epochs >= DIVERGED_MIN_EPOCHS:
        return f"Fits whose final training error is >= 40% count as diverged: {int(t2.diverged.sum())} of {fits}."
    return (f"With {epochs} epochs a fit near chance may not have learned yet: none is called diverged (that needs "
            f"{DIVERGED_MIN_EPOCHS} epochs or more).")


def statistics(t2, cmp, protocol, meta):
    """The paired statistics and conclusions, why they are left out, or nothing (no variant beside its base)."""
    if not tested(protocol, meta):
        return f"## Paired statistics and conclusions\nLeft out: {_not_enough(protocol, meta)}.\n"
    if not len(cmp):
        return ""
    shown = cmp.assign(**{c: (100 * cmp[c]).round(2) for c in ("diff_mean", "ci_low", "ci_high")})
    return (f"## Paired statistics (test error of the second variant minus the first, in points, same rounds)\n"
            f"{markdown(shown)}\n## Conclusions\n{conclusions(t2, cmp)}\n")


def banner(meta):
    """The warning atop the report of a smoke run (the quick profile, or counts below its study's)."""
    if not meta.get("smoke"):
        return ""
    return (f"\n> **Smoke run** ({meta['smoke']}): the numbers below show that the pipeline runs end to end; they "
            "are not findings. Run the study's full counts for results.\n")


def command(meta):
    return f"`{meta.get('command', 'python -m flows')}` ({meta.get('launcher', 'started directly')})"


def tested(protocol, meta):
    """Whether a report states tests, intervals and claims: enough paired rounds, and not a smoke run."""
    return protocol.final_rounds >= MIN_PAIRED_ROUNDS and not meta.get("smoke")


def _not_enough(protocol, meta):
    """Why a report states no test, interval or claim."""
    why = [f"{protocol.final_rounds} final round{'s' * (protocol.final_rounds != 1)}, and a paired test or interval "
           f"needs at least {MIN_PAIRED_ROUNDS}"] if protocol.final_rounds < MIN_PAIRED_ROUNDS else []
    return "; ".join(why + ([f"a smoke run ({meta['smoke']})"] if meta.get("smoke") else []))


def render(search, final, selection, protocol, meta, study=None):
    """REPORT.md: setup, Table 1, selection, Table 2, figures, statistics, conclusions, command."""
    t1, t2, cmp = table1(search), table2(final), comparisons(final)
    p = protocol
    on_grid = t1.filter(like="published_").notna().any().any()  # the study's grid meets this run's: its sentences apply
    return REPORT.format(
        banner=banner(meta), setup=setup(p, search + final, len(t2), meta, study), fits=p.search_rounds * p.folds,
        normalisation=published.normalisation(p.pairs // p.folds) if on_grid else "",
        table1=markdown(display(t1, "table1")), selection=selected(selection), rule=TIE_RULE, ties=ties(search),
        chosen=f"\n{published.choices()}; here the selection comes from cross-validation alone.\n" if on_grid else "",
        rounds=p.final_rounds, diverged=diverged_note(t2, len(final)), table2=markdown(display(t2, "table2")),
        findings=published.findings(t2) if on_grid and tested(p, meta) else "",
        losses=" ".join(f"![{a} loss](loss_{a}.png)" for a in dict.fromkeys(parse(v)[0] for v in t2.variant)),
        statistics=statistics(t2, cmp, p, meta), command=command(meta))


def arms_lines(table):
    """Per variant: the first arm against the study's number, and how much of that gap each other arm closes."""
    lines = []
    for variant, rows in table.groupby("variant", sort=False):
        first, rest = rows.iloc[0], rows.iloc[1:]
        if first.published_test_error_mean != first.published_test_error_mean:  # not the study's model
            lines.append(f"- **{variant}**: {first.arm} {100 * first.test_error_mean:.2f}%. " + "; ".join(
                f"{r.arm}: {100 * r.test_error_mean:.2f}%, {100 * r.diff_mean:+.2f} points (95% CI "
                f"{100 * r.ci_low:+.2f} to {100 * r.ci_high:+.2f})" for r in rest.itertuples()) + ".")
            continue
        lines.append(f"- **{variant}**: {first.arm} {100 * first.test_error_mean:.2f}%, the study "
                     f"{100 * first.published_test_error_mean:.2f}% (gap {100 * first.gap:+.2f} points). " + "; ".join(
                         f"{r.arm}: {100 * -r.diff_mean:+.2f} points closed (95% CI {100 * -r.ci_high:+.2f} to "
                         f"{100 * -r.ci_low:+.2f}), {100 * r.share_of_gap_closed:.0f}% of the gap"
                         for r in rest.itertuples()) + ".")
        best = rows.loc[rows.test_error_mean.idxmin()]
        lines.append(f"  Left unexplained by the best arm ({best.arm}): "
                     f"{100 * (best.test_error_mean - best.published_test_error_mean):+.2f} points.")
    return lines


def render_arms(table, study, protocol, meta):
    """REPORT.md of a study of fixed arms: each arm against the first, as points and as a share of the gap."""
    enough = tested(protocol, meta)
    lines = arms_lines(table) if enough else [
        f"Differences, intervals and shares of the gap are left out: {_not_enough(protocol, meta)}."]
    return ARMS.format(
        name=Path(study.path).stem, banner=banner(meta), description=study.description, path=study.path, p=protocol,
        machine=meta.get("machine", "?"), device=meta.get("device", "?"), wall_time=meta.get("wall_time", "?"),
        table=markdown(display(table, "arms", tested=enough)), lines="\n".join(lines), command=command(meta),
        legend="Differences are paired (same rounds), second arm minus the first" + (
            "; \"closed\" is minus that difference, as a\nshare of the gap between the first arm and the study's "
            "published test error." if table.published_test_error_mean.notna().any() else "."))


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
    """Several studies' final rounds in one place (pairs.tables.beside; `studies`: {name: final records}), written
    to out as beside.md, beside_table2.csv, beside_paired.csv and beside_test_error.png."""
    t2, cmp, errors = tables.beside(studies)
    t2.to_csv(out / "beside_table2.csv", index=False)
    cmp.to_csv(out / "beside_paired.csv", index=False)
    first = next(iter(studies))
    name = lambda r: f"#{r['row']} {r['study']} {r['variant']} {r['batch_size']}/{r['epochs']}"  # noqa: E731
    lines = ["# Final rounds beside each other", "", f"Studies: {', '.join(studies)}. Mean ± std over rounds; "
             "options: those not at the study's default.", "", markdown(display(t2, "beside")),
             f"Each row against the rows of {first} of its architecture: the difference in test error (that row "
             "minus the other, points) over the rounds that drew the same pairs, 95% CI.", ""]
    lines += [f"- {name(t2.iloc[c.row - 1])} vs {name(t2.iloc[c.against - 1])}: {100 * c.diff_mean:+.2f} "
              f"({100 * c.ci_low:+.2f} to {100 * c.ci_high:+.2f}), n={c.n}" for c in cmp.itertuples()
              ] or ["- no two rows to compare"]
    (out / "beside.md").write_text("\n".join(lines) + "\n")
    fig = figures.beside_errors([f"#{r} {v}" for r, v in zip(t2.row, t2.variant)], [list(e.values()) for e in errors])
    return [out / "beside_table2.csv", out / "beside_paired.csv", *_save(fig, out, "beside_test_error"),
            out / "beside.md"]

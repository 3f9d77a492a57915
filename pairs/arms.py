"""The reports that put configurations side by side on shared rounds: a study of fixed arms (each later arm against
the first, judged by pairs.claims), and the final rounds of several runs or folders beside each other (exploratory:
nobody declared those comparisons). Written to a folder like pairs.report's, with its helpers.
"""
from pathlib import Path

from . import claims, figures, tables
from .report import _save, banner, command, not_enough, rounds_seen, save_records, tested, write_tables
from .stats import MIN_PAIRED_ROUNDS
from .tables import arms_table, display, markdown

ARMS = """# Study `{name}`: arms on paired rounds
{banner}
{description}

- **Study file**: `{path}`; {p.final_rounds} paired rounds (every arm on the same pairs and seeds), {p.pairs} pairs per split.
- **Final rounds**: {rounds_seen}
- **Machine**: {machine}; device {device}. Every arm, the first included, was trained in this run.
- **Wall time**: {wall_time}.{history}
{headline}
{table}
{legend}

{lines}

## Command
{command}
"""


def arms_lines(table):
    """Per variant: the first arm's test error, and each later arm against it, judged by the claims policy; where
    the first arm trains the paper's model, the share of the gap to the paper's number as an estimate."""
    lines = []
    for variant, rows in table.groupby("variant", sort=False):
        first, rest = rows.iloc[0], rows.iloc[1:]
        said = []
        for r in rest.to_dict("records"):
            text = f"  - {r['arm']}: {claims.said(r | {'declared': True, 'expect': ''})}"
            if r["share_of_gap_closed"] == r["share_of_gap_closed"]:
                share = (f"{100 * r['share_of_gap_closed']:.0f}% of the gap (95% interval "
                         f"{100 * r['share_low']:.0f}% to {100 * r['share_high']:.0f}%)")
                text += f", closing {share}" if r["verdict"] == "lower" else f"; as an estimate, {share}"
            said.append(text)
        study = (f", the paper {100 * first.published_test_error_mean:.2f}% (gap {100 * first.gap:+.2f} points)"
                 if first.published_test_error_mean == first.published_test_error_mean else "")
        lines += [f"- **{variant}**: {first.arm} {100 * first.test_error_mean:.2f}%{study}."] + [t + "." for t in said]
    return lines


def headline(table, study, enough):
    """The arm the study file declared, before the run, to be its result: its mean test error with a 95% interval."""
    if not study.headline or not enough:
        return ""
    rows = table[table.arm == study.headline]
    return (f"\n## Headline (the arm `{study.headline}`, declared in the study file before the run)\n" + "\n".join(
        f"- {r.variant}: **{100 * r.test_error_mean:.2f}%** mean test error over {r.rounds} rounds (95% CI "
        f"{100 * r.mean_ci_low:.2f} to {100 * r.mean_ci_high:.2f}; std {100 * r.test_error_std:.2f})."
        for r in rows.itertuples()) + "\n")


def render(table, study, protocol, meta):
    """REPORT.md of a study of fixed arms: each later arm against the first, judged by the claims policy."""
    enough = tested(protocol, meta)
    lines = arms_lines(table) if enough else [
        f"Differences, intervals and shares of the gap are left out: {not_enough(protocol, meta)}."]
    legend = ("Differences are paired (same rounds), each later arm minus the first; each arm differs from the first by "
              "the settings\nin its name, and its difference measures that change on these rounds. Declared before "
              "the run (by the file's\narms): every later arm against the first, a family of "
              f"{int(table.diff_mean.notna().sum())} comparisons (paired t-test, "
              "two-sided, Holm-corrected, 5%); a verdict needs the same result on all\nrounds and on the rounds "
              "without a diverged fit, else it is inconclusive.")
    if table.published_test_error_mean.notna().any():
        legend += (" The share of the gap is (first arm - arm) / (first arm - the paper's\npublished mean), its "
                   "interval a bootstrap over rounds that also draws the published mean from its standard error;\n"
                   "an arm says what its change does here, not why the paper's numbers are what they are.")
    return ARMS.format(
        name=Path(study.path).stem, banner=banner(meta), description=study.description, path=study.path, p=protocol,
        rounds_seen=rounds_seen(protocol, meta), machine=meta.get("machine", "?"), device=meta.get("device", "?"),
        wall_time=meta.get("wall_time", "?"), history=f"\n- **History** (the study file's, as written): "
        f"{study.history}" if study.history else "", headline=headline(table, study, enough),
        table=markdown(display(table, "arms", tested=enough)), lines="\n".join(lines), command=command(meta),
        legend=legend)


def report(records, study, protocol, out, meta):
    """The arms table (CSV, markdown) and REPORT.md of a study of fixed arms, written to out."""
    table = arms_table(records, protocol, study.arms)
    paths = write_tables(out, "arms", table, table) + [save_records(records, out / "final_fits.json")]
    (out / "REPORT.md").write_text(render(table, study, protocol, meta))
    return paths + [out / "REPORT.md"]


def beside(studies, out, smoke=()):
    """Several studies' final rounds in one place (pairs.tables.beside; `studies`: {name: final records}), written
    to out as beside.md, beside_table2.csv, beside_paired.csv and beside_test_error.png."""
    t2, cmp, errors = tables.beside(studies)
    t2.to_csv(out / "beside_table2.csv", index=False)
    cmp.to_csv(out / "beside_paired.csv", index=False)
    first = next(iter(studies))
    name = lambda r: f"#{r['row']} {r['study']} {r['variant']} {r['batch_size']}/{r['epochs']}"  # noqa: E731
    lines = ["# Final rounds beside each other", "", f"Studies: {', '.join(studies)}. Mean ± std over rounds; "
             "options: those not at the paper's default.", ""]
    lines += [f"> **Smoke run** among them ({', '.join(smoke)}): its numbers show that the pipeline runs end to end; "
              "they are not findings.", ""] if smoke else []
    lines += [markdown(display(t2, "beside")),
              f"Each row against the rows of {first} of its architecture: the difference in test error (that row "
              "minus the other, points) over the rounds that drew the same pairs, 95% CI. Exploratory: nobody "
              "declared these comparisons, so they carry no verdict; and the rounds both rows share are the same "
              "test rounds, seen by both.", ""]
    lines += [f"- {name(t2.iloc[c.row - 1])} vs {name(t2.iloc[c.against - 1])}: " + (
        f"{claims.points(c.diff_mean, c.ci_low, c.ci_high).replace('95% CI ', '')}, n={c.n}"
        if c.n >= MIN_PAIRED_ROUNDS else f"n={c.n} paired rounds, too few for an interval (at least "
        f"{MIN_PAIRED_ROUNDS})") for c in cmp.itertuples()] or ["- no two rows to compare"]
    (out / "beside.md").write_text("\n".join(lines) + "\n")
    fig = figures.beside_errors([f"#{r} {v}" for r, v in zip(t2.row, t2.variant)], [list(e.values()) for e in errors])
    return [out / "beside_table2.csv", out / "beside_paired.csv", *_save(fig, out, "beside_test_error"),
            out / "beside.md"]

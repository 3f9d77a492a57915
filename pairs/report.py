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

from . import claims, figures, published, tables
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
s/epoch is the per-fit share of the stacked training time (all rounds of a variant trained at once): one
measurement on a machine that may have been shared, not comparable one to one with the study's one-model-at-a-time
column. {diverged}

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
- **Final rounds**: {rounds_seen}
- **Options beyond the study**: {options}.{fixed}
- **Machine**: {machine}; device {device}; {versions}.
- **Wall time**: {wall_time}."""

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
    return (write_tables(out, "table2", t2, display(t2, "table2")) + write_tables(out, "statistics", cmp, display(cmp, "statistics"))
            + losses + _save(figures.error_strip(records), out, "test_error_by_round")
            + [save_records(records, out / "final_fits.json")])


def conclusions(t2, cmp):
    """The paper's claims judged by the claims policy (pairs.claims), the exploratory comparisons as estimates, the
    parameter counts as counted, and why timings are not judged."""
    declared, rest = cmp[cmp.declared], cmp[~cmp.declared]
    lines = [f"Declared before the run: the paper's {len(declared)} claims about test error below (paired t-test, "
             f"two-sided, Holm-corrected over these {len(declared)}, 5%); a verdict needs the same result on all "
             "rounds and on the rounds without a diverged fit, else it is inconclusive."]
    lines += [f"- {r.architecture}, {r.comparison} (the paper: {r.expect}): {claims.said(r._asdict())}."
              for r in declared.itertuples(index=False)]
    if len(rest):
        lines.append("\nExploratory (declared by nobody; estimates, no verdict):")
        lines += [f"- {r.architecture}, {r.comparison}: {claims.said(r._asdict())}." for r in rest.itertuples(index=False)]
    counted = []
    for arch in dict.fromkeys(parse(v)[0] for v in t2.variant):
        plain, ws = t2[t2.variant == arch], t2[t2.variant == f"{arch}_WS"]
        if len(plain) and len(ws):
            a, b = plain.param_count.iloc[0], ws.param_count.iloc[0]
            counted.append(f"{arch} {a} -> {b} (/{a / b:.2f})")
    if counted:
        lines.append(f"\nParameters, counted: weight sharing takes {'; '.join(counted)}.")
    lines.append("Training time is not judged: each variant's s/epoch above is one measurement of its stacked training "
                 "on a\nmachine that may have been shared; BENCHMARKS.md compares speeds from interleaved repeats.")
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
        p=p, inputs="standardised with the training set mean/std" if p.normalize else "raw (0..255); the study's text "
        "does not say how it scaled its inputs", rounds_seen=rounds_seen(p, meta), fixed=fixed(study),
        searched=searched(p, study), variants=variants, optimizer=optimizer(records),
        as_searched=" (or as searched)" * space, options=options or ("as selected (below)" if space else "none"),
        machine=meta.get("machine", "?"), device=meta.get("device", "?"), versions=meta.get("versions", ""),
        wall_time=meta.get("wall_time", "see the pipeline run in MLflow"))


def selected(selection):
    """The Selection section's list: each architecture's batch size, epochs and selected options."""
    return "\n".join(f"- {a}: batch size {c.batch_size}, {c.epochs} epochs" + "".join(
        f", {k}={v}" for k, v in list(c.as_dict().items())[2:]) for a, c in selection.items())


def ties(search):
    """The candidates tied with each selection, named: the search cannot tell them apart, the rule picks one."""
    lines = []
    for arch, rows in tied(search_table(search)).items():
        keys = [k for k in rows[0] if k not in SCORES]
        differ = [k for k in keys if len({str(r[k]) for r in rows}) > 1]
        lines.append(f"- {arch}: {len(rows)} candidates tied at {rows[0]['val_errors']} of {rows[0]['val_pairs']} "
                     "validation pairs misclassified: the search cannot tell them apart, and the rule picks one: " +
                     "; ".join(", ".join(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                                         for k in differ) + (" (selected)" if i == 0 else "")
                               for i, r in enumerate(rows)) + ".")
    return "\n".join(lines) + "\n" if lines else ""


def rounds_seen(protocol, meta):
    """Which final rounds a run evaluates on, and which published folders evaluated on the same ones (`meta`'s
    `seen`): test rounds are spent once seen."""
    p = protocol
    base = p.seed if p.final_seed is None else p.final_seed
    where = (f"rounds 0-{p.final_rounds - 1} of base seed {base} ({p.pairs} pairs per split)" if p.final_rounds > 1
             else f"round 0 of base seed {base} ({p.pairs} pairs per split)")
    seen = meta.get("seen", ())
    if not seen:
        return f"{where}; no other published folder evaluated on these rounds."
    return (f"{where}; also evaluated in {', '.join(seen)}: test rounds are spent once seen, so a choice made\n"
            "  after reading those reports has seen these rounds, and agreement with them is not a confirmation.")


def fixed(study):
    """For a study with a search: what it searched, what its file fixed without a search, and its history."""
    if study is None or not study.space:
        return ""
    options = {k: v for k, v in study.protocol.items() if k in Training.__dataclass_fields__} | study.final
    searched_ = ", ".join(n for n, _ in study.space)
    out = (f"\n- **Searched** (by cross-validation): {searched_}. **Fixed in the study file**, not searched: "
           f"{', '.join(f'{k}={v}' for k, v in options.items()) or 'nothing'}.")
    return out + (f"\n- **History** (the study file's, as written): {study.history}" if study.history else "")


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
    return (f"## Paired statistics (test error of the second variant minus the first, in points, same rounds)\n"
            f"{markdown(display(cmp, 'statistics'))}\n## Conclusions\n{conclusions(t2, cmp)}\n")


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
    """Per variant: the first arm's test error, and each later arm against it, judged by the claims policy; where
    the first arm trains the study's model, the share of the gap to the study's number as an estimate."""
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
        study = (f", the study {100 * first.published_test_error_mean:.2f}% (gap {100 * first.gap:+.2f} points)"
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


def render_arms(table, study, protocol, meta):
    """REPORT.md of a study of fixed arms: each later arm against the first, judged by the claims policy."""
    enough = tested(protocol, meta)
    lines = arms_lines(table) if enough else [
        f"Differences, intervals and shares of the gap are left out: {_not_enough(protocol, meta)}."]
    legend = ("Differences are paired (same rounds), each later arm minus the first; each arm differs from the first by "
              "the settings\nin its name, and its difference measures that change on these rounds. Declared before "
              "the run (by the file's\narms): every later arm against the first, a family of "
              f"{int(table.diff_mean.notna().sum())} comparisons (paired t-test, "
              "two-sided, Holm-corrected, 5%); a verdict needs the same result on all\nrounds and on the rounds "
              "without a diverged fit, else it is inconclusive.")
    if table.published_test_error_mean.notna().any():
        legend += (" The share of the gap is (first arm - arm) / (first arm - the study's\npublished mean), its "
                   "interval a bootstrap over rounds that also draws the published mean from its standard error;\n"
                   "an arm says what its change does here, not why the study's numbers are what they are.")
    return ARMS.format(
        name=Path(study.path).stem, banner=banner(meta), description=study.description, path=study.path, p=protocol,
        rounds_seen=rounds_seen(protocol, meta), machine=meta.get("machine", "?"), device=meta.get("device", "?"),
        wall_time=meta.get("wall_time", "?"), history=f"\n- **History** (the study file's, as written): "
        f"{study.history}" if study.history else "", headline=headline(table, study, enough),
        table=markdown(display(table, "arms", tested=enough)), lines="\n".join(lines), command=command(meta),
        legend=legend)


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


def beside(studies, out, smoke=()):
    """Several studies' final rounds in one place (pairs.tables.beside; `studies`: {name: final records}), written
    to out as beside.md, beside_table2.csv, beside_paired.csv and beside_test_error.png."""
    t2, cmp, errors = tables.beside(studies)
    t2.to_csv(out / "beside_table2.csv", index=False)
    cmp.to_csv(out / "beside_paired.csv", index=False)
    first = next(iter(studies))
    name = lambda r: f"#{r['row']} {r['study']} {r['variant']} {r['batch_size']}/{r['epochs']}"  # noqa: E731
    lines = ["# Final rounds beside each other", "", f"Studies: {', '.join(studies)}. Mean ± std over rounds; "
             "options: those not at the study's default.", ""]
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

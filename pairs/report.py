"""The report of a study with a search, written to a folder: REPORT.md, its tables (CSV, markdown), figures and
fit records (pairs.arms writes those of a study of arms, and runs beside each other).

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

from . import claims, figures, published
from .config import Training
from .models import architecture
from .protocol import FitRecord
from .selection import SCORES, TIE_RULE, search_table, tied
from .stats import DIVERGED_MIN_EPOCHS, MIN_PAIRED_ROUNDS
from .tables import comparisons, display, markdown, table1, table2

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
measurement on a machine that may have been shared, not comparable one to one with the paper's one-model-at-a-time
column. {diverged}

{table2}
{findings}
{losses}

![Test error by round](test_error_by_round.png)
{confirmed}
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
- **Options beyond the paper**: {options}.{fixed}
- **Machine**: {machine}; device {device}; {versions}.
- **Wall time**: {wall_time}."""

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


def final_artifacts(records, out, t2=None):
    """Table 2 (`t2`, when the caller has it), the paired statistics, the loss and error figures and the fit
    records, written to out."""
    t2 = table2(records) if t2 is None else t2
    cmp = comparisons(records)
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
    for arch in dict.fromkeys(architecture(v) for v in t2.variant):
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
    how = (f"Optuna (TPE) with {study.trials} trials per architecture, {study.in_flight} at a time" if study.method ==
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
        p=p, inputs="standardised with the training set mean/std" if p.normalize else "raw (0..255); the paper's text "
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
        return f"## Paired statistics and conclusions\nLeft out: {not_enough(protocol, meta)}.\n"
    if not len(cmp):
        return ""
    return (f"## Paired statistics (test error of the second variant minus the first, in points, same rounds)\n"
            f"{markdown(display(cmp, 'statistics'))}\n## Conclusions\n{conclusions(t2, cmp)}\n")


def banner(meta):
    """The warning atop the report of a smoke run (the quick profile, or counts below its study's)."""
    if not meta.get("smoke"):
        return ""
    return (f"\n> **Smoke run** ({meta['smoke']}): the numbers below show that the pipeline runs end to end; they "
            "are not findings. Run the study file's full counts for results.\n")


def command(meta):
    return f"`{meta.get('command', 'python -m flows')}` ({meta.get('launcher', 'started directly')})"


def tested(protocol, meta):
    """Whether a report states tests, intervals and claims: enough paired rounds, and not a smoke run."""
    return protocol.final_rounds >= MIN_PAIRED_ROUNDS and not meta.get("smoke")


def not_enough(protocol, meta):
    """Why a report states no test, interval or claim."""
    why = [f"{protocol.final_rounds} final round{'s' * (protocol.final_rounds != 1)}, and a paired test or interval "
           f"needs at least {MIN_PAIRED_ROUNDS}"] if protocol.final_rounds < MIN_PAIRED_ROUNDS else []
    return "; ".join(why + ([f"a smoke run ({meta['smoke']})"] if meta.get("smoke") else []))


def render(search, final, selection, protocol, meta, study=None, t2=None):
    """REPORT.md: setup, Table 1, selection, Table 2, figures, statistics, conclusions, command."""
    t1, t2, cmp = table1(search), table2(final) if t2 is None else t2, comparisons(final)
    p = protocol
    on_grid = t1.filter(like="published_").notna().any().any()  # the paper's grid meets this run's: its sentences apply
    return REPORT.format(
        banner=banner(meta), setup=setup(p, search + final, len(t2), meta, study), fits=p.search_rounds * p.folds,
        normalisation=published.normalisation(p.pairs // p.folds) if on_grid else "",
        table1=markdown(display(t1, "table1")), selection=selected(selection), rule=TIE_RULE, ties=ties(search),
        chosen=f"\n{published.choices()}; here the selection comes from cross-validation alone.\n" if on_grid else "",
        rounds=p.final_rounds, diverged=diverged_note(t2, len(final)), table2=markdown(display(t2, "table2")),
        findings=published.findings(t2) if on_grid and tested(p, meta) else "",
        losses=" ".join(f"![{a} loss](loss_{a}.png)" for a in dict.fromkeys(architecture(v) for v in t2.variant)),
        statistics=statistics(t2, cmp, p, meta), command=command(meta), confirmed=confirmed(meta))


def confirmed(meta):
    """This selection evaluated again on other final rounds by published studies of arms (`meta`'s `confirmed`)."""
    found = meta.get("confirmed") or []
    if not found:
        return ""
    lines = ["\n## The selection on other final rounds (published confirmations)"]
    for c in found:
        fresh = ("shown by no other published folder" if not c["seen"] else f"also shown by {', '.join(c['seen'])}")
        lines.append(f"- {c['folder']}, arm `{c['arm']}` (ensemble of {c['ensemble']}): {c['variant']} "
                     f"**{100 * c['mean']:.2f}%** mean test error (95% CI {100 * c['low']:.2f} to {100 * c['high']:.2f}) "
                     f"over rounds 0-{c['rounds'] - 1} of base seed {c['base']}, {fresh}.")
    return "\n".join(lines) + "\n"


def full_report(search, final, selection, protocol, out, meta, study=None, t2=None):
    """Everything: the stage artifacts and REPORT.md, written to out (Table 2: `t2`, when the caller has it)."""
    t2 = table2(final) if t2 is None else t2
    paths = search_artifacts(search, out) + final_artifacts(final, out, t2)
    (out / "REPORT.md").write_text(render(search, final, selection, protocol, meta, study, t2))
    return paths + [out / "REPORT.md"]

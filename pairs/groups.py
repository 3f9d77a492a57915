"""A protocol's fits cut into groups (search cells, final variants, arms), and a group trained stacked.

A `Group` is what one pipeline task trains: the fits of one configuration, as one stacked computation (whole, or
cut into parts of at most `--chunk` fits). Its records come back in its fits' order.
"""
import functools
import hashlib
import itertools
from dataclasses import dataclass, fields, replace

from .config import FitConfig
from .data import derive_seed, kfold, pair_sets
from .models import architecture
from .protocol import Fit, FitRecord, options_text, selection_of
from .train import FitData, fit_many


@dataclass(frozen=True)
class Group:
    """Fits of one config trained as one stacked computation: what a pipeline task trains (whole, or in parts)."""
    fits: tuple[Fit, ...]
    name: str = ""  # an arm's name: shown in the label; not part of the key
    keep: bool = False  # training returns the fits' models too (a selected configuration's final rounds)
    part: str = ""  # a part of a group (`split`): "fits 1-10 of 100"; shown in the label

    @property
    def label(self):
        f = self.fits[0]
        options = options_text(f.config)
        if f.stage == "final":
            label = f"final {f.variant}" + (f" ({self.name})" if self.name else "")
        else:
            label = f"search {f.variant} batch {f.config.batch_size}" + (
                f" epochs {f.config.epochs}" if f.config.schedule != "constant" else "") + (
                f" {self.name}" if self.name else "")
        label = f"{label} {options}" if options and not (self.name and f.stage == "final") else label
        return f"{label} {self.part}" if self.part else label

    def key(self, context=()):
        return hashlib.sha256(" ".join(f.key(context) for f in self.fits).encode()).hexdigest()[:32]


def split(groups, chunk=None):
    """Groups in parts of at most `chunk` fits each (parts, which can train on different machines; each fit's
    result is the same whichever part it trains in); None: the groups whole."""
    return [replace(g, fits=g.fits[i:i + chunk], part=f"fits {i + 1}-{min(i + chunk, len(g.fits))} of {len(g.fits)}")
            if chunk and chunk < len(g.fits) else g for g in groups for i in range(0, len(g.fits), chunk or len(g.fits))]


def search_groups(protocol, candidates=({},)):
    """The search's groups: one Group per (architecture, candidate, batch size), rounds x folds fits
    each, scored at every epoch count. A candidate holds Training options and may name its `variant` (of
    that architecture; others are skipped), `batch_size` and `epochs`, else the protocol's grid is used.
    With a learning-rate schedule the first 25 epochs of a 50-epoch fit are not a 25-epoch fit, so each
    epoch count is then a group of its own. Fits see training pairs only."""
    p, groups = protocol, []
    for arch, options in itertools.product(p.architectures, candidates):
        options = dict(options)
        variant = options.pop("variant", arch)
        if architecture(variant) != arch:
            continue
        batches = [options.pop("batch_size")] if "batch_size" in options else p.batch_sizes
        epochs = [options.pop("epochs")] if "epochs" in options else sorted(set(p.epoch_grid))
        training = p.training() | options
        runs = [tuple(epochs)] if training["schedule"] == "constant" else [(e,) for e in epochs]
        for batch, score_at in itertools.product(batches, runs):
            groups.append(Group(tuple(
                Fit("search", FitConfig(variant, batch, max(score_at), **training), rnd, fold,
                    derive_seed(p.seed, "search", rnd, fold), p.pairs, derive_seed(p.seed, "search", rnd, "pairs"),
                    p.folds, derive_seed(p.seed, "search", rnd, "folds"), score_at)
                for rnd in range(p.search_rounds) for fold in range(p.folds))))
    return groups


def final_variants(protocol, selection):
    """The variants of the final evaluation: the protocol's, or an architecture's chosen variant when the search
    chose one."""
    chosen = [c.variant for c in selection.values() if c.variant]
    return [v for v in protocol.variants if not selection[architecture(v)].variant] + chosen


def final_groups(protocol, selection, name=""):
    """The final evaluation's groups: one Group per variant, at its architecture's Choice (`selection`:
    {architecture: Choice}); every variant and arm on the same rounds. The groups of the chosen configurations
    (an architecture's searched variant) keep their trained models."""
    p, groups = protocol, []
    base = p.seed if p.final_seed is None else p.final_seed
    for variant in final_variants(p, selection):
        c = selection[architecture(variant)]
        cfg = FitConfig(variant, c.batch_size, c.epochs, **(p.training() | dict(c.options)))
        keep = not name and variant == (c.variant or architecture(variant))
        groups.append(Group(tuple(Fit("final", cfg, rnd, None, derive_seed(base, "final", rnd), p.pairs,
                                      derive_seed(base, "final", rnd, "pairs"), score_at=(cfg.epochs,))
                                  for rnd in range(p.final_rounds)), name, keep))
    return groups


def arm_groups(protocol, arms):
    """The final groups of every arm ((name, {architecture: {batch_size, epochs, options...}}) pairs); an arm equal
    to an earlier one for a variant adds no group (its fits are the same)."""
    groups = {}
    for name, arm in arms:
        for g in final_groups(protocol, selection_of(arm), name):
            groups.setdefault(g.key(), g)
    return list(groups.values())


def fit_counts(protocol):
    """(search fits, final fits) that the protocol implies (counted from its groups)."""
    return sum(len(g.fits) for g in search_groups(protocol)), len(protocol.variants) * protocol.final_rounds


@functools.lru_cache(maxsize=64)
def _pair_sets(n, seed, root):
    """Each round's pairs are drawn once per process, though every grid cell and variant uses them."""
    return pair_sets(n, seed, root)


def fit_data(fit, root=None):
    """A fit's training set and the set it is scored on: a validation fold (search) or the test pairs (final)."""
    p = _pair_sets(fit.pairs, fit.data_seed, root)
    if fit.fold is None:
        return FitData(p.train_input, p.train_target, p.train_classes, p.test_input, p.test_target)
    tr, va = kfold(fit.pairs, fit.folds, fit.split_seed)[fit.fold]
    return FitData(p.train_input[tr], p.train_target[tr], p.train_classes[tr], p.train_input[va], p.train_target[va])


def train_group(group, root=None, device="cpu", on_epoch=None):
    """Train a Group's fits stacked: one FitRecord per fit, in the group's order; the fits' trained PairsClassifiers
    in the same order and three of the first fit's scored inputs (a logged model's input example) when the group
    keeps them (else none).

    `on_epoch(epoch, epochs, n)`, if given, is called when n fits have trained their epoch-th epoch."""
    fits = group.fits
    datas = [fit_data(f, root) for f in fits]
    records, trained = [None] * len(fits), [None] * len(fits)
    # folds of unequal size cannot share one stack: group fits by training-set size
    for size in sorted({len(d.train_target) for d in datas}):
        idx = [i for i, d in enumerate(datas) if len(d.train_target) == size]
        results = fit_many(fits[0].config, [datas[i] for i in idx], [fits[i].seed for i in idx],
                           fits[0].score_at, device, on_epoch=on_epoch and (lambda e, n, k=len(idx): on_epoch(e, n, k)),
                           keep=group.keep)
        for i, r in zip(idx, results):
            trained[i] = r.model
            records[i] = FitRecord(**{f.name: getattr(fits[i], f.name) for f in fields(Fit)},
                                   train_loss=tuple(r.train_loss), main_loss=tuple(r.main_loss),
                                   aux_loss=tuple(r.aux_loss), param_count=r.param_count, s_per_epoch=r.s_per_epoch,
                                   scores=tuple((e, r.train_error[e], r.eval_error[e]) for e in sorted(r.train_error)))
    return (records, trained, datas[0].eval_input[:3].float().numpy()) if group.keep else (records, [], None)

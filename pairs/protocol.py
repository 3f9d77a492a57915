"""The study's protocol as pure functions: search cells, selection, final groups.

1. Search (Table 1): for each architecture's base variant, `search_rounds` rounds of `folds`-fold
   cross-validation, each round on its own draw of `pairs` training pairs with its own fold partition
   (test pairs never touched), over batch_sizes x epochs. One grid cell (architecture, batch size) is
   rounds x folds fits trained as one stacked computation to max(epochs) and scored at every epoch
   count. Selection per architecture: the (batch size, epochs) with the lowest mean validation error.
2. Final (Table 2): `final_rounds` rounds; each round draws fresh pairs and trains every variant with
   its architecture's selection, scored on that round's test pairs.
Every seed is derived from `seed` and the unit's names (stage, round, fold), never from global state.
"""
import functools
from dataclasses import asdict, dataclass, replace

from .data import derive_seed, kfold, pair_sets
from .models import ARCHITECTURES, VARIANTS, parse
from .stats import mean_std
from .train import FitConfig, FitData, fit_many


@dataclass(frozen=True)
class Protocol:
    seed: int = 0
    pairs: int = 1000
    search_rounds: int = 10
    folds: int = 10
    final_rounds: int = 20
    batch_sizes: tuple = (25, 50, 100)
    epochs: tuple = (25, 50)
    architectures: tuple = ARCHITECTURES
    variants: tuple = VARIANTS
    lr: float = 1e-3
    aux_weight: float = 1.0
    normalize: bool = False

    def __post_init__(self):
        for name in ("pairs", "search_rounds", "folds", "final_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("batch_sizes", "epochs", "architectures", "variants"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for name in ("batch_sizes", "epochs"):
            bad = [v for v in getattr(self, name) if not isinstance(v, int) or isinstance(v, bool) or v < 1]
            if bad:
                raise ValueError(f"{name} must be positive integers, got {bad}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.folds > self.pairs:
            raise ValueError(f"folds ({self.folds}) cannot exceed pairs ({self.pairs})")
        smallest_train = self.pairs - -(-self.pairs // self.folds)  # a fold's training set, worst case
        if max(self.batch_sizes) > smallest_train:
            raise ValueError(f"batch size {max(self.batch_sizes)} is larger than a fold's training set "
                             f"({smallest_train} pairs with {self.pairs} pairs in {self.folds} folds)")
        for v in self.variants:
            parse(v)
        for a in self.architectures:
            if a not in ARCHITECTURES:
                raise ValueError(f"unknown architecture {a!r}; choose from {', '.join(ARCHITECTURES)}")
        if self.lr <= 0 or self.aux_weight < 0:
            raise ValueError("lr must be positive and aux_weight non-negative")

    def with_(self, **changes):
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def fits(self):
        """(search fits, final fits) that the protocol implies."""
        search = len(self.architectures) * len(self.batch_sizes) * self.search_rounds * self.folds
        return search, len(self.variants) * self.final_rounds


PROFILES = {
    "full": Protocol(),
    "quick": Protocol(pairs=300, search_rounds=2, folds=3, final_rounds=2, batch_sizes=(25, 50), epochs=(2, 3)),
}


@functools.lru_cache(maxsize=64)
def _pair_sets(n, seed, root):
    """Each round's pairs are drawn once per process, though every grid cell and variant uses them."""
    return pair_sets(n, seed, root)


def _record(stage, cfg, rnd, fold, seed, result, eval_name):
    return {"stage": stage, "variant": cfg.variant, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
            "lr": cfg.lr, "aux_weight": cfg.aux_weight, "normalize": cfg.normalize,
            "round": rnd, "fold": fold, "seed": seed, "param_count": result.param_count,
            "train_loss": result.train_loss, "main_loss": result.main_loss, "aux_loss": result.aux_loss,
            "s_per_epoch": result.s_per_epoch, "train_error": result.train_error,
            eval_name: result.eval_error}


def search_cell(protocol, architecture, batch_size, root=None, device="cpu"):
    """All rounds x folds fits of one grid cell, stacked; one record per fit, scored at each epoch count."""
    cfg = FitConfig(architecture, batch_size, max(protocol.epochs), protocol.lr, protocol.aux_weight,
                    protocol.normalize)
    datas, keys = [], []
    for rnd in range(protocol.search_rounds):
        p = _pair_sets(protocol.pairs, derive_seed(protocol.seed, "search", rnd, "pairs"), root)
        for fold, (tr, va) in enumerate(kfold(protocol.pairs, protocol.folds,
                                              derive_seed(protocol.seed, "search", rnd, "folds"))):
            datas.append(FitData(p.train_input[tr], p.train_target[tr], p.train_classes[tr],
                                 p.train_input[va], p.train_target[va]))
            keys.append((rnd, fold, derive_seed(protocol.seed, "search", rnd, fold)))
    records = []
    # folds of unequal size cannot share one stack: group fits by training-set size
    for size in sorted({len(d.train_target) for d in datas}):
        idx = [i for i, d in enumerate(datas) if len(d.train_target) == size]
        results = fit_many(cfg, [datas[i] for i in idx], [keys[i][2] for i in idx], protocol.epochs, device)
        records += [_record("search", cfg, *keys[i], r, "val_error") for i, r in zip(idx, results)]
    return sorted(records, key=lambda r: (r["round"], r["fold"]))


def search_table(records):
    """Table 1 rows: per (architecture, batch size, epochs) the mean/std of train and validation error."""
    rows = []
    for (variant, batch), group in _groupby(records, ("variant", "batch_size")).items():
        for e in sorted(group[0]["train_error"]):
            tr, va = mean_std([r["train_error"][e] for r in group]), mean_std([r["val_error"][e] for r in group])
            rows.append({"architecture": variant, "batch_size": batch, "epochs": e, "fits": len(group),
                         "train_error_mean": tr[0], "train_error_std": tr[1],
                         "val_error_mean": va[0], "val_error_std": va[1]})
    return rows


def select(table1_rows):
    """Per architecture the (batch size, epochs) of lowest mean validation error (ties: fewer epochs, smaller batch)."""
    best = {}
    for r in sorted(table1_rows, key=lambda r: (r["val_error_mean"], r["epochs"], r["batch_size"])):
        best.setdefault(r["architecture"], {"batch_size": r["batch_size"], "epochs": r["epochs"]})
    return best


def final_group(protocol, variant, batch_size, epochs, root=None, device="cpu"):
    """All final rounds of one variant, stacked; each round has its own pairs, scored on its test pairs."""
    cfg = FitConfig(variant, batch_size, epochs, protocol.lr, protocol.aux_weight, protocol.normalize)
    datas, seeds = [], []
    for rnd in range(protocol.final_rounds):
        p = _pair_sets(protocol.pairs, derive_seed(protocol.seed, "final", rnd, "pairs"), root)
        datas.append(FitData(p.train_input, p.train_target, p.train_classes, p.test_input, p.test_target))
        seeds.append(derive_seed(protocol.seed, "final", rnd))
    results = fit_many(cfg, datas, seeds, (epochs,), device)
    return [_record("final", cfg, rnd, None, s, r, "test_error") for rnd, (s, r) in enumerate(zip(seeds, results))]


def final_table(records):
    """Table 2 rows: per variant train/test error mean and std, parameters, s/epoch."""
    rows = []
    for (variant,), group in _groupby(records, ("variant",)).items():
        e = group[0]["epochs"]
        tr, te = mean_std([r["train_error"][e] for r in group]), mean_std([r["test_error"][e] for r in group])
        rows.append({"variant": variant, "batch_size": group[0]["batch_size"], "epochs": e, "rounds": len(group),
                     "train_error_mean": tr[0], "train_error_std": tr[1],
                     "test_error_mean": te[0], "test_error_std": te[1],
                     "param_count": group[0]["param_count"],
                     "s_per_epoch": sum(r["s_per_epoch"] for r in group) / len(group)})
    return rows


def _groupby(records, keys):
    groups = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def protocol_params(protocol):
    """The protocol as flat strings, for logging."""
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(protocol).items()}

"""The protocol: its settings and profiles (`Protocol`), and its fits (`Fit`, `FitRecord`), named completely.

1. Search (Table 1): for each architecture's base variant, `search_rounds` rounds of `folds`-fold
   cross-validation, each round on its own draw of `pairs` training pairs with its own fold partition
   (test pairs never touched), over batch_sizes x epochs. One grid cell (architecture, batch size) is a
   `Group` of rounds x folds fits trained as one stacked computation to max(epochs) and scored at every
   epoch count (pairs.groups cuts a protocol into Groups and trains them); pairs.selection chooses per
   architecture from their records.
2. Final (Table 2): `final_rounds` rounds of base seed `final_seed` (else `seed`); each round draws fresh pairs
   and trains every variant with its architecture's Choice, scored on that round's test pairs (one Group per
   variant).
Every seed is derived from the base seed and a fit's place (stage, round, fold), never from global state.
A `Fit` names one fit completely (settings, data, seed); its `key` is what the Prefect cache and the
MLflow store know it by. A `FitRecord` is a Fit with its results; it round-trips through JSON (records written
before an option was renamed read through RENAMED).
"""
import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

from .models import ARCHITECTURES, VARIANTS, architecture, forward_flops
from .config import FitConfig, Training, option

DEFAULT = Training()
RENAMED = {"repair": "re_pair"}  # options of records written before a rename: their values are the same


class Context(NamedTuple):
    """What a fit's key holds besides its settings: the MNIST files' fingerprint, the training code's version and the
    device. A change in any one trains the fit again."""
    data: str
    code: str
    device: str


@dataclass(frozen=True)
class Protocol(Training):
    """Counts, grid and training options of one study. Every field is a user setting (see flows.settings)."""
    seed: int = option(0, "base seed: each fit derives its own from it and its place (stage, round, fold)")
    final_seed: int | None = option(None, "base seed of the final rounds (their pairs and initial weights); unset: "
                                          "the base seed. Test rounds are spent once seen: a confirmation takes "
                                          "one no published study used")
    pairs: int = option(1000, "pairs per split and round")
    search_rounds: int = option(10, "rounds of the cross-validated search")
    folds: int = option(10, "folds per search round")
    final_rounds: int = option(20, "rounds of the final evaluation")
    batch_sizes: tuple[int, ...] = option((25, 50, 100), "search grid: batch sizes")
    epoch_grid: tuple[int, ...] = option((25, 50), "search grid: epoch counts (one fit trained to the largest, scored at each)")
    architectures: tuple[str, ...] = option(ARCHITECTURES, "architectures searched", ARCHITECTURES)
    variants: tuple[str, ...] = option(VARIANTS, "variants of the final evaluation", VARIANTS)

    def __post_init__(self):
        super().__post_init__()
        for name in ("pairs", "search_rounds", "folds", "final_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("batch_sizes", "epoch_grid", "architectures", "variants"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for name in ("batch_sizes", "epoch_grid"):
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
        for a in self.architectures:
            if a not in ARCHITECTURES:
                raise ValueError(f"unknown architecture {a!r}; choose from {', '.join(ARCHITECTURES)}")
        for v in self.variants:
            if architecture(v) not in self.architectures:
                raise ValueError(f"variant {v} takes its settings from the search of {architecture(v)}: add it to "
                                 f"architectures or leave the variant out")
        if self.batch_norm:  # batch statistics need two pairs: no batch of one, in any fold or the final rounds
            sizes = {self.pairs - self.pairs // self.folds, self.pairs - -(-self.pairs // self.folds), self.pairs}
            bad = [(b, n) for b in self.batch_sizes for n in sorted(sizes) if n % b == 1]
            if bad:
                raise ValueError(f"with batch_norm, batch size {bad[0][0]} leaves a last batch of one pair "
                                 f"({bad[0][1]} training pairs); choose another batch size or pair count")

    def with_(self, **changes):
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PROFILES = {
    "full": Protocol(),
    "quick": Protocol(pairs=300, search_rounds=2, folds=3, final_rounds=2, batch_sizes=(25, 50), epoch_grid=(2, 3)),
}


@dataclass(frozen=True)
class Fit:
    """One fit, named completely: its settings, the draw of its data, its own seed, the epochs it is scored at."""
    stage: str
    config: FitConfig
    round: int
    fold: int | None  # None: trained on the round's training pairs, scored on its test pairs
    seed: int  # initial weights and shuffling
    pairs: int
    data_seed: int  # the round's draw of pairs
    folds: int | None = None
    split_seed: int | None = None  # the round's fold partition
    score_at: tuple[int, ...] = ()

    def key(self, context=()):
        """The fit's identity as a hash (with `context`: data fingerprint, code version, device)."""
        ident = {f.name: getattr(self, f.name) for f in fields(Fit)} | {"config": asdict(self.config)}
        return hashlib.sha256(json.dumps([ident, list(context)], sort_keys=True).encode()).hexdigest()[:32]

    @property
    def variant(self):
        return self.config.variant


@dataclass(frozen=True, kw_only=True)
class FitRecord(Fit):
    """A fit and its results: per-epoch losses, (epochs, train error, eval error) at each scored count."""
    train_loss: tuple[float, ...]
    main_loss: tuple[float, ...]
    aux_loss: tuple[float, ...]
    scores: tuple[tuple[int, float, float], ...]
    param_count: int
    s_per_epoch: float

    @property
    def train_error(self):
        return {e: tr for e, tr, _ in self.scores}

    @property
    def eval_error(self):
        """Validation error (search) or test error (final), per scored epoch count."""
        return {e: ev for e, _, ev in self.scores}

    @property
    def train_flops(self):
        """The fit's training FLOPs: forward + backward (3 forward passes, counted from its model) of every training
        pair in every epoch, for each ensemble member."""
        pairs = self.pairs - fold_size(self) if self.fold is not None else self.pairs
        return (3 * forward_flops(self.variant, **self.config.model_options()) * pairs * self.config.epochs
                * self.config.ensemble)

    @property
    def final_errors(self):
        """(train error, eval error) after all of the config's epochs."""
        return self.train_error[self.config.epochs], self.eval_error[self.config.epochs]

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, d):
        if "config" not in d:
            raise ValueError("fit records written before pairs had typed records (flat dicts): rebuild this report "
                             "by running the pipeline again (cached groups are reused when nothing changed)")
        tuples = {k: tuple(d[k]) for k in ("train_loss", "main_loss", "aux_loss", "score_at")}
        config = {RENAMED.get(k, k): v for k, v in d["config"].items()}
        return cls(**d | tuples | {"config": FitConfig(**config), "scores": tuple(map(tuple, d["scores"]))})


def options_text(config):
    """The training options of a config not at the study's default, as `name=value` words."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in config.training().items() if v != getattr(DEFAULT, k))


@dataclass(frozen=True)
class Choice:
    """An architecture's chosen configuration: batch size, epochs, the variant (when the search chose one: else each
    of the protocol's variants of the architecture runs) and the training options it carries, as (name, value)
    pairs. A Selection is {architecture: Choice}; `as_dict` is its JSON (run.json, MLflow parameters, tags)."""
    batch_size: int
    epochs: int
    variant: str | None = None
    options: tuple = ()

    @classmethod
    def of(cls, values):
        """From {batch_size, epochs, [variant], option: value, ...} (a Table 1 row's settings, a study arm, JSON)."""
        rest = {k: v for k, v in values.items() if k not in ("batch_size", "epochs", "variant")}
        return cls(values["batch_size"], values["epochs"], values.get("variant"), tuple(rest.items()))

    def as_dict(self):
        return {"batch_size": self.batch_size, "epochs": self.epochs} | (
            {"variant": self.variant} if self.variant else {}) | dict(self.options)

    def with_options(self, options):
        """The same choice with these training options set too (a study's [final] options)."""
        return replace(self, options=tuple((dict(self.options) | options).items()))


def selection_of(values):
    """A Selection from its JSON ({architecture: {batch_size, epochs, ...}})."""
    return {a: Choice.of(v) for a, v in values.items()}


def fold_size(fit):
    """Pairs in a search fit's validation fold (kfold: the first pairs % folds folds hold one more)."""
    return fit.pairs // fit.folds + (fit.fold < fit.pairs % fit.folds)


def protocol_params(protocol):
    """The protocol as flat strings, for logging."""
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(protocol).items()}

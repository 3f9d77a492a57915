"""Settings of a fit: the model and training options (`Training`; the defaults are the study's) and a group of fits'
variant, batch size and epochs (`FitConfig`), frozen and validated. Every field is also a user setting: flows.settings
builds the command line, MLproject and the flow's parameters from `option` metadata, and `asdict` is what MLflow
logs and what keys the Prefect cache.
"""
from dataclasses import dataclass, field, fields

from .models import BRANCHES, HEADS, parse

DEVICES = ("cpu", "cuda", "auto")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("float32", "bfloat16")


def option(default, help, choices=()):
    """A dataclass field that is also a user setting: the CLI, MLproject and the flow are built from these."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices)})


@dataclass(frozen=True, kw_only=True)
class Training:
    """Model and training options, shared by every fit of a protocol. A field added here becomes a CLI
    option, an MLproject parameter, a flow parameter, a logged param and part of every cache key."""
    lr: float = option(1e-3, "Adam learning rate")
    aux_weight: float = option(1.0, "weight of the auxiliary digit loss (AL variants)")
    normalize: bool = option(False, "standardise inputs with the training set's mean and std (the paper: raw)")
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW); 0: Adam, as the paper")
    schedule: str = option("constant", "learning-rate schedule over all steps", SCHEDULES)
    shift: int = option(0, "augmentation: shift each training digit by up to this many pixels, every epoch")
    re_pair: bool = option(False, "augmentation: draw the training digits into new pairs every epoch "
                                  "(targets from their digit labels)")
    batch_norm: bool = option(False, "batch normalisation after each convolution and hidden linear layer")
    branch: str = option("study", "digit branch: the paper's (study), or larger (four padded convolutions; a wider MLP)",
                         BRANCHES)
    head: str = option("learned", "comparison head: learned layers, or P(first <= second) computed from the two "
                                  "digit posteriors", HEADS)
    dropout: float = option(0.0, "dropout probability after each hidden linear layer of the digit branch")
    ensemble: int = option(1, "models per fit (trained stacked, each from its own seed); a fit's prediction "
                              "averages their pair probabilities")
    precision: str = option("float32", "bfloat16: the matmuls and convolutions under bf16 autocast (CPUs with bf16, "
                                       "GPUs); weights, losses and the optimizer stay float32", PRECISIONS)

    def __post_init__(self):
        for f in fields(Training):  # a study file's `aux_weight = 1` is 1.0: equal settings, equal cache keys
            value = getattr(self, f.name)
            if f.type is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, value := float(value))
            if not isinstance(value, f.type) or (f.type is int and isinstance(value, bool)):
                raise ValueError(f"{f.name} must be {f.type.__name__}, got {value!r}")
        if not self.lr > 0 or not self.aux_weight >= 0:
            raise ValueError(f"lr must be positive and aux_weight non-negative, got {self.lr} and {self.aux_weight}")
        if not self.weight_decay >= 0 or not 0 <= self.shift <= 4:
            raise ValueError(f"weight_decay must be non-negative and shift 0..4, got {self.weight_decay} and "
                             f"{self.shift}")
        if not 0 <= self.dropout < 1 or not 1 <= self.ensemble <= 16:
            raise ValueError(f"dropout must be in [0, 1) and ensemble 1..16, got {self.dropout} and {self.ensemble}")
        for f in fields(Training):
            if f.metadata["choices"] and getattr(self, f.name) not in f.metadata["choices"]:
                raise ValueError(f"unknown {f.name} {getattr(self, f.name)!r}; choose from "
                                 f"{', '.join(f.metadata['choices'])}")

    def training(self):
        """The Training fields of this object (a FitConfig or a Protocol), to build another from."""
        return {f.name: getattr(self, f.name) for f in fields(Training)}

    def model_options(self):
        return {"batch_norm": self.batch_norm, "branch": self.branch, "head": self.head, "dropout": self.dropout}

    @property
    def augments(self):
        return bool(self.shift or self.re_pair)


@dataclass(frozen=True)
class FitConfig(Training):
    """The settings of a group of fits: a variant, its batch size and epochs, and the training options."""
    variant: str = "ConvNet"
    batch_size: int = 100
    epochs: int = 50

    def __post_init__(self):
        super().__post_init__()
        parse(self.variant)
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"batch_size and epochs must be positive: {self}")

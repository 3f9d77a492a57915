"""The study's eight models: ConvNet and MLP, each plain, with weight sharing (WS), auxiliary loss (AL), both.

Each model has one digit branch per image (ending in 10 digit logits) and a comparison head on the 20
concatenated logits. With WS one branch serves both images. AL changes only the loss (see pairs.train),
so X and X_AL are the same network. Layer sizes are pinned by the study's parameter counts.
"""
import torch
from torch import nn

VARIANTS = ("ConvNet", "ConvNet_WS", "ConvNet_AL", "ConvNet_WS_AL", "MLP", "MLP_WS", "MLP_AL", "MLP_WS_AL")
ARCHITECTURES = ("ConvNet", "MLP")
PARAM_COUNTS = {"ConvNet": 144684, "ConvNet_WS": 72458, "MLP": 171538, "MLP_WS": 86920}


def conv_branch():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 200), nn.ReLU(), nn.Linear(200, 10))


def mlp_branch():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(196, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


class PairNet(nn.Module):
    """Two digit branches (or one shared) and a head: forward(x) -> (pair_logits Bx2, digit_logits Bx2x10)."""

    def __init__(self, architecture="ConvNet", weight_sharing=False):
        super().__init__()
        branch, hidden = {"ConvNet": (conv_branch, 10), "MLP": (mlp_branch, 100)}[architecture]
        self.branch1 = branch()
        self.branch2 = self.branch1 if weight_sharing else branch()
        self.head = nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        digits = torch.stack((self.branch1(x[:, 0:1]), self.branch2(x[:, 1:2])), dim=1)
        return self.head(digits.flatten(1)), digits


def parse(name):
    """'MLP_WS_AL' -> ('MLP', weight_sharing=True, aux_loss=True); a clear error for an unknown name."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    parts = name.split("_")
    return parts[0], "WS" in parts, "AL" in parts


def build(name):
    """The model of a Table 2 variant, with PyTorch's default initialisation from the global RNG."""
    architecture, weight_sharing, _ = parse(name)
    return PairNet(architecture, weight_sharing)


def param_count(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared branch once

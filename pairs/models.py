"""The study's eight models: ConvNet and MLP, each plain, with weight sharing (WS), auxiliary loss (AL), both.

Each model has one digit branch per image (ending in 10 digit logits) and a comparison head on the 20
concatenated logits. With WS one branch serves both images. AL changes only the loss (see pairs.train),
so X and X_AL are the same network. Layer sizes are pinned by the study's parameter counts.

Options beyond the study (all off by default, which is the study's model): batch normalisation after
each convolution and hidden linear layer of the branch; dropout after each hidden linear layer's ReLU;
a larger branch (four padded 3x3 convolutions, or a wider MLP); a comparison head that computes P(first <= second) from the two digit posteriors
instead of learning it.
"""
import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("ConvNet", "ConvNet_WS", "ConvNet_AL", "ConvNet_WS_AL", "MLP", "MLP_WS", "MLP_AL", "MLP_WS_AL")
ARCHITECTURES = ("ConvNet", "MLP")
PARAM_COUNTS = {"ConvNet": 144684, "ConvNet_WS": 72458, "MLP": 171538, "MLP_WS": 86920}
BRANCHES = ("study", "large")
HEADS = ("learned", "digits")


def _norm(layer, batch_norm):
    """A layer, followed by its batch normalisation when asked."""
    if not batch_norm:
        return [layer]
    bn = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
    return [layer, bn(layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features)]


def dropout_mask(shape, p, generator, device):
    """Keep each unit with probability 1 - p, scaled by 1 / (1 - p); drawn on the CPU from `generator`."""
    return ((torch.rand(shape, generator=generator) >= p).float() / (1 - p)).to(device)


class Dropout(nn.Module):
    """Dropout whose masks come from its own generator (seeded per fit by pairs.train), so the stacked path
    (pairs.stacked) draws exactly the masks of the plain one."""

    def __init__(self, p):
        super().__init__()
        self.p, self.generator = p, None

    def forward(self, h):
        return h * dropout_mask(h.shape, self.p, self.generator, h.device) if self.training else h


def _hidden(layer, batch_norm, dropout):
    """A hidden linear layer: [batch norm], ReLU, [dropout]."""
    return _norm(layer, batch_norm) + [nn.ReLU()] + ([Dropout(dropout)] if dropout else [])


def conv_branch(batch_norm=False, size="study", dropout=0.0):
    if size == "large":  # two blocks of two padded convolutions: 14 -> 7 -> 3
        convs = [(1, 32), (32, 32), "pool", (32, 64), (64, 64), "pool"]
        layers = [m for c in convs for m in ([nn.MaxPool2d(2)] if c == "pool" else
                                             _norm(nn.Conv2d(*c, 3, padding=1), batch_norm) + [nn.ReLU()])]
        flat = 64 * 3 * 3
    else:
        layers = [*_norm(nn.Conv2d(1, 32, 3), batch_norm), nn.MaxPool2d(2), nn.ReLU(),
                  *_norm(nn.Conv2d(32, 64, 3), batch_norm), nn.MaxPool2d(2), nn.ReLU()]
        flat = 256
    return nn.Sequential(*layers, nn.Flatten(), *_hidden(nn.Linear(flat, 200), batch_norm, dropout),
                         nn.Linear(200, 10))


def mlp_branch(batch_norm=False, size="study", dropout=0.0):
    widths = (196, 512, 256) if size == "large" else (196, 256, 128)
    hidden = [m for a, b in zip(widths, widths[1:]) for m in _hidden(nn.Linear(a, b), batch_norm, dropout)]
    return nn.Sequential(nn.Flatten(), *hidden, nn.Linear(widths[-1], 10))


_LE = torch.ones(10, 10).triu().bool()  # [i, j]: digit i <= digit j


def compare_digits(digits):
    """(..., 20) digit logits of both images -> (..., 2) logits (log P(first > second), log P(first <= second))."""
    lp = F.log_softmax(digits.unflatten(-1, (2, 10)), -1)
    joint = (lp[..., 0, :, None] + lp[..., 1, None, :]).flatten(-2)  # log p1(i) + log p2(j), (..., 100)
    le = _LE.flatten().to(digits.device)
    return torch.stack((joint.masked_fill(le, -torch.inf).logsumexp(-1),
                        joint.masked_fill(~le, -torch.inf).logsumexp(-1)), -1)


class CompareDigits(nn.Module):
    """The comparison computed, not learned: no parameters."""

    def forward(self, digits):
        return compare_digits(digits)


class PairNet(nn.Module):
    """Two digit branches (or one shared) and a head: forward(x) -> (pair_logits Bx2, digit_logits Bx2x10)."""

    def __init__(self, architecture="ConvNet", weight_sharing=False, batch_norm=False, branch="study",
                 head="learned", dropout=0.0):
        super().__init__()
        make, hidden = {"ConvNet": (conv_branch, 10), "MLP": (mlp_branch, 100)}[architecture]
        self.branch1 = make(batch_norm, branch, dropout)
        self.branch2 = self.branch1 if weight_sharing else make(batch_norm, branch, dropout)
        self.head = nn.Sequential(CompareDigits()) if head == "digits" else nn.Sequential(
            nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        # a shared branch with batch norm sees both images in one batch: its statistics are over both
        self.one_pass = weight_sharing and batch_norm

    def forward(self, x):
        if self.one_pass:
            digits = self.branch1(x.transpose(0, 1).flatten(0, 1)[:, None]).unflatten(0, (2, -1)).transpose(0, 1)
        else:
            digits = torch.stack((self.branch1(x[:, 0:1]), self.branch2(x[:, 1:2])), dim=1)
        return self.head(digits.flatten(1)), digits


class PairsClassifier(nn.Module):
    """A fit as one deployable model: its members (an ensemble, or one) and its input standardisation.
    forward(x: float32 N x 2 x 14 x 14, raw 0..255 pixels) -> P(first <= second) and its complement, N x 2,
    averaged over the members (the pair probabilities the fit is scored by)."""

    def __init__(self, members, mean=0.0, std=1.0):
        super().__init__()
        for m in members:  # a deployed model does not train: its dropout generators (not picklable) go
            for layer in m.modules():
                if isinstance(layer, Dropout):
                    layer.generator = None
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x):
        x = (x - self.mean) / self.std
        return torch.stack([m(x)[0].softmax(-1) for m in self.members]).mean(0)


def parse(name):
    """'MLP_WS_AL' -> ('MLP', weight_sharing=True, aux_loss=True); a clear error for an unknown name."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    parts = name.split("_")
    return parts[0], "WS" in parts, "AL" in parts


def architecture(variant):
    """A variant's architecture: 'MLP_WS_AL' -> 'MLP'."""
    return parse(variant)[0]


# torch.nn.init draws from the process's one global generator: whoever builds a model holds this (a group trains
# in a thread while another thread rebuilds trained models to log them, or counts FLOPs)
GLOBAL_RNG = threading.Lock()


def build(name, **options):
    """The model of a Table 2 variant (options: batch_norm, branch, head, dropout), with PyTorch's default
    initialisation from the global RNG."""
    architecture, weight_sharing, _ = parse(name)
    return PairNet(architecture, weight_sharing, **options)


@functools.cache
def forward_flops(name, **options):
    """FLOPs of one forward pass of one pair through the variant's model (both branches, the head), counted by
    torch's FlopCounterMode (2 per multiply-add of every matmul and convolution), not written by hand."""
    from torch.utils.flop_counter import FlopCounterMode
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # (building draws initial weights: none are kept)
        model = build(name, **options).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 2, 14, 14))
    return counter.get_total_flops()


def param_count(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared branch once

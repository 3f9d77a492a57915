"""k PairNets of one variant as one set of stacked tensors, with a forward pass for all k at once.

The forward pass is compiled by walking the model's `branch` and `head` modules, so pairs/models.py
stays the one place where the architecture is written: Conv2d becomes one grouped conv2d over the M
stacked branches (2k, or k with weight sharing) in channels-last layout, Linear one batched matmul
(baddbmm), MaxPool2d, ReLU and Flatten act on that layout, BatchNorm runs over the M*C stacked channels
(each channel belongs to one fit, so its batch statistics are exactly that fit's), CompareDigits is
applied as it is, Dropout draws each group's mask from that fit's own module. A layer it does not know is an error, never skipped. On CPU this is 2-3x faster per fit than vmap over functional_call, whose convolutions and
poolings fall back to slow NCHW kernels. Each tensor is a leaf whose slice k belongs to fit k alone:
Adam, being elementwise, treats every fit exactly as if it were alone.

Two levers are parameters of `Stacked`, their defaults the pipeline's way: `layers` (module type -> compiler, LAYERS)
and `image_format` (channels-last). benchmarks/bench.py measures the alternatives (`--levers`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .models import CompareDigits, Dropout, compare_digits, dropout_mask

def _leaf(t, device):
    return t.to(device).contiguous().requires_grad_()


def _back(mods, pairs):
    """A function that copies the stacked tensors back into the modules: pairs of (name, per-module view)."""
    def write():
        with torch.no_grad():
            for name, stacked in pairs:
                for m, t in zip(mods, stacked()):
                    getattr(m, name).copy_(t)
    return write


def grouped_conv(mods, device):
    """Conv2d: one grouped convolution over the M stacked groups (public: a caller's own convolution, passed in
    `layers`, can build on its stacked parameters and write-back)."""
    first = mods[0]
    w = _leaf(torch.stack([m.weight.detach() for m in mods]).flatten(0, 1), device)  # (M*out, in, kh, kw)
    b = _leaf(torch.stack([m.bias.detach() for m in mods]).flatten(), device) if first.bias is not None else None
    if first.groups != 1 or first.padding_mode != "zeros":
        raise TypeError(f"pairs.stacked supports Conv2d with groups=1 and zero padding, not {first}")
    back = _back(mods, [("weight", lambda: w.view(len(mods), *first.weight.shape))]
                 + ([("bias", lambda: b.view(len(mods), -1))] if b is not None else []))
    return "image", lambda h, M, train: F.conv2d(h, w, b, first.stride, first.padding, first.dilation,
                                                 groups=M), [w, b], back


def _linear(mods, device):
    w = _leaf(torch.stack([m.weight.detach() for m in mods]).transpose(1, 2), device)  # (M, in, out)
    b = _leaf(torch.stack([m.bias.detach() for m in mods])[:, None, :], device)  # (M, 1, out)
    back = _back(mods, [("weight", lambda: w.transpose(1, 2)), ("bias", lambda: b[:, 0])])
    return "rows", lambda h, M, train: torch.baddbmm(b, h, w), [w, b], back


def _pool(mods, device):
    p = mods[0]
    return "image", lambda h, M, train: F.max_pool2d(h, p.kernel_size, p.stride, p.padding, p.dilation,
                                                     p.ceil_mode), [], None


def _relu(mods, device):
    """In place: no layer before a ReLU here needs its output for its gradient (autograd would raise if one did);
    the same bits, 3% faster for the extended study's ConvNet (its large activations are written once less)."""
    return None, lambda h, M, train: h.relu_(), [], None


def _dropout(mods, device):
    """Each stacked group's mask from its own module's generator, as the plain forward draws it."""
    def op(h, M, train):
        if not train:
            return h
        return h * torch.stack([dropout_mask(h.shape[1:], m.p, m.generator, h.device) for m in mods])
    return "rows", op, [], None


def _batch_norm(mods, device):
    """BatchNorm over the stacked channels: (G, M*C, H, W) as it is, (M, G, F) as (G, M*F)."""
    first, image = mods[0], isinstance(mods[0], nn.BatchNorm2d)
    if first.momentum is None or not first.track_running_stats:
        raise TypeError(f"pairs.stacked supports BatchNorm with a momentum and running statistics, not {first}")
    w, b = (_leaf(torch.stack([getattr(m, n).detach() for m in mods]).flatten(), device) for n in ("weight", "bias"))
    rm, rv = (torch.stack([getattr(m, n) for m in mods]).flatten().to(device).contiguous()
              for n in ("running_mean", "running_var"))

    def op(h, M, train):
        if image:
            return F.batch_norm(h, rm, rv, w, b, train, first.momentum, first.eps)
        G = h.shape[1]
        out = F.batch_norm(h.transpose(0, 1).reshape(G, -1), rm, rv, w, b, train, first.momentum, first.eps)
        return out.reshape(G, M, -1).transpose(0, 1)
    back = _back(mods, [(n, lambda t=t: t.view(len(mods), -1)) for n, t in
                        (("weight", w), ("bias", b), ("running_mean", rm), ("running_var", rv))])
    return "image" if image else "rows", op, [w, b], back


def _compare(mods, device):
    return "rows", lambda h, M, train: compare_digits(h), [], None


def _flatten(mods, device):
    if (mods[0].start_dim, mods[0].end_dim) != (1, -1):
        raise TypeError(f"pairs.stacked supports Flatten() over all but the batch dimension, not {mods[0]}")
    return "flatten", None, [], None


# module type -> compiler: (layout it needs, op(h, M, train), its stacked parameters, write-back or None)
LAYERS = {nn.Conv2d: grouped_conv, nn.Linear: _linear, nn.MaxPool2d: _pool, nn.ReLU: _relu, nn.Flatten: _flatten,
          nn.BatchNorm2d: _batch_norm, nn.BatchNorm1d: _batch_norm, CompareDigits: _compare, Dropout: _dropout}


def compile_stack(seqs, where, device, layers=LAYERS):
    """The layers of equal nn.Sequentials `seqs` (one per stacked group) as a list of (layout, op), their
    stacked parameters and the functions that write them back into the modules; `layers`: module type -> compiler."""
    ops, params, backs = [], [], []
    for i, mod in enumerate(seqs[0]):
        make = layers.get(type(mod))
        if make is None:
            raise TypeError(f"pairs.stacked cannot stack layer {i} of the {where} ({type(mod).__name__}); "
                            f"supported: {', '.join(t.__name__ for t in layers)}. Add it to pairs.stacked.LAYERS.")
        layout, op, ps, back = make([s[i] for s in seqs], device)
        ops.append((layout, op))
        params += [p for p in ps if p is not None]
        backs += [back] if back else []
    return ops, params, backs


def run_stack(ops, h, M, train=True, image_format=torch.channels_last):
    """h: (M, G, ...) per group -> (M, G, features). Image layers run on (G, M*C, H, W) in `image_format`."""
    image = False
    for layout, op in ops:
        if layout == "image" and not image:  # (M, G, H, W): M groups of G one-channel images
            h, image = h.transpose(0, 1).contiguous(memory_format=image_format), True
        if layout == "rows" and image:
            raise TypeError("pairs.stacked: a layer on flat features follows an image layer without a Flatten")
        if layout == "flatten":  # to (M, G, C*H*W) in PyTorch's (C, H, W) order
            h = h.reshape(h.shape[0], M, -1).transpose(0, 1) if image else h.reshape(M, h.shape[1], -1)
            image = False
        else:
            h = op(h, M, train)
    return h


class Stacked:
    """k models of one variant as stacked tensors. Levers (the defaults are the pipeline's way): `layers`, module
    type -> compiler; `image_format`, the image layers' layout (NCHW: 1.2-1.5x slower on a 2-core Xeon, bench
    --levers)."""

    def __init__(self, models, device, layers=LAYERS, image_format=torch.channels_last):
        m0 = models[0]
        self.k, self.shared = len(models), m0.branch1 is m0.branch2
        # per fit: its branches in image order (one when shared); M = k x branches
        branches = [b for m in models for b in ([m.branch1] if self.shared else [m.branch1, m.branch2])]
        self.branch, branch_params, branch_backs = compile_stack(branches, "digit branch", device, layers)
        self.head, head_params, head_backs = compile_stack([m.head for m in models], "comparison head", device, layers)
        self._params, self._backs, self.models = branch_params + head_params, branch_backs + head_backs, models
        self.image_format = image_format

    def parameters(self):
        return self._params

    def unstack(self):
        """The k models, holding the stacked (trained) weights and batch-norm statistics, in eval mode."""
        for write in self._backs:
            write()
        return [m.eval() for m in self.models]

    def forward(self, x, train=True):
        """x: (k, B, 2, 14, 14) -> pair logits (k, B, 2), digit logits (k, B, 2, 10); train: batch statistics."""
        k, B = x.shape[:2]
        per = 1 if self.shared else 2
        # (k, B, 2, ...) -> groups M = k*per, each with G = B*2/per images: (M, G, 14, 14)
        h = x.permute(0, 2, 1, 3, 4).reshape(k * per, B * 2 // per, *x.shape[3:])
        digits = run_stack(self.branch, h, k * per, train, self.image_format)
        digits = digits.reshape(k, 2, B, -1).transpose(1, 2)  # (k, B, 2, 10)
        return run_stack(self.head, digits.reshape(k, B, -1), k, train), digits

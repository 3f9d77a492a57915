"""Training and scoring, one model at a time (`fit`) or many fits as one stacked computation (`fit_many`).

Adam (lr 1e-3), cross-entropy on the pair logits plus, for AL variants, `aux_weight` times the
cross-entropy of each branch's digit logits. Mini-batches are reshuffled every epoch from the fit's own
generator; initial weights come from the fit's own seed. A fit is trained for max(score_at) epochs and
scored (train error, eval error) after each epoch count in score_at: without a schedule, a 25-epoch fit
is exactly the first 25 epochs of a 50-epoch fit with the same seed.

Options beyond the study (`Training`; the defaults are the study's): AdamW weight decay; a cosine or
one-cycle learning-rate schedule over all steps; augmentation of the training digits every epoch from
the fit's own generator: random shifts of up to `shift` pixels, and re-pairing (the training digits
drawn into new pairs whose targets come from their digit labels: it uses the labels, as AL does); the
model options of pairs.models (batch norm, a larger branch, the computed comparison head).

`fit_many` stacks the parameters of K fits (pairs.stacked: grouped convolutions, batched matmuls) in
blocks sized to stay in cache, and trains them with one Adam over the stacked tensors. Adam is
elementwise and each fit's loss reaches only its own parameters, so every fit gets exactly what it would get alone, and a fit that
diverges leaves the others untouched.
"""
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import derive_seed
from .machine import resolve_device
from .models import GLOBAL_RNG, Dropout, PairsClassifier, build, param_count, parse
from .stacked import Stacked


@dataclass(frozen=True)
class FitData:
    """One fit's training set and the set it is scored on (a validation fold or the test pairs)."""
    train_input: torch.Tensor
    train_target: torch.Tensor
    train_classes: torch.Tensor
    eval_input: torch.Tensor
    eval_target: torch.Tensor


@dataclass
class FitResult:
    """Per-epoch history and scores of one fit; errors are fractions of misclassified pairs."""
    train_loss: list
    main_loss: list
    aux_loss: list
    epoch_seconds: list  # wall time per epoch; for stacked fits, the group's time divided by the fits
    train_error: dict = field(default_factory=dict)  # epoch count -> error
    eval_error: dict = field(default_factory=dict)
    param_count: int = 0
    model: object = None  # the trained fit as a pairs.models.PairsClassifier, when asked for

    @property
    def s_per_epoch(self):
        return sum(self.epoch_seconds) / len(self.epoch_seconds)


def init_model(variant, seed, **options):
    """The variant's model with default initialisation drawn from `seed`, leaving the global RNG alone;
    each dropout layer draws its masks from a generator of its own, also derived from `seed`."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # (see pairs.models.GLOBAL_RNG)
        torch.manual_seed(derive_seed(seed, "init"))
        model = build(variant, **options)
    for i, m in enumerate(m for m in model.modules() if isinstance(m, Dropout)):
        m.generator = torch.Generator().manual_seed(derive_seed(seed, "dropout", i))
    return model


def member_seeds(cfg, seed):
    """The seeds of a fit's models: the fit's own (so ensemble = 1 is the fit as it was), then one per member."""
    return [seed] + [derive_seed(seed, "member", j) for j in range(1, cfg.ensemble)]


def predict(logits):
    """Pair predictions from the logits of a fit's members (m x n x 2): argmax, or of the mean probability."""
    return logits[0].argmax(-1) if len(logits) == 1 else logits.softmax(-1).mean(0).argmax(-1)


def _prepare(data, normalize):
    """Inputs as float32, standardised with the training set's own mean and std when asked; a function that
    standardises augmented training inputs the same way; and that (mean, std)."""
    x, ex = data.train_input.float(), data.eval_input.float()
    if not normalize:
        return x, ex, lambda t: t, (0.0, 1.0)
    mu, sd = x.mean(), x.std()
    return (x - mu) / sd, (ex - mu) / sd, lambda t: (t - mu) / sd, (mu.item(), sd.item())


def shift_digits(x, shift, g):
    """Each 14x14 digit of x (n, 2, 14, 14) moved by its own (dy, dx) in -shift..shift, zeros filling in."""
    n, side = x.shape[0], x.shape[-1]
    d = torch.randint(-shift, shift + 1, (2, n, 2, 1), generator=g)
    rows, cols = torch.arange(side) + shift - d[0], torch.arange(side) + shift - d[1]  # (n, 2, side)
    padded = F.pad(x, (shift,) * 4)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(2)[None, :, None, None],
                  rows[..., :, None], cols[..., None, :]]


def augment(cfg, x, target, classes, g):
    """One epoch's training pairs: re-paired (targets from the digit classes) and shifted, as cfg asks."""
    if cfg.re_pair:
        order = torch.randperm(classes.numel(), generator=g)
        x = x.flatten(0, 1)[order].view_as(x)
        classes = classes.flatten()[order].view_as(classes)
        target = (classes[:, 0] <= classes[:, 1]).long()
    if cfg.shift:
        x = shift_digits(x, cfg.shift, g)
    return x, target, classes


def optimizer(cfg, params, fused=None):
    if cfg.weight_decay:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=cfg.lr, fused=fused)


def set_lr(opt, cfg, step, steps):
    """The schedule's learning rate at `step` of `steps` (constant: untouched). Hand-written, not LambdaLR: LambdaLR
    sets lr * factor(step), and for one-cycle that product rounds differently from this formula at 41% of steps
    (measured over 200 random lrs): the extended study's published search trained one-cycle fits with this one."""
    if cfg.schedule == "constant":
        return
    t = step / steps
    if cfg.schedule == "cosine":
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    else:  # one-cycle: 30% linear warm-up from lr/25, then cosine down to lr/1e4
        lr = (cfg.lr / 25 + (cfg.lr - cfg.lr / 25) * t / 0.3 if t < 0.3 else
              cfg.lr / 1e4 + (cfg.lr - cfg.lr / 1e4) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7)))
    for group in opt.param_groups:
        group["lr"] = lr


def autocast(cfg, device):
    """bf16 autocast where the config asks for it (matmuls and convolutions in bf16, losses in float32); else
    nothing changes."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16")


def _losses(cfg, pair_logits, digit_logits, target, classes):
    """(total, main, aux) per fit: mean cross-entropies over a batch, for one fit (target B) or stacked (K x B)."""
    main = F.cross_entropy(pair_logits.reshape(-1, 2), target.flatten(), reduction="none").view(target.shape)
    aux = F.cross_entropy(digit_logits.reshape(-1, 10), classes.flatten(), reduction="none")
    main, aux = main.mean(-1), aux.view(*target.shape[:-1], -1).mean(-1)
    weight = cfg.aux_weight if parse(cfg.variant)[2] else 0.0
    return main + weight * aux, main, aux


def _score_at(cfg, score_at):
    score_at = sorted(set(score_at or (cfg.epochs,)))
    if score_at[0] < 1:
        raise ValueError(f"epoch counts to score must be positive: {score_at}")
    return score_at


def fit(cfg, data, seed, score_at=None, device="cpu"):
    """Train one fit the plain way (nn.Module + torch.optim, an ensemble's models one after another): the
    reference for `fit_many`. The result's `model` is the fit as a PairsClassifier."""
    device = resolve_device(device)
    score_at = _score_at(cfg, score_at)
    runs = [_fit_model(cfg, data, s, score_at, device) for s in member_seeds(cfg, seed)]
    history = torch.stack([r[0] for r in runs]).mean(0)  # epochs x (total, main, aux), mean over members
    models = [r[3] for r in runs]
    result = FitResult(*history.T.tolist(), [sum(t) for t in zip(*(r[1] for r in runs))],
                       param_count=sum(param_count(m) for m in models))
    y, ey = data.train_target.to(device), data.eval_target.to(device)
    for e in score_at:
        result.train_error[e] = (predict(torch.stack([r[2][e][0] for r in runs])) != y).float().mean().item()
        result.eval_error[e] = (predict(torch.stack([r[2][e][1] for r in runs])) != ey).float().mean().item()
    result.model = PairsClassifier([m.cpu() for m in models], *_prepare(data, cfg.normalize)[3]).eval()
    return result


def _fit_model(cfg, data, seed, score_at, device):
    """One model: (loss history epochs x 3, seconds per epoch, {epoch count: (train, eval) pair logits}, model)."""
    model = init_model(cfg.variant, seed, **cfg.model_options()).to(device)
    opt = optimizer(cfg, model.parameters())
    x, ex, norm, _ = _prepare(data, cfg.normalize)
    x, ex = x.to(device), ex.to(device)
    y, c = data.train_target.to(device), data.train_classes.to(device)
    g = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
    aug = torch.Generator().manual_seed(derive_seed(seed, "augment"))
    n = x.shape[0]
    steps = -(-n // cfg.batch_size)
    history, seconds, logits = torch.zeros(score_at[-1], 3, device=device), [], {}
    for epoch in range(score_at[-1]):
        start = time.perf_counter()
        model.train()
        xe, ye, ce = x, y, c
        if cfg.augments:
            xe, ye, ce = augment(cfg, data.train_input.float(), data.train_target, data.train_classes, aug)
            xe, ye, ce = norm(xe).to(device), ye.to(device), ce.to(device)
        for i, idx in enumerate(torch.randperm(n, generator=g).to(device).split(cfg.batch_size)):
            set_lr(opt, cfg, epoch * steps + i, cfg.epochs * steps)
            with autocast(cfg, device):
                loss = _losses(cfg, *model(xe[idx]), ye[idx], ce[idx])
            opt.zero_grad()
            loss[0].backward()
            opt.step()
            history[epoch] += torch.stack(loss).detach() * len(idx) / n
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        if epoch + 1 in score_at:
            model.eval()
            with torch.no_grad(), autocast(cfg, device):
                logits[epoch + 1] = (model(x)[0].float(), model(ex)[0].float())
    return history, seconds, logits, model


def default_block(variant, batch_size, device):
    """Fits per stacked block: on CPU, ConvNet blocks of about 400 images per step keep the activations in
    cache; a GPU takes every fit of a group at once."""
    if device.type == "cuda":
        return 1 << 30
    return max(1, 400 // (2 * batch_size)) if variant.startswith("ConvNet") else 64


def fit_many(cfg, datas, seeds, score_at=None, device="cpu", block=None, on_epoch=None, keep=False, stack=Stacked):
    """Train len(seeds) fits of one config as one stacked computation; fit k gets datas[k] and seeds[k]
    (an ensemble fit: its members, each with datas[k], stacked beside each other).

    Models are stacked in blocks of `block` (one forward/backward each) and share one Adam step.
    `on_epoch(epoch, epochs)`, if given, is called after every epoch (progress reporting; it may raise to stop).
    keep: each result's `model` is the trained fit as a PairsClassifier (on the CPU).
    stack(models, device): a block's stacked computation (Stacked; the benchmark passes Stacked with its levers)."""
    if len(datas) != len(seeds) or not seeds:
        raise ValueError("fit_many needs one FitData per seed, and at least one")
    device = resolve_device(device)
    score_at = _score_at(cfg, score_at)
    block = block or default_block(cfg.variant, cfg.batch_size, device)
    fits, m = len(seeds), cfg.ensemble  # from here on, each member is a stacked model of its own
    datas, seeds = [d for d in datas for _ in range(m)], [s for seed in seeds for s in member_seeds(cfg, seed)]
    models = [init_model(cfg.variant, s, **cfg.model_options()) for s in seeds]
    K = len(models)
    slices = [slice(j, min(j + block, K)) for j in range(0, K, block)]
    nets = [stack(models[sl], device) for sl in slices]
    opt = optimizer(cfg, [p for net in nets for p in net.parameters()], fused=True)  # one kernel

    prepared = [_prepare(d, cfg.normalize) for d in datas]
    x, ex, y, c, ey = _stack(datas, prepared, device)
    n = x.shape[1]
    gens = [torch.Generator().manual_seed(derive_seed(s, "shuffle")) for s in seeds]
    augs = [torch.Generator().manual_seed(derive_seed(s, "augment")) for s in seeds]
    steps = -(-n // cfg.batch_size)
    block_rows = [torch.arange(sl.start, sl.stop, device=device)[:, None] for sl in slices]  # gather indices

    history = torch.zeros(score_at[-1], K, 3, device=device)
    scores, seconds = {}, []
    for epoch in range(score_at[-1]):
        start = time.perf_counter()
        xe, ye, ce = x, y, c
        if cfg.augments:  # each fit's own augmented pairs, drawn as `fit` draws them
            got = [augment(cfg, d.train_input.float(), d.train_target, d.train_classes, a) for d, a in zip(datas, augs)]
            xe = torch.stack([p[2](t[0]) for p, t in zip(prepared, got)]).to(device)
            ye, ce = (torch.stack([t[i] for t in got]).to(device) for i in (1, 2))
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        for i, idx in enumerate(perms.split(cfg.batch_size, dim=1)):
            set_lr(opt, cfg, epoch * steps + i, cfg.epochs * steps)
            opt.zero_grad()
            for net, sl, rows in zip(nets, slices, block_rows):
                with autocast(cfg, device):
                    losses = torch.stack(_losses(cfg, *net.forward(xe[rows, idx[sl]]), ye[rows, idx[sl]],
                                                 ce[rows, idx[sl]]), 1)  # k x (total, main, aux)
                losses[:, 0].sum().backward()
                history[epoch, sl] += losses.detach() * idx.shape[1] / n
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append((time.perf_counter() - start) / fits)
        if epoch + 1 in score_at:
            with torch.no_grad(), autocast(cfg, device):
                scores[epoch + 1] = (_errors(nets, slices, x, y, m), _errors(nets, slices, ex, ey, m))
        if on_epoch:
            on_epoch(epoch + 1, score_at[-1])
    history = history.unflatten(1, (fits, m)).mean(2).permute(1, 2, 0).tolist()  # fits x 3 x epochs
    count = param_count(models[0]) * m
    results = [FitResult(*history[k], list(seconds), {e: s[0][k].item() for e, s in scores.items()},
                         {e: s[1][k].item() for e, s in scores.items()}, count) for k in range(fits)]
    if keep:
        trained = [model.cpu() for net in nets for model in net.unstack()]
        for k, r in enumerate(results):
            r.model = PairsClassifier(trained[k * m:(k + 1) * m], *prepared[k * m][3]).eval()
    return results


def _stack(datas, prepared, device):
    """The fits' inputs (prepared), targets and classes, stacked: fits x pairs x ..."""
    x = torch.stack([p[0] for p in prepared]).to(device)
    ex = torch.stack([p[1] for p in prepared]).to(device)
    y, c, ey = (torch.stack([getattr(d, a) for d in datas]).to(device)
                for a in ("train_target", "train_classes", "eval_target"))
    return x, ex, y, c, ey


def _errors(nets, slices, inputs, targets, m):
    """Each fit's error on its inputs (its members' predictions combined), from the stacked nets in eval mode."""
    logits = []
    for net, sl in zip(nets, slices):
        span = max(1, (50000 if inputs.device.type == "cuda" else 20000) // net.k)  # inputs per forward: a bound on activations
        logits.append(torch.cat([net.forward(inputs[sl, i:i + span], train=False)[0]
                                 for i in range(0, inputs.shape[1], span)], 1))
    logits = torch.cat(logits).float().unflatten(0, (-1, m))  # fits x members x n x 2 (bf16 autocast: as float32)
    return torch.stack([predict(f) for f in logits]).ne(targets[::m]).float().mean(1)

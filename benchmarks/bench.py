"""python benchmarks/bench.py [--device cpu|cuda] [--out BENCHMARKS.md]: how fast the study trains here.

It measures the installed `pairs` and `flows` from outside them, as nanoGPT's bench.py sits beside its model.

Measured in one run on one machine: (1) s/epoch of one model alone per variant (the study's Table 2
column), (2) per-fit s/epoch when a search cell's folds x rounds or a variant's final rounds train
stacked, (3) achieved GFLOP/s beside a large float32 matmul (the practical ceiling), (4) the quick
profile's wall time (measured) and the full profile's (extrapolated from the measured groups), (5) the
share of MLflow logging and Prefect overhead, (6) a ConvNet and an MLP search cell of the full protocol
(cut short in epochs) in this process against `--workers 2` (prefect_dask, one thread each), and from the
measured task durations the simulated wall time of the full and the extended study on 1-64 workers. Only
torch is needed for (1)-(3); (4)-(6) need the pipeline's packages and run on the CPU. `--levers` trains the same
search fits with each speed lever: `pairs.stacked.Stacked` built another way (its `layers`, `image_format`, a
compiled forward), passed to `fit_many` as its `stack`.

Timing: a fit's s/epoch is pairs' own `epoch_seconds` (the number a fit record holds; the median, the first epoch
left out); a whole call that runs once (a pipeline process, a Dask flow, a batch of MLflow writes) is timed by
time.perf_counter, since torch.utils.benchmark's Timer runs a statement 2-3 times (it warms up first) and a second
log of the same fits writes nothing. The float32 matmul ceiling is pairs.machine's.
"""
import argparse
import collections
import functools
import heapq
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pairs.groups import final_groups, fit_counts, fit_data, search_groups, split, train_group
from pairs.protocol import Context, FitRecord, Protocol
from pairs.report import load_records
from pairs import published
from pairs.config import FitConfig
from pairs.data import data_root, pair_sets
from pairs.machine import describe_machine, matmul_gflops, resolve_device
from pairs.models import VARIANTS, architecture, forward_flops
from pairs.protocol import PROFILES
from pairs.selection import choose, final_table, search_table
from pairs.stacked import LAYERS, Stacked, grouped_conv
from pairs.train import FitData, fit, fit_many

FULL = PROFILES["full"]
N_TRAIN = 1000 - 1000 // FULL.folds  # a search fit's training pairs
PAPER = published.table("table2").set_index("variant")
PAPER_FINAL = {architecture(v): (int(r.batch_size), int(r.epochs)) for v, r in PAPER.iterrows()}  # its final (batch, epochs)


def train_flops(cfg, pairs_per_epoch):
    """Training FLOPs of one fit's epoch: forward + backward ~ 3 forwards of each pair, by each of its models."""
    return 3 * forward_flops(cfg.variant, **cfg.model_options()) * cfg.ensemble * pairs_per_epoch


def epoch_time(result):
    """A fit's s/epoch as pairs records it (`epoch_seconds`, per fit when stacked): the median, the first epoch
    left out (it warms up)."""
    return statistics.median(result.epoch_seconds[1:] or result.epoch_seconds)


@functools.cache
def study_pairs():
    return pair_sets(1000, seed=2021)


def data(n):
    p = study_pairs()
    return FitData(p.train_input[:n], p.train_target[:n], p.train_classes[:n], p.test_input, p.test_target)


def measure(device, epochs):
    rows, k = {}, FULL.search_rounds * FULL.folds
    for variant in VARIANTS:  # (1) alone, at the study's batch size
        b = PAPER_FINAL[architecture(variant)][0]
        rows[("alone", variant, b)] = (epoch_time(fit(FitConfig(variant, b, epochs), data(1000), 1, device=device)),
                                       1000, 1)
    for arch in ("ConvNet", "MLP"):  # alone at every grid batch size, for the one-at-a-time baseline
        for b in FULL.batch_sizes:
            cfg = FitConfig(arch, b, epochs)
            rows[("alone, search", arch, b)] = (epoch_time(fit(cfg, data(N_TRAIN), 1, device=device)), N_TRAIN, 1)
            r = fit_many(cfg, [data(N_TRAIN)] * k, list(range(k)), device=device)  # (2) a search cell, stacked
            rows[("search", arch, b)] = (epoch_time(r[0]), N_TRAIN, k)
    for variant in VARIANTS:  # (2) a variant's final rounds, stacked
        b, n = PAPER_FINAL[architecture(variant)][0], FULL.final_rounds
        r = fit_many(FitConfig(variant, b, epochs), [data(1000)] * n, list(range(n)), device=device)
        rows[("final", variant, b)] = (epoch_time(r[0]), 1000, n)
    return rows


def extrapolate(rows):
    """Training seconds of the full protocol: stacked (as the pipeline runs it) and one model at a time,
    a fresh fit for every epoch count (as the study ran it)."""
    k, grid, batches = FULL.search_rounds * FULL.folds, FULL.epoch_grid, FULL.batch_sizes
    stacked = sum(k * max(grid) * rows[("search", a, b)][0] for a in ("ConvNet", "MLP") for b in batches)
    alone = sum(k * e * rows[("alone, search", a, b)][0] for a in ("ConvNet", "MLP") for b in batches for e in grid)
    for v in VARIANTS:
        b, e = PAPER_FINAL[architecture(v)]
        stacked += FULL.final_rounds * e * rows[("final", v, b)][0]
        alone += FULL.final_rounds * e * rows[("alone", v, b)][0]
    return stacked, alone


def tracking_cost(n_fits=100, epochs=50):
    """Seconds per fit of writing one fit's run (params, 3 x epochs losses, scores) to a fresh SQLite store."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    from flows.tracking import Tracker
    tracker = Tracker("bench", run_name="bench")
    fits = search_groups(Protocol(search_rounds=n_fits // 10, epoch_grid=(epochs // 2, epochs)))[0].fits
    recs = [FitRecord(**vars(f), train_loss=(0.5,) * epochs, main_loss=(0.4,) * epochs, aux_loss=(0.1,) * epochs,
                        scores=((epochs // 2, 0.01, 0.2), (epochs, 0.0, 0.19)), param_count=144684, s_per_epoch=0.1)
            for f in fits]
    parent = tracker.child("search")
    t = time.perf_counter()
    tracker.log_fits(recs, parent, Context("bench", "bench", "cpu"))
    return (time.perf_counter() - t) / n_fits


def quick_profile_wall():
    """Wall time of `python -m flows --profile quick` in a fresh store and cache, as a user starts it."""
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=f"{tmp}/results")
    env.pop("MLFLOW_RUN_ID", None)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows", "--profile", "quick"], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return time.perf_counter() - t


def prefect_overhead(n_tasks):
    """Seconds Prefect adds to a flow of n_tasks cached tasks that do nothing (temporary server included)."""
    code = f"""
import time, flows
t = time.perf_counter()
from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def noop(i):
    return i
@flow
def f():
    return [noop(i) for i in range({n_tasks})]
f()
print(time.perf_counter() - t)
"""
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, PREFECT_RESULTS_LOCAL_STORAGE_PATH=tmp)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


STACKS = (1, 2, 5, 10, 20)  # fits per part whose one-thread speed is measured
CHUNKS = (None, 20, 10, 5, 2, 1)  # --chunk values simulated (None: groups whole)
WORKERS = (1, 2, 4, 8, 16, 64)


def stack_seconds(epochs=2):
    """One-thread seconds per fit-epoch of a part of s fits (search fits of the full protocol: 900 training pairs),
    per (architecture, batch size) of the full grid and s in STACKS; the last epoch's (the first warms up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {(a, b, k): epoch_time(fit_many(FitConfig(a, b, epochs), [data(N_TRAIN)] * k, list(range(k)))[0])
                for a in FULL.architectures for b in FULL.batch_sizes for k in STACKS}
    finally:
        torch.set_num_threads(threads)


def per_fit(stacks, arch, batch, k):
    """Seconds per fit-epoch in a part of k fits, at the nearest measured batch size: interpolated between the
    measured stacks around k (the largest beyond them)."""
    b = min({b for a, b, _ in stacks if a == arch}, key=lambda x: abs(x - batch))
    if k >= STACKS[-1]:
        return stacks[(arch, b, STACKS[-1])]
    lo, hi = max(s for s in STACKS if s <= k), min(s for s in STACKS if s >= k)
    t = 0 if hi == lo else (k - lo) / (hi - lo)
    return (1 - t) * stacks[(arch, b, lo)] + t * stacks[(arch, b, hi)]


def dask_comparison(epochs):
    """(6) The full protocol's ConvNet and MLP search cells at batch 100, cut to `epochs` epochs: trained here as
    whole cells and as one-round parts (10 fits) with its threads, the parts on one thread, and every part through the
    pipeline's `train` task on a local prefect_dask cluster of 1 and of 2 one-thread workers."""
    from prefect import flow

    from flows.runner import running
    from flows.tasks import train
    from flows.settings import Run
    cut = FULL.with_(batch_sizes=(100,), epoch_grid=(epochs,))
    cells = search_groups(cut)
    parts = split(cells, cut.folds)
    for g in cells[:1]:  # load the data once, outside the timings
        fit_data(g.fits[0])
    def timed(groups, threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        t = time.perf_counter()
        for g in groups:
            train_group(g)
        torch.set_num_threads(before)
        return time.perf_counter() - t
    threads = torch.get_num_threads()
    in_process, parts_here, one_thread = timed(cells, threads), timed(parts, threads), timed(parts, 1)

    @flow
    def on_workers(n):
        context = Context("bench", str(time.time()), "cpu")  # keys of their own: nothing comes from the cache

        def submit(runner, groups):
            return [runner.submit(train, {"group": g, "context": context, "root": str(data_root()),
                                          "device": "cpu", "threads": 1}) for g in groups]
        t = time.perf_counter()
        with running(Run(workers=n), []) as runner:  # workers start, import torch, load the data
            [f.result() for f in submit(runner, split(search_groups(cut.with_(epoch_grid=(1,))), 1)[:n])]
            started = time.perf_counter() - t
            t = time.perf_counter()
            [f.result() for f in submit(runner, parts)]
            return started, time.perf_counter() - t
    _, on_one = on_workers(1)
    started, on_two = on_workers(2)
    return {"in_process": in_process, "one_worker": on_one, "two_workers": on_two, "cluster_start": started,
            "parts": len(parts), "one_thread_work": one_thread, "parts_here": parts_here, "epochs": epochs,
            "task_overhead": max(0.0, (on_one - one_thread) / len(parts))}  # per task, beyond its training


def makespan(durations, workers):
    """Longest-processing-time list scheduling: each part to the worker that frees up first."""
    free = [0.0] * workers
    for d in sorted(durations, reverse=True):
        free[free.index(min(free))] += d
    return max(free)


def asked(trials, slots, workers, overhead):
    """Wall time of an Optuna search keeping `slots` trials per architecture in flight, the next asked as soon as
    one ends (flows.search): `trials` {architecture: [[part seconds, ...] per trial, in ask order]}; parts go to
    free workers in the order they were asked."""
    now, queue, running, left, asks = 0.0, collections.deque(), [], {}, {a: 0 for a in trials}

    def ask(a):
        i = asks[a]
        asks[a] += 1
        left[(a, i)] = len(trials[a][i])
        queue.extend(((a, i), d) for d in trials[a][i])
    for a in trials:
        for _ in range(min(slots, len(trials[a]))):
            ask(a)
    idle = workers
    while queue or running:
        while idle and queue:
            t, d = queue.popleft()
            heapq.heappush(running, (now + d + overhead, t))
            idle -= 1
        now, t = heapq.heappop(running)
        idle += 1
        left[t] -= 1
        if not left[t] and asks[t[0]] < len(trials[t[0]]):
            ask(t[0])
    return now


def scaling(m, stacks, extended_records=None):
    """Simulated wall time (seconds) on each worker count and --chunk, for the full study (grid search, then the
    final rounds) and, from its recorded fits, the extended study (the Optuna search as flows.search asks it, then
    the final rounds). Part seconds: one thread, from `stacks` at the part's size; the extended study's recorded
    seconds (2 threads, in the stacks it ran in) scaled by the measured 1-thread/2-thread ratio and the stack-size
    ratio of its architecture's plain model."""
    extra = m["task_overhead"]
    ratio = m["one_thread_work"] / m["parts_here"]  # one thread's seconds per second of this process's threads

    def parts(n, chunk, each):  # `each(k)`: seconds of one fit in a part of k
        k = min(chunk or n, n)
        return [each(min(k, n - i)) * min(k, n - i) for i in range(0, n, k)]

    def full_stages(chunk):
        search = [d for a in FULL.architectures for b in FULL.batch_sizes for d in parts(
            FULL.search_rounds * FULL.folds, chunk, lambda k, a=a, b=b: per_fit(stacks, a, b, k) * max(FULL.epoch_grid))]
        final = [d for v in VARIANTS for d in parts(FULL.final_rounds, chunk, lambda k, v=v: per_fit(
            stacks, architecture(v), PAPER_FINAL[architecture(v)][0], k) * PAPER_FINAL[architecture(v)][1])]
        return search, final

    out = {"full study": {c: {w: m["cluster_start"] + sum(makespan([d + extra for d in s], w) for s in full_stages(c))
                              for w in WORKERS} for c in CHUNKS}}
    longest = {"full study": {c: max(max(s) for s in full_stages(c)) for c in CHUNKS}}
    if extended_records:
        groups = {}
        for r in extended_records:
            groups.setdefault((r.stage, r.variant, r.config), []).append(r)

        def seconds(rs, chunk):  # one thread, in parts of `chunk` fits
            a, b, m_ = architecture(rs[0].variant), rs[0].config.batch_size, rs[0].config.ensemble
            ran = per_fit(stacks, a, b, len(rs) * m_)
            return parts(len(rs), chunk, lambda k: statistics.mean(r.s_per_epoch * r.config.epochs for r in rs)
                         * ratio * per_fit(stacks, a, b, k * m_) / ran)

        def extended(chunk, w):
            trials = {}
            for (stage, v, _), rs in groups.items():
                if stage == "search":
                    trials.setdefault(architecture(v), []).append([d + extra for d in seconds(rs, chunk)])
            final = [d + extra for (stage, *_), rs in groups.items() if stage == "final" for d in seconds(rs, chunk)]
            slots = max(4, -(-w // len(trials)))
            return m["cluster_start"] + asked(trials, slots, w, 0.0) + makespan(final, w)
        out["extended study"] = {c: {w: extended(c, w) for w in WORKERS} for c in CHUNKS}
        longest["extended study"] = {c: max(d for rs in groups.values() for d in seconds(rs, c)) for c in CHUNKS}
    return out, longest


def dask_lines(epochs):
    m, stacks = dask_comparison(epochs), stack_seconds()
    extended = Path(__file__).resolve().parent.parent / "docs" / "results" / "extended"
    records = [r for name in ("search_fits.json", "final_fits.json") if (extended / name).exists()
               for r in load_records(extended / name)]
    table, longest = scaling(m, stacks, records)
    chunk = lambda c: "whole groups" if c is None else f"`--chunk {c}`"
    lines = [SCALING[0], "## More machines: Dask workers (CPU, measured, then simulated)", "",
             f"- Machine: {describe_machine(torch.device('cpu'))}",
             f"- Command: `python benchmarks/bench.py --scaling` ({time.strftime('%Y-%m-%d')}); all numbers below from "
             "this one run.", "",
             f"The full protocol's ConvNet and MLP search cells at batch 100 (100 fits each, cut to {epochs} epochs), "
             f"in {m['parts']} parts of one round (10 fits):", "",
             f"- in this process, whole cells, {torch.get_num_threads()} threads: **{m['in_process']:.1f} s** (the "
             f"parts: {m['parts_here']:.1f} s; on one thread: {m['one_thread_work']:.1f} s)",
             f"- `--workers 2` (local prefect_dask cluster, one thread each): **{m['two_workers']:.1f} s** "
             f"(ratio {m['two_workers'] / m['in_process']:.2f} to this process)",
             f"- `--workers 1`: {m['one_worker']:.1f} s, so a task costs {m['task_overhead']:.2f} s beyond its "
             f"training; starting a cluster of 2 and a first task on each worker: {m['cluster_start']:.1f} s",
             "", "One thread's seconds per fit-epoch by fits per part (search fits, 900 training pairs):", "",
             "| architecture | batch | " + " | ".join(f"{k} fits" for k in STACKS) + " |", "|---|---|" + "---|" * len(STACKS)]
    for a, b in sorted({(a, b) for a, b, _ in stacks}):
        lines.append(f"| {a} | {b} | " + " | ".join(f"{stacks[(a, b, k)]:.3f}" for k in STACKS) + " |")
    lines += ["", "Simulated wall time (parts of one thread, from the table above; that cost per task and the cluster "
              "start added; the full study's search is one stage, the extended study's Optuna search keeps "
              "max(4, workers / 2) trials per architecture in flight and asks the next as one ends; the final "
              "rounds wait for the search):", "",
              "| study | parts | longest part | " + " | ".join(f"{w} worker{'s' * (w > 1)}" for w in WORKERS) + " |",
              "|---|---|---|" + "---|" * len(WORKERS)]
    for name, by_chunk in table.items():
        for c, walls in by_chunk.items():
            lines.append(f"| {name} | {chunk(c)} | {longest[name][c] / 60:.1f} min | " + " | ".join(
                f"{walls[w] / 60:.1f} min" for w in WORKERS) + " |")
    for name, by_chunk in table.items():
        for w in (16, 64):
            best = min(by_chunk, key=lambda c: by_chunk[c][w])
            lines.append(f"- {name} on {w} workers: best with {chunk(best)}, {by_chunk[best][w] / 60:.1f} min")
    return lines + [SCALING[1]]


LEVERS = ("<!-- levers: python benchmarks/bench.py --levers -->", "<!-- /levers -->")


def relu_not_in_place(mods, device):
    """ReLU writing a new tensor (the lever measured against the pipeline's in-place ReLU)."""
    return None, lambda h, M, train: h.relu(), [], None


def unfold_conv(mods, device):
    """A stacked Conv2d as unfold + one batched matmul per group (the lever measured against grouped convolution):
    grouped_conv's stacked parameters and write-back, another op."""
    layout, _, params, back = grouped_conv(mods, device)
    w, b = params
    first = mods[0]

    def op(h, M, train):
        G, _, H, W = h.shape
        cols = F.unfold(h, first.kernel_size, first.dilation, first.padding, first.stride)  # (G, M*Cin*k*k, L)
        L = cols.shape[-1]
        cols = cols.view(G, M, -1, L).permute(1, 0, 3, 2).reshape(M, G * L, -1)  # (M, G*L, Cin*k*k)
        out = torch.bmm(cols, w.view(M, first.out_channels, -1).transpose(1, 2))  # (M, G*L, Cout)
        if b is not None:
            out = out + b.view(M, 1, -1)
        Ho = (H + 2 * first.padding[0] - first.dilation[0] * (first.kernel_size[0] - 1) - 1) // first.stride[0] + 1
        return out.view(M, G, Ho, -1, first.out_channels).permute(1, 0, 4, 2, 3).reshape(
            G, M * first.out_channels, Ho, -1).contiguous(memory_format=torch.channels_last)  # the pipeline's layout
    return layout, op, params, back


def compiled(models, device, backend="inductor"):
    """A Stacked whose forward is torch.compile'd (static shapes)."""
    stack = Stacked(models, device)
    stack.forward = torch.compile(stack.forward, dynamic=False, backend=backend)
    return stack


# way -> (what builds each block, for fit_many's `stack`; the config's changes)
WAYS = {"the pipeline's way (grouped convolution, channels-last, float32, 2 threads)": (Stacked, {}),
        "ReLU not in place (before this commit)": (functools.partial(Stacked, layers=LAYERS | {
            nn.ReLU: relu_not_in_place}), {}),
        "NCHW layout instead of channels-last": (functools.partial(Stacked, image_format=torch.contiguous_format), {}),
        "convolution as unfold + batched matmul": (functools.partial(Stacked, layers=LAYERS | {
            nn.Conv2d: unfold_conv}), {}),
        "torch.compile of the stacked forward (inductor)": (compiled, {}),
        "bf16 autocast (precision = bfloat16)": (Stacked, {"precision": "bfloat16"})}
TWO = "two processes of one thread, half the fits each, at once"


def lever_time(cfg, k, epochs, stack=Stacked, threads=None):
    """Per-fit s/epoch (`epoch_time`) of k search fits trained stacked, each block built by `stack`."""
    torch.compiler.reset()  # a compiled forward starts afresh in every cell
    if threads:  # (in a process of its own)
        torch.set_num_threads(threads)
    return epoch_time(fit_many(replace(cfg, epochs=epochs), [data(N_TRAIN)] * k, list(range(k)), stack=stack)[0])


def lever_cells(k):
    """(name, FitConfig, fits) of the cells the levers are measured on: the study's models at a small and a large
    batch, and the extended study's selected ConvNet (large branch, batch norm, an ensemble of 3)."""
    chosen = json.loads((Path(__file__).resolve().parent.parent / "docs/results/extended/run.json").read_text())
    c = dict(chosen["selection"]["ConvNet"], ensemble=3)
    return [("ConvNet b100", FitConfig("ConvNet", 100, 1), k), ("ConvNet b25", FitConfig("ConvNet", 25, 1), k),
            ("MLP b25", FitConfig("MLP", 25, 1), k), ("MLP b100", FitConfig("MLP", 100, 1), k),
            ("extended ConvNet", FitConfig(c.pop("variant"), c.pop("batch_size"), 1, **{
                n: v for n, v in c.items() if n != "epochs"}), max(2, k // 5))]


def levers(ceiling, epochs=4, k=20):
    """Per-fit s/epoch of k stacked search fits (900 training pairs) as the pipeline trains them, and with each
    lever; ratios to the pipeline's way, all in this run. Returns the section's lines."""
    cells = lever_cells(k)
    rows = {(way, cell): lever_time(replace(cfg, **changes), n, epochs, stack)
            for way, (stack, changes) in WAYS.items() for cell, cfg, n in cells}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for cell, cfg, n in cells:  # both at once: the slower one's time for half the fits
            halves = [pool.submit(lever_time, cfg, n // 2, epochs, threads=1) for _ in range(2)]
            rows[(TWO, cell)] = max(h.result() for h in halves) / 2
    base = next(iter(WAYS))
    lines = [LEVERS[0], "## Levers (CPU, measured)", "",
             f"- Machine: {describe_machine(torch.device('cpu'))}; float32 matmul ceiling **{ceiling:.0f} GFLOP/s** "
             "in this run",
             f"- Command: `python benchmarks/bench.py --levers` ({time.strftime('%Y-%m-%d')}): search fits (900 training "
             f"pairs) trained stacked ({k} fits; the extended ConvNet: {cells[-1][2]} fits of 3 models), median of "
             f"epochs 2-{epochs}; per-fit s/epoch, its GFLOP/s (training FLOPs counted from the model) and its ratio to "
             "the pipeline's way in the same cell.", "",
             "| way | " + " | ".join(c for c, *_ in cells) + " |", "|---|" + "---|" * len(cells)]
    for way in [*WAYS, TWO]:
        text = []
        for cell, cfg, n in cells:
            t = rows[(way, cell)]
            g = train_flops(cfg, N_TRAIN) / t / 1e9
            text.append(f"{1000 * t:.1f} ms, {g:.0f} GFLOP/s ({100 * g / ceiling:.0f}%)" + (
                "" if way == base else f", {rows[(base, cell)] / t:.2f}x"))
        lines.append(f"| {way} | " + " | ".join(text) + " |")
    return lines + [LEVERS[1]]


PUBLISHED = ("docs/results", "docs/results/al_gap", "docs/results/extended", "docs/results/precision")
LIMITS = ("<!-- limits: python benchmarks/bench.py --limits -->", "<!-- /limits -->")
SCALING = ("<!-- scaling: python benchmarks/bench.py --scaling -->", "<!-- /scaling -->")


def limits(ceiling, machine, root=Path(__file__).resolve().parent.parent, folders=PUBLISHED):
    """Each published study's training FLOPs (counted from the model of every fit it holds, forward + backward),
    the time those take at this run's float32 matmul ceiling, the pipeline call's wall time (its run.json) and
    the share; a study run on another CPU model gets no share here (a ceiling is measured on its own model)."""
    from flows.report import records_in
    cpu = cpu_model(machine)
    lines = [LIMITS[0], "## The limit, per published study", "",
             f"Training FLOPs of every fit the study's folder holds (`FitRecord.train_flops`: 3 forward passes of "
             f"each training pair per epoch, counted by FlopCounterMode), at this run's ceiling of **{ceiling:.0f} "
             f"GFLOP/s** ({cpu}); the wall time is the whole pipeline call's, from the folder's run.json (as it ran: "
             "a machine shared with other work is slower).", "",
             "| study | fits | TFLOP | limit here | wall time (machine) | achieved GFLOP/s | share of the limit |",
             "|---|---|---|---|---|---|---|"]
    for folder in folders:
        paths = [records_in(root / folder, name) for name in ("search_fits.json", "final_fits.json")]
        records = [r for path in paths if path for r in load_records(path)]
        meta = json.loads((root / folder / "run.json").read_text())["meta"]
        flops, wall = sum(r.train_flops for r in records), float(meta["wall_time"].split()[0])
        theirs, own = cpu_model(meta["machine"]), meta.get("ceiling_gflops")
        share = (f"{100 * flops / own / 1e9 / wall:.0f}% (its own ceiling, {own:.0f} GFLOP/s)" if own else
                 f"{100 * flops / ceiling / 1e9 / wall:.0f}% (ceiling not recorded: this machine's)" if theirs == cpu
                 else f"— (run on {theirs}, ceiling not recorded)")
        lines.append(f"| {folder} | {len(records)} | {flops / 1e12:.1f} | {flops / ceiling / 1e9 / 60:.1f} min | "
                     f"{wall / 60:.1f} min ({theirs}) | {flops / wall / 1e9:.0f} | {share} |")
    return lines + ["", "A run records its machine's ceiling in run.json (`meta.ceiling_gflops`, measured as the call "
                    "ends); hosts of one CPU model name can differ twofold (Xeons of 191 and 395 GFLOP/s seen), so a "
                    "share against another host's ceiling is a bound, not a measurement.", LIMITS[1]]


def cpu_model(machine):
    """The CPU model in a describe_machine() text: '2 cores (AMD EPYC), torch ...' -> 'AMD EPYC'."""
    return machine.split(" cores (", 1)[1].split("), torch", 1)[0]


def write_section(out, lines):
    """A section (its first and last lines are its markers) into `out`, in place of the one there (or at its end)."""
    text, (start, end) = out.read_text() if out.exists() else "", (lines[0], lines[-1])
    section = "\n".join(lines)
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)


def main(argv):
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measured fit (the first is a warm-up)")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--no-pipeline", action="store_true", help="skip (4)-(5): they need mlflow and prefect")
    ap.add_argument("--dask-epochs", type=int, default=2, help="epochs of the search cells trained on Dask workers")
    ap.add_argument("--full", action="store_true",
                    help="also train the whole full protocol (search, selection, final) once and time it")
    ap.add_argument("--limits", action="store_true", help="only measure the ceiling and write the per-study limit "
                    "table (from the published folders' records) into --out")
    ap.add_argument("--also", action="append", default=[], metavar="FOLDER", help="with --limits: another folder "
                    "holding a run's run.json and fit records (e.g. reports/RUN_ID, from `python -m flows report`)")
    ap.add_argument("--levers", action="store_true", help="only measure the speed levers and write their section "
                    "into --out")
    ap.add_argument("--scaling", action="store_true", help="only measure (6) and write the Dask section into --out")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.levers or args.scaling or args.limits:  # one section, written in place of its old one
        lines = (levers(matmul_gflops(device)) if args.levers else dask_lines(args.dask_epochs) if args.scaling else
                 limits(matmul_gflops(device), describe_machine(device), folders=PUBLISHED + tuple(args.also)))
        write_section(args.out, lines)
        print("\n".join(lines))
        return 0
    started = time.perf_counter()
    ceiling = matmul_gflops(device)
    rows = measure(device, args.epochs)
    stacked, alone = extrapolate(rows)
    batches = FULL.batch_sizes

    lines = [f"# Benchmarks ({device.type})", "",
             f"- Machine: {describe_machine(device)}",
             f"- Command: `python benchmarks/bench.py --device {args.device} --epochs {args.epochs}` "
             f"({time.strftime('%Y-%m-%d')}); all numbers below from this one run.",
             f"- float32 matmul 2048x2048: **{ceiling:.0f} GFLOP/s** (the practical ceiling).", "",
             "| what | variant | batch | fits stacked | s/epoch per fit | GFLOP/s | % of matmul | study s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for (what, v, b), (s, n, k) in rows.items():
        g = train_flops(FitConfig(v), n) / s / 1e9
        lines.append(f"| {what} | {v} | {b} | {k} | {s:.4f} | {g:.1f} | {100 * g / ceiling:.0f}% | "
                     f"{PAPER.s_per_epoch[v] if what == 'alone' and b == PAPER_FINAL[architecture(v)][0] else ''} |")
    lines += ["", "## The full protocol (training time extrapolated from the measured groups)", "",
              f"Search: 2 architectures x {len(batches)} batch sizes x {FULL.search_rounds * FULL.folds} fits x "
              f"{max(FULL.epoch_grid)} epochs, scored at {list(FULL.epoch_grid)}; final: 8 variants x "
              f"{FULL.final_rounds} rounds at the study's "
              f"final settings ({', '.join(f'{a} {b}/{e}' for a, (b, e) in PAPER_FINAL.items())}).", "",
              f"- one model at a time, a fresh fit per epoch count (the study's way): **{alone:.0f} s**",
              f"- stacked, every epoch count scored from one fit (the pipeline): **{stacked:.0f} s**",
              f"- speed-up: **{alone / stacked:.1f}x**"]
    cconv = [train_flops(FitConfig("ConvNet"), N_TRAIN) / rows[("search", "ConvNet", b)][0] / 1e9 for b in batches]
    lines.append(f"- ConvNet search fits reach {min(cconv):.0f}-{max(cconv):.0f} GFLOP/s = "
                 f"{100 * min(cconv) / ceiling:.0f}-{100 * max(cconv) / ceiling:.0f}% of the matmul ceiling")
    if not args.no_pipeline:
        per_fit = tracking_cost()
        n_fits = sum(fit_counts(FULL))
        overhead = prefect_overhead(len(batches) * 2 * 2 + len(VARIANTS) * 2 + 1)
        quick = quick_profile_wall()
        wall = stacked + overhead
        lines += ["", "## Pipeline overheads (CPU, measured)", "",
                  f"- MLflow: {1000 * per_fit:.0f} ms to write one 50-epoch fit run (one batch); "
                  f"{n_fits} fits = {per_fit * n_fits:.0f} s, written in a background thread while training "
                  f"continues: at most {100 * per_fit * n_fits / wall:.1f}% of the full profile's wall time",
                  f"- Prefect: {overhead:.1f} s for a flow of the full profile's {len(batches) * 4 + 17} tasks doing "
                  f"nothing (temporary server start included): {100 * overhead / wall:.1f}% of the full profile",
                  f"- quick profile, `python -m flows --profile quick`, fresh store and cache: **{quick:.0f} s** "
                  "(measured)",
                  f"- full profile: **{wall / 60:.1f} min** (extrapolated: stacked training + Prefect overhead; "
                  "MLflow overlaps training)", *dask_lines(args.dask_epochs)]
    if args.full:
        t = time.perf_counter()
        search = [r for g in search_groups(FULL) for r in train_group(g, device=device)[0]]
        chosen = choose(search_table(search))
        final = [r for g in final_groups(FULL, chosen) for r in train_group(g, device=device)[0]]
        took = time.perf_counter() - t
        table = {r["variant"]: r for r in final_table(final)}
        lines += ["", "## The full protocol, trained once (measured)", "",
                  f"- {len(search) + len(final)} fits, search + selection + final, no tracking: **{took:.0f} s**",
                  f"- selection: { {a: c.as_dict() for a, c in chosen.items()} }",
                  "- test error % (mean over rounds): " + ", ".join(
                      f"{v} {100 * t['test_error_mean']:.1f}" for v, t in table.items())]
    lines += ["", f"Benchmark wall time: {time.perf_counter() - started:.0f} s.", ""]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

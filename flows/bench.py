"""python -m flows bench [--device cpu|cuda] [--out BENCHMARKS.md]: how fast the study trains here.

Measured in one run on one machine: (1) s/epoch of one model alone per variant (the study's Table 2
column), (2) per-fit s/epoch when a search cell's folds x rounds or a variant's final rounds train
stacked, (3) achieved GFLOP/s beside a large float32 matmul (the practical ceiling), (4) the quick
profile's wall time (measured) and the full profile's (extrapolated from the measured groups), (5) the
share of MLflow logging and Prefect overhead, (6) a ConvNet and an MLP search cell of the full protocol
(cut short in epochs) in this process against `--workers 2` (prefect_dask, one thread each), and from the
measured task durations the simulated wall time of the full and the extended study on 1-64 workers. Only
torch is needed for (1)-(3); (4)-(6) need the pipeline's packages and run on the CPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pairs import protocol as P
from pairs import report as R
from pairs.data import data_root, pair_sets
from pairs.models import VARIANTS, forward_flops, parse
from pairs.protocol import PROFILES
from pairs import published
from pairs.train import FitConfig, FitData, describe_machine, fit, fit_many, resolve_device

STUDY = published.table("table2").set_index("variant")
STUDY_BATCH = {parse(v)[0]: (int(r.batch_size), int(r.epochs)) for v, r in STUDY.iterrows()}  # its final (batch, epochs)


def train_flops(variant, pairs_per_epoch):
    return 3 * forward_flops(variant) * pairs_per_epoch  # forward + backward ~ 3 forwards


def matmul_gflops(device, n=2048, reps=10):
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def epoch_time(result):
    return statistics.median(result.epoch_seconds[1:] or result.epoch_seconds)  # first epoch warms up


def data(p, n):
    return FitData(p.train_input[:n], p.train_target[:n], p.train_classes[:n], p.test_input, p.test_target)


def measure(device, epochs, rounds, folds, final_rounds, batches):
    p = pair_sets(1000, seed=2021)
    n_train = 1000 - 1000 // folds
    rows = {}
    for variant in VARIANTS:  # (1) alone, at the study's batch size
        arch = parse(variant)[0]
        r = fit(FitConfig(variant, STUDY_BATCH[arch][0], epochs), data(p, 1000), seed=1, device=device)
        rows[("alone", variant, STUDY_BATCH[arch][0])] = (epoch_time(r), 1000, 1)
    for arch in ("ConvNet", "MLP"):  # alone at every grid batch size, for the one-at-a-time baseline
        for b in batches:
            r = fit(FitConfig(arch, b, epochs), data(p, n_train), seed=1, device=device)
            rows[("alone, search", arch, b)] = (epoch_time(r), n_train, 1)
            k = rounds * folds  # (2) a search cell, stacked
            r = fit_many(FitConfig(arch, b, epochs), [data(p, n_train)] * k, list(range(k)), device=device)
            rows[("search", arch, b)] = (epoch_time(r[0]), n_train, k)
    for variant in VARIANTS:  # (2) a variant's final rounds, stacked
        b = STUDY_BATCH[parse(variant)[0]][0]
        r = fit_many(FitConfig(variant, b, epochs), [data(p, 1000)] * final_rounds, list(range(final_rounds)),
                     device=device)
        rows[("final", variant, b)] = (epoch_time(r[0]), 1000, final_rounds)
    return rows, n_train


def extrapolate(rows, grid_epochs, rounds, folds, final_rounds, batches):
    """Training seconds of the full protocol: stacked (as the pipeline runs it) and one model at a time,
    a fresh fit for every epoch count (as the study ran it)."""
    k = rounds * folds
    stacked = sum(k * max(grid_epochs) * rows[("search", a, b)][0] for a in ("ConvNet", "MLP") for b in batches)
    alone = sum(k * e * rows[("alone, search", a, b)][0] for a in ("ConvNet", "MLP") for b in batches for e in grid_epochs)
    for v in VARIANTS:
        b, e = STUDY_BATCH[parse(v)[0]]
        stacked += final_rounds * e * rows[("final", v, b)][0]
        alone += final_rounds * e * rows[("alone", v, b)][0]
    return stacked, alone


def tracking_cost(n_fits=100, epochs=50):
    """Seconds per fit of writing one fit's run (params, 3 x epochs losses, scores) to a fresh SQLite store."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    from flows.tracking import Tracker
    tracker = Tracker("bench", run_name="bench")
    fits = P.search_groups(P.Protocol(search_rounds=n_fits // 10, epoch_grid=(epochs // 2, epochs)))[0].fits
    recs = [P.FitRecord(**vars(f), train_loss=(0.5,) * epochs, main_loss=(0.4,) * epochs, aux_loss=(0.1,) * epochs,
                        scores=((epochs // 2, 0.01, 0.2), (epochs, 0.0, 0.19)), param_count=144684, s_per_epoch=0.1)
            for f in fits]
    parent = tracker.child("search")
    t = time.perf_counter()
    tracker.log_fits(recs, parent, ["bench"])
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


def dask_comparison(epochs):
    """(6) The full protocol's ConvNet and MLP search cells at batch 100, cut to `epochs` epochs: trained here as
    whole cells (2 threads), each one-round chunk alone on one thread (the task durations), and every chunk
    through the pipeline's `train` task on `--workers 2` (a local prefect_dask cluster, one thread each)."""
    from prefect import flow

    from flows.runner import started as running
    from flows.tasks import train
    from flows.settings import Run
    full = PROFILES["full"].with_(batch_sizes=(100,), epoch_grid=(epochs,))
    cells, chunks = P.search_groups(full), P.search_groups(full, chunk=1)
    for g in cells[:1]:  # load the data once, outside the timings
        P.fit_data(g.fits[0])
    t = time.perf_counter()
    for g in cells:
        P.train_group(g)
    in_process = time.perf_counter() - t
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    durations = {}
    for g in chunks:
        t = time.perf_counter()
        P.train_group(g)
        durations.setdefault(g.fits[0].variant, []).append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    context = ("bench", time.time())  # keys of their own: nothing comes from the cache

    def submit(runner, groups):
        return [runner.submit(train, {"group": g, "context": context, "root": str(data_root()), "device": "cpu",
                                      "threads": 1}) for g in groups]

    @flow
    def on_workers():
        t = time.perf_counter()
        with running(Run(workers=2), []) as runner:  # workers start, import torch, load the data
            [f.result() for f in submit(runner, P.search_groups(full.with_(epoch_grid=(1,)), chunk=1)[:2])]
            started = time.perf_counter() - t
            t = time.perf_counter()
            [f.result() for f in submit(runner, chunks)]
            return started, time.perf_counter() - t
    started, on_two = on_workers()
    work = sum(sum(d) for d in durations.values())
    overhead = max(0.0, (2 * on_two - work) / len(chunks))  # per task, beyond its training
    return {"in_process": in_process, "two_workers": on_two, "cluster_start": started, "chunks": len(chunks),
            "durations": durations, "one_thread_work": work, "task_overhead": overhead, "epochs": epochs}


def makespan(durations, workers):
    """Longest-processing-time list scheduling: each unit to the worker that frees up first."""
    free = [0.0] * workers
    for d in sorted(durations, reverse=True):
        free[free.index(min(free))] += d
    return max(free)


def simulate(stages, workers, overhead, start):
    """Wall time of stages run one after another (each waits for the last), their units spread over workers."""
    return start + sum(makespan([d + overhead for d in units], workers) for units in stages)


def scaling(measured, extended_records=None):
    """Stages of units (seconds on one thread) of the full study and, from its recorded fits, the extended
    study; the simulated wall time on 1-64 workers."""
    full = PROFILES["full"]
    per_fit_epoch = {v: sum(d) / len(d) / (full.folds * measured["epochs"]) for v, d in measured["durations"].items()}
    search = [per_fit_epoch[a] * full.folds * max(full.epoch_grid) for a in full.architectures
              for _ in full.batch_sizes for _ in range(full.search_rounds)]
    final = [per_fit_epoch[parse(v)[0]] * full.final_rounds * STUDY_BATCH[parse(v)[0]][1] for v in VARIANTS]
    studies = {"full study (one-round search chunks)": [search, final]}
    if extended_records:  # one unit per trial group and per final variant; batches of trials wait for each other
        one_thread = measured["one_thread_work"] / (2 * measured["in_process"])  # 1-thread vs 2-thread speed
        groups = {}
        for r in extended_records:
            groups.setdefault((r.stage, r.variant, r.config, r.round if r.stage == "search" else None), []).append(r)
        units = {k: sum(r.s_per_epoch * r.config.epochs for r in rs) * one_thread for k, rs in groups.items()}
        search_units = [d for k, d in units.items() if k[0] == "search"]
        batch = 8  # 4 trials per architecture are asked at a time
        studies["extended study (Optuna batches of 4 trials per architecture)"] = [
            search_units[i:i + batch] for i in range(0, len(search_units), batch)] + [
            [d for k, d in units.items() if k[0] == "final"]]
    return {name: {w: simulate(stages, w, measured["task_overhead"], measured["cluster_start"])
                   for w in (1, 2, 4, 8, 16, 64)} for name, stages in studies.items()}, studies


def dask_lines(epochs):
    m = dask_comparison(epochs)
    extended = Path(__file__).resolve().parent.parent / "docs" / "results" / "extended"
    records = [r for name in ("search_fits.json", "final_fits.json") if (extended / name).exists()
               for r in R.load_records(extended / name)]
    table, studies = scaling(m, records)
    lines = ["", "## More machines: Dask workers (CPU, measured, then simulated)", "",
             f"Two search cells of the full protocol (ConvNet and MLP, batch 100, 100 fits each, cut to {epochs} "
             f"epochs), {m['chunks']} one-round chunks through the pipeline's `train` task:", "",
             f"- in this process, whole cells, {torch.get_num_threads()} threads: **{m['in_process']:.1f} s**",
             f"- `--workers 2` (local prefect_dask cluster, one thread each), training only: "
             f"**{m['two_workers']:.1f} s** (ratio {m['two_workers'] / m['in_process']:.2f}); starting the "
             f"cluster and a first task on each worker: {m['cluster_start']:.1f} s",
             f"- the chunks one after another on one thread: {m['one_thread_work']:.1f} s; per-task overhead on a "
             f"worker beyond training (Prefect task engine, transfer of the records): {m['task_overhead']:.2f} s",
             "", "Simulated wall time (list scheduling of the measured one-thread task durations, scaled to each "
             "group's fits and epochs, plus that overhead per task and the cluster start; stages wait for each other):",
             "", "| study | units | " + " | ".join(f"{w} workers" for w in (1, 2, 4, 8, 16, 64)) + " |",
             "|---|---|" + "---|" * 6]
    for name, walls in table.items():
        units = sum(len(s) for s in studies[name])
        lines.append(f"| {name} | {units} in {len(studies[name])} stages | " + " | ".join(
            f"{walls[w] / 60:.1f} min" for w in walls) + " |")
    for name, stages in studies.items():
        longest = max(max(s) for s in stages)
        lines.append(f"- {name}: its longest unit takes {longest / 60:.1f} min on one thread, a floor no worker "
                     f"count goes below; the stages it waits on: {len(stages)}")
    return lines


PUBLISHED = ("docs/results", "docs/results/al_gap", "docs/results/extended")
LIMITS = ("<!-- limits: python -m flows bench --limits -->", "<!-- /limits -->")


def limits(ceiling, machine, root=Path(__file__).resolve().parent.parent):
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
    for folder in PUBLISHED:
        paths = [records_in(root / folder, name) for name in ("search_fits.json", "final_fits.json")]
        records = [r for path in paths if path for r in R.load_records(path)]
        meta = json.loads((root / folder / "run.json").read_text())["meta"]
        flops, wall = sum(r.train_flops for r in records), float(meta["wall_time"].split()[0])
        theirs = cpu_model(meta["machine"])
        share = f"{100 * flops / ceiling / 1e9 / wall:.0f}%" if theirs == cpu else f"— (run on {theirs})"
        lines.append(f"| {folder} | {len(records)} | {flops / 1e12:.1f} | {flops / ceiling / 1e9 / 60:.1f} min | "
                     f"{wall / 60:.1f} min ({theirs}) | {flops / wall / 1e9:.0f} | {share} |")
    return lines + ["", LIMITS[1]]


def cpu_model(machine):
    """The CPU model in a describe_machine() text: '2 cores (AMD EPYC), torch ...' -> 'AMD EPYC'."""
    return machine.split(" cores (", 1)[1].split("), torch", 1)[0]


def write_limits(out, lines):
    """The limits section into `out`, in place of the one there (or at its end)."""
    text = out.read_text() if out.exists() else ""
    section = "\n".join(lines)
    if LIMITS[0] in text:
        head, rest = text.split(LIMITS[0], 1)
        text = head + section + rest.split(LIMITS[1], 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)


def main(argv):
    ap = argparse.ArgumentParser(prog="python -m flows bench", description=__doc__)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measured fit (the first is a warm-up)")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--no-pipeline", action="store_true", help="skip (4)-(5): they need mlflow and prefect")
    ap.add_argument("--dask-epochs", type=int, default=2, help="epochs of the search cells trained on Dask workers")
    ap.add_argument("--full", action="store_true",
                    help="also train the whole full protocol (search, selection, final) once and time it")
    ap.add_argument("--limits", action="store_true", help="only measure the ceiling and write the per-study limit "
                    "table (from the published folders' records) into --out")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.limits:
        lines = limits(matmul_gflops(device), describe_machine(device))
        write_limits(args.out, lines)
        print("\n".join(lines))
        return 0
    full = PROFILES["full"]
    rounds, folds, final_rounds, batches = full.search_rounds, full.folds, full.final_rounds, full.batch_sizes
    started = time.perf_counter()
    ceiling = matmul_gflops(device)
    rows, n_train = measure(device, args.epochs, rounds, folds, final_rounds, batches)
    stacked, alone = extrapolate(rows, full.epoch_grid, rounds, folds, final_rounds, batches)

    lines = [f"# Benchmarks ({device.type})", "",
             f"- Machine: {describe_machine(device)}",
             f"- Command: `python -m flows bench --device {args.device} --epochs {args.epochs}` "
             f"({time.strftime('%Y-%m-%d')}); all numbers below from this one run.",
             f"- float32 matmul 2048x2048: **{ceiling:.0f} GFLOP/s** (the practical ceiling).", "",
             "| what | variant | batch | fits stacked | s/epoch per fit | GFLOP/s | % of matmul | study s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for (what, v, b), (s, n, k) in rows.items():
        g = train_flops(v, n) / s / 1e9
        lines.append(f"| {what} | {v} | {b} | {k} | {s:.4f} | {g:.1f} | {100 * g / ceiling:.0f}% | "
                     f"{STUDY.s_per_epoch[v] if what == 'alone' and b == STUDY_BATCH[parse(v)[0]][0] else ''} |")
    lines += ["", "## The full protocol (training time extrapolated from the measured groups)", "",
              f"Search: 2 architectures x {len(batches)} batch sizes x {rounds * folds} fits x {max(full.epoch_grid)} "
              f"epochs, scored at {list(full.epoch_grid)}; final: 8 variants x {final_rounds} rounds at the study's "
              f"final settings ({', '.join(f'{a} {b}/{e}' for a, (b, e) in STUDY_BATCH.items())}).", "",
              f"- one model at a time, a fresh fit per epoch count (the study's way): **{alone:.0f} s**",
              f"- stacked, every epoch count scored from one fit (the pipeline): **{stacked:.0f} s**",
              f"- speed-up: **{alone / stacked:.1f}x**"]
    cconv = [train_flops("ConvNet", n_train) / rows[("search", "ConvNet", b)][0] / 1e9 for b in batches]
    lines.append(f"- ConvNet search fits reach {min(cconv):.0f}-{max(cconv):.0f} GFLOP/s = "
                 f"{100 * min(cconv) / ceiling:.0f}-{100 * max(cconv) / ceiling:.0f}% of the matmul ceiling")
    if not args.no_pipeline:
        per_fit = tracking_cost()
        n_fits = sum(full.fits())
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
                  "MLflow overlaps training)"]
    if not args.no_pipeline:
        lines += dask_lines(args.dask_epochs)
    if args.full:
        t = time.perf_counter()
        search = [r for g in P.search_groups(full) for r in P.train_group(g, device=device)[0]]
        chosen = P.select(P.search_table(search))
        final = [r for g in P.final_groups(full, chosen) for r in P.train_group(g, device=device)[0]]
        took = time.perf_counter() - t
        table = {r["variant"]: r for r in P.final_table(final)}
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

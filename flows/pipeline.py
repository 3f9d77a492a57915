"""The pipeline flow: prepare -> search -> select -> evaluate -> report, each step a Prefect task.

Training tasks are cached on their inputs and on the library's code version (a hash of pairs/), with
results persisted under .cache/prefect: a rerun with nothing changed reuses every finished group, and a
rerun after a crash redoes only unfinished groups. Fit logging is not cached but idempotent (see
flows.tracking), and runs in Prefect's thread pool so it overlaps the next group's training.
"""
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.exceptions import TerminationSignal

from pairs import protocol as P
from pairs import report as R
from pairs.data import data_root, mnist_fingerprint
from pairs.models import parse
from pairs.train import resolve_device

from .checks import check_inputs
from .tracking import Tracker

# Results are stored as JSON (records are plain numbers and lists): nothing is unpickled from the cache.
CACHED = dict(cache_policy=(INPUTS - "root") + TASK_SOURCE, persist_result=True, result_serializer="json",
              retries=2, retry_delay_seconds=[2, 10])
_attempts = {}


def _inject_failure(stage, variant, rounds, folds):
    """Test hook: PAIRS_INJECT_FAILURE="stage:variant:round:fold:times" fails the group holding that fit
    `times` times (a passing failure when below the retries, a lasting one above)."""
    spec = os.environ.get("PAIRS_INJECT_FAILURE")
    if not spec:
        return
    s, v, r, f, times = spec.split(":")
    if (s, v) == (stage, variant) and int(r) < rounds and (f == "-" or int(f) < folds):
        _attempts[spec] = _attempts.get(spec, 0) + 1
        if _attempts[spec] <= int(times):
            raise RuntimeError(f"injected failure, attempt {_attempts[spec]} of {times}")


def _group(stage, variant, batch_size, rounds, folds, train):
    """Run a group's training; an error names the group's fits and what went wrong."""
    try:
        _inject_failure(stage, variant, rounds, folds)
        return train()
    except Exception as e:
        fits = f"rounds 0-{rounds - 1}" + (f", folds 0-{folds - 1}" if folds else "")
        raise RuntimeError(f"{stage} fits of {variant} at batch size {batch_size} ({fits}) failed: {e}") from e


def code_version(package=Path(P.__file__).parent):
    """SHA-256 over the library's sources and data files: any edit in pairs/ changes it."""
    h = hashlib.sha256()
    for p in sorted(package.rglob("*")):
        if p.suffix in (".py", ".csv"):
            h.update(str(p.relative_to(package)).encode() + p.read_bytes())
    return h.hexdigest()[:16]


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def prepare_data(root):
    """Check the four MNIST files (magic, counts, size) and fingerprint them: changed data invalidates caches.
    Not cached: it is the check that the data on disk is still what the caches were built from."""
    return mnist_fingerprint(root)


@task(task_run_name="search {architecture} batch {batch_size}", **CACHED)
def search_cell(protocol, architecture, batch_size, root, fingerprint, code, device):
    return _group("search", architecture, batch_size, protocol.search_rounds, protocol.folds,
                  lambda: P.search_cell(protocol, architecture, batch_size, root, device))


@task(task_run_name="final {variant}", **CACHED)
def final_group(protocol, variant, batch_size, epochs, root, fingerprint, code, device):
    return _group("final", variant, batch_size, protocol.final_rounds, None,
                  lambda: P.final_group(protocol, variant, batch_size, epochs, root, device))


@task(task_run_name="log {n} fits", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 4, 10])
def log_fits(tracker, records, parent_id, context, n):
    return tracker.log_fits(records, parent_id, context)


@task(cache_policy=NO_CACHE)
def select(search_records):
    """Per architecture, the (batch size, epochs) of lowest mean validation error."""
    return P.select(P.search_table(search_records))


@task(task_run_name="artifacts of {name}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 4])
def write_artifacts(tracker, run_id, name, write):
    """Write tables and figures with `write(folder)` (a pairs.report function) and log them to the run."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifacts(run_id, write(Path(tmp)))


class Progress:
    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.time()

    def update(self, stage, n):
        self.done += n
        elapsed = time.time() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{stage}] {self.done}/{self.total} fits, elapsed {elapsed:.0f} s, ETA {eta:.0f} s", flush=True)


@flow(name="pairs", log_prints=True)
def pipeline(profile: str = "full", data_dir: str | None = None, seed: int | None = None,
             pairs: int | None = None, search_rounds: int | None = None, folds: int | None = None,
             final_rounds: int | None = None, batch_sizes: list[int] | None = None,
             epochs: list[int] | None = None, experiment: str = "pairs", device: str = "cpu",
             until: str = "report"):
    """The study: Table 1 by cross-validated search, the selection, Table 2 by the final rounds, the report."""
    protocol = check_inputs(profile, data_dir, seed, pairs, search_rounds, folds, final_rounds, batch_sizes,
                            epochs, experiment, device, until)
    device = str(resolve_device(device))
    root = str(data_root(data_dir))
    tracker = Tracker(experiment, run_name=f"pipeline {profile}")
    try:
        result = _run(protocol, profile, root, device, until, tracker)
    except BaseException as e:  # Ctrl-C and SIGTERM (Prefect's TerminationSignal) end the runs as KILLED
        stopped = isinstance(e, (KeyboardInterrupt, TerminationSignal))
        tracker.finish("KILLED" if stopped else "FAILED")
        if stopped:  # Prefect re-raises SIGTERM after this, so the message cannot wait for the CLI
            print(f"stopped by {'SIGTERM' if isinstance(e, TerminationSignal) else 'Ctrl-C'}: finished groups "
                  "are cached and logged; run the same command again to resume", file=sys.stderr, flush=True)
        raise
    tracker.finish()
    return result


def run_meta(device, seconds):
    import mlflow
    import prefect
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"machine": f"{os.cpu_count()} cores, {cpu}, {torch.get_num_threads()} torch threads",
            "device": device, "wall_time": f"{seconds:.0f} s for this pipeline call (groups found in the cache take no time)",
            "versions": f"Python {platform.python_version()}, torch {torch.__version__}, "
                        f"mlflow {mlflow.__version__}, prefect {prefect.__version__}",
            "command": "python -m flows " + shlex.join(sys.argv[1:]),
            "launcher": f"started by `mlflow run` (run {os.environ['MLFLOW_RUN_ID']})" if "MLFLOW_RUN_ID" in os.environ
            else "started directly"}


def _run(protocol, profile, root, device, until, tracker):
    started = time.time()
    code = code_version()
    tracker.log_params(tracker.run_id, {f"protocol.{k}": v for k, v in P.protocol_params(protocol).items()}
                       | {"pipeline.profile": profile, "pipeline.device": device, "pipeline.code_version": code})
    fingerprint = prepare_data(root)
    context = [fingerprint, code, device, protocol.pairs]
    if until == "prepare":
        return {"run_id": tracker.run_id}
    n_search, n_final = protocol.fits()
    progress = Progress(n_search + (n_final if until != "search" else 0))

    stage = tracker.child("search", {"pairs.stage": "search"})
    search, logged = [], []
    for arch in protocol.architectures:
        for batch in protocol.batch_sizes:
            records = R.int_keys(search_cell(protocol, arch, batch, root, fingerprint, code, device))
            logged.append(log_fits.submit(tracker, records, stage, context, len(records)))
            search += records
            progress.update("search", len(records))
    selection = select(search)
    [f.result() for f in logged]
    write_artifacts(tracker, stage, "search", lambda out: R.search_artifacts(search, out))
    tracker.end(stage)
    tracker.log_params(tracker.run_id, {f"selected.{a}.{k}": v for a, s in selection.items() for k, v in s.items()})
    print(f"[select] {selection}", flush=True)
    if until == "search":
        return {"run_id": tracker.run_id, "selection": selection}

    stage = tracker.child("final", {"pairs.stage": "final"})
    final, logged = [], []
    for variant in protocol.variants:
        chosen = selection[parse(variant)[0]]
        records = R.int_keys(final_group(protocol, variant, chosen["batch_size"], chosen["epochs"], root,
                                        fingerprint, code, device))
        logged.append(log_fits.submit(tracker, records, stage, context, len(records)))
        final += records
        progress.update("final", len(records))
    [f.result() for f in logged]
    write_artifacts(tracker, stage, "final", lambda out: R.final_artifacts(final, out))
    tracker.end(stage)
    if until == "final":
        return {"run_id": tracker.run_id, "selection": selection}

    meta = run_meta(device, time.time() - started)

    def report(out):
        (out / "run.json").write_text(json.dumps({"protocol": asdict(protocol), "selection": selection, "meta": meta}))
        return R.full_report(search, final, selection, protocol, out, meta) + [out / "run.json"]

    write_artifacts(tracker, tracker.run_id, "the report", report)
    return {"run_id": tracker.run_id, "selection": selection}

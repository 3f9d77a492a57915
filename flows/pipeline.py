"""The pipeline flow: prepare -> search -> select -> evaluate -> report, each step a Prefect task.

The protocol lists each stage's units of work (pairs.protocol.Group: a search cell, a final variant);
one stage helper trains them as cached tasks, logs their fits and writes the stage's artifacts. A
group's cache key is made of its fits' keys (the same keys the MLflow store knows the fits by: settings,
seeds, data draw, MNIST fingerprint, code version, device) and the task's source, with results
persisted under .cache/prefect: a rerun with nothing changed reuses every finished group, and a rerun
after a crash redoes only unfinished groups. Fit logging is not cached but idempotent (see
flows.tracking), and runs in Prefect's thread pool so it overlaps the next group's training.
"""
import contextlib
import hashlib
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prefect import flow, task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy
from prefect.exceptions import TerminationSignal
from prefect.futures import wait

from pairs import protocol as P
from pairs import report as R
from pairs.data import DataError, check_mnist, data_root, derive_seed, mnist_fingerprint
from pairs.protocol import FitRecord
from pairs.train import describe_machine, pack_model, resolve_device, unpack_model

from .lifetime import signals_held
from . import registry
from .settings import check_inputs, docstring, make_protocol, optuna_storage, signature
from .tracking import RunsEnded, Tracker

# Results are stored as JSON (records are plain numbers and lists): nothing is unpickled from the cache.
CACHED = dict(cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda ctx, p: p["group"].key(p["context"])) + TASK_SOURCE,
              persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=[2, 10])
PROGRESS_EVERY = 20  # seconds between progress lines while a group trains


TRAINING_CODE = ("data.py", "models.py", "protocol.py", "stacked.py", "train.py")


def code_version(package=Path(P.__file__).parent):
    """SHA-256 over the library's modules that train (data, models, protocol, stacked, train): an edit in one
    changes every fit's key; the report, statistics and study-file modules do not."""
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update(name.encode() + (package / name).read_bytes())
    return h.hexdigest()[:16]


class Progress:
    """Progress lines with stage, group, epoch, fits done and the ETA of the whole call: after each group and,
    while one trains, every PROGRESS_EVERY seconds. They go to the console and the flow run's logs."""

    def __init__(self, groups):
        """`groups`: what the call plans to train; `plan` puts the real groups in place of estimated ones."""
        self.work, self.fits, self.done, self.fits_done = work(groups), sum(len(g.fits) for g in groups), 0, 0
        self.start = self.last = time.time()
        self.group, self.trained = None, 0

    def begin(self, group):
        self.group, self.trained = group, 0

    def plan(self, groups, instead_of=()):
        """Groups now planned, in place of those the totals had estimated (an Optuna batch once it is asked)."""
        self.work += work(groups) - work(instead_of)
        self.fits += sum(len(g.fits) for g in groups) - sum(len(g.fits) for g in instead_of)

    def epoch(self, epoch, epochs, n):
        self.done += n
        self.trained += n
        if time.time() - self.last >= PROGRESS_EVERY:
            self._say(f"epoch {epoch}/{epochs}")

    def end(self, group, cached):
        if cached:  # a cached group trains nothing: its work leaves the estimate
            self.work -= work([group]) - self.trained
        else:  # a group trained elsewhere (a Dask worker) reported no epochs here
            self.done += work([group]) - self.trained
        self.fits_done += len(group.fits)
        self._say("from the cache" if cached else "done")

    def _say(self, what):
        elapsed = time.time() - self.start
        eta = f"{elapsed / self.done * max(self.work - self.done, 0):.0f} s" if self.done else "?"
        print(f"[{self.group.fits[0].stage}] {self.group.label}: {what}; {self.fits_done}/{self.fits} fits done, "
              f"elapsed {elapsed:.0f} s, ETA {eta}", flush=True)
        self.last = time.time()


@task(task_run_name="prepare data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def prepare_data(root):
    """Check the four MNIST files (magic, counts, size) and fingerprint them: changed data invalidates caches.
    Not cached: it is the check that the data on disk is still what the caches were built from."""
    return mnist_fingerprint(root)


@task(task_run_name="{group.label}", **CACHED)
def train(group, context, root, device, on_epoch=None, threads=None, fail_first=None):
    """Train one group (a search cell or a final variant): its fit records and, for a group that keeps them,
    its trained models as text (pairs.train.pack_model). An error names the group's fits. On a Dask worker
    everything comes as parameters: the data root is checked there and torch uses `threads` threads.
    `fail_first`: the first attempt of a group whose label contains it fails (to watch Prefect retry it)."""
    from prefect.runtime import task_run
    try:
        if fail_first and fail_first in group.label and task_run.run_count <= 1:
            raise RuntimeError(f"its first attempt fails on purpose (--fail-first {fail_first!r}); Prefect retries it")
        if threads:  # on a worker: its own threads, data and device
            torch.set_num_threads(threads)
            try:
                check_mnist(root)
                resolve_device(device)
            except (DataError, RuntimeError) as e:
                raise RuntimeError(f"on Dask worker {socket.gethostname()} (pid {os.getpid()}): {e}") from None
        models = []
        records = P.train_group(group, root, device, on_epoch, models)
        return {"records": [r.to_json() for r in records], "models": [pack_model(m) for m in models]}
    except Exception as e:
        f = group.fits[-1]
        fits = f"rounds 0-{f.round}" + (f", folds 0-{f.folds - 1}" if f.folds else "")
        raise RuntimeError(f"{f.stage} fits of {f.variant} at batch size {f.config.batch_size} ({fits}) "
                           f"failed: {e}") from e


@task(task_run_name="log {label}", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 4, 10])
def log_fits(tracker, records, parent_id, context, label, models=None, example=None):
    """Log a group's fits to MLflow, one run each, named after the group."""
    try:
        return tracker.log_fits(records, parent_id, context, models, example, label)
    except RunsEnded:  # a stop that could not wait for this logging; the fits are cached, the rerun logs them
        print(f"{len(records)} fits of {label} not logged: the pipeline had stopped; the rerun logs them")


@task(task_run_name="select", cache_policy=NO_CACHE)
def select(search_records):
    """Per architecture, the candidate (batch size, epochs, searched options) of lowest mean validation error."""
    return P.select(P.search_table(search_records))


@task(task_run_name="artifacts of {name}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 4])
def write_artifacts(tracker, run_id, name, write):
    """Write tables and figures with `write(folder)` (a pairs.report function) and log them to the run."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifacts(run_id, write(Path(tmp)))


def work(groups):
    """Fit-epochs of training in these groups."""
    return sum(len(g.fits) * g.fits[0].config.epochs for g in groups)


@dataclass
class Work:
    """Where and how groups train: the run tree, the fits' context (data fingerprint, code, device), the data
    root, the device, and a Dask task runner (entered) or None for this process."""
    tracker: Tracker
    context: tuple
    root: str
    device: str
    runner: object = None
    chunk: int | None = None
    results: str | None = None  # a results folder other than PREFECT_RESULTS_LOCAL_STORAGE_PATH's
    fail_first: str | None = None  # groups whose first attempt fails (to watch a retry)
    submitted: list = field(default_factory=list)  # the task run ids of the groups submitted to Dask
    logging: list = field(default_factory=list)  # the futures of the log_fits tasks

    @property
    def train(self):
        return train.with_options(result_storage=Path(self.results).resolve()) if self.results else train


def train_groups(groups, parents, w, progress):
    """Train groups (cached tasks) and log their fits, with the models a group keeps, under `parents` (a run
    id, or one per group). With a Dask runner every group is submitted at once and the results are taken in
    order as they come; in this process they train one after another, reporting epochs."""
    parents = [parents] * len(groups) if isinstance(parents, str) else parents
    with signals_held():  # what is submitted is recorded (a stop marks these task runs crashed)
        futures = [w.runner.submit(w.train, {"group": g, "context": w.context, "root": w.root, "device": w.device,
                                           "threads": 1, "fail_first": w.fail_first})
                   for g in groups] if w.runner else []
        w.submitted += [f.task_run_id for f in futures]
    records, first_log = [], len(w.logging)
    for i, (group, parent) in enumerate(zip(groups, parents)):
        progress.begin(group)
        if w.runner:
            state = _remote_state(futures[i])
            out, cached = state.result(), state.name == "Cached"
        else:  # called, not submitted: Ctrl-C and SIGTERM reach the flow as they are
            out = w.train(group, w.context, w.root, w.device, progress.epoch, fail_first=w.fail_first)
            cached = progress.trained == 0  # no epoch trained here: it came from the cache
        progress.end(group, cached)
        got = [FitRecord.from_json(d) for d in out["records"]]
        models = [unpack_model(r.config, r.seed, m) for r, m in zip(got, out["models"])] or None
        example = P.fit_data(got[0], w.root).eval_input[:3].float().numpy() if models else None
        with signals_held():  # what is submitted is recorded (a stop waits for these fits to be logged)
            w.logging.append(log_fits.submit(w.tracker, got, parent, w.context, fits_label(group), models, example))
        records += got
    [f.result() for f in w.logging[first_log:]]
    return records


def fits_label(group):
    """What a group's fit runs are named after: its label without a search chunk's rounds (each fit's round and
    fold follow it)."""
    f = group.fits[0]
    return group.label.replace(f" {group.name}", "") if f.stage == "search" and group.name else group.label


def _remote_state(future):
    """The final state of a group's task on Dask. When Dask itself fails (the scheduler gone, a task given up
    after its workers died), the error says how to resume."""
    try:
        future.wait()  # when Dask fails, the state stays unfinished and asking for the result raises its error
        return future.state if future.state.is_final() else future.result(raise_on_failure=False)
    except Exception as e:
        raise RuntimeError(f"the Dask cluster failed ({type(e).__name__}: {' '.join(str(e).split())}); finished "
                           "groups are cached: run the same command again once the scheduler and workers are back"
                           ) from None


def _crash_open_task_runs(ids, error):
    """Those of these task runs still open once a failed flow's Dask runner has stopped are marked Crashed: a
    task Dask gave up on (its workers died) never reports its end, nor do those a local cluster's workers were
    running when it stopped with the flow."""
    if not ids:
        return
    from prefect import get_client
    from prefect.client.schemas import filters as F
    from prefect.states import Crashed
    try:
        with get_client(sync_client=True) as client:
            for run in client.read_task_runs(task_run_filter=F.TaskRunFilter(
                    id=F.TaskRunFilterId(any_=ids),
                    state=F.TaskRunFilterState(type=F.TaskRunFilterStateType(any_=["RUNNING", "PENDING"])))):
                client.set_task_run_state(run.id, Crashed(message=f"the flow stopped: {type(error).__name__}: "
                                                                  f"{error}"), force=True)
    except Exception as e:  # the server itself may be what failed
        print(f"could not mark this flow's open task runs Crashed ({type(e).__name__}: {e})", file=sys.stderr)


def stage(name, groups, w, progress, artifacts):
    """One stage: train its groups (cached tasks), log their fits under a stage run, write its artifacts. In the
    final stage each group (a configuration) has a row run that holds its fits and Table 2's numbers."""
    run_id = w.tracker.child(name, {"pairs.stage": name})
    rows = [w.tracker.row(row_name(g), run_id, g.fits[0].config) for g in groups] if name == "final" else run_id
    records = train_groups(groups, rows, w, progress)
    if name == "final":
        for g, row in zip(groups, rows):
            keys = {f.key() for f in g.fits}
            w.tracker.end_row(row, R.table2_row([r for r in records if r.key() in keys]))
    write_artifacts(w.tracker, run_id, name, lambda out: artifacts(records, out))
    w.tracker.end(run_id)
    return records


def row_name(group):
    """A final configuration's name in the comparison view: its variant, and its arm or options."""
    return group.label.removeprefix("final ")


def task_runner(run):
    """A prefect_dask.DaskTaskRunner for --cluster or --workers, else None (train in this process)."""
    if not (run.cluster or run.workers):
        return None
    from prefect_dask import DaskTaskRunner
    if run.cluster:
        return DaskTaskRunner(address=run.cluster)
    return DaskTaskRunner(cluster_kwargs={"n_workers": run.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@contextlib.contextmanager
def running(runner, submitted=()):
    """The runner entered (its local cluster started). Local workers inherit this flow's Prefect API (the
    temporary server, when no PREFECT_API_URL is set): otherwise each would start a server of its own. On an
    error, the `submitted` task runs left open are marked Crashed once the runner has stopped."""
    if runner is None:
        yield None
        return
    from prefect import get_client
    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # until the cluster stops: its workers may start (or restart) any time
    try:
        with runner as entered:
            yield entered
    except BaseException as e:
        _crash_open_task_runs(list(submitted), e)
        raise
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def optuna_search(study, protocol, w, progress, typical):
    """An Optuna (TPE) search per architecture, `study.batch` trials asked at a time: each trial's groups train
    as cached tasks and log their fits under the trial's MLflow run, then the trials are told their values
    (the lowest mean validation error of their rows). The Optuna studies live in `optuna_storage()`; after a
    crash the same command finds them, reuses every finished trial (its groups come from the cache) and
    finishes the trials left running."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage()
    ident = hashlib.sha256(json.dumps([asdict(protocol), asdict(study), list(w.context)], sort_keys=True,
                                      default=str).encode()).hexdigest()[:12]
    studies = {a: optuna.create_study(
        study_name=f"{Path(study.path).stem}-{a}-{ident}", storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(  # random for the first half (at most 10), a batch at a time
            seed=derive_seed(protocol.seed, "optuna", a) % 2**32, constant_liar=True,
            n_startup_trials=min(10, max(study.batch, study.trials // 2)))) for a in protocol.architectures}
    run_id = w.tracker.child("search", {"pairs.stage": "search", "pairs.optuna_storage": storage})
    records, seen, running = [], set(), optuna.trial.TrialState.RUNNING
    while True:
        batch = []  # (architecture, trial, candidate, to tell): the trials of earlier calls first
        for a, s in studies.items():
            for t in s.get_trials(deepcopy=False):
                if (a, t.number) not in seen:
                    live = optuna.trial.Trial(s, t._trial_id) if t.state == running else t
                    batch.append((a, t.number, study.suggest(live, a), t.state == running))
            for _ in range(min(study.batch, study.trials - len(s.trials))):
                t = s.ask()
                batch.append((a, t.number, study.suggest(t, a), True))
        if not batch:
            break
        trials, groups, parents = [], [], []  # the batch's groups train together (in parallel on Dask)
        for a, number, candidate, tell in batch:
            seen.add((a, number))
            name = f"trial {a} {number}"
            trial_run = w.tracker.trial_run(name, f"{studies[a].study_name}/{number}", run_id, candidate)
            mine = P.search_groups(protocol, [candidate], w.chunk)
            trials.append((a, number, candidate, tell, name, trial_run, len(mine)))
            groups += mine
            parents += [trial_run] * len(mine)
        estimated = [g for a, *_ in batch for g in typical if P.parse(g.fits[0].variant)[0] == a]
        progress.plan(groups, estimated)
        got = train_groups(groups, parents, w, progress)
        for a, number, candidate, tell, name, trial_run, n in trials:
            k = sum(len(g.fits) for g in groups[:n])  # this trial's records: its groups' fits, in order
            mine, got, groups = got[:k], got[k:], groups[n:]
            best = min(P.search_table(mine), key=lambda r: r["val_error_mean"])
            if tell:
                studies[a].tell(number, best["val_error_mean"])
            w.tracker.end_trial(trial_run, best)
            print(f"[search] {name}: {candidate} -> {100 * best['val_error_mean']:.2f}% at batch "
                  f"{best['batch_size']}, {best['epochs']} epochs", flush=True)
            records += mine
    write_artifacts(w.tracker, run_id, "search", lambda out: R.search_artifacts(records, out))
    w.tracker.end(run_id)
    return records


def _signal(e):
    """The Ctrl-C or SIGTERM behind `e`, if any. A signal that lands while Prefect creates a task run comes out as
    Prefect's own error ("Task run is not set", raised by its crash handler) with the signal as its context."""
    while e is not None and not isinstance(e, (KeyboardInterrupt, TerminationSignal)):
        e = e.__context__
    return e


def _pipeline(**settings):
    """The study: Table 1 by cross-validated search, the selection, Table 2 by the final rounds, the report."""
    run, protocol, study = check_inputs(**settings)
    device = str(resolve_device(run.device))
    root = str(data_root(run.data_dir))
    tracker = Tracker(run.experiment, run_name=f"pipeline {run.profile}", tags={
        "pairs.study": Path(study.path).stem or "profile grid", "pairs.profile": run.profile})
    w = Work(tracker, (), root, device, chunk=run.chunk, results=run.results, fail_first=run.fail_first)
    try:
        link_prefect(tracker)
        with running(task_runner(run), w.submitted) as w.runner:
            result = _run(protocol, study, run, w)
    except BaseException as e:  # Ctrl-C and SIGTERM (Prefect's TerminationSignal) end the runs as KILLED
        stopped = _signal(e)
        with signals_held():  # a second signal (`mlflow run` forwards its SIGTERM, then dies: the kernel sends
            # another) must not cut the stop short: it takes effect once the runs are ended
            wait(w.logging, timeout=30)  # the fits trained are logged (a few seconds at most) before the runs end
            if stopped:  # Prefect re-raises SIGTERM after this, so the message cannot wait for the CLI
                print(f"stopped by {'SIGTERM' if isinstance(stopped, TerminationSignal) else 'Ctrl-C'}: finished "
                      "groups are cached and logged; run the same command again to resume", file=sys.stderr,
                      flush=True)
            try:
                tracker.finish("KILLED" if stopped else "FAILED")
            except Exception as err:  # e.g. a store still locked by the write the signal interrupted
                print(f"could not end this pipeline's MLflow runs ({err}); the next pipeline on this host ends them "
                      "KILLED", file=sys.stderr, flush=True)
        if stopped and stopped is not e:
            raise stopped from None
        raise
    tracker.finish()
    result["where"] = where_to_look(tracker, run.until)
    print(f"[done] {result['where']}", flush=True)
    return result


def where_to_look(tracker, until):
    """The last line of a run: where its report and the comparison view are."""
    local = "" if tracker.uri.startswith(("http://", "https://")) else "`make ui`, then "
    report = (f"REPORT.md and its tables are artifacts of the run (`python -m flows report {tracker.run_id}` writes "
              f"them to reports/{tracker.run_id}/); " if until == "report" else "")
    if until in ("prepare", "search"):  # no final configurations yet: the runs
        return f"the runs: {local}{tracker.compare_url().split('?')[0]}?workflowType=machine_learning"
    return f"{report}the configurations side by side: {local}{tracker.compare_url()}"


# The flow's parameters are the settings (flows.settings), so a deployment's custom run can set each one.
_pipeline.__doc__ = docstring(_pipeline.__doc__)
_pipeline.__signature__ = signature()
_pipeline.__annotations__ = {n: p.annotation for n, p in _pipeline.__signature__.parameters.items()}
pipeline = flow(name="pairs", log_prints=True)(_pipeline)


def link_prefect(tracker):
    """Each side names the other: the pipeline's MLflow run is tagged with the Prefect flow run (its id, name and,
    with a Prefect server, its UI page); the flow run gets a link artifact to the MLflow run."""
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    tags = {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name}
    if os.environ.get("PREFECT_API_URL"):  # a temporary server's pages are gone with this process
        tags["prefect.flow_run_url"] = flow_run.ui_url
    tracker.set_tags(tracker.run_id, {k: v for k, v in tags.items() if v})
    create_link_artifact(tracker.ui_url(), link_text=f"MLflow run {tracker.run_id}", key="mlflow-run",
                         description="The pipeline's run in MLflow: its stages, the comparison rows and every fit.")


def publish_table2(final, tracker):
    """Table 2 as a markdown artifact of the flow run (its Artifacts tab in the Prefect UI), with the MLflow link."""
    from prefect.artifacts import create_markdown_artifact

    t2 = R.table2(final)
    create_markdown_artifact(f"# Table 2 (final rounds)\n\n{R.markdown(R.display(t2, 'table2'))}\nMLflow: "
                             f"[the pipeline run]({tracker.ui_url()}), its `final` stage holds one row run per "
                             "configuration.\n", key="table-2", description="Table 2 of this pipeline call")


def run_meta(w, seconds, why_smoke):
    """What the report says about the call: machine, wall time, versions, command, who started it, smoke."""
    import mlflow
    import prefect
    from prefect.runtime import deployment

    if not w.tracker.owned:
        launcher = f"started by `mlflow run` (run {w.tracker.run_id})"
    elif deployment.name:
        launcher = f"started by the Prefect deployment pairs/{deployment.name}"
    else:
        launcher = "started directly"
    return {"machine": describe_machine(w.device), "device": w.device,
            "wall_time": f"{seconds:.0f} s for this pipeline call (groups found in the cache take no time)",
            "versions": f"mlflow {mlflow.__version__}, prefect {prefect.__version__}",
            "command": "python -m flows " + shlex.join(sys.argv[1:]), "launcher": launcher, "smoke": why_smoke}


def _report(run, write):
    """A report writer that adds run.json (protocol, study, selection, machine), from which
    `python -m flows report RUN_ID` rebuilds the report."""
    def report(out):
        (out / "run.json").write_text(json.dumps(run))
        return write(out) + [out / "run.json"]
    return report


def _arms(protocol, study, run, w, started, why_smoke):
    """A study of fixed arms: no search; every arm's final groups on the same rounds, then its report."""
    groups, tracker = P.arm_groups(protocol, study.arms), w.tracker
    final = stage("final", groups, w, Progress(groups),
                  lambda records, out: [R.save_records(records, out / "final_fits.json")])
    if run.until != "final":
        meta = run_meta(w, time.time() - started, why_smoke)
        write_artifacts(tracker, tracker.run_id, "the report", _report(
            {"protocol": asdict(protocol), "study": asdict(study), "meta": meta},
            lambda out: R.arms_report(final, study, protocol, out, meta)))
    return {"run_id": tracker.run_id}


def _run(protocol, study, run, w):
    started, tracker, device = time.time(), w.tracker, w.device
    code = code_version()
    tracker.log_params(tracker.run_id, {f"protocol.{k}": v for k, v in P.protocol_params(protocol).items()}
                       | {"pipeline.profile": run.profile, "pipeline.device": device, "pipeline.code_version": code,
                          "pipeline.study": study.path or "(the profile's grid)"}
                       | {f"search.space.{k}": ",".join(map(str, v)) for k, v in study.space})
    w.context = context = (prepare_data(w.root), code, device)
    why_smoke = registry.smoke(protocol, make_protocol("full", **study.protocol), run.profile)
    if run.until == "prepare":
        return {"run_id": tracker.run_id}
    if study.arms:
        return _arms(protocol, study, run, w, started, why_smoke)
    # an Optuna search: each trial's groups are those of a typical candidate, until its batch is asked
    candidates = study.candidates() if study.method == "grid" else [study.typical()] * study.trials
    search_groups = P.search_groups(protocol, candidates, run.chunk)
    # the final stage's groups under a stand-in selection, until the search has made the real one
    guessed = [] if run.until == "search" else P.final_groups(protocol, {a: {
        "batch_size": min(protocol.batch_sizes), "epochs": max(protocol.epochs)} | (
        {"variant": a} if "variant" in dict(study.space) else {}) | study.final for a in protocol.architectures})
    progress = Progress(search_groups + guessed)
    if study.method == "optuna":
        search = optuna_search(study, protocol, w, progress, P.search_groups(protocol, [study.typical()], run.chunk))
    else:
        search = stage("search", search_groups, w, progress, R.search_artifacts)
    selection = select(search)
    tracker.log_params(tracker.run_id, {f"selected.{a}.{k}": v for a, s in selection.items() for k, v in s.items()}
                       | {f"final.{k}": v for k, v in study.final.items()})
    print(f"[select] {selection}", flush=True)
    if run.until == "search":
        return {"run_id": tracker.run_id, "selection": selection}

    final_groups = P.final_groups(protocol, {a: s | study.final for a, s in selection.items()})
    progress.plan(final_groups, guessed)
    final = stage("final", final_groups, w, progress, R.final_artifacts)
    publish_table2(final, tracker)
    if registry.wanted(run.register_model, why_smoke):
        registry.register_champion(tracker, search, final_groups, selection, study, protocol, run.profile, why_smoke,
                                   context)
    else:
        print(f"[registry] not registered: a smoke run ({why_smoke}); --register-model yes registers it (never as "
              "champion)" if why_smoke else "[registry] not registered (--register-model no)", flush=True)
    if run.until == "final":
        return {"run_id": tracker.run_id, "selection": selection}

    meta = run_meta(w, time.time() - started, why_smoke)

    write_artifacts(tracker, tracker.run_id, "the report", _report(
        {"protocol": asdict(protocol), "study": asdict(study), "selection": selection, "meta": meta},
        lambda out: R.full_report(search, final, selection, protocol, out, meta, study)))
    return {"run_id": tracker.run_id, "selection": selection}

"""A stage of the pipeline: its groups submitted to the call's runner as cached tasks, their fits logged under the
stage's MLflow run (the final stage: under a row run per configuration), its tables and figures written."""
from dataclasses import dataclass, field, replace
from pathlib import Path

from pairs import protocol as P
from pairs import tables as T
from pairs.protocol import FitRecord
from pairs.train import unpack_model

from . import tasks
from .lifetime import signals_held
from .runner import PROGRESS, WorkerEpochs, check_stopping, outcome, remote, stop_event
from .tracking import Tracker


@dataclass
class Work:
    """Where and how groups train: the run tree, the fits' context (data fingerprint, code, device), the data
    root, the device and the call's task runner (flows.runner)."""
    tracker: Tracker
    root: str
    device: str
    context: tuple = ()
    runner: object = None
    chunk: int | None = None  # fits per unit of work (None: groups whole)
    results: str | None = None  # a results folder other than PREFECT_RESULTS_LOCAL_STORAGE_PATH's
    fail_first: str | None = None  # groups whose first attempt fails (to watch a retry)
    submitted: list = field(default_factory=list)  # the task run ids of the groups submitted
    logging: list = field(default_factory=list)  # the futures of the log_fits tasks
    labels: dict = field(default_factory=dict)  # group label -> group, for the epochs workers report

    def train_task(self, group):
        """The training task of a group: its results in `results` when set; a group that `fail_first` names is
        trained again even when cached (its fresh result replaces the equal cached one), so its retry shows."""
        options = {"result_storage": Path(self.results).resolve()} if self.results else {}
        if self.fail_first and self.fail_first in group.label:
            options["refresh_cache"] = True
        return tasks.train.with_options(**options) if options else tasks.train


def train_groups(groups, parents, w, progress):
    """Train groups (cached tasks, in parts of `w.chunk` fits) and log their fits, with the models a group keeps,
    under `parents` (a run id, or one per group). Every part is submitted at once; the records, in the groups'
    order, once every fit is logged."""
    records = collect(submit(groups, parents, w, progress), w, progress)
    [f.result() for f in w.logging]
    return records


def submit(groups, parents, w, progress):
    """The groups' parts submitted to the call's runner: [(part, parent, future)]."""
    parents = [parents] * len(groups) if isinstance(parents, str) else parents
    parts = [(part, parent) for g, parent in zip(groups, parents) for part in P.split([g], w.chunk)]
    far = remote(w.runner)
    if far:  # epochs trained on workers come back as Dask events: progress lines here
        w.labels.update((g.label, g) for g, _ in parts)
        w.runner.client.subscribe_topic(PROGRESS, lambda event: progress.epoch(
            w.labels[event[1]["label"]], event[1]["epoch"], event[1]["epochs"], event[1]["n"]))

    def hook(group):  # each epoch: progress lines, and where a stop takes effect
        if far:
            return WorkerEpochs(group.label, stop_event())
        return lambda epoch, epochs, n: (check_stopping(), progress.epoch(group, epoch, epochs, n))
    with signals_held():  # what is submitted is recorded (a stop marks these task runs crashed)
        futures = [w.runner.submit(w.train_task(g), {"group": g, "context": w.context, "root": w.root, "device": w.device,
                                             "on_epoch": hook(g), "threads": 1 if far else None,
                                             "fail_first": w.fail_first}) for g, _ in parts]
        w.submitted += [f.task_run_id for f in futures]
    return [(g, parent, f) for (g, parent), f in zip(parts, futures)]


def collect(submitted, w, progress):
    """The records of submitted parts, taken in order as they come; their fits' logging submitted (`w.logging`)."""
    records = []
    for group, parent, future in submitted:
        out, cached = outcome(future)
        progress.end(group, cached)
        got = [FitRecord.from_json(d) for d in out["records"]]
        models = [unpack_model(r.config, r.seed, m) for r, m in zip(got, out["models"])] or None
        example = P.fit_data(got[0], w.root).eval_input[:3].float().numpy() if models else None
        with signals_held():  # what is submitted is recorded (a stop waits for these fits to be logged)
            w.logging.append(tasks.log_fits.submit(w.tracker, got, parent, w.context, fits_label(group), models,
                                                   example))
        records += got
    return records


def fits_label(group):
    """What a group's fit runs are named after: its label without the part (each fit's round and fold follow it)."""
    return replace(group, part="").label


def stage(name, groups, w, progress, artifacts):
    """One stage: train its groups, log their fits under a stage run, write its artifacts (`artifacts(records,
    folder)`). In the final stage each group (a configuration) has a row run that holds its fits and Table 2's
    numbers (the MLflow UI's comparison view)."""
    run_id = w.tracker.child(name, {"pairs.stage": name})
    rows = [w.tracker.row(g.label.removeprefix("final "), run_id, g.fits[0].config) for g in groups
            ] if name == "final" else run_id
    records = train_groups(groups, rows, w, progress)
    if name == "final":
        for g, row in zip(groups, rows):
            keys = {f.key() for f in g.fits}
            w.tracker.end_row(row, T.table2_row([r for r in records if r.key() in keys]))
    tasks.write_artifacts(w.tracker, run_id, name, lambda out: artifacts(records, out))
    w.tracker.end(run_id)
    return records

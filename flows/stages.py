"""A stage of the pipeline: a plan's groups submitted to the call's runner as cached tasks, their fits logged under
the stage's MLflow run, its tables and figures written.

`stage(plan, call, progress)` does a stage's bookkeeping (its run, waiting for the fits' logging, its artifacts,
its end); the plan says what trains under it: `Groups` (the grid search's cells), `Final` (the final rounds, a row
run per configuration with Table 2's numbers) or flows.search.OptunaSearch (trials asked as earlier ones end).
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pairs import protocol, tables
from pairs import report as reports
from pairs.groups import split
from pairs.protocol import FitRecord
from pairs.studies import Study

from . import tasks
from .lifetime import signals_held
from .runner import PROGRESS, WorkerEpochs, check_stopping, outcome, remote, stop_event
from .settings import Run
from .tracking import Tracker


@dataclass
class Call:
    """One pipeline call's state, passed whole: its settings (`run`), protocol and study, its run tree, the data root
    and device, when it began and why it is a smoke run ('' for a full run); once the runner has started, the fits'
    context (pairs.protocol.Context) and the runner (flows.runner), and what has been submitted and logged."""
    run: Run
    protocol: protocol.Protocol
    study: Study
    tracker: Tracker
    root: str
    device: str
    began: float
    smoke: str
    context: protocol.Context | None = None
    runner: object = None
    submitted: list = field(default_factory=list)  # the task run ids of the parts submitted
    logging: list = field(default_factory=list)  # the futures of the log_fits tasks
    labels: dict = field(default_factory=dict)  # part label -> part, for the epochs workers report

    def train_task(self, group):
        """The training task of a group: its results in `run.results` when set; a group that `run.fail_first` names
        is trained again even when cached (its fresh result replaces the equal cached one), so its retry shows."""
        options = {"result_storage": Path(self.run.results).resolve()} if self.run.results else {}
        if self.run.fail_first and self.run.fail_first in group.label:
            options["refresh_cache"] = True
        return tasks.train.with_options(**options) if options else tasks.train


@dataclass
class Groups:
    """A stage of fixed groups: the grid search's cells; its artifacts, Table 1 and its heat map."""
    groups: list
    name, tags = "search", {}  # the stage, its run's tags beyond pairs.stage

    def train(self, call, run_id, progress):
        return collect(submit(self.groups, run_id, call, progress), call, progress)

    def artifacts(self, records, out):
        return reports.search_artifacts(records, out)


@dataclass
class Final:
    """The final rounds: each group (a configuration) trains under a row run that then holds its Table 2 numbers
    (the MLflow UI's comparison view). Artifacts: Table 2 (`table`, once trained), its statistics and figures; for a
    study of arms (`arms`), only the records (their report compares arms, not variants)."""
    groups: list
    arms: bool = False
    table: object = None
    records: list = None
    name, tags = "final", {}

    def train(self, call, run_id, progress):
        rows = [call.tracker.row(g.label.removeprefix("final "), run_id, g.fits[0].config) for g in self.groups]
        records = collect(submit(self.groups, rows, call, progress), call, progress)
        for g, row in zip(self.groups, rows):
            keys = {f.key() for f in g.fits}
            call.tracker.end_row(row, tables.table2_row([r for r in records if r.key() in keys]))
        self.records, self.table = records, None if self.arms else tables.table2(records)
        return records

    def artifacts(self, records, out):
        if self.arms:
            return [reports.save_records(records, out / "final_fits.json")]
        return reports.final_artifacts(records, out, self.table)


def stage(plan, call, progress):
    """One stage: its run, the plan's groups trained and their fits logged under it, its artifacts, its end."""
    run_id = call.tracker.child(plan.name, {"pairs.stage": plan.name} | plan.tags)
    records = plan.train(call, run_id, progress)
    [f.result() for f in call.logging]
    tasks.write_artifacts(call.tracker, run_id, plan.name, lambda out: plan.artifacts(records, out))
    call.tracker.end(run_id)
    return records


def submit(groups, parents, call, progress):
    """The groups' parts (`run.chunk` fits each, or whole) submitted to the call's runner, to be logged under
    `parents` (a run id, or one per group): [(part, parent, future)]."""
    parents = [parents] * len(groups) if isinstance(parents, str) else parents
    parts = [(part, parent) for g, parent in zip(groups, parents) for part in split([g], call.run.chunk)]
    far = remote(call.runner)
    if far:  # epochs trained on workers come back as Dask events: progress lines here
        call.labels.update((g.label, g) for g, _ in parts)
        call.runner.client.subscribe_topic(PROGRESS, lambda event: progress.epoch(
            call.labels[event[1]["label"]], event[1]["epoch"], event[1]["epochs"], event[1]["n"]))

    def hook(group):  # each epoch: progress lines, and where a stop takes effect
        if far:
            return WorkerEpochs(group.label, stop_event())
        return lambda epoch, epochs, n: (check_stopping(), progress.epoch(group, epoch, epochs, n))
    with signals_held():  # what is submitted is recorded (a stop marks these task runs crashed)
        futures = [call.runner.submit(call.train_task(g), {
            "group": g, "context": call.context, "root": call.root, "device": call.device, "on_epoch": hook(g),
            "threads": 1 if far else None, "fail_first": call.run.fail_first}) for g, _ in parts]
        call.submitted += [f.task_run_id for f in futures]
    return [(g, parent, f) for (g, parent), f in zip(parts, futures)]


def collect(submitted, call, progress):
    """The records of submitted parts, taken in order as they come; their fits' logging submitted (`call.logging`)."""
    records = []
    for part, parent, future in submitted:
        out, cached = outcome(future)
        progress.part_done(part, cached)
        got = [FitRecord.from_json(d) for d in out["records"]]
        models = [tasks.unpack_model(r.config, r.seed, m) for r, m in zip(got, out["models"])] or None
        example = np.asarray(out["example"], dtype=np.float32) if models else None
        with signals_held():  # what is submitted is recorded (a stop waits for these fits to be logged)
            call.logging.append(tasks.log_fits.submit(call.tracker, got, parent, call.context, fits_label(part),
                                                      models, example))
        records += got
    return records


def fits_label(part):
    """What a part's fit runs are named after: its group's label (each fit's round and fold follow it)."""
    return replace(part, part="").label

"""The pipeline flow: the study's protocol, step by step, as Prefect tasks tracked in MLflow.

prepare the data -> search (Table 1: a grid of cross-validated cells, or an Optuna search) -> select per
architecture -> final rounds (Table 2) -> register the best model -> report. A study of fixed arms has no search:
every arm's final rounds on the same rounds, then its report. `until` stops after a step. Each step is a task
(flows.tasks) or a call into the module named for its job: flows.settings and flows.preflight (the checks before
any work), flows.stages (a stage: its plan's groups trained, their fits logged), flows.search (the Optuna plan),
flows.runner (threads or Dask), flows.progress, flows.registry, flows.report, flows.lifetime (how the call ends:
its MLflow runs ended FINISHED, FAILED or KILLED). `Call` (flows.stages) carries the call's state through them.
"""
import time
from pathlib import Path

from prefect import flow

from pairs import arms
from pairs.groups import arm_groups, final_groups
from pairs.protocol import Context
from pairs import report as reports
from pairs.data import data_root
from pairs.machine import resolve_device

from . import links, registry
from .lifetime import guard_child, runs_ended
from .prefect_artifacts import link_prefect, publish_table2
from .progress import Progress, planned
from .report import writer
from .runner import running
from .search import OptunaSearch
from .preflight import preflight
from .settings import make_protocol, settings_as_parameters, validate
from .stages import Call, Final, Groups, stage
from .tasks import code_version, prepare_data, select, write_artifacts
from .tracking import Tracker, pipeline_params, selection_params


# The one call at import, and a no-op but in a flow run that `python -m flows serve` spawned: that process imports
# this module (to unpickle the flow) before Prefect starts its temporary server, and has no earlier hook. There it
# makes the flow run, and that server, end with serve (flows.lifetime).
guard_child()


@flow(name="pairs", log_prints=True)
@settings_as_parameters  # each setting (flows.settings) a typed parameter: a deployment's custom run sets any
def pipeline(**settings):
    """The study: Table 1 by cross-validated search, the selection, Table 2 by the final rounds, the report."""
    run, protocol, study = validate(**settings)
    preflight(run)
    began = time.time()
    name = run_name(Path(study.path).stem, run.profile, protocol.seed, began)
    tracker = Tracker(run.experiment, run_name=name, tags={
        "pairs.study": Path(study.path).stem or "profile grid", "pairs.profile": run.profile})
    if not tracker.owned:  # the run `mlflow run` opened (named at random): ours says what it is
        tracker.set_tags(tracker.run_id, {"mlflow.runName": name})
    call = Call(run, protocol, study, tracker, str(data_root(run.data_dir)), str(resolve_device(run.device)), began,
                registry.smoke_reason(protocol, make_protocol("full", **study.protocol), run.profile))
    if run.device == "auto":
        print(f"[device] auto: {call.device}", flush=True)
    with runs_ended(tracker, call.logging), running(run, call.submitted) as call.runner:
        link_prefect(tracker)
        call.context = Context(prepare_data(call.root), code_version(), call.device)
        tracker.log_params(tracker.run_id, pipeline_params(protocol, run.profile, study, call.context))
        if run.until == "prepare":
            return result(tracker, run)

        if study.arms:  # no search: the arms' final rounds, on the same rounds
            final = Final(arm_groups(protocol, study.arms), arms=True)
            records = stage(final, call, Progress(final.groups))
            if run.until != "final":
                write_artifacts(tracker, tracker.run_id, "the report", writer(
                    call, None, lambda out, meta: arms.report(records, study, protocol, out, meta)))
            return result(tracker, run)

        searched, guessed = planned(protocol, study, run)
        progress = Progress(searched + guessed)
        search = stage(OptunaSearch(call) if study.method == "optuna" else Groups(searched), call, progress)
        selection = select(search)
        tracker.log_params(tracker.run_id, selection_params(selection, study.final))
        print(f"[select] { {a: c.as_dict() for a, c in selection.items()} }", flush=True)
        if run.until == "search":
            return result(tracker, run, selection)

        final = Final(final_groups(protocol, {a: c.with_options(study.final) for a, c in selection.items()}))
        progress.plan(final.groups, guessed)
        stage(final, call, progress)
        publish_table2(final.table, tracker)
        registry.register(call, search, final, selection)
        if run.until == "final":
            return result(tracker, run, selection)

        write_artifacts(tracker, tracker.run_id, "the report", writer(call, selection, lambda out, meta: (
            reports.full_report(search, final.records, selection, protocol, out, meta, study, final.table))))
        return result(tracker, run, selection)


def run_name(study, profile, seed, began):
    """A pipeline run's name, telling runs apart in the runs list: `pipeline extended quick seed 0 12-04 15:02:07`."""
    when = time.strftime("%m-%d %H:%M:%S", time.localtime(began))
    return " ".join(filter(None, ["pipeline", study, profile, f"seed {seed}", when]))


def result(tracker, run, selection=None):
    """The call's result; its last line (on the console and in the flow run's logs) says where to look."""
    where = where_to_look(tracker, run.until)
    print(f"pipeline run {tracker.run_id} done: {where}", flush=True)
    return {"run_id": tracker.run_id, "where": where} | ({"selection": selection} if selection else {})


def where_to_look(tracker, until):
    """The last line of a run: where its report and the comparison view are."""
    local = "" if tracker.uri.startswith(("http://", "https://")) else "`make ui`, then "
    report = (f"REPORT.md and its tables are artifacts of the run (`python -m flows report {tracker.run_id}` writes "
              f"them to reports/{tracker.run_id}/); " if until == "report" else "")
    if until in ("prepare", "search"):  # no final configurations yet: the runs
        return f"the runs: {local}{links.runs_table(tracker)}"
    return f"{report}the configurations side by side: {local}{links.compare_page(tracker)}"

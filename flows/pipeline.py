"""The pipeline flow: the study's protocol, step by step, as Prefect tasks tracked in MLflow.

prepare the data -> search (Table 1: a grid of cross-validated cells, or an Optuna search) -> select per
architecture -> final rounds (Table 2) -> register the best model -> report. A study of fixed arms has no search:
every arm's final rounds on the same rounds, then its report. `until` stops after a stage. Each step is a task
(flows.tasks) or a call into the module named for its job: flows.stages (train groups, log fits), flows.search
(Optuna), flows.runner (threads or Dask), flows.progress, flows.registry, flows.report, flows.lifetime (how the
call ends: its MLflow runs ended FINISHED, FAILED or KILLED).
"""
import time
from pathlib import Path

from prefect import flow

from pairs import arms
from pairs import protocol as P
from pairs import report as R
from pairs.data import data_root
from pairs.machine import resolve_device

from . import links, registry
from .lifetime import ended, guard_child
from .prefect_artifacts import link_prefect, publish_table2
from .progress import Progress, planned
from .report import writer
from .runner import started, workers
from .search import optuna_search
from .settings import make_protocol, preflight, settings_as_parameters, validate
from .stages import Work, stage
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
    begun = time.time()
    name = run_name(Path(study.path).stem, run.profile, protocol.seed, begun)
    tracker = Tracker(run.experiment, run_name=name, tags={
        "pairs.study": Path(study.path).stem or "profile grid", "pairs.profile": run.profile})
    if not tracker.owned:  # the run `mlflow run` opened (named at random): ours says what it is
        tracker.set_tags(tracker.run_id, {"mlflow.runName": name})
    w = Work(tracker, str(data_root(run.data_dir)), str(resolve_device(run.device)), chunk=run.chunk,
             results=run.results, fail_first=run.fail_first)
    if run.device == "auto":
        print(f"[device] auto: {w.device}", flush=True)
    smoke = registry.smoke(protocol, make_protocol("full", **study.protocol), run.profile)
    with ended(tracker, w.logging), started(run, w.submitted) as w.runner:
        link_prefect(tracker)
        w.context = (prepare_data(w.root), code_version(), w.device)
        tracker.log_params(tracker.run_id, pipeline_params(protocol, run.profile, study, w.context))
        if run.until == "prepare":
            return finish(tracker, run)

        if study.arms:  # no search: the arms' final rounds, on the same rounds
            groups = P.arm_groups(protocol, study.arms)
            final = stage("final", groups, w, Progress(groups),
                          lambda records, out: [R.save_records(records, out / "final_fits.json")])
            if run.until != "final":
                write_artifacts(tracker, tracker.run_id, "the report", writer(
                    tracker, w.device, begun, smoke, protocol, study, None,
                    lambda out, meta: arms.report(final, study, protocol, out, meta)))
            return finish(tracker, run)

        search_groups, guessed = planned(protocol, study, run)
        progress = Progress(search_groups + guessed)
        if study.method == "optuna":
            search = optuna_search(study, protocol, w, progress, workers(w.runner))
        else:
            search = stage("search", search_groups, w, progress, R.search_artifacts)
        selection = select(search)
        tracker.log_params(tracker.run_id, selection_params(selection, study.final))
        print(f"[select] { {a: c.as_dict() for a, c in selection.items()} }", flush=True)
        if run.until == "search":
            return finish(tracker, run, selection)

        final_groups = P.final_groups(protocol, {a: c.with_options(study.final) for a, c in selection.items()})
        progress.plan(final_groups, guessed)
        final = stage("final", final_groups, w, progress, R.final_artifacts)
        publish_table2(final, tracker)
        registry.register(run.register_model, smoke, tracker, search, final_groups, selection, study, protocol,
                          run.profile, w.context)
        if run.until == "final":
            return finish(tracker, run, selection)

        write_artifacts(tracker, tracker.run_id, "the report", writer(
            tracker, w.device, begun, smoke, protocol, study, selection,
            lambda out, meta: R.full_report(search, final, selection, protocol, out, meta, study)))
        return finish(tracker, run, selection)


def run_name(study, profile, seed, started):
    """A pipeline run's name, telling runs apart in the runs list: `pipeline extended quick seed 0 12-04 15:02:07`."""
    when = time.strftime("%m-%d %H:%M:%S", time.localtime(started))
    return " ".join(filter(None, ["pipeline", study, profile, f"seed {seed}", when]))


def finish(tracker, run, selection=None):
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

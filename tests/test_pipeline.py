"""The pipeline end to end on the real Prefect engine and a real MLflow store, read back as a user would."""
import io
import os
import signal
import time
from dataclasses import fields

import pandas as pd
import pytest

from flows import pipeline as flow_module
from flows import tasks
from flows.lifetime import signal_behind
from flows.pipeline import pipeline
from pairs.groups import fit_counts, search_groups
from pairs.protocol import PROFILES, Context, FitRecord

CONTEXT = Context("mnist", "code", "cpu")  # a fit's context, made up

QUICK = PROFILES["quick"]
N_SEARCH, N_FINAL = fit_counts(QUICK)
FIT_PARAMS = {"variant", "architecture", "weight_sharing", "aux_loss", "aux_weight", "batch_size", "epochs", "lr",
              "seed", "round", "stage"}


from conftest import fit_runs, runs  # noqa: E402,F401  (quick_run, the session's quick pipeline, is there too)


def artifact(client, run_id, path, tmp_path):
    return open(client.download_artifacts(run_id, path, str(tmp_path)), "rb").read()


def test_fit_runs_match_the_counts(quick_run):
    client = quick_run["client"]
    fits = fit_runs(client, "quick")
    assert quick_run["fits_after_first"] == len(fits) == N_SEARCH + N_FINAL
    assert sum(r.data.params["stage"] == "search" for r in fits) == N_SEARCH
    for r in fits:
        assert r.info.status == "FINISHED"
        assert FIT_PARAMS <= r.data.params.keys()
        assert ("fold" in r.data.params) == (r.data.params["stage"] == "search")
        evaluated = "val_error" if r.data.params["stage"] == "search" else "test_error"
        assert {"train_loss", "param_count", "s_per_epoch", "train_error", evaluated} <= r.data.metrics.keys()
    one = next(r for r in fits if r.data.params["stage"] == "search")
    seen = one.inputs.dataset_inputs[0].dataset  # the UI's Dataset column: what this fit saw
    assert seen.name == f"search round {one.data.params['round']} fold {one.data.params['fold']}/{QUICK.folds}"
    assert len({r.inputs.dataset_inputs[0].dataset.digest for r in fits}) == QUICK.search_rounds * QUICK.folds + \
        QUICK.final_rounds  # one draw per round (and fold), shared by every cell and variant
    history = client.get_metric_history(one.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, max(QUICK.epoch_grid) + 1))
    scored = client.get_metric_history(one.info.run_id, "val_error")
    assert sorted(m.step for m in scored) == sorted(QUICK.epoch_grid)


def test_run_tree(quick_run):
    client = quick_run["client"]
    all_runs = {r.info.run_id: r for r in runs(client, "quick")}
    root = quick_run["first"]["run_id"]
    stages = {r.info.run_name: rid for rid, r in all_runs.items() if r.data.tags.get("mlflow.parentRunId") == root}
    assert set(stages) == {"search", "final"}
    rows = {rid: r for rid, r in all_runs.items() if r.data.tags.get("mlflow.parentRunId") == stages["final"]}
    name = all_runs[root].info.run_name  # a row is named after its configuration, its test error and its pipeline
    variant_of = {rid: r.info.run_name.split(" · ")[0] for rid, r in rows.items()}
    assert sorted(variant_of.values()) == sorted(QUICK.variants)
    for r in rows.values():
        m, s = 100 * r.data.metrics["test_error_mean"], 100 * r.data.metrics["test_error_std"]
        assert r.info.run_name == f"{variant_of[r.info.run_id]} · test error {m:.2f} ± {s:.2f}% · {name}"
    for r in fit_runs(client, "quick"):
        parent = r.data.tags["mlflow.parentRunId"]
        assert parent == stages["search"] if r.data.params["stage"] == "search" else \
            variant_of[parent] == r.data.params["variant"]
    names = [r.info.run_name for r in fit_runs(client, "quick")]
    assert len(set(names)) == len(names) and "final MLP_WS r1" in names and "search MLP batch 50 r1 f2" in names
    pipelines = {root, quick_run["second"]["run_id"]}  # (the second call's runs: its stages and rows, no fits)
    for r in all_runs.values():  # every run says its kind, pipeline, study, profile (and stage, below the pipeline)
        kind = r.data.tags["pairs.kind"]
        assert r.data.tags["pairs.pipeline_run"] in pipelines and (kind == "pipeline") == (r.info.run_id in pipelines)
        assert (r.data.tags["pairs.profile"], r.data.tags["pairs.study"]) == ("quick", "profile grid")
        assert kind == "pipeline" or "pairs.stage" in r.data.tags, r.info.run_name
    assert all(r.data.tags["pairs.pipeline_run"] == root for r in fit_runs(client, "quick"))
    row = next(r for r in rows.values() if variant_of[r.info.run_id] == "MLP_WS")
    finals = [r for r in fit_runs(client, "quick") if r.data.tags["mlflow.parentRunId"] == row.info.run_id]
    errors = [r.data.metrics["test_error"] for r in finals]
    assert row.data.metrics["test_error_mean"] == pytest.approx(sum(errors) / len(errors))
    assert row.data.metrics["rounds"] == QUICK.final_rounds and "diverged" not in row.data.metrics  # 3 epochs
    assert all("train_aux_loss" not in r.data.metrics for r in finals)  # no aux loss without AL
    assert {"train_seconds", "train_aux_loss"} <= set(next(r for r in fit_runs(client, "quick") if r.data.params[
        "variant"] == "MLP_AL").data.metrics)
    params = all_runs[root].data.params
    for arch in QUICK.architectures:
        assert int(params[f"selected.{arch}.batch_size"]) in QUICK.batch_sizes
        assert int(params[f"selected.{arch}.epochs"]) in QUICK.epoch_grid


def test_artifacts_open(quick_run, tmp_path):
    client = quick_run["client"]
    root = quick_run["first"]["run_id"]
    t1 = pd.read_csv(io.BytesIO(artifact(client, root, "table1.csv", tmp_path)))
    assert len(t1) == len(QUICK.architectures) * len(QUICK.batch_sizes) * len(QUICK.epoch_grid)
    assert {"architecture", "batch_size", "epochs", "val_error_mean", "val_error_std", "published_val_error_mean"} <= set(t1)
    t2 = pd.read_csv(io.BytesIO(artifact(client, root, "table2.csv", tmp_path)))
    assert list(t2.variant) == list(QUICK.variants)
    assert {"train_error_mean", "test_error_mean", "param_count", "s_per_epoch", "published_test_error_mean"} <= set(t2)
    for png in ("loss_ConvNet.png", "loss_MLP.png", "table1_heatmap.png", "test_error_by_round.png"):
        assert artifact(client, root, png, tmp_path).startswith(b"\x89PNG\r\n\x1a\n")
    for svg in ("loss_ConvNet.svg", "loss_MLP.svg"):
        assert b"<svg" in artifact(client, root, svg, tmp_path)[:2000]
    assert b"| variant |" in artifact(client, root, "table2.md", tmp_path)
    report = artifact(client, root, "REPORT.md", tmp_path).decode()
    assert "## Table 1" in report and "## Table 2" in report
    # a smoke run: a banner; no claims, tests or "diverged" labels that two rounds of 3 epochs cannot support
    assert "> **Smoke run** (the quick profile)" in report and "## Conclusions" not in report
    assert "Left out: 2 final rounds, and a paired test or interval needs at least 5; a smoke run" in report
    assert "none is called diverged" in report and "beyond the spread" not in report
    stage_files = {r.info.run_name: {a.path for a in client.list_artifacts(r.info.run_id)}
                   for r in runs(client, "quick") if r.info.run_name in ("search", "final")}
    assert {"table1.csv", "table1.md", "table1_heatmap.png"} <= stage_files["search"]
    assert {"table2.csv", "table2.md", "loss_ConvNet.png", "statistics.csv"} <= stage_files["final"]


def test_prefect_and_mlflow_name_each_other(quick_run):
    """The MLflow pipeline run carries its Prefect flow run; the flow run has a link to the MLflow run and Table 2 as
    artifacts; task runs are named for what they do."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    run = quick_run["client"].get_run(quick_run["first"]["run_id"])
    flow_run = run.data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))}
        tasks = {t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[flow_run])))}
    assert quick_run["first"]["run_id"] in artifacts["mlflow-run"].data
    assert "| MLP_WS_AL |" in artifacts["table-2"].data and "test error %" in artifacts["table-2"].data
    assert {"prepare data", "select", "search MLP batch 50", "final MLP_WS", "log final MLP_WS",
            "log search ConvNet batch 25", "artifacts of the report"} <= tasks, tasks


def test_second_call_hits_the_cache(quick_run):
    assert len(fit_runs(quick_run["client"], "quick")) == quick_run["fits_after_first"]
    assert quick_run["second"]["selection"] == quick_run["first"]["selection"]
    assert quick_run["trained_again"] == []  # no group trained: all came from the cache (times are not tests)


def test_code_edit_invalidates_the_cache(prefect_env, data_dir, store, monkeypatch):
    small = dict(profile="quick", data_dir=data_dir, experiment="edit", final_rounds=1, search_rounds=1)
    pipeline(**small)
    before = {r.data.tags["pairs.fit_key"] for r in fit_runs(store, "edit")}
    monkeypatch.setattr(flow_module, "code_version", lambda: "an-edited-library")
    pipeline(**small)
    after = {r.data.tags["pairs.fit_key"] for r in fit_runs(store, "edit")}
    assert len(after) == 2 * len(before)  # every fit retrained and logged anew


def test_code_version_sees_any_edit_of_the_training_code_and_only_that(tmp_path):
    import shutil
    from pathlib import Path
    import pairs
    pkg = tmp_path / "pairs"
    shutil.copytree(Path(pairs.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    v0 = tasks.code_version(pkg)
    assert v0 == tasks.code_version(Path(pairs.__file__).parent)
    for name in ("report.py", "stats.py", "studies.py"):  # what a fit does not depend on
        (pkg / name).write_text((pkg / name).read_text() + "\n# edit\n")
    assert tasks.code_version(pkg) == v0
    for name in tasks.TRAINING_CODE:
        (pkg / name).write_text((pkg / name).read_text() + "\n# edit\n")
        assert tasks.code_version(pkg) != v0
        v0 = tasks.code_version(pkg)
    # every module that training reaches (pairs.groups.train_group and what it imports, within pairs) is in the
    # version, but the machine probe (which device, not what a fit computes): a module split off must not fall out
    import ast
    reached, todo = set(), ["groups.py"]
    while todo:
        name = todo.pop()
        reached.add(name)
        tree = ast.parse((Path(pairs.__file__).parent / name).read_text())
        todo += [f"{n.module}.py" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                 and n.module and f"{n.module}.py" not in reached]
    assert reached - {"machine.py"} <= set(tasks.TRAINING_CODE), reached - set(tasks.TRAINING_CODE)


def test_a_new_store_gets_every_cached_fit(quick_run, prefect_env, data_dir, store):
    """Cached groups meeting a store that lacks their runs are logged there: no store has missing fits."""
    pipeline(profile="quick", data_dir=data_dir, experiment="quick")
    assert len(fit_runs(store, "quick")) == N_SEARCH + N_FINAL


def test_report_regenerates_from_the_store(quick_run, tmp_path, monkeypatch):
    from flows.report import regenerate
    client = quick_run["client"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", quick_run["uri"])
    root = quick_run["first"]["run_id"]
    paths = regenerate(root, tmp_path / "out")
    assert (tmp_path / "out" / "REPORT.md").read_bytes() == artifact(client, root, "REPORT.md", tmp_path / "dl")
    assert (tmp_path / "out" / "table2.csv").read_bytes() == artifact(client, root, "table2.csv", tmp_path / "dl")
    assert len(paths) > 10


def test_two_runs_beside_each_other(quick_run, tmp_path, monkeypatch):
    """`python -m flows report RUN RUN`: one table of both runs' final rows (the second run's came from the cache:
    the same numbers) and each second-run row paired with the first run's rows of its architecture."""
    from flows.report import main
    monkeypatch.setenv("MLFLOW_TRACKING_URI", quick_run["uri"])
    a, b = quick_run["first"]["run_id"], quick_run["second"]["run_id"]
    assert main([a, b, "--out", str(tmp_path / "beside")]) == 0
    t2 = pd.read_csv(tmp_path / "beside" / "beside_table2.csv")
    first = pd.read_csv(io.BytesIO(artifact(quick_run["client"], a, "table2.csv", tmp_path / "dl")))
    assert len(t2) == 2 * len(first) == 16 and list(t2.row) == list(range(1, 17))
    for study in t2.study.unique():
        mine = t2[t2.study == study].set_index("variant")
        assert mine.test_error_mean.to_dict() == pytest.approx(first.set_index("variant").test_error_mean.to_dict())
    paired = pd.read_csv(tmp_path / "beside" / "beside_paired.csv")
    assert len(paired) == 8 * 4  # each of the second run's rows against the 4 of its architecture in the first
    rows = t2.set_index("row")
    same = paired[[rows.variant[r] == rows.variant[g] for r, g in zip(paired.row, paired.against)]]
    assert len(same) == 8 and (same.n == QUICK.final_rounds).all() and (same.diff_mean == 0).all()
    assert (tmp_path / "beside" / "beside_test_error.png").stat().st_size > 0
    text = (tmp_path / "beside" / "beside.md").read_text()
    assert "#9 " in text and "**Smoke run** among them" in text  # both are quick runs
    assert "nan" not in text and f"n={QUICK.final_rounds} paired rounds, too few for an interval" in text


def test_statistics_match_a_direct_computation_on_the_logged_errors(quick_run, tmp_path):
    """statistics.csv against scipy on the test errors as MLflow holds them, per technique and architecture."""
    from scipy import stats
    client = quick_run["client"]
    stats_csv = pd.read_csv(io.BytesIO(artifact(client, quick_run["first"]["run_id"], "statistics.csv", tmp_path)))
    logged = {}
    for r in fit_runs(client, "quick"):
        if r.data.params["stage"] == "final":
            logged[(r.data.params["variant"], int(r.data.params["round"]))] = r.data.metrics["test_error"]
    rounds = sorted({k[1] for k in logged})
    for arch in ("ConvNet", "MLP"):
        for name, base, treated in (("WS vs plain", "", "_WS"), ("AL vs plain", "", "_AL"), ("AL vs WS", "_WS", "_AL"),
                                    ("WS+AL vs AL", "_AL", "_WS_AL"), ("WS+AL vs WS", "_WS", "_WS_AL")):
            a = [logged[(arch + base, k)] for k in rounds]
            b = [logged[(arch + treated, k)] for k in rounds]
            row = stats_csv[(stats_csv.architecture == arch) & (stats_csv.comparison == name)].iloc[0]
            diffs = [y - x for x, y in zip(a, b)]
            assert row.n == len(rounds)
            assert row.diff_mean == pytest.approx(sum(diffs) / len(diffs), abs=1e-9)
            if len(set(diffs)) > 1:
                assert row.t_pvalue == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-6)
                half = stats.t.ppf(0.975, len(diffs) - 1) * stats.tstd(diffs) / len(diffs) ** 0.5
                assert row.ci_high - row.ci_low == pytest.approx(2 * half, rel=1e-6)


def test_progress_lines_reach_the_prefect_logs(quick_run):
    """While a group trains: stage, group, epoch, fits done and the ETA, in the flow run's logs (the Prefect UI)."""
    from prefect.client.orchestration import get_client
    messages, offset = [], 0
    with get_client(sync_client=True) as client:
        while page := client.read_logs(limit=200, offset=offset):
            messages += [log.message for log in page]
            offset += len(page)
    epochs = [m for m in messages if m.startswith("[search] search ConvNet batch 25: epoch ")]
    assert [m.split(";")[0][-3:] for m in epochs[:3]] == ["1/3", "2/3", "3/3"], epochs[:3]
    assert all(" fits done, elapsed " in m and ", ETA " in m for m in epochs)
    assert any(m.startswith(f"[final] final MLP_WS_AL: done; {N_SEARCH + N_FINAL}/{N_SEARCH + N_FINAL} fits done")
               for m in messages)
    assert any("from the cache" in m for m in messages)  # the second call's groups


def test_a_signal_that_prefect_turned_into_its_own_error_is_still_a_signal():
    """SIGTERM while Prefect creates a task run comes out as Prefect's "Task run is not set" (its crash handler
    fails); the pipeline must still end its runs KILLED and die by the signal."""
    from prefect.exceptions import TerminationSignal
    try:
        try:
            raise TerminationSignal(signal.SIGTERM)
        except TerminationSignal:
            raise ValueError("Task run is not set")
    except ValueError as e:
        assert isinstance(signal_behind(e), TerminationSignal)
    assert signal_behind(ValueError("a plain error")) is None
    assert isinstance(signal_behind(KeyboardInterrupt()), KeyboardInterrupt)


def test_signals_held_take_effect_as_the_block_ends():
    from flows.lifetime import signals_held
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as a terminal gives it, even
    try:  # when the suite runs in the background (where SIGINT is ignored, and nothing is held)
        reached = False
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run by now: it only noted the signal
                reached = True
        assert reached and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def a_record():
    """A search fit of the quick profile with made-up results."""
    fit = search_groups(PROFILES["quick"])[0].fits[0]
    return FitRecord(**{f.name: getattr(fit, f.name) for f in fields(fit)}, train_loss=(0.5,), main_loss=(0.5,),
                       aux_loss=(), scores=((1, 0.1, 0.2),), param_count=1, s_per_epoch=0.1)


def a_tracker(tmp_path, monkeypatch):
    """A pipeline's tracker on a real SQLite store with its search stage run open: (tracker, stage run id, a
    function that reads the store's runs)."""
    from mlflow.tracking import MlflowClient

    from flows.tracking import Tracker
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracker = Tracker("tracked", run_name="pipeline", uri=uri)
    return tracker, tracker.child("search"), lambda: runs(MlflowClient(uri), "tracked")


def test_a_fit_whose_logging_failed_is_finished_by_the_retry(tmp_path, monkeypatch):
    """A logging attempt that fails half-way leaves its run RUNNING: the retry finishes that run (no second run for
    the fit, no FAILED one), and the pipeline's end leaves one FINISHED run for the fit."""
    import numpy as np
    tracker, stage, runs_now = a_tracker(tmp_path, monkeypatch)
    with pytest.raises(TypeError):  # the fit's metrics are logged, then its "model" fails to log
        tracker.log_fits([a_record()], stage, CONTEXT, models=["not a model"],
                         example=np.zeros((3, 2, 14, 14), "float32"))
    tracker.log_fits([a_record()], stage, CONTEXT)  # the retry
    tracker.end_all()
    assert sorted(r.info.status for r in runs_now() if "pairs.fit_key" in r.data.tags) == ["FINISHED"]


def test_no_run_is_created_once_the_runs_are_ended(tmp_path, monkeypatch):
    """A signal has the main thread end the runs (finish) while a logging thread may still create a fit run:
    that run is either ended by finish or never created, so none is left RUNNING."""
    tracker, stage, runs_now = a_tracker(tmp_path, monkeypatch)
    tracker.end_all("KILLED")
    with pytest.raises(RuntimeError, match="no new run"):
        tracker.child("a fit logged after the signal")
    # the logging task the stop could not wait for says so and ends (no retries, no error at exit)
    assert tasks.log_fits.fn(tracker, [a_record()], stage, (), 1) is None
    runs = runs_now()
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"] and stage in {r.info.run_id for r in runs}

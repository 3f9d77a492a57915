"""Many pipelines, one tracking server: real `mlflow server`s (two workers, as a team would run one) on a SQLite
store and on a PostgreSQL database, five pipelines (seeds 101-105) started at once on each, reporting to the
session's Prefect server. Every fit is logged exactly once, every run ends FINISHED, and each pipeline's fits hold
what the same pipeline alone would log (its fits trained here by the library). Also the retry path: a logging
attempt that fails after creating its run, retried by the real Prefect engine, leaves one FINISHED run."""
import functools
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pairs.groups import final_groups, search_groups, train_group
from pairs.protocol import Context, FitRecord, PROFILES
from pairs.selection import choose, search_table

CONTEXT = Context("mnist", "code", "cpu")  # a fit's context, made up

from conftest import _port, _serve
from test_machines import assert_same_as_in_process, records_of

SEEDS = (101, 102, 103, 104, 105)
MLPS = ("MLP", "MLP_WS", "MLP_AL", "MLP_WS_AL")
# the quick profile's MLP fits (12 search, 8 final: each final round's pairs the input of 4 fits), one epoch each
SMALL = dict(pairs=200, epoch_grid=(1,), architectures=("MLP",), variants=MLPS)
FLAGS = ("--pairs", "200", "--epoch-grid", "1", "--architectures", "MLP", "--variants", ",".join(MLPS),
         "--until", "final", "--register-model", "no")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """A fresh `mlflow server --workers 2` on a SQLite file or on the session's PostgreSQL cluster (its own
    database, so each run of this module starts empty): its URL."""
    import signal
    tmp, port = tmp_path_factory.mktemp(f"server-{request.param}"), _port()
    if request.param == "sqlite":
        store = f"sqlite:///{tmp / 'mlflow.db'}"
    else:
        from sqlalchemy import create_engine, text
        base = request.getfixturevalue("postgres")
        name = f"shared_{os.getpid()}_{port}"
        with create_engine(base, isolation_level="AUTOCOMMIT").connect() as db:
            db.execute(text(f"CREATE DATABASE {name}"))
        store = base.rsplit("/", 1)[0] + f"/{name}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = _serve([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
                   "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "2"], f"http://127.0.0.1:{port}/health", tmp / "server.log", env,
                  f"mlflow server on {request.param}")
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@functools.cache
def alone(seed, root):
    """The records the pipeline of `seed` logs, trained here by the library: search, selection, final."""
    q = PROFILES["quick"].with_(seed=seed, **SMALL)
    search = [r for g in search_groups(q) for r in train_group(g, root)[0]]
    selection = choose(search_table(search))
    return search + [r for g in final_groups(q, selection) for r in train_group(g, root)[0]]


@pytest.mark.slow
def test_five_pipelines_at_once_log_every_fit_once(server, prefect_server, data_dir, tmp_path):
    """Five pipelines started together on one server, in one experiment that none of them finds at its start: each
    exits 0; the store holds 5 x 20 fit runs, all FINISHED, each fit key once; each pipeline's tree holds its own 20
    fits with the numbers the same pipeline alone gives (the artifacts' records and the fit runs' metrics)."""
    from mlflow.tracking import MlflowClient

    from flows.tasks import code_version
    from pairs.data import mnist_fingerprint
    env = dict(os.environ, PAIRS_DATA_DIR=data_dir, PREFECT_API_URL=prefect_server, MLFLOW_TRACKING_URI=server,
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / "results"), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_RUN_ID", None)
    logs = {s: open(tmp_path / f"pipeline-{s}.log", "w+") for s in SEEDS}
    begun = time.time()
    procs = {s: subprocess.Popen([sys.executable, "-m", "flows", "--profile", "quick", "--seed", str(s), *FLAGS,
                                  "--experiment", "shared"], env=env, stdout=logs[s], stderr=subprocess.STDOUT)
             for s in SEEDS}
    expected = {s: alone(s, data_dir) for s in SEEDS}  # (trained while the pipelines run; once for both servers)
    codes = {s: p.wait(timeout=600) for s, p in procs.items()}
    took = time.time() - begun
    out = {s: Path(logs[s].name).read_text() for s in SEEDS}
    assert set(codes.values()) == {0}, {s: out[s][-3000:] for s, c in codes.items() if c}

    client = MlflowClient(server)
    exp = client.get_experiment_by_name("shared").experiment_id
    fits = client.search_runs([exp], "tags.`pairs.fit_key` != ''", max_results=5000)
    per_key = Counter(r.data.tags["pairs.fit_key"] for r in fits)
    said = [ln for s in SEEDS for ln in out[s].splitlines() if "Retry" in ln or "rror" in ln]
    assert len(fits) == 100 and set(per_key.values()) == {1}, (len(fits), per_key.most_common(3), said[:10])
    everything = client.search_runs([exp], max_results=5000)
    assert {r.info.status for r in everything} == {"FINISHED"}, [
        (r.info.run_name, r.info.status) for r in everything if r.info.status != "FINISHED"]

    context = (mnist_fingerprint(data_dir), code_version(), "cpu")
    for s in SEEDS:
        run_id = out[s].split("pipeline run ")[1].split()[0]
        assert_same_as_in_process(records_of(client, run_id, tmp_path / str(s)), expected[s])
        mine = {r.data.tags["pairs.fit_key"]: r for r in fits if r.data.tags["pairs.pipeline_run"] == run_id}
        assert set(mine) == {r.key(context) for r in expected[s]}, s
        for r in expected[s]:
            logged = mine[r.key(context)].data
            assert logged.params["seed"] == str(r.seed) and logged.params["round"] == str(r.round)
            scored = "val_error" if r.stage == "search" else "test_error"
            assert logged.metrics[scored] == r.scores[-1][2] and logged.metrics["train_error"] == r.scores[-1][1]
            assert logged.metrics["train_loss"] == pytest.approx(r.train_loss[-1], rel=1e-6, abs=0)
    print(f"\n5 pipelines at once on {server}: {took:.0f} s", file=sys.stderr)


def made_up(n):
    """n search fits of the quick profile (one cell's rounds and folds) with made-up results of 50 epochs."""
    from dataclasses import fields
    fits = [f for g in search_groups(PROFILES["quick"]) for f in g.fits][:n]
    return [FitRecord(**{f.name: getattr(fit, f.name) for f in fields(fit)}, train_loss=tuple(
        0.7 / (e + 1) for e in range(50)), main_loss=(), aux_loss=(), scores=((25, 0.1, 0.2), (50, 0.05, 0.18)),
        param_count=1, s_per_epoch=0.1) for fit in fits]


def test_a_logging_attempt_that_fails_after_creating_its_run_is_finished_by_its_retry(server, prefect_env,
                                                                                    monkeypatch):
    """Three fits logged by the real Prefect task; the first attempt logs the first fit, creates the second's run
    and fails at its dataset input; Prefect's retry finishes that run: three runs, all FINISHED, one per fit, each
    with its values once (the same metric history as a fit logged in one go)."""
    from mlflow.tracking import MlflowClient
    from prefect import flow

    from flows import tasks
    from flows.tracking import Tracker
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracker = Tracker("retry", run_name="pipeline", uri=server)
    stage = tracker.child("search")
    inputs, real = [], MlflowClient.log_inputs

    def fails_once_at_the_second(self, run_id, *args, **kwargs):
        inputs.append(run_id)
        if len(inputs) == 2:
            raise RuntimeError("injected: the dataset input of the second fit fails once")
        return real(self, run_id, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, "log_inputs", fails_once_at_the_second)

    @flow
    def logging():
        return tasks.log_fits(tracker, made_up(3), stage, CONTEXT, "search ConvNet")
    ids = logging()
    tracker.end_all()
    client = MlflowClient(server)
    fits = [r for r in client.search_runs([tracker.experiment_id]) if "pairs.fit_key" in r.data.tags]
    assert inputs[1] == inputs[2] == ids[1] and len(inputs) == 4  # the retry used the run the failure left
    assert sorted(r.info.run_id for r in fits) == sorted(ids) and {r.info.status for r in fits} == {"FINISHED"}
    assert len({r.data.tags["pairs.fit_key"] for r in fits}) == 3
    history = [[(m.step, m.value) for m in client.get_metric_history(i, "train_loss")] for i in ids]
    assert history[1] == history[0] == [(e + 1, 0.7 / (e + 1)) for e in range(50)]
    assert all(client.get_run(i).inputs.dataset_inputs for i in ids)

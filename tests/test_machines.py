"""More machines: the quick profile on a real Dask scheduler and two one-thread workers, reporting to a real
Prefect server and tracked on a real MLflow server (all on 127.0.0.1), against the in-process run; a worker
killed mid-run; the scheduler gone and back. (The clear errors of --cluster/--workers/--chunk, and of a worker
without the data: test_bad_input.)"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from pairs.groups import fit_counts
from pairs.protocol import FitRecord, PROFILES

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The servers, the scheduler and the workers, each a process with its own log file."""

    def __init__(self, tmp, api, tracking):
        self.tmp, self.procs = tmp, {}
        self.env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                        DO_NOT_TRACK="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1",
                        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "PAIRS_DATA_DIR"):
            self.env.pop(key, None)  # a worker gets everything as task parameters
        self.dask, self.api, self.tracking = free_port(), api, tracking
        self.scheduler = f"tcp://127.0.0.1:{self.dask}"

    def start(self, name, *cmd):
        log = open(self.tmp / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name):
        return (self.tmp / f"{name}.log").read_text()

    def start_dask(self):
        self.start("scheduler", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(self.dask), "--no-dashboard")
        for w in ("w0", "w1"):
            self.start(w, "dask", "worker", self.scheduler, "--nthreads", "1", "--name", w, "--no-dashboard")
        self.wait(lambda: self.log("w0").count("Registered to") and self.log("w1").count("Registered to"), "workers")

    def wait(self, ready, what, timeout=240):
        deadline = time.time() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            assert time.time() < deadline and not dead, f"{what} not ready; exited: {dead}; " + " | ".join(
                f"{n}: {self.log(n)[-500:]}" for n in self.procs)
            time.sleep(0.5)

    def stop(self, *names):
        for name in names or list(self.procs):
            proc = self.procs.pop(name)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def pipeline(self, data_dir, results, experiment, *flags, on_line=None, where=None, **env):
        """The quick profile on this cluster (or `where`: other flags), its servers and parts of 3 fits (one search round)."""
        env = dict(self.env, PAIRS_DATA_DIR=data_dir, PREFECT_API_URL=self.api, MLFLOW_TRACKING_URI=self.tracking,
                   PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(self.tmp / results), **env)
        proc = self.running = subprocess.Popen(
            [sys.executable, "-m", "flows", "--profile", "quick", *(where or ("--cluster", self.scheduler)),
             "--chunk", "3", "--experiment", experiment, *flags], env=env, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(line)
        return proc.wait(timeout=600), "".join(lines)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, prefect_server, mlflow_server):
    """The scheduler and two workers of this module, on the session's Prefect and MLflow servers."""
    c = Cluster(tmp_path_factory.mktemp("machines"), prefect_server, mlflow_server["url"])
    c.artifacts = mlflow_server["artifacts"]
    try:
        c.start_dask()
        yield c
    finally:
        c.stop()


def records_of(client, run_id, tmp):
    """The fit records the pipeline logged (search, then final), fetched back through the tracking server."""
    stages = {r.data.tags["pairs.stage"]: r.info.run_id for r in client.search_runs(
        [client.get_run(run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")}
    return [FitRecord.from_json(d) for s in ("search", "final") for d in json.loads(Path(
        client.download_artifacts(stages[s], f"{s}_fits.json", str(tmp))).read_text())]


def assert_same_as_in_process(records, in_process):
    """Every fit's losses and errors equal those of the quick profile trained in this process, this session: the
    same fits on the same machine. Exact in everything but the losses, which may differ in their last bits: on an
    AMD EPYC, one fit of the 40 (trained on a worker after the kill) came back one float32 ulp apart at epoch 3
    (5.96e-8), which no in-process order, thread count, chunking or plain Dask worker reproduced."""
    assert len(records) == len(in_process)
    losses = ("train_loss", "main_loss", "aux_loss")
    for r, here in zip(records, in_process):
        unit = (r.stage, r.variant, r.config.batch_size, r.round, r.fold)
        assert replace(r, s_per_epoch=0, **{k: () for k in losses}) == replace(
            here, s_per_epoch=0, **{k: () for k in losses}), unit
        for k in losses:
            assert getattr(r, k) == pytest.approx(getattr(here, k), rel=1e-6, abs=0), (unit, k)


def assert_fits_logged_once(client, experiment, out):
    """One FINISHED run per fit of the quick profile; else the runs of the fits logged more than once (or not
    FINISHED) and the pipeline's retries and failures."""
    exp = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp], "tags.`pairs.fit_key` != ''", max_results=1000)
    done = Counter(r.data.tags["pairs.fit_key"] for r in runs if r.info.status == "FINISHED")
    odd = [(r.info.run_name, r.info.status) for r in runs
           if r.info.status != "FINISHED" or done[r.data.tags["pairs.fit_key"]] > 1]
    said = [ln for ln in out.splitlines() if "Retry" in ln or "failed" in ln or "rror" in ln]
    assert len(done) == sum(fit_counts(PROFILES["quick"])) and set(done.values()) == {1}, (len(done), odd, said[:20])


def open_runs(api, kind="task_runs"):
    """The task (or flow) runs RUNNING or PENDING on this Prefect server."""
    req = urllib.request.Request(f"{api}/{kind}/filter", data=json.dumps(
        {kind: {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.load(answer)


@pytest.mark.slow
def test_the_quick_profile_on_a_cluster_with_servers_and_a_worker_killed_is_the_in_process_run(cluster, data_dir,
                                                                                               tmp_path, quick_records):
    """Search cells in parts of one round on two workers; SIGKILL to a worker process once the first group is
    back (the others are training): Dask gives its task to a worker again (the nanny restarts the killed one),
    the run completes with the in-process records, no fit is logged twice and no task run is left running; the
    fits, the report and its artifacts are on the MLflow server."""
    from mlflow.tracking import MlflowClient
    killed = []

    def kill_a_worker(line):
        if "[search]" in line and not killed:  # w1's worker process, not its nanny
            worker = worker_process(cluster.procs["w1"].pid)
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)
    rc, out = cluster.pipeline(data_dir, "results", "dask", on_line=kill_a_worker)
    assert killed and rc == 0, out[-3000:]
    client = MlflowClient(cluster.tracking)
    run_id = out.split("pipeline run ")[1].split()[0]
    assert_same_as_in_process(records_of(client, run_id, tmp_path), quick_records[1])
    assert_fits_logged_once(client, "dask", out)
    assert "## Table 2" in Path(client.download_artifacts(run_id, "REPORT.md", str(tmp_path))).read_text()
    assert list(cluster.artifacts.rglob("REPORT.md"))  # through the server to its destination
    assert all("Task run 'search " in cluster.log(w) for w in ("w0", "w1"))  # both workers trained
    assert not open_runs(cluster.api)


def worker_process(parent):
    """A Dask worker process (a nanny's spawned child) of `parent`."""
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return next(int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())


def said(out):
    """What the pipeline said, without Prefect's log lines (it may still log its shutdown after our last line)."""
    return [ln for ln in out.strip().splitlines() if not re.match(r"\d\d:\d\d:\d\d\.\d+ \| ", ln)]


@pytest.mark.slow
def test_a_task_dask_gives_up_on_is_one_line_and_leaves_no_run_open(cluster, data_dir):
    """A local cluster (--workers 1) whose scheduler gives a task up at its first worker death (allowed-failures
    0); SIGKILL to the worker process once Prefect shows its task run RUNNING: the pipeline stops with one error
    line, that task run is Crashed, and no run is left RUNNING in MLflow, no task or flow run open in Prefect."""
    killed = []

    def kill_the_worker(line):
        deadline = time.time() + 60
        while not killed and time.time() < deadline:  # groups of ten seconds or more: 4 MLP cells of 1000 pairs, 300 epochs
            training = [t for t in open_runs(cluster.api) if t["name"].startswith("search")]
            if training:
                killed.append(training[0])
                os.kill(worker_process(cluster.running.pid), signal.SIGKILL)
            time.sleep(0.2)
    rc, out = cluster.pipeline(data_dir, "results-given-up", "dask-given-up", "--until", "search", "--architectures",
                               "MLP", "--variants", "MLP", "--pairs", "1000", "--epoch-grid", "300", where=("--workers", "1"),
                               on_line=kill_the_worker, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    assert killed and rc == 1, out[-3000:]
    dask_info = re.compile(r"INFO +\| +distributed\.|distributed\.[\w.]+ +- +INFO")  # (Prefect's handler, or Dask's)
    assert not [ln for ln in out.splitlines() if dask_info.search(ln)], out[-3000:]  # Dask's warnings only
    last = said(out)[-1]
    assert last.startswith("error: the Dask cluster failed (KilledWorker") and "run the same command" in last, last
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cluster.tracking)
    runs = client.search_runs([client.get_experiment_by_name("dask-given-up").experiment_id])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"], out[-3000:]
    assert not open_runs(cluster.api) and not open_runs(cluster.api, "flow_runs"), out[-3000:]
    with urllib.request.urlopen(f"{cluster.api}/task_runs/{killed[0]['id']}", timeout=10) as answer:
        state = json.load(answer)["state"]  # (its group trains for 10 s or more: killed within 0.2 s of RUNNING)
    assert state["type"] == "CRASHED", state


@pytest.mark.slow
def test_a_stop_ends_the_parts_training_on_the_workers(cluster, data_dir):
    """Parts on the workers report their epochs (a progress line reaches the pipeline's console); SIGTERM to the
    pipeline then stops them at their next epoch (its Dask Event), not minutes later when their training ends."""
    from distributed import Client
    seen = threading.Event()

    def stop_on_progress(line):
        if re.search(r"\[search\] search ConvNet batch \d+ fits \d+-\d+ of \d+: epoch \d+/3000;", line) and not seen.is_set():
            seen.set()
            cluster.running.send_signal(signal.SIGTERM)
    # parts of 3 ConvNet fits x 3000 epochs: minutes each; the first progress line comes after 20 s of training
    long = ("--until", "search", "--architectures", "ConvNet", "--variants", "ConvNet", "--epoch-grid", "3000",
            "--batch-sizes", "100")
    timer = threading.Timer(240, lambda: seen.is_set() or cluster.running.send_signal(signal.SIGTERM))
    timer.start()
    try:
        rc, out = cluster.pipeline(data_dir, "results-stop", "dask-stop", *long, on_line=stop_on_progress)
    finally:
        timer.cancel()
    assert seen.is_set(), "no progress line from the workers in 240 s: " + out[-3000:]
    ended, deadline = time.time(), time.time() + 30
    with Client(cluster.scheduler, timeout=10) as client:  # the workers' own count: a released task still runs
        def training():
            return {w: n for w, n in client.run(lambda dask_worker: len(dask_worker.active_threads)).items() if n}
        while training() and time.time() < deadline:
            time.sleep(0.5)
        left = training()
    assert not left, f"still training {time.time() - ended:.0f} s after the pipeline ended: {left}\n{out[-2000:]}"
    assert "stopped by SIGTERM" in out, out[-3000:]


@pytest.mark.slow
def test_the_scheduler_gone_is_one_line_and_the_same_command_resumes(cluster, data_dir, tmp_path):
    gone = threading.Event()

    def stop_the_scheduler(line):
        if "[search]" in line and not gone.is_set():
            gone.set()
            cluster.stop("scheduler")
    # groups of a second or two (4 MLP cells of 1000 pairs, 8 epochs, 2 workers): two wait when the first is back
    small = ("--until", "search", "--architectures", "MLP", "--variants", "MLP", "--pairs", "1000", "--epoch-grid", "8")
    rc, out = cluster.pipeline(data_dir, "results-gone", "dask-gone", *small, on_line=stop_the_scheduler,
                               DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")  # give up on it after 3 s
    assert gone.is_set() and rc == 1, out[-3000:]
    last = said(out)[-1]
    assert last.startswith("error: the Dask cluster failed") and "run the same command again" in last, last
    assert sum(ln.startswith("error:") for ln in said(out)) == 1, out[-3000:]
    cluster.stop("w0", "w1")
    cluster.start_dask()
    rc, out = cluster.pipeline(data_dir, "results-gone", "dask-gone", *small)
    assert rc == 0 and "from the cache" in out, out[-3000:]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cluster.tracking)
    keys = [r.data.tags["pairs.fit_key"] for r in client.search_runs([client.get_experiment_by_name(
        "dask-gone").experiment_id], "tags.`pairs.fit_key` != '' AND attributes.status = 'FINISHED'")]
    assert len(keys) == len(set(keys)) == 12  # the MLP search: 2 batch sizes x 2 rounds x 3 folds, each once

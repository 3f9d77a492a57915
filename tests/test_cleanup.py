"""Issue 12: a signal to the pipeline's process alone (as `kill`, a supervisor or the out-of-memory killer sends
it) leaves none of the processes it started: its temporary Prefect server, or a flow run of `serve` and that
run's server. No PREFECT_API_URL here: the temporary server is the point.

Each temporary server costs 15-25 s to start on a small machine, so one batch of real processes runs at once
(module fixture `batch`) and each case is a test of its own on what was recorded: SIGINT, SIGTERM and SIGKILL
to `python -m flows`, SIGTERM to `mlflow run` alone, SIGKILL to `serve` during
a flow run, and a pipeline running beside them that must finish untouched. Processes are found in /proc:
descendants and process-group members, recorded before the signal and looked up again after it. Ctrl-C and
SIGTERM are also checked for what they leave in MLflow and say (every run ended, one line).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import all_runs, excerpt

ROOT = Path(__file__).resolve().parent.parent
# The stopped pipelines: a group takes a second or two, so that the signal, sent as the first group is done, finds
# the next one training (a SIGTERM that lands inside an MLflow write can leave the store locked for 20 s).
SMALL = {"profile": "quick", "pairs": 1000, "search_rounds": 1, "folds": 2, "final_rounds": 1, "epoch_grid": "4,8"}
FLAGS = [a for k, v in SMALL.items() for a in (f"--{k.replace('_', '-')}", str(v))]
# the pipeline beside them: long enough to be still training when the others have been stopped and checked
LONG = ["--profile", "quick", "--pairs", "1000", "--epoch-grid", "6,12"]
SERVER = "prefect server start"  # the server a pipeline owns (flows.lifetime.own_server)
# Seconds from the signal until no process of the family is left, on 2 cores shared by six pipelines and their
# servers: the stop path waits up to 30 s for the logging of trained fits, then ends the runs; a process left
# behind would live on, so a limit well above the measured times (up to about 20 s) still catches it.
GONE_WITHIN = 60

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def processes():
    """{pid: (ppid, pgid, state)} of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            state, ppid, pgid = stat[stat.rindex(")") + 2:].split()[:3]
            out[int(name)] = (int(ppid), int(pgid), state)
    return out


def family(pid):
    """pid, its descendants and the members of its process group (each process here leads its own group)."""
    procs = processes()
    found = {pid} | {p for p, (_, group, _) in procs.items() if group == pid}
    while True:
        more = {p for p, (parent, _, _) in procs.items() if parent in found} - found
        if not more:
            return found
        found |= more


def alive(pids):
    """Those still running (a zombie has ended)."""
    procs = processes()
    return {p for p in pids if p in procs and procs[p][2] not in "ZX"}


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Run:
    """A process in its own session; a thread reads its output and records its family at the first "[search] "
    line (training has begun), then calls on_search (which sends the signal)."""

    def __init__(self, cmd, env, on_search=None):
        self.cmd, self.env, self.on_search = cmd, env, on_search
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True,  # SIGINT as a terminal gives it, even
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # from nohup &
        self.pid, self.lines, self.family, self.servers = self.proc.pid, [], set(), set()
        self.searched = self.signalled = self.gone_after = None
        self.searching = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)  # closes stdout at its end
        self.reader.start()

    def _read(self):
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._line(line)

    def _line(self, line):
        self.lines.append(line)
        if "[search] " in line and not self.searching.is_set():
            self.searched = time.time()
            self.family = family(self.pid)
            self.servers = {p for p in self.family if SERVER in cmdline(p)}
            if self.on_search:
                self.on_search(self)
            self.searching.set()

    def left(self):
        return alive(self.family | family(self.pid))

    def output(self, tail=3000):
        return "".join(self.lines)[-tail:]


def send(sig):
    def on_search(run):
        run.signalled = time.time()
        os.kill(run.pid, sig)  # the process alone, not its group
        run.watcher = threading.Thread(target=watch, args=(run,), daemon=True)
        run.watcher.start()
    return on_search


def watch(run, timeout=GONE_WITHIN + 30):
    """Record how long after the signal the last process of the family ended."""
    while run.left() and time.time() < run.signalled + timeout:
        time.sleep(0.1)
    if not run.left():
        run.gone_after = round(time.time() - run.signalled, 1)


def environment(tmp, name, **extra):
    """No PREFECT_API_URL (a temporary server each); a store and task results of its own."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / name / 'mlflow.db'}",
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp / name / "results"), PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", **extra)  # one thread each: torch's threads crawl on an oversubscribed CPU
    for key in ("PREFECT_API_URL", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    (tmp / name).mkdir()
    return env


def flows(*args):
    return [sys.executable, "-m", "flows", *args]


def api_of(run, timeout=180):
    """The API of the temporary server that `run` started, once it answers."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.proc.poll() is None:
        for pid in family(run.pid):
            if SERVER in cmdline(pid):
                api = f"http://127.0.0.1:{cmdline(pid).split('--port ')[1].split()[0]}/api"
                try:
                    with urllib.request.urlopen(f"{api}/health", timeout=5):
                        return api
                except OSError:
                    pass
        time.sleep(0.5)
    raise AssertionError("no temporary server answered: " + run.output())


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.load(answer)


def trigger_a_flow_run(api, deployment, parameters, timeout=120):
    """Once `serve` has registered its deployment, ask its server for a run of it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [d for d in post(f"{api}/deployments/filter", {}) if d["name"] == deployment]
        if found:
            return post(f"{api}/deployments/{found[0]['id']}/create_flow_run", {"parameters": parameters})
        time.sleep(1)
    raise AssertionError(f"deployment {deployment} did not appear")


def wait_gone(run, timeout):
    deadline = time.time() + timeout
    while run.left() and time.time() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def batch(data_dir, tmp_path_factory):
    """Starts them all, signals each once it trains, and records what was left and when it had gone."""
    tmp = tmp_path_factory.mktemp("cleanup")
    runs, t0 = {}, time.time()
    try:
        # serve first: its temporary server makes Prefect's database (in a folder of this test) before the others
        # start theirs. The pipeline beside them has its server up before any of the others is signalled.
        env = dict(PAIRS_DATA_DIR=data_dir, PREFECT_HOME=str(tmp / "prefect-home"))
        serve = runs["serve"] = Run(flows("serve", "--name", "cleanup", "--profile", "quick"),
                                    environment(tmp, "serve", PREFECT_RUNNER_POLL_FREQUENCY="2", **env),
                                    send(signal.SIGKILL))
        api = api_of(serve)
        runs["beside"] = Run(flows(*LONG), environment(tmp, "beside", **env))
        trigger_a_flow_run(api, "cleanup", dict(SMALL, epoch_grid=[int(e) for e in SMALL["epoch_grid"].split(",")]))
        api_of(runs["beside"])
        for name, sig in (("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)):
            runs[name] = Run(flows(*FLAGS), environment(tmp, name, **env), send(sig))
        runs["mlflow run"] = Run(["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name",
                                  "cleanup", *[a for k, v in SMALL.items() for a in ("-P", f"{k}={v}")]],
                                 environment(tmp, "mlflow", **env), send(signal.SIGTERM))
        assert runs["beside"].searching.wait(300), runs["beside"].output()
        stopped = [n for n in runs if n != "beside"]
        for name in stopped:
            assert runs[name].searching.wait(300), f"{name}: training did not begin\n" + runs[name].output()
        facts = {"signalled": {n: round(runs[n].signalled - t0) for n in stopped}}
        # the pipeline beside them, checked once the others are gone (or should be)
        beside, deadline = runs["beside"], max(runs[n].signalled for n in stopped) + GONE_WITHIN
        while time.time() < deadline and any(runs[n].left() for n in stopped):
            time.sleep(0.2)
        facts["beside running"] = beside.proc.poll() is None and alive(beside.servers) == beside.servers
        facts["beside servers"] = beside.servers
        facts["beside checked"] = time.time()
        for name in stopped:
            run = runs[name]
            run.proc.wait(60)
            run.watcher.join(GONE_WITHIN + 40)  # every process of the family gone (or the watch given up) ...
            run.reader.join(30)  # ... so its output is complete: `mlflow run` exits first, its pipeline prints later
            facts[name] = {"code": run.proc.returncode, "gone_after": run.gone_after,
                           "left": {p: cmdline(p) for p in run.left()}, "servers": run.servers,
                           "family": len(run.family), "output": run.output(),
                           "said": [ln.strip() for ln in run.lines if "stopped by" in ln],
                           "text": "".join(run.lines), "runs": all_runs(run.env)}
        beside.proc.wait(600)
        beside.reader.join(10)
        facts["beside ended"] = time.time()
        wait_gone(beside, 10)
        facts["beside"] = {"code": beside.proc.returncode, "left": beside.left(), "output": beside.output()}
        facts["seconds"] = round(time.time() - t0)
        print(f"\ncleanup batch: {facts['seconds']} s; beside trained from {round(beside.searched - t0)} s, "
              f"checked at {round(facts['beside checked'] - t0)} s, ended {round(facts['beside ended'] - t0)} s; "
              f"signalled at {facts['signalled']} s; all gone after (s): "
              + ", ".join(f"{n} {facts[n]['gone_after']}" for n in stopped),
              file=sys.stderr)  # (shown with a failure; -s shows it always)
        yield facts
    finally:  # whatever a failing case left: only the groups and recorded processes of what this test started
        for run in runs.values():
            for pid in alive(run.family | family(run.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def check_runs_ended(facts, name):
    """What a Ctrl-C or SIGTERM leaves: one line that says so, no traceback, no MLflow run RUNNING, the pipeline's
    own runs (pipeline, stages) KILLED."""
    f = facts[name]
    said = [ln for ln in f["text"].splitlines() if "run the same command again to resume" in ln]
    assert len(said) == 1 and "stopped by" in said[0], excerpt(f["text"])
    assert "Traceback" not in f["text"] and "Logging error" not in f["text"], excerpt(f["text"])
    statuses = [(r.info.run_name, r.info.status) for r in f["runs"]]
    assert not [r for r in f["runs"] if r.info.status == "RUNNING"], statuses
    assert {r.info.status for r in f["runs"] if "pairs.fit_key" not in r.data.tags} == {"KILLED"}, statuses


def check_stopped(facts, name, code):
    f = facts[name]
    assert f["servers"], f"{name}: no temporary server was running when signalled\n{f['output']}"
    assert not f["left"], f"{name}: left running {f['left']}\n{f['output']}"
    assert f["gone_after"] is not None and f["gone_after"] <= GONE_WITHIN, f
    assert f["code"] == code, f"{name}: exit code {f['code']}\n{f['output']}"


def test_sigint_to_the_pipeline_alone_leaves_no_process(batch):
    check_stopped(batch, "SIGINT", 130)
    check_runs_ended(batch, "SIGINT")


def test_sigterm_to_the_pipeline_alone_leaves_no_process(batch):
    check_stopped(batch, "SIGTERM", -signal.SIGTERM)
    assert any("stopped by SIGTERM" in ln for ln in batch["SIGTERM"]["said"]), batch["SIGTERM"]["output"]
    check_runs_ended(batch, "SIGTERM")


def test_sigkill_to_the_pipeline_leaves_no_process(batch):
    check_stopped(batch, "SIGKILL", -signal.SIGKILL)  # (the same command resumes it: test_reliability)


def test_sigterm_to_mlflow_run_alone_ends_the_pipeline_and_its_server(batch):
    check_stopped(batch, "mlflow run", -signal.SIGTERM)
    assert batch["mlflow run"]["family"] >= 3  # mlflow, the pipeline, its server
    # the pipeline was stopped by the SIGTERM, not left to finish: its own line, or Prefect's for the aborted flow
    # (in 2 of 3 CI runs on an AMD EPYC the pipeline under `mlflow run` ended with Prefect's line only; cause open)
    text = batch["mlflow run"]["text"]
    assert any("stopped by SIGTERM" in ln for ln in batch["mlflow run"]["said"]) or \
        "Execution was aborted by a termination signal" in text, batch["mlflow run"]["output"]
    assert "pipeline run " not in text and "[done]" not in text, batch["mlflow run"]["output"]


def test_sigkill_to_serve_ends_its_flow_run_and_both_servers(batch):
    check_stopped(batch, "serve", -signal.SIGKILL)
    assert len(batch["serve"]["servers"]) >= 1 and batch["serve"]["family"] >= 3  # serve, its server, a flow run


def test_a_pipeline_running_beside_them_is_untouched(batch):
    assert batch["beside servers"], "the pipeline beside them had no temporary server"
    assert batch["beside running"], "the pipeline beside them, or its server, had stopped: " + batch["beside"]["output"]
    assert batch["beside"]["code"] == 0, batch["beside"]["output"]
    assert not batch["beside"]["left"], batch["beside"]  # and a normal end leaves nothing either

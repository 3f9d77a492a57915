"""Crashes, signals, retries and concurrency, with real processes on real stores (bad input: test_bad_input)."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import all_runs
from pairs.groups import fit_counts
from pairs.protocol import PROFILES

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--profile", "quick"]
N_FITS = sum(fit_counts(PROFILES["quick"]))


def env_for(tmp_path, data_dir, api, name="store", results="results"):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / name / 'mlflow.db'}",
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / results), PAIRS_DATA_DIR=data_dir,
               PYTHONUNBUFFERED="1")
    if api:
        env["PREFECT_API_URL"] = api
    env.pop("MLFLOW_RUN_ID", None)
    return env


def cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "flows", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def start_and_signal(args, env, sig):
    """Start a pipeline, send sig once the search has logged its first group, return (returncode, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "[search] " in line:
            proc.send_signal(sig)
            break
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + out


def fits_by_unit(runs):
    """{(stage, variant, batch, round, fold): (train_error, eval_error, losses)} of the FINISHED fit runs."""
    out = {}
    for r in runs:
        if "pairs.fit_key" in r.data.tags and r.info.status == "FINISHED":
            p, m = r.data.params, r.data.metrics
            key = (p["stage"], p["variant"], p["batch_size"], p["round"], p.get("fold"))
            assert key not in out, f"fit {key} logged twice as FINISHED"
            out[key] = (m["train_error"], m.get("val_error", m.get("test_error")), m["train_loss"])
    return out


@pytest.fixture(scope="module")
def reference(quick_run):
    """The fits of an uninterrupted run of the small protocol (the quick profile: the session's quick run)."""
    client = quick_run["client"]
    return fits_by_unit(client.search_runs([client.get_experiment_by_name("quick").experiment_id],
                                           max_results=10000))


def test_sigkill_mid_search_then_rerun_gives_the_uninterrupted_results(reference, prefect_server, data_dir,
                                                                        tmp_path):
    env = env_for(tmp_path, data_dir, prefect_server)
    code, out = start_and_signal(SMALL, env, signal.SIGKILL)
    assert code == -signal.SIGKILL, out[-2000:]
    interrupted = all_runs(env)
    assert any(r.info.status == "RUNNING" for r in interrupted)  # what a SIGKILL leaves behind
    assert len(fits_by_unit(interrupted)) < N_FITS
    again = cli(SMALL, env)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = all_runs(env)
    assert fits_by_unit(runs) == reference  # bit-identical: same seeds, same losses and errors
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the dead run's leftovers end KILLED
    assert sum(r.info.status == "KILLED" for r in runs) >= 2  # its pipeline run and search stage


def test_two_pipelines_on_one_store(prefect_server, data_dir, tmp_path):
    envs = [env_for(tmp_path, data_dir, prefect_server, results=f"results{i}") for i in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-m", "flows", *SMALL, "--seed", str(seed)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed, env in zip((1, 2), envs)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    runs = all_runs(envs[0])
    pipelines = [r for r in runs if r.info.run_name.startswith("pipeline")]
    assert len(pipelines) == 2 and all(r.info.status == "FINISHED" for r in pipelines)
    for p in pipelines:
        fits = [r for r in runs if r.data.tags.get("pairs.pipeline_run") == p.info.run_id and
                r.data.tags["pairs.kind"] == "fit"]
        assert len(fits) == N_FITS
        # every fit of this tree came from this pipeline's process and its seed
        assert {r.data.tags["pairs.pid"] for r in fits} == {p.data.tags["pairs.pid"]}
        assert p.data.params["protocol.seed"] in ("1", "2")
    keys = [r.data.tags["pairs.fit_key"] for r in runs if "pairs.fit_key" in r.data.tags]
    assert len(keys) == len(set(keys)) == 2 * N_FITS


def test_no_mnist_in_the_default_folder_passes_the_checks_when_a_mirror_answers(tmp_path, monkeypatch):
    """./data (no PAIRS_DATA_DIR, no --data-dir) without MNIST and a mirror answering: the checks pass (the prepare
    task downloads there). With no mirror answering: test_bad_input."""
    import http.server
    from torchvision.datasets import MNIST

    from flows.__main__ import run_values
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAIRS_DATA_DIR", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / MNIST.resources[0][0]).write_bytes(b"")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "mirror"))  # noqa: E731
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as mirror:
        threading.Thread(target=mirror.serve_forever, daemon=True).start()
        monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/", f"http://127.0.0.1:{mirror.server_port}/"])
        assert run_values(["--profile", "quick"])["profile"] == "quick"  # the second mirror answers: on to the download
        mirror.shutdown()
    assert not (tmp_path / "data").exists() and not (tmp_path / "store").exists()  # the checks create nothing


def test_a_group_whose_first_attempt_fails_is_retried_and_prefect_shows_both_attempts(prefect_env, data_dir, store,
                                                                                      monkeypatch):
    """--fail-first (the README's way to watch a retry): the first attempt of each matching group fails, Prefect
    retries it, the pipeline finishes with the same results; the task runs show two attempts and a retry state."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows import pipeline as flow_module, tasks
    assert all(isinstance(t.retry_delay_seconds, (int, float)) for t in (  # a list shows as "NaNs" in the UI
        tasks.train, tasks.log_fits, tasks.write_artifacts, tasks.prepare_data))
    monkeypatch.setattr(tasks, "train", tasks.train.with_options(retry_delay_seconds=0))
    small = dict(profile="quick", data_dir=data_dir, experiment="retry", search_rounds=1, final_rounds=1, seed=11)

    def task_runs(result):
        flow_run = store.get_run(result["run_id"]).data.tags["prefect.flow_run_id"]
        with get_client(sync_client=True) as client:
            found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
            return found, {t.name: [s.name for s in client.read_task_run_states(t.id)] for t in found}
    for fail_first in (None, "search MLP"):  # the second call finds every group in the cache
        result = flow_module.pipeline(**small, fail_first=fail_first or "")
        assert store.get_run(result["run_id"]).info.status == "FINISHED"
        if not fail_first:
            fits, selection = fit_keys(store), result["selection"]
    found, states = task_runs(result)
    attempts = {t.name: (t.state_name, t.run_count) for t in found if t.name.startswith("search ")}
    assert attempts == {"search ConvNet batch 25": ("Cached", 1), "search ConvNet batch 50": ("Cached", 1),
                        "search MLP batch 25": ("Completed", 2), "search MLP batch 50": ("Completed", 2)}, attempts
    assert "Retrying" in states["search MLP batch 25"], states  # (AwaitingRetry first, with a delay)
    assert result["selection"] == selection and fit_keys(store) == fits  # the same results, no fit logged again
    assert all(isinstance(t.empirical_policy.retry_delay, (int, float)) for t in found if t.name.startswith("log "))


def fit_keys(client):
    return sorted(r.data.tags["pairs.fit_key"] for r in client.search_runs(
        [client.get_experiment_by_name("retry").experiment_id], "tags.`pairs.kind` = 'fit'", max_results=1000))


def test_a_lasting_failure_fails_the_pipeline_naming_the_fits(prefect_env, data_dir, store, monkeypatch):
    from conftest import failing
    from flows import pipeline as flow_module, tasks
    monkeypatch.setattr(tasks, "train", tasks.train.with_options(retry_delay_seconds=0))
    failing(monkeypatch, lambda f: (f.stage, f.variant, f.round) == ("final", "MLP_WS", 1))
    with pytest.raises(RuntimeError, match=r"final fits of MLP_WS at batch size \d+ \(rounds 0-1\) failed: "
                                           r"injected failure, attempt 3 of 99"):
        flow_module.pipeline(profile="quick", data_dir=data_dir, experiment="lasting", seed=12)
    exp = store.get_experiment_by_name("lasting")
    runs = store.search_runs([exp.experiment_id], max_results=1000)
    top = [r for r in runs if r.info.run_name.startswith("pipeline")]
    assert [r.info.status for r in top] == ["FAILED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_serve_registers_a_deployment_whose_form_describes_and_checks_its_parameters(prefect_server, data_dir,
                                                                                    tmp_path):
    """`python -m flows serve` makes the pipeline a scheduled deployment the Prefect UI can trigger; its custom run
    form (in headless Chromium) shows each parameter's description and dropdowns for choices; a value outside
    the choices is refused by the API before a run exists."""
    import json

    from test_doors import page
    env = env_for(tmp_path, data_dir, prefect_server)
    proc = subprocess.Popen([sys.executable, "-m", "flows", "serve", "--name", "ci-deployment", "--cron",
                             "0 3 * * 0", "--profile", "quick"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def post(path, body):
        req = urllib.request.Request(prefect_server + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    try:
        deadline, found = time.time() + 90, None
        while time.time() < deadline and not found:
            time.sleep(2)
            found = [d for d in post("/deployments/filter", {})[1] if d["name"] == "ci-deployment"]
        assert found, "the deployment did not appear"
        dep = found[0]
        assert dep["parameters"] == {"profile": "quick"}
        assert any(s["schedule"].get("cron") == "0 3 * * 0" for s in dep["schedules"])
        schema = dep["parameter_openapi_schema"]["properties"]
        assert all(p.get("description") for p in schema.values()), [n for n, p in schema.items() if not p.get(
            "description")]
        assert schema["profile"]["enum"] == ["full", "quick"] and schema["device"]["enum"] == ["cpu", "cuda", "auto"]
        assert [n for n, p in schema.items() if "enum" in p or "enum" in p.get("items", {})] == [
            "profile", "register_model", "device", "until", "schedule", "branch", "head", "precision",
            "architectures", "variants"]  # dropdowns at first sight: no `X | None` toggle in front of them
        assert schema["schedule"]["enum"][0] == "" and schema["study"]["type"] == "string"
        code, said = post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"profile": "huge"}})
        assert code == 409 and "'huge' is not one of ['full', 'quick']" in said, (code, said)
        runs = post("/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})[1]
        assert runs == [] or all(r["state_type"] == "SCHEDULED" for r in runs)  # the refused one was never made
        ui = prefect_server.removesuffix("/api")
        dom = page(f"{ui}/deployments/deployment/{dep['id']}/run", tmp_path, "prefect-form")
        assert "the protocol whose values fill every setting left empty" in dom, dom[-3000:]
        assert "Optuna trials per architecture" in dom, dom[-3000:]
        assert re.search(r'<select[^>]*><option[^>]*value="full">full</option><option[^>]*selected=""[^>]*value="quick"',
                         dom), "profile is not a dropdown showing quick"
    finally:
        proc.terminate()
        proc.wait(30)

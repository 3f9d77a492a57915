"""The project's files agree: MLproject, the CLI and the flow signature; conda.yaml and pyproject.toml."""
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from flows.__main__ import run_parser
from flows.pipeline import pipeline

ROOT = Path(__file__).resolve().parent.parent


def mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_mlproject_cli_and_flow_defaults_agree():
    spec = mlproject()["entry_points"]["main"]
    cli = {a.dest: a.default for a in run_parser()._actions if a.dest != "help"}
    flow = {k: p.default for k, p in inspect.signature(pipeline.fn).parameters.items()}
    for name, param in spec["parameters"].items():
        mlflow_default = param["default"]
        assert name in cli and name in flow, name
        expected = None if mlflow_default == "" else mlflow_default
        assert cli[name] == expected == flow[name], name
        assert f"{{{name}}}" in spec["command"]
    assert set(cli) == set(flow)  # every CLI option is a flow parameter and back


def test_every_stage_has_an_entry_point():
    assert {"main", "prepare", "search", "final", "report"} <= set(mlproject()["entry_points"])


def test_conda_env_pins_what_pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert sorted(deps) == sorted(p for p in pip if not p.startswith("-e"))
    assert all("==" in d for d in deps)
    assert "python=3.11.7" in conda


@pytest.mark.slow
def test_mlflow_run_quick(tmp_path, data_dir):
    """`mlflow run . --env-manager local -P profile=quick`, as the README types it, in a fresh store."""
    import os
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PAIRS_DATA_DIR=data_dir,
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / "results"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_RUN_ID", None)
    out = subprocess.run(["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "cli",
                          "-P", "profile=quick"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cli")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # attached, no second top-level run
    assert parents[0].data.params["profile"] == "quick"
    assert sum("pairs.fit_key" in r.data.tags for r in all_runs) == sum(
        __import__("pairs.protocol", fromlist=["PROFILES"]).PROFILES["quick"].fits())


@pytest.mark.slow
def test_mlflow_run_rejects_bad_parameters_before_any_work(tmp_path, data_dir):
    """`-P search_rounds=0`: a one-line error, a non-zero exit, and only MLflow's own run (FAILED) in the store."""
    import os
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PAIRS_DATA_DIR=data_dir,
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_RUN_ID", None)
    out = subprocess.run(["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "bad",
                          "-P", "profile=quick", "-P", "search_rounds=0"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "error: search_rounds must be a positive integer, got 0" in out.stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("bad").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"] and not any("pairs.stage" in r.data.tags for r in runs)

"""The three doors, walked as a person walks them: `make run PROFILE=quick` (mlflow run; a newcomer's first try)
then the README's registry block in a fresh shell, then a run of full counts that takes the champion; the MLflow UI's comparison view (a real server, headless Chromium); the Prefect run form (a real
server and deployment: descriptions, dropdowns, a bad value refused).

Chromium is Debian's `chromium` (`apt-get install -y chromium`; .ci/run installs it when missing)."""
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from pairs.models import VARIANTS
from pairs.groups import fit_counts
from pairs.protocol import PROFILES

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

TINY = """description = "A tiny study, run at its own counts: what the registry block needs, in a minute."
[protocol]
pairs = 300
search_rounds = 1
folds = 2
final_rounds = 2
batch_sizes = [50]
epoch_grid = [2]
architectures = ["MLP"]
variants = ["MLP", "MLP_WS"]
"""


def chromium():
    found = shutil.which("chromium")
    if not found:
        pytest.fail("these tests look at the UIs in headless Chromium: apt-get install -y chromium")
    return found


def page(url, tmp_path, name):
    """The page as Chromium renders it (its DOM after the scripts ran) and a screenshot of it."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / ('chrome-' + name)}", "--window-size=3000,1600",
             "--virtual-time-budget=25000"]
    subprocess.run(flags + [f"--screenshot={tmp_path / (name + '.png')}", url], capture_output=True, timeout=180)
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    (tmp_path / (name + ".html")).write_text(dom)
    return dom


def readme_block(marker):
    """The bash block that follows `marker` in the README."""
    text = (ROOT / "README.md").read_text()
    assert marker in text, f"README has no {marker!r}"
    return text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory, data_dir):
    """A copy of the repository (its venv linked in, its data at ./data) after `make run PROFILE=quick`, in the
    environment of a user who has set nothing."""
    repo = tmp_path_factory.mktemp("user") / "pairs"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)  # (mtimes kept: make finds the venv up to date)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (repo / "data").symlink_to(Path(data_dir).resolve())
    (repo / "tiny.toml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PAIRS_", "PREFECT_"))}
    env["PREFECT_HOME"] = str(repo.parent / "prefect-home")
    out = subprocess.run(["make", "run", "PROFILE=quick", "ARGS=-P aux_weight=0.5"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return repo, env, out.stdout + out.stderr


def test_make_run_is_one_run_tree_under_the_run_mlflow_opened(made):
    """`make run` = `mlflow run . --env-manager local`: the pipeline attaches to the run mlflow opened (one
    top-level run), -P values reach the protocol, and no empty parameter is logged."""
    from mlflow.tracking import MlflowClient
    repo, env, out = made
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pairs").experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1 and top[0].info.status == "FINISHED" and "mlflow.project.entryPoint" in top[0].data.tags
    assert top[0].data.params["protocol.aux_weight"] == "0.5" and top[0].data.params["profile"] == "quick"
    assert "" not in top[0].data.params.values()  # only the settings given or with a default of their own
    assert re.fullmatch(r"pipeline quick seed 0 \d\d-\d\d \d\d:\d\d:\d\d", top[0].info.run_name)  # not mlflow's random
    fits = [r for r in runs if r.data.tags.get("pairs.kind") == "fit"]
    assert len(fits) == sum(fit_counts(PROFILES["quick"])) and {r.data.params["aux_weight"] for r in fits} == {"0.5"}


def test_make_run_ends_saying_where_to_look_and_registers_a_smoke_version(made):
    repo, env, out = made
    done = [ln for ln in out.splitlines() if re.search(r"pipeline run \w+ done: ", ln)]
    assert len(done) == 1, done  # once (the flow's line; the command adds no second one)
    assert "`make ui`, then http://127.0.0.1:5000/#/compare-runs?runs=" in done[0] and "REPORT.md" in done[0], done
    assert ("[registry] pairs-best version 1: " in out and "not champion: a smoke run (the quick profile); "
            "models:/pairs-best/1 (models:/pairs-best/latest until a newer one)" in out), out[-3000:]
    assert "Saving pytorch model by Pickle" not in out  # MLflow's warning, once per model logged: dropped
    assert "--lr ''" not in out and "'' --" not in out  # mlflow run passes on no empty parameters


def test_the_readme_registry_block_works_as_written_in_a_fresh_shell(made):
    """Prediction through `mlflow models predict` and through `mlflow models serve` + an HTTP POST, from the
    README, in a shell that has only what a user's has: nothing of make's environment."""
    repo, env, _ = made
    block = readme_block("<!-- registry block -->")
    script = repo / "registry.sh"
    script.write_text("set -e\n" + block)
    proc = subprocess.Popen(["bash", str(script)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server the block started
    assert proc.returncode == 0, out[-3000:]
    answers = [json.loads(ln)["predictions"] for ln in out.splitlines() if ln.startswith('{"predictions"')]
    assert len(answers) == 2 and sum(answers[0], []) == pytest.approx(sum(answers[1], []), abs=1e-6), out[-3000:]
    assert len(answers[0]) == 5 and all(sum(p) == pytest.approx(1, abs=1e-5) for p in answers[0])
    assert not (repo / "mlflow.db").exists()  # nothing stray: the block used the project's store


def test_a_run_of_full_counts_then_takes_the_champion_and_latest(made):
    """After the quick run, `make run` of a tiny study at its own (full) counts: version 2 takes `champion` (none
    held it) and is the newest (`latest`); the smoke version 1 stays out of `champion`. The two pipeline runs'
    names tell them apart."""
    from mlflow.tracking import MlflowClient
    repo, env, _ = made
    out = subprocess.run(["make", "run", "STUDY=tiny.toml"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[registry] pairs-best version 2: " in out.stdout + out.stderr
    assert "alias champion (none held it)" in out.stdout + out.stderr, out.stdout[-3000:]
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("pairs-best", "champion").version) == "2"
    assert client.get_model_version("pairs-best", "1").tags["smoke"] == "the quick profile"
    import mlflow
    mlflow.set_tracking_uri(client.tracking_uri)
    assert mlflow.models.get_model_info("models:/pairs-best/latest").run_id == mlflow.models.get_model_info(
        "models:/pairs-best@champion").run_id
    names = sorted(r.info.run_name for r in client.search_runs(
        [client.get_experiment_by_name("pairs").experiment_id], "tags.`pairs.kind` = 'pipeline'"))
    assert [n.split(" seed ")[0] for n in names] == ["pipeline quick", "pipeline tiny full"], names


def test_the_comparison_view_shows_the_eight_variants_with_no_clicks(mlflow_server, quick_run, tmp_path):
    """The pipeline's last line names MLflow's compare page of its rows, best mean test error first; opened there
    (3000 px), it shows each variant's name with its pipeline's, and Table 2's numbers as numbers."""
    base, run = mlflow_server["url"], quick_run
    client = run["client"]
    pipeline_run = run["first"]["run_id"]
    url = re.search(r"http://127\.0\.0\.1:5000(/#/compare-runs\?\S+)", run["first"]["where"]).group(1)
    rows = client.search_runs([client.get_run(pipeline_run).info.experiment_id],
                              f"tags.`pairs.kind` = 'row' AND tags.`pairs.pipeline_run` = '{pipeline_run}'")
    name = client.get_run(pipeline_run).info.run_name
    assert sorted(r.info.run_name.split(" · ")[0] for r in rows) == sorted(VARIANTS)
    assert all(r.info.run_name.endswith(f" · {name}") and " · test error " in r.info.run_name for r in rows)
    assert all({"test_error_mean", "test_error_std", "train_error_mean", "train_error_std", "param_count",
                "s_per_epoch", "rounds"} <= set(r.data.metrics) for r in rows)
    assert len({r.data.tags["mlflow.runColor"] for r in rows}) == 8
    listed = json.loads(urllib.parse.parse_qs(url.split("?", 1)[1])["runs"][0])
    best_first = sorted(rows, key=lambda r: (r.data.metrics["test_error_mean"], r.info.run_id))
    assert listed == [r.info.run_id for r in best_first]
    dom = page(base + url, tmp_path, "mlflow")
    text = re.sub(r"<[^>]+>", " ", dom)
    shown = sorted(v for v in VARIANTS if re.search(rf"\b{v} · test error \d+\.\d\d ± \d+\.\d\d% · ", text))
    assert shown == sorted(VARIANTS), (shown, text[-2000:])
    assert "test_error_mean" in text and "param_count" in text, text[-2000:]
    assert all(str(int(r.data.metrics["param_count"])) in text for r in rows), text[-3000:]

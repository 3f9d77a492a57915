import os
import tempfile
from pathlib import Path

import pytest

# Before any test module imports prefect (which reads its settings once): task results of this session
# go to a fresh folder, never to the project's .cache/prefect, so no test hits an earlier session's cache.
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="pairs-test-results-")

from pairs.data import MNIST_FILES


@pytest.fixture(scope="session")
def data_dir():
    """The real MNIST root; a missing one fails (never skips) with what to do."""
    root = os.environ.get("PAIRS_DATA_DIR")
    if not root or not all((Path(root) / "MNIST" / "raw" / n).is_file() for n in MNIST_FILES):
        pytest.fail("tests need real MNIST: set PAIRS_DATA_DIR to a torchvision root holding "
                    "MNIST/raw/ (e.g. export PAIRS_DATA_DIR=$PWD/../shared/data), or run `make test`")
    return root


@pytest.fixture(scope="session")
def pairs_1000(data_dir):
    from pairs.data import pair_sets
    return pair_sets(1000, seed=7, root=data_dir)


@pytest.fixture(scope="session")
def prefect_env():
    """The real Prefect engine (a temporary server), with task results in this session's fresh folder."""
    import flows  # noqa: F401  (its environment defaults, before prefect is imported)
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real MLflow SQLite store in a temporary folder; returns a client on it."""
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return MlflowClient(uri)


def excerpt(out, marks=("Traceback", "Logging error", "Error", "error:")):
    """A failing command's output as a reader needs it: from the first line that shows a problem (a traceback can
    be followed by hundreds of lines), then the end."""
    first = min((i for i in (out.find(m) for m in marks) if i >= 0), default=len(out))
    head = out[max(0, first - 500):first + 2500]
    return head + ("\n[...]\n" + out[-1500:] if first + 2500 < len(out) - 1500 else out[first + 2500:])


def all_runs(env):
    """Every run in the store that a command's environment names."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps], max_results=10000) if exps else []


def runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=5000) if exp else []


def fit_runs(client, experiment):
    return [r for r in runs(client, experiment) if "pairs.fit_key" in r.data.tags]


@pytest.fixture(scope="session")
def quick_run(prefect_env, data_dir, tmp_path_factory):
    """One quick pipeline call in its own store, then a second identical call; shared by the modules that read
    a finished run (the pipeline's own checks, and the uninterrupted reference of the crash tests)."""
    from mlflow.tracking import MlflowClient

    from flows import pipeline as flow_module
    from pairs import protocol as P
    folder = tmp_path_factory.mktemp("quick")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    client = MlflowClient(uri)
    mp.setattr(flow_module, "PROGRESS_EVERY", 0)  # a progress line after every epoch
    try:
        first = flow_module.pipeline(profile="quick", data_dir=data_dir, experiment="quick")
        fits_after_first = len(fit_runs(client, "quick"))
        trained = []  # groups the second call trains: none, every one comes from the cache
        mp.setattr(P, "train_group", lambda group, *a, _real=P.train_group, **k: trained.append(group.label) or
                   _real(group, *a, **k))
        second = flow_module.pipeline(profile="quick", data_dir=data_dir, experiment="quick")
    finally:
        mp.undo()
    return {"client": client, "uri": uri, "first": first, "second": second, "fits_after_first": fits_after_first,
            "trained_again": trained}

import json
import os
import re
import tempfile
from pathlib import Path

import pytest

# Before any test module imports prefect (which reads its settings once): task results of this session
# go to a fresh folder, never to the project's .cache/prefect, so no test hits an earlier session's cache.
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="pairs-test-results-")

from pairs.data import DataError, check_mnist, data_root, ensure_mnist


def fetch_mnist(root):
    """The data step of `make run`, before any test: the MNIST files under root, downloaded by torchvision when
    missing. None when they are there, else the one message that says which files and what to do."""
    try:
        ensure_mnist(root, download=True)
    except DataError as e:
        return f"tests need real MNIST: {e}"


def pytest_sessionstart(session):
    """No test runs without real MNIST ($PAIRS_DATA_DIR, else ./data: `make test` and `make run` share it)."""
    message = fetch_mnist(data_root())
    if message:
        pytest.exit(message, returncode=2)


@pytest.fixture(scope="session")
def data_dir():
    """The real MNIST root that the session's data step checked (or fetched)."""
    root = data_root()
    check_mnist(root)
    return str(root)


FIXTURES = Path(__file__).parent / "fixtures"


def cpu_and_torch(machine):
    """What the bits of a training record depend on, from a machine description ("2 cores (AMD EPYC), torch 2.14.1,
    ..."): the CPU model and the torch build (thread counts and Python do not change them)."""
    found = re.match(r"\d+ cores \((.+?)\)(?:, GPU [^,]+)?, torch (\S+),", machine)
    assert found, f"not a machine description: {machine!r}"
    return found.groups()


def recorded_quick(machine):
    """(records, exact): the quick profile's records recorded on this CPU model and torch build, to compare bit for
    bit; else the first recorded ones, to compare on what carries over to another CPU model."""
    recorded = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("quick_records-*.json"))]
    same = [r for r in recorded if cpu_and_torch(r["machine"]) == cpu_and_torch(machine)]
    return (same[0], True) if same else (recorded[0], False)


@pytest.fixture(scope="session")
def quick_records(data_dir):
    """The quick profile trained here, in this session, through the library alone: (selection, records)."""
    from pairs.groups import final_groups, search_groups, train_group
    from pairs.protocol import PROFILES
    from pairs.selection import choose, search_table
    q = PROFILES["quick"]
    search = [r for g in search_groups(q) for r in train_group(g, data_dir)[0]]
    selection = choose(search_table(search))
    return selection, search + [r for g in final_groups(q, selection) for r in train_group(g, data_dir)[0]]


def _serve(cmd, health, log, env, what):
    """A server process in its own session, once `health` answers; killed with its group at the end."""
    import signal
    import subprocess
    import time
    import urllib.request
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(health, timeout=3):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"{what} did not start: {Path(log).read_text()[-2000:]}")
            time.sleep(0.5)
    return proc


def _port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1 (its UI pointed at its own API), shared by the test modules that
    need one: returns its API URL."""
    import signal
    import sys
    tmp, port = tmp_path_factory.mktemp("prefect-server"), _port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_UI_API_URL=url)  # (else its UI asks port 4200)
    env.pop("PREFECT_API_URL", None)
    proc = _serve([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  f"{url}/health", tmp / "server.log", env, "prefect server")
    yield url
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.fixture(scope="session")
def mlflow_server(quick_run, tmp_path_factory):
    """A real `mlflow server` (what `make ui` starts) on the store of the session's quick run, with artifacts of
    new experiments proxied to a folder; shared by the UI test and the cluster tests: {url, artifacts}."""
    import signal
    import sys
    tmp, port = tmp_path_factory.mktemp("mlflow-server"), _port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = _serve([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", quick_run["uri"],
                   "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
                  f"http://127.0.0.1:{port}/health", tmp / "server.log", env, "mlflow server")
    yield {"url": f"http://127.0.0.1:{port}", "artifacts": tmp / "artifacts"}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.fixture(scope="session")
def pairs_1000(data_dir):
    from pairs.data import pair_sets
    return pair_sets(1000, seed=7, root=data_dir)


@pytest.fixture(scope="session")
def prefect_env():
    """The real Prefect engine (a temporary server), with task results in this session's fresh folder."""
    from flows.lifetime import environment
    environment()  # its defaults, before prefect is imported (this session's results folder stays)
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


def failing(monkeypatch, match, times=99):
    """A fault for tests: the library's train_group raises for a group holding a fit that `match(fit)` accepts, on
    its first `times` attempts. Returns the labels of the groups' attempts, in order."""
    import pairs.groups
    attempts, real = [], pairs.groups.train_group

    def train_group(group, *args, **kwargs):
        if any(match(f) for f in group.fits):
            attempts.append(group.label)
            if len(attempts) <= times:
                raise RuntimeError(f"injected failure, attempt {len(attempts)} of {times}")
        return real(group, *args, **kwargs)
    monkeypatch.setattr(pairs.groups, "train_group", train_group)
    return attempts


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
    from flows import progress
    import pairs.groups
    folder = tmp_path_factory.mktemp("quick")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    client = MlflowClient(uri)
    mp.setattr(progress, "PROGRESS_EVERY", 0)  # a progress line after every epoch
    try:
        first = flow_module.pipeline(profile="quick", data_dir=data_dir, experiment="quick")
        fits_after_first = len(fit_runs(client, "quick"))
        trained = []  # groups the second call trains: none, every one comes from the cache
        mp.setattr(pairs.groups, "train_group", lambda group, *a, _real=pairs.groups.train_group, **k: trained.append(group.label) or
                   _real(group, *a, **k))
        second = flow_module.pipeline(profile="quick", data_dir=data_dir, experiment="quick")
    finally:
        mp.undo()
    return {"client": client, "uri": uri, "first": first, "second": second, "fits_after_first": fits_after_first,
            "trained_again": trained}


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster in a fresh folder on a free port, started by `make postgres` (the documented
    command; as root it runs initdb and the server as the user postgres): returns its database URI. No PostgreSQL
    here fails with what to install."""
    import shutil
    import subprocess
    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(prefix="pairs-pg-"))
    folder.chmod(0o755)  # (the server's user must reach its data folder)
    data, port = folder / "data", _port()
    make = ["make", "-s", "-C", str(root), f"PG_DATA={data}", f"PG_PORT={port}"]
    if not shutil.which("make"):
        pytest.fail("the PostgreSQL tests need make (apt-get install make)")
    started = subprocess.run(make + ["postgres"], capture_output=True, text=True, timeout=120)
    if started.returncode:
        pytest.fail(f"`make postgres` failed (a PostgreSQL server: apt-get install postgresql, or PG_BIN=<the folder "
                    f"of initdb>): {started.stdout[-1000:]} {started.stderr[-2000:]}")
    yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    subprocess.run(make + ["postgres-stop"], capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)

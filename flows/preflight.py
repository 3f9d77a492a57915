"""What a pipeline call needs from outside itself, looked at before any work: the MNIST files, writable folders, the
tracking store and the Dask scheduler; and where the stores are (MLflow's, Optuna's). Creates nothing but Optuna's
folder when asked for its storage; a problem is a ValueError of one line."""
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pairs.data import MNIST_FILES, DataError, data_root, ensure_mnist

from . import ROOT


def preflight(run):
    """What a call needs from outside, looked at before any work, a ValueError of one line if missing: the MNIST
    files intact (or none yet in the default ./data, and a mirror answering: the prepare task downloads them
    there), the folders writable, the tracking server and the Dask scheduler answering. It creates nothing."""
    check_data(data_root(run.data_dir))
    if run.results and not writable(Path(run.results)):
        raise ValueError(f"the results folder {run.results} is not writable")
    check_tracking(tracking_uri())
    check_cluster(run)


def check_data(root):
    """MNIST under `root`, complete and intact. Only the default ./data (no PAIRS_DATA_DIR, no --data-dir) is
    downloaded into, when none of the files is there yet and a mirror answers; a folder the user named is read,
    never downloaded into (a folder that does not exist is a typo, an empty one a missing copy)."""
    present = root.exists() and (not root.is_dir() or any((root / "MNIST" / "raw" / n).exists() for n in MNIST_FILES))
    try:
        if present or root != Path("data").resolve():
            ensure_mnist(root, download=False)
            return
    except DataError as e:
        raise ValueError(str(e)) from None
    from torchvision.datasets import MNIST
    for mirror in MNIST.mirrors:  # what torchvision will try, in its order
        try:
            urllib.request.urlopen(urllib.request.Request(mirror + MNIST.resources[0][0], method="HEAD"),
                                   timeout=10).close()
            return
        except (urllib.error.URLError, OSError) as e:
            why = f"{mirror}: {getattr(e, 'reason', None) or e}"
    raise ValueError(f"MNIST is not in {root} and cannot be downloaded (no mirror answers; {why}): run where the "
                     "internet is reachable, or point PAIRS_DATA_DIR (or --data-dir) at a folder holding MNIST/raw/ "
                     "with the four IDX files")


def writable(folder):
    """Whether `folder` (or, while it does not exist, its nearest existing parent) takes a new file: tried for real
    (access() says yes to root everywhere), leaving nothing behind."""
    while not folder.exists():
        folder = folder.parent
    try:
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def check_cluster(run):
    """--cluster: the scheduler answering, and a Prefect server set that every worker reports to."""
    if not run.cluster:
        return
    address = urllib.parse.urlsplit(run.cluster)
    if address.scheme not in ("tcp", "tls") or not address.hostname or not address.port:
        raise ValueError(f"--cluster {run.cluster!r}: give the scheduler's address, tcp://HOST:PORT")
    try:
        socket.create_connection((address.hostname, address.port), timeout=5).close()
    except OSError as e:
        raise ValueError(f"the Dask scheduler {run.cluster} cannot be reached ({e.strerror or e}); start it "
                         f"(dask scheduler --host {address.hostname}) and its workers (dask worker {run.cluster} "
                         "--nthreads 1)") from None
    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError("--cluster needs a Prefect server that every worker reports to (without one each worker "
                         "starts its own): start `prefect server start --host 127.0.0.1` and set "
                         "PREFECT_API_URL=http://127.0.0.1:4200/api")


def tracking_uri():
    """$MLFLOW_TRACKING_URI, else a SQLite store in the project's mlruns/ (absolute: works from any folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"


def optuna_storage():
    """Where Optuna keeps its studies: a SQLite file beside a SQLite MLflow store (mlruns/optuna.db), else
    .cache/optuna.db in the project."""
    db = sqlite_path(tracking_uri())
    path = db.parent / "optuna.db" if db else ROOT / ".cache" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def sqlite_path(uri):
    """The database file of a sqlite:/// URI, else None (a server or another store)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_tracking(uri):
    """A local store's folder must take a file; a server must answer within seconds (not after minutes of
    retries); the plain file store is refused."""
    if sqlite_path(uri):
        if not writable(sqlite_path(uri).parent):
            raise ValueError(f"the tracking store {uri} is not writable; set MLFLOW_TRACKING_URI to a writable "
                             "location")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as e:
            raise ValueError(f"the MLflow tracking server {uri} cannot be reached ({e}); start it "
                             "(mlflow server --host 127.0.0.1) or unset MLFLOW_TRACKING_URI") from None
    elif uri.startswith("file:") or "://" not in uri:
        raise ValueError(f"tracking URI {uri!r}: the plain file store is deprecated in MLflow 3; use "
                         "sqlite:///<absolute path>/mlflow.db or a server URL")

"""Input checks that run before any work: the protocol, the device, the data, the tracking store.

Imports neither Prefect nor MLflow's client, so bad input fails in about a second with one line.
"""
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from pairs import protocol as P
from pairs.data import DataError, data_root, ensure_mnist
from pairs.train import resolve_device

from . import ROOT

STAGES = ("prepare", "search", "final", "report")


def make_protocol(profile="full", seed=None, pairs=None, search_rounds=None, folds=None, final_rounds=None,
                  batch_sizes=None, epochs=None):
    """The profile's protocol with the given overrides; a clear ValueError for anything invalid."""
    if profile not in P.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(P.PROFILES)}")
    return P.PROFILES[profile].with_(seed=seed, pairs=pairs, search_rounds=search_rounds, folds=folds,
                                     final_rounds=final_rounds,
                                     batch_sizes=tuple(batch_sizes) if batch_sizes is not None else None,
                                     epochs=tuple(epochs) if epochs is not None else None)


def tracking_uri():
    """$MLFLOW_TRACKING_URI, else a SQLite store in the project's mlruns/ (absolute: works from any folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"


def check_tracking(uri):
    """A local store must be writable; a server must answer within seconds (not after minutes of retries)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:  # access() says yes to root everywhere: try for real
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise ValueError(f"the tracking store {uri} is not writable ({e.strerror}: {folder}); "
                             "set MLFLOW_TRACKING_URI to a writable location") from None
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as e:
            raise ValueError(f"the MLflow tracking server {uri} cannot be reached ({e}); start it "
                             "(mlflow server --host 127.0.0.1) or unset MLFLOW_TRACKING_URI") from None
    elif uri.startswith("file:") or "://" not in uri:
        raise ValueError(f"tracking URI {uri!r}: the plain file store is deprecated in MLflow 3; use "
                         "sqlite:///<absolute path>/mlflow.db or a server URL")


def check_inputs(profile="full", data_dir=None, seed=None, pairs=None, search_rounds=None, folds=None,
                 final_rounds=None, batch_sizes=None, epochs=None, experiment="pairs", device="cpu",
                 until="report"):
    """Raise ValueError with one clear line for any bad input; return the protocol."""
    protocol = make_protocol(profile, seed, pairs, search_rounds, folds, final_rounds, batch_sizes, epochs)
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; choose from {', '.join(STAGES)}")
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"unknown device {device!r}; choose from cpu, cuda, auto")
    if not experiment:
        raise ValueError("the experiment name must not be empty")
    try:
        resolve_device(device)
        ensure_mnist(data_root(data_dir))
    except (RuntimeError, DataError) as e:
        raise ValueError(str(e)) from None
    check_tracking(tracking_uri())
    return protocol

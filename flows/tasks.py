"""The pipeline's Prefect tasks, each a thin wrapper over a `pairs` function or a tracking call.

A group's cache key is made of its fits' keys (the same keys the MLflow store knows the fits by: settings,
seeds, data draw, MNIST fingerprint, code version, device) and the task's source, with results persisted as
JSON (records are plain numbers and lists: nothing is unpickled from the cache): a rerun with nothing changed
reuses every finished group, and a rerun after a crash redoes only unfinished groups. Fit logging is not
cached but idempotent (see flows.tracking), and runs in the flow's thread pool beside the next group's training.
Retry delays are one number each: Prefect's UI shows a list of delays as "NaNs".
"""
import base64
import hashlib
import io
import os
import socket
import tempfile
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy

from pairs import groups, protocol
from pairs.selection import choose, search_table
from pairs.data import DataError, check_mnist, ensure_mnist, mnist_fingerprint
from pairs.machine import resolve_device
from pairs.models import PairsClassifier
from pairs.train import init_model, member_seeds

from .runner import fast_malloc, retry_unless_stopping
from .tracking import RunsEnded

CACHED = dict(cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda ctx, p: p["group"].key(p["context"])) + TASK_SOURCE,
              persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=5,
              retry_condition_fn=retry_unless_stopping)
TRAINING_CODE = ("config.py", "data.py", "groups.py", "models.py", "protocol.py", "stacked.py", "train.py")


def code_version(package=Path(protocol.__file__).parent):
    """SHA-256 over the library's modules that train (TRAINING_CODE): an edit in one changes every fit's key; the
    report, statistics and study-file modules do not."""
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update(name.encode() + (package / name).read_bytes())
    return h.hexdigest()[:16]


@task(task_run_name="prepare data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def prepare_data(root):
    """The four MNIST files, downloaded by torchvision when missing, checked (magic, counts, size) and fingerprinted:
    changed data invalidates caches. Not cached: it is the check that the data on disk is what the caches were
    built from."""
    ensure_mnist(root, download=True)
    return mnist_fingerprint(root)


@task(task_run_name="{group.label}", **CACHED)
def train(group, context, root, device, on_epoch=None, threads=None, fail_first=None):
    """Train one group (a search cell or a final variant): its fit records and, for a group that keeps them,
    its trained models as text (`pack_model`). An error names the group's fits. On a Dask worker
    everything comes as parameters: the data root is checked there and torch uses `threads` threads.
    `fail_first`: the first attempt of a group whose label contains it fails (to watch Prefect retry it; such a
    group refreshes its cache, flows.stages.Call.train_task, so the retry shows on a rerun too)."""
    from prefect.runtime import task_run
    try:
        if fail_first and fail_first in group.label and task_run.run_count <= 1:
            raise RuntimeError(f"its first attempt fails on purpose (--fail-first {fail_first!r}); Prefect retries it")
        if threads:  # on a worker: its own threads, allocator, data and device
            torch.set_num_threads(threads)
            fast_malloc()
            try:
                check_mnist(root)
                resolve_device(device)
            except (DataError, RuntimeError) as e:
                raise RuntimeError(f"on Dask worker {socket.gethostname()} (pid {os.getpid()}): {e}") from None
        records, models, example = groups.train_group(group, root, device, on_epoch)
        return {"records": [r.to_json() for r in records], "models": [pack_model(m) for m in models],
                "example": None if example is None else example.tolist()}
    except Exception as e:
        first, f = group.fits[0], group.fits[-1]
        fits = f"rounds {first.round}-{f.round}" + (f", folds {first.fold}-{f.fold}" if f.folds else "")
        raise RuntimeError(f"{f.stage} fits of {f.variant} at batch size {f.config.batch_size} ({fits}) "
                           f"failed: {e}") from e


def pack_model(model):
    """A trained PairsClassifier's state as text (base64 of torch.save): it travels in the JSON task result."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return base64.b64encode(buf.getvalue()).decode()


def unpack_model(cfg, seed, text):
    """The PairsClassifier of a fit (its config and seed build the members) from `pack_model`'s text; the
    state is loaded with weights_only: nothing else is unpickled."""
    model = PairsClassifier([init_model(cfg.variant, s, **cfg.model_options()) for s in member_seeds(cfg, seed)])
    model.load_state_dict(torch.load(io.BytesIO(base64.b64decode(text)), weights_only=True))
    return model.eval()


@task(task_run_name="log {label}", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=3)
def log_fits(tracker, records, parent_id, context, label, models=None, example=None):
    """Log a group's fits to MLflow, one run each, named after the group."""
    try:
        return tracker.log_fits(records, parent_id, context, models, example, label)
    except RunsEnded:  # a stop that could not wait for this logging; the fits are cached, the rerun logs them
        print(f"{len(records)} fits of {label} not logged: the pipeline had stopped; the rerun logs them")


@task(task_run_name="select", cache_policy=NO_CACHE)
def select(search_records):
    """Per architecture, the candidate (batch size, epochs, searched options) by pairs.protocol.TIE_RULE."""
    return choose(search_table(search_records))


@task(task_run_name="artifacts of {name}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def write_artifacts(tracker, run_id, name, write):
    """Write tables and figures with `write(folder)` (a pairs.report function) and log them to the run."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifacts(run_id, write(Path(tmp)))

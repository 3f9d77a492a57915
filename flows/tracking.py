"""A pipeline call's MLflow run tree: its runs and their ends, one run per fit (logged once), its artifacts.

Run tree: a pipeline run (or the run `mlflow run` opened), a child per stage, a grandchild per fit; in
the final stage, a row run per configuration (Table 2's numbers as its metrics: the comparison view)
holds that configuration's fits. Every run is tagged with its kind (`pairs.kind`: pipeline, stage, row,
trial, fit), its pipeline run, study, profile and stage. Fit runs are idempotent: each carries a `pairs.fit_key` tag (its settings, seed, data and code
version); a fit already FINISHED in this experiment is not logged again, so a rerun after a crash, or
a cached fit meeting a new store, never gives a store with missing or doubled fits. A retried logging attempt
finishes the run its failed attempt created (still RUNNING, tagged with this pipeline), writing the same values
with the same timestamps (MLflow drops a metric value it holds already), so a retry leaves neither a FAILED run
nor a second run of one fit.

Many pipelines may write to one tracking server at once (README, "More machines"); the writes that touch rows
they share tolerate another writer's insert: the experiment's creation, and a fit's dataset input (one round's
pairs are the input of all its variants' fits, logged side by side: MLflow's check-then-insert of the dataset
row fails with a unique-constraint error when another request inserts it between the two).

Every run this process opens is tagged with its host and pid and ended KILLED or FAILED when the
pipeline stops on a signal or an error; runs a SIGKILLed process left RUNNING are ended KILLED by the
next pipeline on the same host. With a SQLite store, a file lock serialises schema creation and each
group's check-then-log, so two pipelines on one store neither corrupt it nor log a fit twice.
"""
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pairs.models import VARIANTS, parse
from pairs.protocol import protocol_params

from .preflight import sqlite_path, tracking_uri

PARENT = "mlflow.parentRunId"
PACKAGE = Path(__file__).resolve().parent.parent / "pairs"
MODEL_LOCK = threading.Lock()
REQUIREMENTS = [f"{p}=={importlib.metadata.version(p)}" for p in ("torch", "mlflow", "numpy")]


OUTPUTS = ["P(first > second)", "P(first <= second)"]  # the model's two output columns


def _known_pickle(record):
    """Drops MLflow's warning about pickled models, once per model: these are the project's own (PairsClassifier,
    logged with its code), and the README says how they load."""
    return "Saving pytorch model by Pickle" not in record.getMessage()


class RunsEnded(RuntimeError):
    """A run was asked for after the pipeline had ended its runs (a stop)."""


def download_artifacts(run_id, names, folder):
    """{name: local path} of a run's artifacts, from the configured store."""
    client = MlflowClient(tracking_uri())
    return {name: Path(client.download_artifacts(run_id, name, str(folder))) for name in names}


HOST = socket.gethostname()
# one colour per variant in every MLflow chart (matplotlib's tab10; the UI otherwise colours runs by their id)
VARIANT_COLORS = dict(zip(VARIANTS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                     "#17becf")))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Tracker:
    """The pipeline's run tree in one experiment; attaches to the run `mlflow run` started, if any."""

    def __init__(self, experiment, run_name, uri=None, tags=None):
        self.uri = uri or tracking_uri()
        self.db = sqlite_path(self.uri)
        if self.db:
            self.db.parent.mkdir(parents=True, exist_ok=True)
        self.tags = {"pairs.host": HOST, "pairs.pid": str(os.getpid()), **(tags or {})}  # on every run
        self.open, self.fit_runs = [], {}  # fit key -> its run, for the fits logged or found by this tracker
        self.rows = {}  # row run id -> its mean test error (None until its fits are in), for the comparison page
        self.guard, self.closed = threading.Lock(), False  # no run is created once end_all() has begun
        with self.lock():
            self.client = MlflowClient(self.uri)
            attached = os.environ.get("MLFLOW_RUN_ID")
            if attached:
                self.run_id, self.owned = attached, False
                self.experiment_id = self.client.get_run(attached).info.experiment_id
            else:
                self.experiment_id = self._experiment(experiment)
            self.end_orphans()
            if not attached:
                self.run_id, self.owned = self._create(run_name, {"pairs.kind": "pipeline"}), True
            self.tags["pairs.pipeline_run"] = self.run_id
            self.name = self.client.get_run(self.run_id).info.run_name  # rows carry it: which pipeline a row is
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()]
                                  + [RunTag("pairs.kind", "pipeline")])

    def _experiment(self, name):
        """The experiment's id, created if missing (another pipeline on the same server may create it first)."""
        artifacts = (self.db.parent / "artifacts" / name).as_uri() if self.db else None  # else: the server's
        for _ in range(2):
            exp = self.client.get_experiment_by_name(name)
            if exp:
                return exp.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=artifacts)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise RuntimeError(f"experiment {name!r}: created by another writer, yet not found")

    @contextlib.contextmanager
    def lock(self):
        """An exclusive lock beside a SQLite store (on a server, pipelines on other machines cannot share a file
        lock: there the writes tolerate each other, see the module's docstring)."""
        if not self.db:
            yield
            return
        with open(self.db.with_suffix(".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def end_orphans(self):
        """End as KILLED the runs of this experiment that a dead process of this host left RUNNING."""
        for run in self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' AND "
                                           f"tags.`pairs.host` = '{HOST}'", max_results=50000):
            pid = int(run.data.tags.get("pairs.pid", "0"))
            if pid and not _alive(pid):
                self.client.set_terminated(run.info.run_id, "KILLED")

    def _create(self, name, tags, start_time=None):
        with self.guard:  # (a logging thread may create a fit run while a signal has the main thread end them all)
            if self.closed:
                raise RunsEnded(f"the pipeline's runs are ended: no new run ({name})")
            run_id = self.client.create_run(self.experiment_id, start_time, tags={**self.tags, **tags},
                                            run_name=name).info.run_id
            self.open.append(run_id)
        return run_id

    def child(self, name, tags=None):
        return self._create(name, {PARENT: self.run_id, "pairs.kind": "stage", **(tags or {})})

    def row(self, name, parent_id, config):
        """The run of one configuration of the final stage: its fits are logged under it, then `end_row` gives it
        Table 2's numbers. Coloured by variant, so the eight keep their colours in every chart."""
        run_id = self._create(f"{name} · {self.name}", {PARENT: parent_id, "pairs.kind": "row", "pairs.stage": "final",
                                                        "mlflow.runColor": VARIANT_COLORS[config.variant]})
        self.log_params(run_id, config_params(config))
        self.rows[run_id] = (name, None)
        return run_id

    def end_row(self, run_id, row):
        """Table 2's row as metrics: mean and std of test and train error over the rounds, parameters, s/epoch,
        diverged fits, rounds; and in its name, so that the runs list and the compare page show it at first sight."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in row.items()])
        name = self.rows[run_id][0]
        self.rows[run_id] = (name, row["test_error_mean"])
        self.client.update_run(run_id, name=f"{name} · test error {100 * row['test_error_mean']:.2f} ± "
                                            f"{100 * row['test_error_std']:.2f}% · {self.name}")
        self.end(run_id)

    def set_tags(self, run_id, tags):
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id, params):
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_artifacts(self, run_id, paths, folder=None):
        for p in paths:
            self.client.log_artifact(run_id, str(p), folder)

    def end(self, run_id, status="FINISHED"):
        self.client.set_terminated(run_id, status)
        if run_id in self.open:  # end_all() on an interrupt may have ended it from the main thread
            self.open.remove(run_id)

    def end_all(self, status="FINISHED"):
        """End every run this tracker still holds open (the pipeline run only if it opened it); none is created
        after this."""
        with self.guard:
            self.closed, runs = True, list(self.open)
        for run_id in reversed(runs):
            self.end(run_id, status)

    def trial_run(self, name, key, parent_id, params):
        """The run of an Optuna trial (its fits are nested in it); the FINISHED one of an earlier call if any."""
        with self.lock():
            found = self.client.search_runs([self.experiment_id], f"tags.`pairs.trial` = '{key}' AND "
                                            "attributes.status = 'FINISHED'", max_results=1)
            if found:
                return found[0].info.run_id
            run_id = self._create(name, {PARENT: parent_id, "pairs.trial": key, "pairs.kind": "trial",
                                         "pairs.stage": "search"})
            self.log_params(run_id, params)
        return run_id

    def end_trial(self, run_id, best):
        """A trial's value: its lowest mean validation error, and the batch size and epochs it was reached at."""
        if self.client.get_run(run_id).info.status == "FINISHED":
            return
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric("val_error", best["val_error_mean"], now, 0)],
                              params=[Param(f"best_{k}", str(best[k])) for k in ("batch_size", "epochs")])
        self.end(run_id)

    def log_fits(self, records, parent_id, context, models=None, example=None, label=""):
        """One run per fit record (named `label` and its round and fold: unique in a pipeline), in one batch each;
        fits already FINISHED here are skipped, and a run this pipeline's earlier attempt left RUNNING is finished.
        With `models` (one per record), each is logged to its fit's run (`log_model`). Returns run ids."""
        keys = [r.key(context) for r in records]
        part = hashlib.sha256(" ".join(keys).encode()).hexdigest()[:32]  # the part's key (tag `pairs.group`)
        with self.lock():
            found = self.client.search_runs([self.experiment_id], f"tags.`pairs.group` = '{part}'",
                                            max_results=50000)
            done = {run.data.tags["pairs.fit_key"]: run.info.run_id for run in found if run.info.status == "FINISHED"}
            begun = {run.data.tags["pairs.fit_key"]: run for run in found if run.info.status == "RUNNING" and
                     run.data.tags.get("pairs.pipeline_run") == self.run_id}  # (another pipeline's: not ours to end)
            for r, key, model in zip(records, keys, models or [None] * len(records)):
                if key not in done:
                    done[key] = self._log_fit(r, parent_id, key, part, context, model, example, label, begun.get(key))
        self.fit_runs.update(zip(keys, (done[k] for k in keys)))
        return [done[k] for k in keys]

    def log_model(self, run_id, model, example):
        """`model` (a pairs.models.PairsClassifier) as the run's MLflow model: float32 N x 2 x 14 x 14 raw pixels
        in, N x 2 pair probabilities out; the pairs package travels with it. Returns the model's URI."""
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            out = pd.DataFrame(model(torch.from_numpy(example)).numpy(), columns=OUTPUTS)
        logging.getLogger("mlflow.pytorch").addFilter(_known_pickle)  # (once: a filter added twice is one filter)
        mlflow.set_tracking_uri(self.uri)
        with MODEL_LOCK, mlflow.start_run(run_id=run_id):  # one at a time: logging runs the model (torch state)
            info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, out),
                                            input_example=example, code_paths=[str(PACKAGE)],
                                            pip_requirements=REQUIREMENTS, serialization_format="pickle")
        return info.model_uri

    def _log_fit(self, r, parent_id, key, part, context, model=None, example=None, label="", begun=None):
        """One fit run: params = the fit's config and identity; metrics = losses per epoch, scores per count,
        training time. `begun`: the run an earlier attempt created, filled again and ended here. An attempt that
        fails leaves its run RUNNING for the retry (the pipeline's end ends it FAILED if no retry succeeds)."""
        if begun:
            run_id, now = begun.info.run_id, begun.info.start_time
            if run_id not in self.open:
                self.open.append(run_id)
        else:
            name = f"{label or r.stage + ' ' + r.variant} r{r.round}" + (f" f{r.fold}" if r.fold is not None else "")
            now = int(time.time() * 1000)
            run_id = self._create(name, {PARENT: parent_id, "pairs.fit_key": key, "pairs.group": part,
                                         "pairs.kind": "fit", "pairs.stage": r.stage}, start_time=now)
        self._fill(run_id, r, context, now, model if not (begun and "pairs.model_uri" in begun.data.tags) else None,
                   example)
        self.end(run_id)
        return run_id

    def _log_input(self, run_id, dataset, tries=5):
        """Log a dataset input. When another request inserts the same dataset row between MLflow's check and its
        insert, the store refuses with a unique-constraint error (SQLite: "UNIQUE constraint failed", PostgreSQL:
        "duplicate key value"): the row is there now, and the next try uses it."""
        for attempt in range(tries):
            try:
                return self.client.log_inputs(run_id, [dataset])
            except MlflowException as e:
                if attempt == tries - 1 or not any(s in str(e) for s in ("UNIQUE constraint", "duplicate key")):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _fill(self, run_id, r, context, now, model, example):
        """The fit's params, metrics (all at time `now`: the run's start, the same in every attempt), dataset input
        and model."""
        al = parse(r.variant)[2]
        params = config_params(r.config) | {"seed": r.seed, "round": r.round, "stage": r.stage,
                                            "scored_epochs": ",".join(str(e) for e, _, _ in r.scores)}
        if r.fold is not None:
            params["fold"] = r.fold
        metrics = [Metric("param_count", r.param_count, now, 0), Metric("s_per_epoch", r.s_per_epoch, now, 0),
                   Metric("train_seconds", r.s_per_epoch * r.config.epochs, now, 0),  # (Duration: logging time)
                   Metric("train_flops", r.train_flops, now, 0)]
        curves = [("train_loss", r.train_loss)] + [("train_main_loss", r.main_loss),
                                                   ("train_aux_loss", r.aux_loss)] * al
        for metric, values in curves:  # the parts of the loss where there are two: AL variants
            metrics += [Metric(metric, v, now, e + 1) for e, v in enumerate(values)]
        eval_name = "val_error" if r.stage == "search" else "test_error"
        for e, train_error, eval_error in r.scores:
            metrics += [Metric("train_error", train_error, now, e), Metric(eval_name, eval_error, now, e)]
        self.client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        self._log_input(run_id, _dataset(r, context))
        if model is not None:
            self.client.set_tag(run_id, "pairs.model_uri", self.log_model(run_id, model, example))


def pipeline_params(protocol, profile, study, context):
    """The pipeline run's parameters: the protocol, the profile, the device, the code version, the study file and
    its search space."""
    return ({f"protocol.{k}": v for k, v in protocol_params(protocol).items()}
            | {"pipeline.profile": profile, "pipeline.device": context.device, "pipeline.code_version": context.code,
               "pipeline.study": study.path or "(the profile's grid)"}
            | {f"search.space.{k}": ",".join(map(str, v)) for k, v in study.space})


def selection_params(selection, final):
    """The selection (and the study's fixed final options) as the pipeline run's parameters."""
    return ({f"selected.{a}.{k}": v for a, c in selection.items() for k, v in c.as_dict().items()}
            | {f"final.{k}": v for k, v in final.items()})


def config_params(config):
    """A configuration as MLflow params: its settings and what its variant means."""
    arch, ws, al = parse(config.variant)
    return asdict(config) | {"architecture": arch, "weight_sharing": ws, "aux_loss": al}


def _dataset(r, context):
    """What a fit saw, for the UI's Dataset column: its round's draw of pairs (and fold), from which MNIST."""
    fold = f" fold {r.fold}/{r.folds}" if r.fold is not None else ""
    source = {"mnist_sha256": context.data, "pairs": r.pairs, "data_seed": r.data_seed, "split_seed": r.split_seed,
              "fold": r.fold, "scored_on": "validation fold" if fold else "test pairs"}
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    return DatasetInput(Dataset(f"{r.stage} round {r.round}{fold}", digest, "pairs", json.dumps(source)),
                        [InputTag("mlflow.data.context", "training")])

"""All MLflow calls: the store, the run tree, one run per fit written in one batch, artifacts.

Run tree: a pipeline run (or the run `mlflow run` opened), a child per stage, a grandchild per fit.
Fit runs are idempotent: each carries a `pairs.fit_key` tag (its settings, seed, data and code
version); a fit already FINISHED in this experiment is not logged again, so a rerun after a crash, or
a cached fit meeting a new store, never gives a store with missing or doubled fits.
"""
import hashlib
import json
import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .checks import tracking_uri

PARENT = "mlflow.parentRunId"


def fit_key(record, context):
    ident = {k: record[k] for k in ("stage", "variant", "batch_size", "epochs", "lr", "aux_weight", "normalize",
                                    "round", "fold", "seed")}
    return hashlib.sha256(json.dumps([ident, context], sort_keys=True).encode()).hexdigest()[:32]


def _artifact_location(uri, experiment):
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts" / experiment).as_uri()
    return None  # a server or another store decides


class Tracker:
    """The pipeline's run tree in one experiment; attaches to the run `mlflow run` started, if any."""

    def __init__(self, experiment, run_name, uri=None):
        self.uri = uri or tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        attached = os.environ.get("MLFLOW_RUN_ID")
        if attached:
            self.run_id, self.owned = attached, False
            self.experiment_id = self.client.get_run(attached).info.experiment_id
        else:
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=_artifact_location(self.uri, experiment))
            self.run_id, self.owned = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id, True

    def child(self, name, tags=None):
        return self.client.create_run(self.experiment_id, run_name=name,
                                      tags={PARENT: self.run_id, **(tags or {})}).info.run_id

    def log_params(self, run_id, params):
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_artifacts(self, run_id, paths, folder=None):
        for p in paths:
            self.client.log_artifact(run_id, str(p), folder)

    def end(self, run_id, status="FINISHED"):
        self.client.set_terminated(run_id, status)

    def finish(self, status="FINISHED"):
        if self.owned:
            self.end(self.run_id, status)

    def log_fits(self, records, parent_id, context):
        """One run per fit record, in one batch each; fits already FINISHED here are skipped. Returns run ids."""
        keys = [fit_key(r, context) for r in records]
        group = hashlib.sha256(" ".join(keys).encode()).hexdigest()[:32]
        done = {run.data.tags["pairs.fit_key"]: run.info.run_id for run in self.client.search_runs(
            [self.experiment_id], f"tags.`pairs.group` = '{group}' AND attributes.status = 'FINISHED'",
            max_results=50000)}
        ids = []
        for r, key in zip(records, keys):
            if key not in done:
                done[key] = self._log_fit(r, parent_id, key, group)
            ids.append(done[key])
        return ids

    def _log_fit(self, r, parent_id, key, group):
        from pairs.models import parse

        arch, ws, al = parse(r["variant"])
        name = f"{r['stage']} {r['variant']} b{r['batch_size']} r{r['round']}" + (
            f" f{r['fold']}" if r["fold"] is not None else "")
        run_id = self.client.create_run(self.experiment_id, run_name=name,
                                        tags={PARENT: parent_id, "pairs.fit_key": key, "pairs.group": group}).info.run_id
        params = {"variant": r["variant"], "architecture": arch, "weight_sharing": ws, "aux_loss": al,
                  "aux_weight": r["aux_weight"], "batch_size": r["batch_size"], "epochs": r["epochs"],
                  "lr": r["lr"], "seed": r["seed"], "round": r["round"], "stage": r["stage"],
                  "normalize": r["normalize"], "scored_epochs": ",".join(map(str, sorted(r["train_error"])))}
        if r["fold"] is not None:
            params["fold"] = r["fold"]
        now = int(time.time() * 1000)
        metrics = [Metric("param_count", r["param_count"], now, 0), Metric("s_per_epoch", r["s_per_epoch"], now, 0)]
        for name in ("train_loss", "main_loss", "aux_loss"):
            key_ = name if name == "train_loss" else f"train_{name}"
            metrics += [Metric(key_, v, now, e + 1) for e, v in enumerate(r[name])]
        eval_name = "val_error" if r["stage"] == "search" else "test_error"
        for e in sorted(r["train_error"]):
            metrics += [Metric("train_error", r["train_error"][e], now, e), Metric(eval_name, r[eval_name][e], now, e)]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000],
                                  params=[Param(k, str(v)) for k, v in params.items()] if i == 0 else [])
        self.client.set_terminated(run_id)
        return run_id

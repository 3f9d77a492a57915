"""Where a person looks: the MLflow UI's address, a run's page, and the compare page of a pipeline's final
configurations (the last line of a call, the Prefect UI's link to MLflow)."""
import json
import os
import urllib.parse

# where `make ui` (mlflow ui on the project's store) serves; `make run UI_PORT=...` sets it to the port `make ui` uses
UI = os.environ.get("PAIRS_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")


def mlflow_ui(tracker):
    """The MLflow UI: the tracking server, or where `make ui` serves a local store."""
    return tracker.uri.rstrip("/") if tracker.uri.startswith(("http://", "https://")) else UI


def run_page(tracker, run_id=None):
    """The run's page in the MLflow UI."""
    return f"{mlflow_ui(tracker)}/#/experiments/{tracker.experiment_id}/runs/{run_id or tracker.run_id}"


def compare_page(tracker):
    """MLflow's compare page of this pipeline's final configurations, best mean test error first, every param and
    metric side by side as numbers (and a parallel-coordinates plot); before any row has its numbers, the runs
    table filtered to its rows."""
    done = sorted((m, r) for r, (_, m) in tracker.rows.items() if m is not None)
    if done:
        query = urllib.parse.urlencode({"runs": json.dumps([r for _, r in done]),
                                        "experiments": json.dumps([tracker.experiment_id])},
                                       quote_via=urllib.parse.quote)
        return f"{mlflow_ui(tracker)}/#/compare-runs?{query}"
    return runs_table(tracker, f"tags.`pairs.pipeline_run` = '{tracker.run_id}' AND tags.`pairs.kind` = 'row'")


def runs_table(tracker, search=None):
    """The experiment's runs table ("Model training", not MLflow 3's GenAI overview), with a search filter sorted
    by mean test error."""
    query = {"workflowType": "machine_learning"} | ({"searchFilter": search, "orderByKey": "metrics.`test_error_mean`",
                                                     "orderByAsc": "true"} if search else {})
    return (f"{mlflow_ui(tracker)}/#/experiments/{tracker.experiment_id}/runs?"
            f"{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}")

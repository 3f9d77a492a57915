"""Prefect flows and MLflow tracking for pairs. Settings that must precede any prefect import live here."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Results of cached tasks stay in the project, not in ~/.prefect; nothing phones home (offline machines).
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(ROOT / ".cache" / "prefect"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from .lifetime import guard_child  # noqa: E402  (a flow run that `serve` spawned ends with it: issue 12)
guard_child()

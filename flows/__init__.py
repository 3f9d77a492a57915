"""Prefect flows and MLflow tracking for pairs. Importing it (or any module in it) changes nothing: the entry
points (`python -m flows`, the flow run a deployment starts, the tests' conftest) call `flows.lifetime.start` or
`flows.lifetime.environment`."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

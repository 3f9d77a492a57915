"""Prefect flows and MLflow tracking for pairs. Importing it (or any module in it) changes nothing: `python -m
flows` calls `flows.lifetime.start`, the tests' conftest `flows.lifetime.environment`; flows/pipeline.py guards a
flow run that `serve` spawned (a no-op anywhere else)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

"""Processes this pipeline starts die with it (issue 12): not yet built."""


def guard_process():
    """Called once at the start of every `python -m flows` command, before Prefect starts anything."""

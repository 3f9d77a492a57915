"""The benchmark's scheduling model: list scheduling of a stage's units, and the Optuna search as flows.search asks
it (each architecture keeps `slots` trials in flight and asks the next as one ends)."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # the benchmark is a script beside the packages, not a module of them
asked, makespan = bench.asked, bench.makespan


def test_a_stage_spreads_its_units_over_the_workers_longest_first():
    assert makespan([4, 3, 3, 2], 1) == 12
    assert makespan([4, 3, 3, 2], 2) == 6  # 4+2, 3+3
    assert makespan([4, 3, 3, 2], 8) == 4  # the longest unit is a floor


def test_an_optuna_search_asks_the_next_trial_as_one_ends():
    one = {"A": [[1.0]] * 6}  # six one-unit trials
    assert asked(one, slots=1, workers=4, overhead=0) == 6  # one in flight: one after another
    assert asked(one, slots=2, workers=4, overhead=0) == 3
    assert asked(one, slots=6, workers=4, overhead=0.5) == pytest.approx(3)  # 4 at once, then 2; 1.5 s each
    # a trial of two units ends with its last: with 2 workers and 1 slot, its units train side by side
    assert asked({"A": [[2.0, 2.0], [1.0, 1.0]]}, slots=1, workers=2, overhead=0) == 3
    # two architectures share the workers; a long trial of one does not hold back the other's asks
    assert asked({"A": [[5.0]], "B": [[1.0]] * 4}, slots=1, workers=2, overhead=0) == 5

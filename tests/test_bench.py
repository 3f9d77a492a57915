"""The benchmark: its scheduling model (list scheduling of a stage's parts, and the Optuna search as flows.search asks
it: each architecture keeps `slots` trials in flight and asks the next as one ends), and its levers, which must train
the pipeline's records."""
import functools
import importlib.util
from pathlib import Path

import pytest

from pairs.config import FitConfig
from pairs.data import kfold
from pairs.train import FitData, fit_many

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
    # a trial of two parts ends with its last: with 2 workers and 1 slot, its parts train side by side
    assert asked({"A": [[2.0, 2.0], [1.0, 1.0]]}, slots=1, workers=2, overhead=0) == 3
    # two architectures share the workers; a long trial of one does not hold back the other's asks
    assert asked({"A": [[5.0]], "B": [[1.0]] * 4}, slots=1, workers=2, overhead=0) == 5


@pytest.mark.parametrize("way", [w for w, (stack, changes) in bench.WAYS.items() if stack is not bench.Stacked])
def test_each_lever_trains_the_records_of_the_pipelines_way(pairs_1000, way):
    """Each lever the benchmark measures (Stacked with other layers or layout, a compiled forward) trains what the
    pipeline's way trains, within the stacked == plain oracle's tolerance: losses within rel 1e-3, abs 1e-4 (rounding:
    up to 1.5e-4 relative seen over 2 epochs for the unfold convolution, bit for bit for the ReLU), errors within 2
    borderline pairs. The compiled forward is checked with the aot_eager backend (the benchmark's inductor compiles
    for 40 s on 2 cores): what it tests is that Stacked's forward compiles and trains the same."""
    stack = bench.WAYS[way][0]
    if stack is bench.compiled:
        stack = functools.partial(bench.compiled, backend="aot_eager")
    p = pairs_1000
    datas = [FitData(p.train_input[tr], p.train_target[tr], p.train_classes[tr], p.train_input[va], p.train_target[va])
             for tr, va in kfold(160, 4, seed=3)][:3]
    cfg = FitConfig("ConvNet_WS_AL", batch_size=40, epochs=2, batch_norm=True)  # conv, batch norm on images and rows
    pipeline = fit_many(cfg, datas, [11, 12, 13], block=2)  # a full and a partial block
    lever = fit_many(cfg, datas, [11, 12, 13], block=2, stack=stack)
    for one, other in zip(pipeline, lever):
        for attr in ("train_loss", "main_loss", "aux_loss"):
            assert getattr(other, attr) == pytest.approx(getattr(one, attr), rel=1e-3, abs=1e-4), attr
        assert abs(other.train_error[2] - one.train_error[2]) <= 2 / 120
        assert abs(other.eval_error[2] - one.eval_error[2]) <= 2 / 40

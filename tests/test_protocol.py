"""Units of work, fit records and their keys; the quick profile's records against the recorded ones."""
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from pairs.groups import Group, final_groups, fit_counts, search_groups, split, train_group
from pairs.protocol import FitRecord, PROFILES, Protocol, selection_of
from pairs.models import PairNet
from pairs.stacked import Stacked
from pairs.config import FitConfig
from pairs.machine import describe_machine

from conftest import FIXTURES, recorded_quick


def test_quick_records_are_those_recorded_before_the_refactor(quick_records):
    """Bit for bit against the records of this CPU model; on a CPU model with none, what carries over."""
    selection, records = quick_records
    machine = describe_machine("cpu")
    fixture, exact = recorded_quick(machine)
    if exact:
        assert {a: c.as_dict() for a, c in selection.items()} == fixture["selection"]
        assert [record_json(r) for r in records] == fixture["records"]
    else:
        assert_carries_over({a: c.as_dict() for a, c in selection.items()}, [record_json(r) for r in records], fixture)


def record_json(r):
    """A record in the fixtures' format."""
    return {"stage": r.stage, "variant": r.variant, "batch_size": r.config.batch_size, "epochs": r.config.epochs,
            "round": r.round, "fold": r.fold, "seed": r.seed, "param_count": r.param_count,
            "train_loss": list(r.train_loss), "main_loss": list(r.main_loss), "aux_loss": list(r.aux_loss),
            "scores": [list(s) for s in r.scores]}


def assert_carries_over(selection, records, fixture):
    """Records (in the fixtures' format) against a fixture of another CPU model: what training on another CPU model keeps: each fit's identity, seeds, parameter counts, scored epochs, the selection and
    the first epoch's losses within float tolerance (float reassociation in the kernels grows over the epochs)."""
    where = f"(recorded on {fixture['machine']}; this is {describe_machine('cpu')})"
    assert selection == fixture["selection"], where
    assert len(records) == len(fixture["records"]), where
    identity = ("stage", "variant", "batch_size", "epochs", "round", "fold", "seed", "param_count")
    for r, old in zip(records, fixture["records"]):
        assert [r[k] for k in identity] == [old[k] for k in identity], where
        assert [s[0] for s in r["scores"]] == [s[0] for s in old["scores"]], where
        for name in ("train_loss", "main_loss", "aux_loss"):
            assert r[name][0] == pytest.approx(old[name][0], rel=1e-4, abs=1e-6), f"{name} at epoch 1 {where}"


def test_the_machine_description_names_the_cpu_model_and_the_torch_build():
    """What every timing is quoted with (the benchmark and the recorded records read the CPU model back out of it):
    the cores, the CPU model as /proc/cpuinfo names it, the torch build, its threads and Python."""
    import os
    import platform
    import re
    from pathlib import Path
    machine = describe_machine("cpu")
    found = re.fullmatch(rf"{os.cpu_count()} cores \((.+)\), torch {re.escape(torch.__version__)}, "
                         rf"{torch.get_num_threads()} threads, Python {re.escape(platform.python_version())}", machine)
    assert found, machine
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
    assert found.group(1) == (names[0] if names else platform.processor()), machine


def test_another_cpu_models_records_fail_the_exact_check_and_pass_the_loose_one():
    """The two recorded CPU models: not the same bits after epoch 1, the same in all that carries over."""
    amd, xeon = (json.loads((FIXTURES / f"quick_records-{m}.json").read_text()) for m in ("amd-epyc", "xeon"))
    assert amd["records"] != xeon["records"]
    assert_carries_over(amd["selection"], amd["records"], xeon)
    later = [dict(r, train_loss=r["train_loss"][:1] + [x * 1.01 for x in r["train_loss"][1:]]) for r in amd["records"]]
    assert_carries_over(amd["selection"], later, xeon)  # later epochs are not compared
    first = [dict(r, train_loss=[r["train_loss"][0] * 1.001] + r["train_loss"][1:]) for r in amd["records"]]
    with pytest.raises(AssertionError, match=r"train_loss at epoch 1 \(recorded on 2 cores \(Intel"):
        assert_carries_over(amd["selection"], first, xeon)


def test_records_round_trip_through_json(quick_records):
    records = quick_records[1]
    back = [FitRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in records]
    assert back == records
    assert [b.key(("ctx",)) for b in back] == [r.key(("ctx",)) for r in records]
    final = records[-1]
    assert final.final_errors == (final.train_error[final.config.epochs], final.eval_error[final.config.epochs])


def test_a_fit_key_names_everything_that_changes_a_fit():
    fit = search_groups(PROFILES["quick"])[0].fits[0]
    key = fit.key(("mnist", "code", "cpu"))
    assert fit.key(("mnist", "code", "cpu")) == key and len(key) == 32
    changed = [replace(fit, config=replace(fit.config, aux_weight=0.5)), replace(fit, seed=fit.seed + 1),
               replace(fit, fold=1), replace(fit, data_seed=3), replace(fit, score_at=(3,))]
    assert len({c.key(("mnist", "code", "cpu")) for c in changed} | {key}) == len(changed) + 1
    assert fit.key(("mnist", "edited code", "cpu")) != key
    assert replace(fit, config=replace(fit.config, aux_weight=1)).key(("mnist", "code", "cpu")) == key  # 1 is 1.0
    assert Group((fit,), "an arm").key() == Group((fit,)).key()  # names and labels are not identity


def test_groups_list_every_unit_once_and_search_never_touches_test_pairs():
    q = PROFILES["quick"]
    search = search_groups(q)
    assert len(search) == len(q.architectures) * len(q.batch_sizes)
    fits = [f for g in search for f in g.fits]
    assert len(fits) == fit_counts(PROFILES["quick"])[0] == len({f.key() for f in fits})
    assert all(f.fold is not None for f in fits)  # search fits are scored on folds of the training pairs
    final = final_groups(q, selection_of({"ConvNet": {"batch_size": 25, "epochs": 2}, "MLP": {"batch_size": 50, "epochs": 3}}))
    assert [g.label for g in final] == [f"final {v}" for v in q.variants]
    assert {f.config.epochs for f in final[-1].fits} == {3} and final[-1].fits[0].score_at == (3,)
    assert len({g.key() for g in search + final}) == len(search) + len(final)


class Wider(PairNet):
    """A PairNet with a layer more in its branch: the stacked path must follow without an edit."""

    def __init__(self):
        super().__init__("MLP", weight_sharing=False)
        for b in (self.branch1, self.branch2):
            b.insert(5, nn.Linear(128, 128))
            b.insert(6, nn.ReLU())


def test_a_group_in_parts_holds_its_fits_and_trains_each_the_same(data_dir):
    """`split` cuts groups into parts of at most `chunk` fits (labelled by their part, fit runs named without it);
    a final group trained in parts of one fit gives every fit the record it gets trained whole, up to float rounding
    in the losses: a stack's size can change how a kernel splits its sums over threads (here: ConvNet_WS_AL's
    grouped convolutions, one ulp)."""
    from flows.stages import fits_label
    q = PROFILES["quick"].with_(search_rounds=3)
    whole = search_groups(q)
    parts = split(whole, 4)  # 9 fits a cell: 4, 4 and 1
    assert [f for g in whole for f in g.fits] == [f for g in parts for f in g.fits] and len(parts) == 3 * len(whole)
    assert parts[2].label == "search ConvNet batch 25 fits 9-9 of 9" and fits_label(parts[2]) == whole[0].label
    assert split(whole) == split(whole, 9) == whole
    final = final_groups(q, selection_of({"ConvNet": {"batch_size": 25, "epochs": 3},
                                              "MLP": {"batch_size": 25, "epochs": 2}}))[3]  # ConvNet_WS_AL
    one_by_one = [r for g in split([final], 1) for r in train_group(g, data_dir)[0]]
    losses = ("train_loss", "main_loss", "aux_loss")
    for r, whole_r in zip(one_by_one, train_group(final, data_dir)[0], strict=True):
        assert replace(r, s_per_epoch=0, **{k: () for k in losses}) == replace(
            whole_r, s_per_epoch=0, **{k: () for k in losses})
        for k in losses:
            assert getattr(r, k) == pytest.approx(getattr(whole_r, k), rel=1e-6, abs=0), k


def test_stacked_follows_the_model_it_is_built_from():
    torch.manual_seed(0)
    models = [Wider() for _ in range(3)]
    x = torch.rand(3, 5, 2, 14, 14)
    pair, digits = Stacked(models, "cpu").forward(x)
    for k, m in enumerate(models):
        one_pair, one_digits = m(x[k])
        torch.testing.assert_close(pair[k], one_pair, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(digits[k], one_digits, rtol=1e-5, atol=1e-5)


def test_fit_config_takes_the_training_options_of_a_protocol():
    p = Protocol(aux_weight=0.25, normalize=True)
    cfg = FitConfig("MLP_AL", 25, 3, **p.training())
    assert (cfg.aux_weight, cfg.normalize, cfg.lr) == (0.25, True, 1e-3)


def test_with_a_schedule_each_epoch_count_is_a_fit_of_its_own():
    q = PROFILES["quick"].with_(schedule="onecycle")
    groups = search_groups(q)
    assert len(groups) == len(q.architectures) * len(q.batch_sizes) * len(q.epoch_grid)
    assert {g.fits[0].score_at for g in groups} == {(e,) for e in q.epoch_grid}
    assert all(f.config.epochs == f.score_at[0] for g in groups for f in g.fits)
    assert sum(len(g.fits) for g in groups) == fit_counts(q)[0]
    assert groups[0].label == "search ConvNet batch 25 epochs 2 schedule=onecycle"


def test_final_seed_draws_other_final_rounds_and_unset_keeps_the_old_ones():
    """final_seed is the final rounds' own base: unset, the rounds (pairs and seeds) are the base seed's, as before it
    existed; set, every round draws other pairs and seeds, and the search is untouched."""
    q = PROFILES["quick"]
    choice = selection_of({"ConvNet": {"batch_size": 25, "epochs": 2}, "MLP": {"batch_size": 50, "epochs": 3}})
    ids = lambda p: [(f.seed, f.data_seed) for g in final_groups(p, choice) for f in g.fits]  # noqa: E731
    assert ids(q) == ids(q.with_(final_seed=q.seed))
    assert not set(ids(q)) & set(ids(q.with_(final_seed=1)))
    assert [f.key() for g in search_groups(q.with_(final_seed=1)) for f in g.fits] == [
        f.key() for g in search_groups(q) for f in g.fits]

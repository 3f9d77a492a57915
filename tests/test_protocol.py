"""Units of work, fit records and their keys; the quick profile's records against the recorded ones."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from pairs import protocol as P
from pairs.models import PairNet
from pairs.stacked import Stacked
from pairs.train import FitConfig, describe_machine

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "quick_records.json").read_text())


@pytest.fixture(scope="module")
def quick_records(data_dir):
    q = P.PROFILES["quick"]
    search = [r for g in P.search_groups(q) for r in P.train_group(g, data_dir)]
    selection = P.select(P.search_table(search))
    return selection, search + [r for g in P.final_groups(q, selection) for r in P.train_group(g, data_dir)]


def test_quick_records_are_those_recorded_before_the_refactor(quick_records):
    """Bit for bit on the CPU model the fixture was recorded on; within float tolerance on another one."""
    selection, records = quick_records
    assert selection == FIXTURE["selection"]
    same_cpu = describe_machine("cpu") == FIXTURE["machine"]
    assert len(records) == len(FIXTURE["records"])
    for r, old in zip(records, FIXTURE["records"]):
        assert (r.stage, r.variant, r.config.batch_size, r.config.epochs, r.round, r.fold, r.seed, r.param_count) == (
            old["stage"], old["variant"], old["batch_size"], old["epochs"], old["round"], old["fold"], old["seed"],
            old["param_count"])
        for name in ("train_loss", "main_loss", "aux_loss"):
            if same_cpu:
                assert list(getattr(r, name)) == old[name], name
            else:
                assert list(getattr(r, name)) == pytest.approx(old[name], rel=1e-4, abs=1e-6), name
        scores = [list(s) for s in r.scores]
        if same_cpu:
            assert scores == old["scores"]
        else:
            assert [s[0] for s in scores] == [s[0] for s in old["scores"]]
            assert all(abs(a - b) <= 0.01 for s, o in zip(scores, old["scores"]) for a, b in zip(s[1:], o[1:]))


def test_records_round_trip_through_json(quick_records):
    records = quick_records[1]
    back = [P.FitRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in records]
    assert back == records
    assert [b.key(("ctx",)) for b in back] == [r.key(("ctx",)) for r in records]
    final = records[-1]
    assert final.final_errors == (final.train_error[final.config.epochs], final.eval_error[final.config.epochs])


def test_a_fit_key_names_everything_that_changes_a_fit():
    fit = P.search_groups(P.PROFILES["quick"])[0].fits[0]
    key = fit.key(("mnist", "code", "cpu"))
    assert fit.key(("mnist", "code", "cpu")) == key and len(key) == 32
    changed = [replace(fit, config=replace(fit.config, aux_weight=0.5)), replace(fit, seed=fit.seed + 1),
               replace(fit, fold=1), replace(fit, data_seed=3), replace(fit, score_at=(3,))]
    assert len({c.key(("mnist", "code", "cpu")) for c in changed} | {key}) == len(changed) + 1
    assert fit.key(("mnist", "edited code", "cpu")) != key
    assert replace(fit, config=replace(fit.config, aux_weight=1)).key(("mnist", "code", "cpu")) == key  # 1 is 1.0
    assert P.Group((fit,), "an arm").key() == P.Group((fit,)).key()  # names and labels are not identity


def test_groups_list_every_unit_once_and_search_never_touches_test_pairs():
    q = P.PROFILES["quick"]
    search = P.search_groups(q)
    assert len(search) == len(q.architectures) * len(q.batch_sizes)
    fits = [f for g in search for f in g.fits]
    assert len(fits) == P.PROFILES["quick"].fits()[0] == len({f.key() for f in fits})
    assert all(f.fold is not None for f in fits)  # search fits are scored on folds of the training pairs
    final = P.final_groups(q, {"ConvNet": {"batch_size": 25, "epochs": 2}, "MLP": {"batch_size": 50, "epochs": 3}})
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


def test_stacked_follows_the_model_it_is_built_from():
    torch.manual_seed(0)
    models = [Wider() for _ in range(3)]
    x = torch.rand(3, 5, 2, 14, 14)
    pair, digits = Stacked(models, "cpu").forward(x)
    for k, m in enumerate(models):
        one_pair, one_digits = m(x[k])
        torch.testing.assert_close(pair[k], one_pair, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(digits[k], one_digits, rtol=1e-5, atol=1e-5)


def test_an_unsupported_layer_is_a_clear_error():
    model = PairNet("MLP", weight_sharing=True)
    model.branch1.insert(1, nn.Tanh())
    with pytest.raises(TypeError, match=r"cannot stack layer 1 of the digit branch \(Tanh\); supported: Conv2d"):
        Stacked([model], "cpu")


def test_fit_config_takes_the_training_options_of_a_protocol():
    p = P.Protocol(aux_weight=0.25, normalize=True)
    cfg = FitConfig("MLP_AL", 25, 3, **p.training())
    assert (cfg.aux_weight, cfg.normalize, cfg.lr) == (0.25, True, 1e-3)
    with pytest.raises(ValueError, match="lr must be positive"):
        P.Protocol(lr=0.0)


def test_with_a_schedule_each_epoch_count_is_a_fit_of_its_own():
    q = P.PROFILES["quick"].with_(schedule="onecycle")
    groups = P.search_groups(q)
    assert len(groups) == len(q.architectures) * len(q.batch_sizes) * len(q.epochs)
    assert {g.fits[0].score_at for g in groups} == {(e,) for e in q.epochs}
    assert all(f.config.epochs == f.score_at[0] for g in groups for f in g.fits)
    assert sum(len(g.fits) for g in groups) == q.fits()[0]
    assert groups[0].label == "search ConvNet batch 25 epochs 2 schedule=onecycle"

"""Model and training options beyond the study: each one stacked == plain (the oracle, test_train's
stacked_equals_plain), and really applied. PAIRS_TEST_DEVICE=cuda runs the oracles on a GPU (in strict float32: no
TF32), as `make gpu-check` does."""
import pytest
import torch

from pairs.data import kfold
from pairs.models import PairNet, compare_digits, param_count
from pairs.config import FitConfig
from pairs.train import FitData, augment, fit, fit_many, shift_digits
from test_train import DEVICE, stacked_equals_plain  # the oracle, written once

SINGLE = [dict(batch_norm=True), dict(weight_decay=0.05), dict(schedule="cosine"), dict(schedule="onecycle"),
          dict(shift=2), dict(re_pair=True), dict(head="digits"), dict(branch="large"), dict(dropout=0.3),
          dict(ensemble=3)]
ALL = dict(normalize=True, batch_norm=True, shift=1, re_pair=True, head="digits", schedule="onecycle",
           weight_decay=0.01, branch="large", dropout=0.2, ensemble=2)
# each option on a shared-branch ConvNet with AL and a two-branch MLP; all of them together on four variants
CASES = ([(v, o) for o in SINGLE for v in ("ConvNet_WS_AL", "MLP")]
         + [(v, ALL) for v in ("ConvNet_WS_AL", "ConvNet", "MLP_AL", "MLP_WS")])


@pytest.fixture(autouse=True)
def strict_float32():
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield


def fold_data(p, k=4, n=160):
    return [FitData(p.train_input[tr], p.train_target[tr], p.train_classes[tr], p.train_input[va],
                    p.train_target[va]) for tr, va in kfold(n, k, seed=3)]


@pytest.mark.parametrize("variant,options", CASES,
                         ids=[f"{v}-{','.join(f'{k}={x}' for k, x in o.items())}" for v, o in CASES])
def test_stacked_equals_one_at_a_time_with_the_option(pairs_1000, variant, options):
    datas, seeds = fold_data(pairs_1000)[:3], [11, 12, 13]
    _, alone = stacked_equals_plain(FitConfig(variant, batch_size=40, epochs=2, **options), datas, seeds,
                                    device=DEVICE, block=2)  # a full and a partial block
    default = fit(FitConfig(variant, batch_size=40, epochs=2), datas[0], seeds[0], device=DEVICE)
    assert alone[0].train_loss != default.train_loss  # the option changed the fit (same seed, same data)


@pytest.mark.parametrize("variant,options", [("ConvNet_WS_AL", ALL), ("MLP", dict(batch_norm=True, ensemble=2))])
def test_stacked_models_come_back_as_the_plain_ones(pairs_1000, variant, options):
    """The trained weights written back from the stacked tensors give the plain fit's model, and its
    predictions are the ones the fit was scored by."""
    cfg = FitConfig(variant, batch_size=40, epochs=2, **options)
    data = fold_data(pairs_1000)[0]
    many = fit_many(cfg, [data, data], [11, 12], keep=True)[0]
    one = fit(cfg, data, 11)
    raw = data.eval_input.float()
    with torch.no_grad():
        p_many, p_one = many.model(raw), one.model(raw)
    torch.testing.assert_close(p_many, p_one, rtol=1e-3, atol=1e-4)
    assert (p_many.argmax(1) != data.eval_target).float().mean().item() == pytest.approx(many.eval_error[2], abs=1e-6)
    assert len(many.model.members) == cfg.ensemble and p_many.sum(1).allclose(torch.ones(len(raw)))


def test_defaults_are_the_study():
    cfg = FitConfig("ConvNet")
    assert (cfg.weight_decay, cfg.schedule, cfg.shift, cfg.re_pair, cfg.batch_norm, cfg.branch, cfg.head) == (
        0.0, "constant", 0, False, False, "study", "learned")


def test_model_options_change_the_network():
    assert param_count(PairNet("ConvNet", True, batch_norm=True)) == 72458 + 2 * (32 + 64 + 200)
    assert param_count(PairNet("MLP", False, head="digits")) == 171538 - (20 * 100 + 100 + 100 * 2 + 2)
    large = PairNet("ConvNet", True, branch="large")
    assert large(torch.rand(3, 2, 14, 14))[0].shape == (3, 2)
    assert param_count(large) > 72458


def test_the_computed_comparison_is_the_probability_of_first_le_second():
    logits = torch.randn(5, 20, dtype=torch.float64)
    p = logits.view(5, 2, 10).softmax(-1)
    want = torch.stack([sum(p[b, 0, i] * p[b, 1, j] for i in range(10) for j in range(i, 10)) for b in range(5)])
    out = compare_digits(logits).exp()
    torch.testing.assert_close(out[:, 1], want)
    torch.testing.assert_close(out.sum(1), torch.ones(5, dtype=torch.float64))


def test_shifts_move_digits_within_bounds_and_zero_is_identity():
    x = torch.zeros(50, 2, 14, 14)
    x[:, :, 7, 7] = 1.0
    g = torch.Generator().manual_seed(0)
    moved = shift_digits(x, 2, g)
    where = moved.flatten(2).argmax(-1)
    rows, cols = where // 14, where % 14
    assert moved.sum() == x.sum()  # the centre pixel stays inside
    assert ((rows - 7).abs() <= 2).all() and ((cols - 7).abs() <= 2).all() and len(set(where.flatten().tolist())) > 5
    assert torch.equal(shift_digits(x, 0, g), x)


def test_re_pairing_keeps_the_digits_and_targets_follow_classes(pairs_1000):
    p = pairs_1000
    cfg = FitConfig("MLP_AL", re_pair=True)
    x, target, classes = augment(cfg, p.train_input[:100], p.train_target[:100], p.train_classes[:100],
                                 torch.Generator().manual_seed(1))
    assert torch.equal(target, (classes[:, 0] <= classes[:, 1]).long())
    assert sorted(classes.flatten().tolist()) == sorted(p.train_classes[:100].flatten().tolist())
    assert not torch.equal(classes, p.train_classes[:100])
    assert torch.equal(x.flatten(0, 1).sum((1, 2)).sort().values, p.train_input[:100].flatten(0, 1).sum((1, 2)).sort().values)


@pytest.mark.parametrize("variant,options", [("ConvNet_WS_AL", {}), ("MLP_AL", {}), ("ConvNet", dict(ensemble=2))])
def test_bf16_stacked_equals_one_at_a_time_at_bf16_tolerance(pairs_1000, variant, options):
    """The bf16 oracle: with precision=bfloat16 the stacked fits equal the plain ones within bf16 rounding
    (about 3 significant digits), and training still lowers the loss; float32 stays the default."""
    assert FitConfig().precision == "float32"
    cfg = FitConfig(variant, batch_size=40, epochs=3, precision="bfloat16", **options)
    datas, seeds = fold_data(pairs_1000)[:2], [11, 12]
    stacked, alone = stacked_equals_plain(cfg, datas, seeds, device=DEVICE, score_at=(3,), rel=3e-2, atol=1e-3, pairs=4)
    full = fit(FitConfig(variant, batch_size=40, epochs=3, **options), datas[0], seeds[0], score_at=(3,), device=DEVICE)
    assert alone[0].train_loss != full.train_loss  # bf16 did change the arithmetic
    assert all(many.train_loss[-1] < many.train_loss[0] for many in stacked)
    assert stacked[0].train_loss == pytest.approx(full.train_loss, rel=5e-2, abs=1e-3)  # and near float32

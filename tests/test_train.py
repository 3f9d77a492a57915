import math
import os
import time

import pytest
import torch

from pairs.data import kfold
from pairs.config import FitConfig
from pairs.train import FitData, _losses, fit, fit_many, init_model


DEVICE = os.environ.get("PAIRS_TEST_DEVICE", "cpu")  # `make gpu-check`: cuda


def stacked_equals_plain(cfg, datas, seeds, device="cpu", block=None, score_at=None, rel=1e-3, atol=1e-4, pairs=2):
    """The oracle, for every test of a fast path: `fit_many`'s fits against `fit` one at a time (same data, same
    seeds) on `device`, in strict float32 (cuDNN's TF32 convolutions round to 10 bits and would drift apart over
    epochs). Equal parameter counts, the three losses within rel/atol every epoch, train and eval errors within
    `pairs` borderline pairs at every scored epoch. Returns (stacked, alone) for a test's own checks."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        stacked = fit_many(cfg, datas, seeds, score_at=score_at, device=device, block=block)
        alone = [fit(cfg, data, seed, score_at=score_at, device=device) for data, seed in zip(datas, seeds)]
    for data, one, many in zip(datas, alone, stacked):
        assert one.param_count == many.param_count
        for attr in ("train_loss", "main_loss", "aux_loss"):
            assert getattr(many, attr) == pytest.approx(getattr(one, attr), rel=rel, abs=atol), attr
        assert many.train_error.keys() == one.train_error.keys() == set(score_at or (cfg.epochs,))
        for e in one.train_error:
            assert abs(many.train_error[e] - one.train_error[e]) <= pairs / len(data.train_target)
            assert abs(many.eval_error[e] - one.eval_error[e]) <= pairs / len(data.eval_target)
    return stacked, alone


def fold_data(p, k=4, n=200):
    folds = kfold(n, k, seed=11)
    return [FitData(p.train_input[tr], p.train_target[tr], p.train_classes[tr],
                    p.train_input[va], p.train_target[va]) for tr, va in folds]


def test_aux_weight_zero_gives_the_no_aux_gradients(pairs_1000):
    x, y, c = pairs_1000.train_input[:50], pairs_1000.train_target[:50], pairs_1000.train_classes[:50]
    grads = []
    for cfg in (FitConfig("MLP_WS"), FitConfig("MLP_WS_AL", aux_weight=0.0), FitConfig("MLP_WS_AL")):
        model = init_model(cfg.variant, seed=5)
        _losses(cfg, *model(x), y, c)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(grads[0], grads[2]))  # weight 1 changes them


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = init_model("ConvNet", 1), init_model("ConvNet", 1), init_model("ConvNet", 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize("variant,block", [("ConvNet", None), ("ConvNet_WS", 3), ("ConvNet_AL", None),
                                           ("ConvNet_WS_AL", 3), ("MLP", 3), ("MLP_WS", None), ("MLP_AL", 3),
                                           ("MLP_WS_AL", None)])
def test_stacked_training_equals_one_at_a_time(pairs_1000, variant, block):
    # block 3: a full and a partial block; raw 0..255 inputs: float summation order drifts the ConvNet_AL losses by
    # ~1e-4 over 3 epochs
    stacked_equals_plain(FitConfig(variant, batch_size=50, epochs=3), fold_data(pairs_1000), [101, 102, 103, 104],
                         block=block, score_at=(2, 3), atol=1e-5)


def test_a_diverging_fit_does_not_disturb_the_others(pairs_1000):
    cfg = FitConfig("MLP", batch_size=50, epochs=2)
    datas, seeds = fold_data(pairs_1000)[:3], [1, 2, 3]
    bad = FitData(datas[1].train_input * float("nan"), *list(vars(datas[1]).values())[1:])
    clean = fit_many(cfg, datas, seeds)
    mixed = fit_many(cfg, [datas[0], bad, datas[2]], seeds)
    assert all(math.isnan(v) for v in mixed[1].train_loss)
    for k in (0, 2):
        assert mixed[k].train_loss == clean[k].train_loss and mixed[k].eval_error == clean[k].eval_error


def test_same_seed_same_metrics_bitwise(pairs_1000):
    cfg = FitConfig("ConvNet_AL", batch_size=100, epochs=2)
    datas = fold_data(pairs_1000)[:2]
    a, b = fit_many(cfg, datas, [9, 10]), fit_many(cfg, datas, [9, 10])
    assert [r.train_loss for r in a] == [r.train_loss for r in b]
    assert [r.eval_error for r in a] == [r.eval_error for r in b]
    assert fit(cfg, datas[0], 9).train_loss == fit(cfg, datas[0], 9).train_loss


@pytest.mark.parametrize("variant", ["ConvNet", "MLP_WS_AL"])
@pytest.mark.parametrize("normalize", [False, True])
def test_tiny_real_fit_learns(pairs_1000, variant, normalize):
    p = pairs_1000
    data = FitData(p.train_input[:300], p.train_target[:300], p.train_classes[:300],
                   p.test_input[:300], p.test_target[:300])
    start = time.perf_counter()
    r = fit(FitConfig(variant, batch_size=25, epochs=5, normalize=normalize), data, seed=0, score_at=(1, 5))
    wall = time.perf_counter() - start
    assert len(r.train_loss) == len(r.epoch_seconds) == 5
    assert r.train_loss[-1] < 0.85 * r.train_loss[0]
    assert r.train_error[5] < r.train_error[1] and r.train_error[5] < 0.35 and r.eval_error[5] < 0.45
    # each epoch timed on its own (not cumulative, in seconds): together most of the call, which also prepares the
    # data and scores, and never more than it
    assert min(r.epoch_seconds) > 0 and wall / 2 <= sum(r.epoch_seconds) <= wall


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        fit(FitConfig("MLP", epochs=1), None, seed=0, device="cuda")


def test_stacked_equals_plain_on_the_test_device(pairs_1000):
    """The path --device cuda takes (all fits of a group in one block); PAIRS_TEST_DEVICE=cuda runs it on a GPU."""
    stacked_equals_plain(FitConfig("ConvNet_AL", batch_size=25, epochs=2), fold_data(pairs_1000), [5, 6, 7, 8],
                         device=DEVICE, block=4)


def test_models_initialised_in_threads_at_once_are_those_initialised_one_by_one():
    """A group trains in a thread while the main thread rebuilds trained models to log them: both draw initial
    weights from torch's one global generator, so each initialisation must hold it alone."""
    from concurrent.futures import ThreadPoolExecutor

    from pairs.train import init_model
    seeds = list(range(24))
    alone = [init_model("ConvNet_WS", s).state_dict() for s in seeds]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: init_model("ConvNet_WS", s).state_dict(), seeds))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(alone, together) for k in a)

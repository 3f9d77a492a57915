import pytest
import torch

from pairs.models import PARAM_COUNTS, VARIANTS, build, param_count

STUDY_PARAMS = {"ConvNet": 144684, "ConvNet_WS": 72458, "ConvNet_AL": 144684, "ConvNet_WS_AL": 72458,
                "MLP": 171538, "MLP_WS": 86920, "MLP_AL": 171538, "MLP_WS_AL": 86920}


def test_variant_names_are_the_study_table_2():
    assert VARIANTS == tuple(STUDY_PARAMS)


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_and_exact_parameter_counts(name):
    model = build(name)
    pair, digits = model(torch.rand(7, 2, 14, 14) * 255)
    assert pair.shape == (7, 2) and digits.shape == (7, 2, 10)
    assert param_count(model) == STUDY_PARAMS[name]
    # the auxiliary loss reads the digit logits the model already has: no parameter of its own
    assert param_count(build(name.replace("_AL", ""))) == PARAM_COUNTS[name.replace("_AL", "")] == param_count(model)


@pytest.mark.parametrize("name", [v for v in VARIANTS if "WS" in v])
def test_weight_sharing_is_one_object(name):
    model = build(name)
    assert model.branch1 is model.branch2
    x = torch.rand(3, 2, 14, 14)
    _, digits = model(x)
    # one branch: swapping the images swaps the digit logits
    _, swapped = model(x.flip(1))
    torch.testing.assert_close(digits.flip(1), swapped)


@pytest.mark.parametrize("name", [v for v in VARIANTS if "WS" not in v])
def test_without_sharing_the_branches_are_distinct(name):
    model = build(name)
    assert model.branch1 is not model.branch2
    assert not any(a is b for a, b in zip(model.branch1.parameters(), model.branch2.parameters()))


@pytest.mark.parametrize("options", [{}, {"branch": "large"}, {"batch_norm": True, "head": "digits"}])
@pytest.mark.parametrize("name", ["ConvNet", "ConvNet_WS", "MLP_WS_AL"])
def test_forward_flops_are_those_of_every_convolution_and_linear_layer(name, options):
    """FlopCounterMode's count against a hand count from the layers' shapes (2 FLOPs per multiply-add)."""
    from pairs.models import forward_flops
    model, macs = build(name, **options), []

    def hook(mod, inp, out):
        macs.append(out.numel() * (mod.weight[0].numel() if isinstance(mod, torch.nn.Conv2d) else mod.in_features))
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 2, 14, 14))
    assert forward_flops(name, **options) == 2 * sum(macs) > 0


def test_a_fits_training_flops_count_its_pairs_epochs_and_members():
    from pairs.groups import final_groups, search_groups
    from pairs.protocol import FitRecord, PROFILES, fold_size, selection_of
    from pairs.config import FitConfig
    from pairs.models import forward_flops
    q = PROFILES["quick"]
    chosen = selection_of({a: {"batch_size": 25, "epochs": 3} for a in ("ConvNet", "MLP")})
    search, final = search_groups(q)[0].fits[0], final_groups(q, chosen)[0].fits[0]
    record = lambda fit, **cfg: FitRecord(**{**vars(fit), "config": FitConfig(**{**vars(fit.config), **cfg})},  # noqa: E731
                                            train_loss=(), main_loss=(), aux_loss=(), scores=(), param_count=0,
                                            s_per_epoch=0.0)
    per_pair = forward_flops("ConvNet")
    assert record(final).train_flops == 3 * per_pair * q.pairs * 3
    assert record(search).train_flops == 3 * per_pair * (q.pairs - fold_size(search)) * search.config.epochs
    assert record(final, ensemble=3).train_flops == 3 * record(final).train_flops

import pytest
import torch

from pairs.models import PARAM_COUNTS, VARIANTS, build, param_count, parse

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


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'CNN'.*ConvNet_WS_AL"):
        parse("CNN")

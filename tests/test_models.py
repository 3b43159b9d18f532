"""The zoo: exact parameter counts, forward shapes for every registered model, width multipliers, registry errors,
and `edgecnn models`."""

from __future__ import annotations

import json

import pytest
from asserts import raises

torch = pytest.importorskip("torch")

from edgecnn.errors import UserInputError  # noqa: E402
from edgecnn.models.registry import count_parameters, create_model, get_entry, list_models, register_model  # noqa: E402

ALL = [e.name for e in list_models()]


def test_zoo_has_the_promised_models():
    assert {
        "cifar-cnn",
        "lenet5",
        "mobilenetv2",
        "mobilenetv2-cifar",
        "resnet8",
        "resnet20",
        "efficientnet-lite0",
    } <= set(ALL)


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [
        ("cifar-cnn", {}, 122_570),  # the Keras/TensorFlow CIFAR-10 tutorial network, exactly
        ("lenet5", {}, 62_006),  # 456 + 2,416 + 48,120 + 10,164 + 850 with 3 input channels
        ("mobilenetv2", {"num_classes": 1000}, 3_504_872),  # the paper's / torchvision's 3.5 M
        ("resnet20", {}, 272_474),  # He et al.'s 0.27 M (projection shortcuts)
        ("resnet8", {}, 78_042),
    ],
)
def test_parameter_counts(name, kwargs, expected):
    assert count_parameters(create_model(name, **kwargs)) == expected


def test_cifar_cnn_layers_are_the_tutorial_ones():
    model = create_model("cifar-cnn")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (0, 0)),
        (32, 64, (3, 3), (0, 0)),
        (64, 64, (3, 3), (0, 0)),
    ]
    assert [(d.in_features, d.out_features) for d in dense] == [(1024, 64), (64, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 4
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_at_default_input(name):
    entry = get_entry(name)
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *entry.preprocess.input_size))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["mobilenetv2-cifar", "resnet8", "resnet20"])
def test_width_multiplier_scales_the_network(name):
    thin = count_parameters(create_model(name, width_mult=0.5))
    base = count_parameters(create_model(name))
    wide = count_parameters(create_model(name, width_mult=2.0))
    assert thin < base < wide
    model = create_model(name, width_mult=0.5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet_takes_other_input_sizes():
    with torch.no_grad():
        assert create_model("resnet8", num_classes=3).eval()(torch.randn(1, 3, 64, 48)).shape == (1, 3)


def test_small_nets_use_cifar_preprocessing():
    for name in ("cifar-cnn", "lenet5", "resnet8", "resnet20", "mobilenetv2-cifar"):
        pre = get_entry(name).preprocess
        assert pre.input_size == (32, 32) and pre.resize == "resize" and pre.channel_order == "rgb"
        assert pre.mean == pytest.approx((125.3, 123.0, 113.9)) and pre.std == pytest.approx((63.0, 62.1, 66.7))
    assert get_entry("mobilenetv2").preprocess.input_size == (224, 224)


def test_pretrained_transfer_replaces_only_the_classifier():
    base = create_model("efficientnet-lite0", pretrained=True)
    tuned = create_model("efficientnet-lite0", num_classes=2, pretrained=True)
    b, t = base.state_dict(), tuned.state_dict()
    assert t["_fc.weight"].shape == (2, b["_fc.weight"].shape[1])
    shared = [k for k in b if not k.startswith("_fc.")]
    assert shared and all(torch.equal(b[k], t[k]) for k in shared)


def test_unknown_arch_is_a_user_error_listing_known_ones():
    with raises(UserInputError, "resnet999"):
        create_model("resnet999")


def test_pretrained_without_weights_is_a_user_error():
    with raises(UserInputError, "efficientnet-lite0"):
        create_model("cifar-cnn", pretrained=True)


def test_registering_a_name_twice_is_refused():
    entry = get_entry("cifar-cnn")
    with raises(ValueError, "cifar-cnn"):
        register_model("cifar-cnn", preprocess=entry.preprocess)(lambda num_classes=10: None)


def test_models_command_json():
    from typer.testing import CliRunner

    from edgecnn.cli.main import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(ALL)
    assert rows["cifar-cnn"]["parameters"] == 122_570
    assert rows["cifar-cnn"]["input_size"] == [32, 32]
    assert rows["efficientnet-lite0"]["pretrained"] is True and rows["efficientnet-lite0"]["num_classes"] == 1000
    assert rows["efficientnet-lite0"]["input_size"] == [224, 224]
    assert not rows["resnet20"]["pretrained"]


def test_models_command_table():
    from typer.testing import CliRunner

    from edgecnn.cli.main import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "cifar-cnn" in result.output and "122,570" in result.output

"""Model builders: LeNet-5's shape and size, build_model's table and user factories, its errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from lowrank.errors import ConfigError
from lowrank.models import ACTIVATIONS, MODELS, build_model, check_model_args, lenet5, mlp

import user_models  # tests/ is on sys.path (no tests/__init__.py): the same module build_model imports

MNIST = (1, 28, 28)


def _config_error(name, args=None, sample_shape=MNIST, num_outputs=10) -> str:
    """The one-line message of the ConfigError that build_model raises."""
    with pytest.raises(ConfigError) as info:
        build_model(name, {} if args is None else args, sample_shape=sample_shape, num_outputs=num_outputs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- lenet5

def test_lenet5_maps_flat_mnist_batch_to_logits():
    model = lenet5()
    out = model(torch.randn(5, 784))
    assert out.shape == (5, 10)
    assert model.fc0.in_features == 50 * 4 * 4


def test_lenet5_parameter_count_matches_hand_count():
    conv0 = 1 * 20 * 5 * 5 + 20          # 520
    conv1 = 20 * 50 * 5 * 5 + 50         # 25_050
    fc0 = 50 * 4 * 4 * 500 + 500         # 400_500
    fc1 = 500 * 10 + 10                  # 5_010
    assert sum(p.numel() for p in lenet5().parameters()) == conv0 + conv1 + fc0 + fc1 == 431_080


def test_lenet5_names_and_last_linear():
    model = lenet5()
    assert [n for n, _ in model.named_children()] == [
        "unflatten", "conv0", "act0", "pool0", "conv1", "act1", "pool1", "flatten", "fc0", "act2", "fc1"]
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] == ["fc0", "fc1"]
    assert isinstance(model.act0, nn.ReLU)


def test_lenet5_flattened_size_follows_image_size_and_channels():
    model = lenet5(in_channels=3, image_size=32, num_classes=7, activation="tanh")
    assert model.conv0.in_channels == 3
    assert model.fc0.in_features == 50 * 5 * 5  # 32 -> 28 -> 14 -> 10 -> 5
    assert isinstance(model.act2, nn.Tanh)
    assert model(torch.randn(2, 3 * 32 * 32)).shape == (2, 7)


def test_lenet5_rejects_too_small_images_and_unknown_activation():
    with pytest.raises(ConfigError, match="at least 16x16.*got 12x12"):
        lenet5(image_size=12)
    with pytest.raises(ConfigError, match="activation 'swish' is not one of relu"):
        lenet5(activation="swish")


# ---------------------------------------------------------------- table and built-ins

def test_model_table_and_old_imports():
    assert set(MODELS) == {"mlp", "lenet5", "transformer"}
    for spec in MODELS.values():
        assert callable(spec.builder) and spec.description and "\n" not in spec.description
    assert callable(mlp) and "relu" in ACTIVATIONS  # `from lowrank.models import mlp` is the function
    assert [n for n, _ in mlp([4, 3, 2]).named_children()] == ["fc0", "act0", "fc1"]


def test_build_mlp():
    model = build_model("mlp", {"layers": [784, 32, 10], "activation": "tanh"}, sample_shape=MNIST, num_outputs=10)
    assert [n for n, _ in model.named_children()] == ["fc0", "act0", "fc1"]
    assert isinstance(model.act0, nn.Tanh)
    assert model(torch.randn(3, 784)).shape == (3, 10)


def test_build_mlp_without_layers_says_which_flag():
    msg = _config_error("mlp", {"activation": "relu"})
    assert "needs layers" in msg and "--layers 784," in msg and msg.endswith(",10")


def test_build_mlp_input_mismatch_names_sizes_and_fix():
    msg = _config_error("mlp", {"layers": [784, 64, 10]}, sample_shape=(3, 32, 32))
    assert "layers start with 784 inputs but the data has 3072 features" in msg
    assert "use --layers 3072,64,10" in msg


def test_build_mlp_output_mismatch_names_sizes_and_fix():
    msg = _config_error("mlp", {"layers": [784, 64, 10]}, num_outputs=1)
    assert "layers end with 10 outputs but the data needs 1" in msg
    assert "use --layers 784,64,1" in msg


def test_build_mlp_rejects_unknown_args_and_bad_layers():
    assert "'width'" in _config_error("mlp", {"layers": [784, 10], "width": 3})
    assert "positive integers" in _config_error("mlp", {"layers": [784, 0, 10]})


def test_build_lenet5_from_sample_shape():
    model = build_model("lenet5", {}, sample_shape=MNIST, num_outputs=10)
    assert model(torch.randn(2, 784)).shape == (2, 10)
    model = build_model("lenet5", {"activation": "gelu"}, sample_shape=(3, 32, 32), num_outputs=4)
    assert model.conv0.in_channels == 3 and model.fc1.out_features == 4
    assert isinstance(model.act1, nn.GELU)


@pytest.mark.parametrize("shape", [(784,), (1, 28, 32), (28, 28)])
def test_build_lenet5_needs_square_images(shape):
    msg = _config_error("lenet5", sample_shape=shape)
    assert "(C, H, H)" in msg and str(shape) in msg and "--model mlp" in msg


def test_build_lenet5_rejects_unknown_args():
    assert "'layers'" in _config_error("lenet5", {"layers": [784, 10]})


# ---------------------------------------------------------------- user factories

def test_build_user_factory_function_and_class():
    model = build_model("user_models:small_cnn", {"channels": 2}, sample_shape=MNIST, num_outputs=10)
    assert model.conv0.out_channels == 2
    assert model(torch.randn(3, 784)).shape == (3, 10)
    net = build_model("user_models:SmallNet", {"out_features": 3}, sample_shape=MNIST, num_outputs=3)
    assert isinstance(net, user_models.SmallNet) and net(torch.randn(2, 784)).shape == (2, 3)


@pytest.mark.parametrize("name, args", [
    ("lenet5", {"activation": "tanh"}),
    ("user_models:small_cnn", {"channels": 3}),
])
def test_config_rebuilds_the_same_model(name, args):
    torch.manual_seed(0)
    first = build_model(name, args, sample_shape=MNIST, num_outputs=10)
    stored = json.loads(json.dumps({"model": name, "model_args": args}))
    again = build_model(stored["model"], stored["model_args"], sample_shape=MNIST, num_outputs=10)
    again.load_state_dict(first.state_dict())  # strict: same names and shapes
    x = torch.randn(4, 784)
    assert torch.equal(first(x), again(x))


@pytest.mark.parametrize("spec, words", [
    ("user_models.small_cnn", ["no ':factory' part", "user_models:small_cnn"]),
    ("a:b:c", ["not of the form package.module:factory"]),
    (":small_cnn", ["not of the form"]),
    ("user_models:", ["not of the form"]),
    ("my-models:net", ["not of the form"]),
    ("tests/user_models.py:small_cnn", ["names a file", "use user_models:small_cnn", "PYTHONPATH"]),
    ("no_such_module_xyz:f", ["cannot import module 'no_such_module_xyz'", "No module named", "PYTHONPATH"]),
    ("no_such_pkg_xyz.sub:f", ["cannot import module 'no_such_pkg_xyz.sub'", "PYTHONPATH"]),
    ("user_models:nope", ["no attribute 'nope'", "small_cnn", "tiny_mlp", "SmallNet"]),
    ("user_models:NOT_A_FACTORY", ["user_models.NOT_A_FACTORY = 42 (int) is not callable"]),
    ("user_models:not_a_module", ["returned a list, not an nn.Module"]),
    ("cnn", ["unknown model 'cnn'", "built-in models are mlp, lenet5", "package.module:factory"]),
    ("lenet", ["did you mean 'lenet5'"]),
])
def test_spec_errors_name_the_spec_and_the_fix(spec, words):
    msg = _config_error(spec)
    for w in words:
        assert w in msg, (w, msg)


def test_public_callables_listed_are_the_modules_own():
    msg = _config_error("user_models:nope")
    assert "OrderedDict" not in msg and "NOT_A_FACTORY" not in msg and "FactoryBug" not in msg


def test_wrong_keyword_arguments_show_the_signature():
    msg = _config_error("user_models:small_cnn", {"width": 3})
    assert "small_cnn(channels: 'int' = 4, num_classes: 'int' = 10)" in msg
    assert "unexpected keyword argument 'width'" in msg and "--model-args" in msg
    assert "missing a required argument: 'width'" in _config_error("user_models:needs_width")


def test_missing_dependency_of_user_module(tmp_path, monkeypatch):
    (tmp_path / "lr_broken_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = _config_error("lr_broken_dep:f")
    assert "importing module 'lr_broken_dep' failed" in msg
    assert "no_such_dependency_xyz" in msg and "PYTHONPATH" in msg


def test_exceptions_inside_user_code_propagate_unchanged(tmp_path, monkeypatch):
    with pytest.raises(user_models.FactoryBug, match="depth 2"):
        build_model("user_models:explodes", {"depth": 2}, sample_shape=MNIST, num_outputs=10)
    with pytest.raises(TypeError, match="bug inside the factory") as info:
        build_model("user_models:type_error_inside", {}, sample_shape=MNIST, num_outputs=10)
    assert not isinstance(info.value, ConfigError)
    (tmp_path / "lr_import_bug.py").write_text("raise RuntimeError('module-level bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lr_import_bug", raising=False)
    with pytest.raises(RuntimeError, match="module-level bug"):
        build_model("lr_import_bug:f", {}, sample_shape=MNIST, num_outputs=10)


# ---------------------------------------------------------------- model_args

def test_check_model_args():
    check_model_args({"a": 1, "b": [1, 2.5], "c": {"d": "x", "e": None}, "f": True})
    with pytest.raises(ConfigError, match=r"model_args\['act'\].*not JSON-serialisable"):
        check_model_args({"a": 1, "act": nn.ReLU})
    with pytest.raises(ConfigError, match="JSON object"):
        check_model_args([1, 2])
    with pytest.raises(ConfigError, match="keys must be strings"):
        check_model_args({1: 2})


def test_build_model_refuses_args_a_checkpoint_cannot_store():
    msg = _config_error("user_models:small_cnn", {"channels": torch.tensor(2)})
    assert "model_args['channels']" in msg


def test_build_model_checks_its_data_arguments():
    assert "sample_shape" in _config_error("mlp", {"layers": [784, 10]}, sample_shape=())
    assert "num_outputs" in _config_error("mlp", {"layers": [784, 10]}, num_outputs=0)

"""Low-rank nn.Conv2d: exactness at full rank, truncation, merge, conversion rules, plan,
accounting, training a small CNN."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lowrank import convert, merge, plan
from lowrank.accounting import count, hidden_weights, record_input_sizes
from lowrank.config import OptimConfig
from lowrank.convert import restore_structure, select, structure
from lowrank.errors import ConfigError, RankError
from lowrank.layer import LowRankLayer, is_conv_layer
from lowrank.losses import loss_function
from lowrank.methods.lora import LoRAConv2d
from lowrank.methods.svd import SVDConv2d, prune
from lowrank.methods.twofactor import TwoFactorConv2d
from lowrank.methods.vanilla import VanillaConv2d
from lowrank.registry import layer_class
from lowrank.stepper import Stepper

METHODS = ["vanilla", "twofactor", "svd", "lora"]
CLASSES = {"vanilla": VanillaConv2d, "twofactor": TwoFactorConv2d, "svd": SVDConv2d, "lora": LoRAConv2d}
FACTORED = [VanillaConv2d, TwoFactorConv2d, SVDConv2d]

GEOMETRIES = [
    {"kernel_size": 3},
    {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
    {"kernel_size": (2, 3), "padding": "same", "dilation": 2},
    {"kernel_size": 3, "padding": 2, "padding_mode": "reflect"},
    {"kernel_size": (3, 2), "padding": "same", "padding_mode": "circular", "stride": 1},
]


def dense_conv(cin: int = 3, cout: int = 5, seed: int = 0, **geometry) -> nn.Conv2d:
    torch.manual_seed(seed)
    geometry = {"kernel_size": 3, **geometry}
    return nn.Conv2d(cin, cout, dtype=torch.float64, **geometry)


def quiet_from_conv(cls, conv, rank, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank is past TwoFactorConv2d's break-even on purpose
        return cls.from_conv(conv, rank, **kw)


def randomise_adapter(layer: LoRAConv2d, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.B.copy_(0.1 * torch.randn(layer.B.shape, generator=g, dtype=layer.B.dtype))


# ---------------------------------------------------------------------------- layers

@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()))
@pytest.mark.parametrize("method", METHODS)
def test_full_rank_equals_conv_forward_and_input_gradient(method: str, geometry: dict) -> None:
    conv = dense_conv(**geometry)
    full = min(conv.out_channels, conv.weight[0].numel())
    layer = quiet_from_conv(CLASSES[method], conv, full)
    assert is_conv_layer(layer) and layer.rank == full
    assert (layer.in_features, layer.out_features) == (conv.weight[0].numel(), 5)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    y_ref = conv(x)
    g = torch.randn_like(y_ref)
    (dx_ref,) = torch.autograd.grad(y_ref, x, g)
    y = layer(x)
    (dx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(dx, dx_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.weight, conv.weight, atol=1e-12, rtol=0)
    assert layer.input_hw == (9, 8)


@pytest.mark.parametrize("cls", FACTORED)
def test_truncated_conv_is_conv_with_truncated_kernel(cls: type) -> None:
    conv = dense_conv(4, 6, kernel_size=3, stride=2, padding=1)
    w = conv.weight.detach().reshape(6, -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    kernel = (u[:, :2] @ torch.diag(s[:2]) @ vh[:2]).reshape(conv.weight.shape)
    layer = cls.from_conv(conv, 2)
    x = torch.randn(3, 4, 10, 11, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, kernel, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.weight, kernel, atol=1e-12, rtol=0)
    assert layer.weight.shape == (6, 4, 3, 3)


def test_lora_conv_update_is_reshaped_b_a_and_merges() -> None:
    conv = dense_conv(3, 5, kernel_size=3, padding=1)
    w0 = conv.weight.detach().clone()
    layer = LoRAConv2d.from_conv(conv, 2, lora_alpha=4.0)
    assert layer.base is conv and [n for n, p in layer.named_parameters() if p.requires_grad] == ["A", "B"]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))  # B = 0: no change
    randomise_adapter(layer)
    kernel = w0 + (2.0 * layer.B @ layer.A).reshape(w0.shape)
    y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, kernel, conv.bias, padding=1), atol=1e-12, rtol=0)
    assert not torch.allclose(y, torch.nn.functional.conv2d(x, w0, conv.bias, padding=1))
    layer.merge()
    torch.testing.assert_close(conv.weight.detach(), kernel.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-12, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(conv.weight.detach(), w0, atol=1e-12, rtol=0)
    assert layer.num_params() == 5 * 27 + 5 and layer.training_params() == 2 * (27 + 5)


@pytest.mark.parametrize("cls", [*FACTORED, LoRAConv2d])
def test_weight_property_is_differentiable_and_read_only(cls: type) -> None:
    layer = quiet_from_conv(cls, dense_conv(), 3)
    if isinstance(layer, LoRAConv2d):
        randomise_adapter(layer)
    layer.weight.sum().backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad and p.dim() > 1]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(AttributeError):
        layer.weight = torch.zeros(5, 3, 3, 3)


@pytest.mark.parametrize("cls", [*FACTORED, LoRAConv2d])
def test_gradcheck_float64(cls: type) -> None:
    layer = quiet_from_conv(cls, dense_conv(2, 3, kernel_size=2, stride=2, padding=1), 2)
    if isinstance(layer, LoRAConv2d):
        randomise_adapter(layer)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_() for n, p in layer.named_parameters() if p.requires_grad)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("cls", [*FACTORED, LoRAConv2d])
def test_spec_rebuilds_same_shapes_through_json(cls: type) -> None:
    layer = quiet_from_conv(cls, dense_conv(3, 4, kernel_size=(3, 2), stride=(2, 1), padding="valid", bias=False), 3)
    if isinstance(layer, LoRAConv2d):
        randomise_adapter(layer)
    spec = json.loads(json.dumps(layer.spec()))
    assert spec["kernel_size"] == [3, 2] and spec["stride"] == [2, 1] and spec["padding"] == "valid"
    fresh = layer_class(type(layer).__name__)(**spec).double()
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), layer(x))
    assert isinstance(fresh.to_dense(), nn.Conv2d) and fresh.to_dense().bias is None


@pytest.mark.parametrize("cls", [*FACTORED, LoRAConv2d])
def test_counts_flops_and_repr(cls: type) -> None:
    conv = dense_conv(4, 6, kernel_size=3, stride=2, padding=1)   # m = 36, n = 6
    layer = quiet_from_conv(cls, conv, 3)
    assert layer.num_params() == cls.count_params(36, 6, 3, True)
    stored = sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("base."))
    if cls is LoRAConv2d:
        assert layer.num_params() == 36 * 6 + 6
    else:
        assert layer.num_params() == stored
    with pytest.raises(ValueError, match="input size unknown"):
        layer.flops_per_sample()
    per_position = 36 * 6 + 6 if cls is LoRAConv2d else 3 * (36 + 6) + 6
    assert layer.flops_per_sample((10, 9)) == per_position * 5 * 5   # (10 + 2 - 3) // 2 + 1 = 5 both ways
    layer(torch.randn(1, 4, 10, 9, dtype=torch.float64))
    assert layer.flops_per_sample() == per_position * 25
    text = repr(layer)
    assert "kernel_size=(3, 3)" in text and "rank=3" in text and "% of dense" in text


@pytest.mark.parametrize("cls", [*FACTORED, LoRAConv2d])
def test_impossible_rank_and_grouped_conv(cls: type) -> None:
    with pytest.raises(RankError, match=r"5x27"):
        quiet_from_conv(cls, dense_conv(3, 5), 6)
    grouped = nn.Conv2d(4, 6, 3, groups=2)
    with pytest.raises(ValueError, match="groups=2"):
        quiet_from_conv(cls, grouped, 2)


def test_svd_conv_prunes_like_the_linear_layer() -> None:
    model = nn.Sequential(OrderedDict(conv=dense_conv(3, 8, kernel_size=3), flat=nn.Flatten(), out=nn.Linear(8 * 4 * 4, 2)))
    model = convert(model.double(), "svd", rank=8)
    layer = model.conv
    with torch.no_grad():
        layer.s.copy_(torch.tensor([5.0, 1e-4, 4.0, 1e-4, 3.0, 1e-4, 1e-4, 1e-4], dtype=torch.float64))
    assert prune(model, 0.99) == {"conv": 3}
    assert layer.U.shape == (8, 3) and layer.V.shape == (27, 3)
    assert model(torch.randn(2, 3, 6, 6, dtype=torch.float64)).shape == (2, 2)


# ---------------------------------------------------------------------------- conversion

class LeNetLike(nn.Module):
    """28x28: conv 1->6 5x5 pad 2 (28), pool (14), conv 6->12 3x3 (12), pool (6), grouped conv 12->12 3x3
    pad 1 (groups 4; 6), pool (3), fc 12*3*3 -> 32, fc 32 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv0=nn.Conv2d(1, 6, 5, padding=2), act0=nn.ReLU(), pool0=nn.MaxPool2d(2),
            conv1=nn.Conv2d(6, 12, 3), act1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            grouped=nn.Conv2d(12, 12, 3, padding=1, groups=4), pool2=nn.MaxPool2d(2)))
        self.fc0 = nn.Linear(12 * 3 * 3, 32)
        self.fc1 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 784) flat, as the datasets give them
        h = self.features(x.view(-1, 1, 28, 28))
        return self.fc1(torch.relu(self.fc0(h.flatten(1))))


def lenet(seed: int = 0) -> LeNetLike:
    torch.manual_seed(seed)
    return LeNetLike()


def test_default_selection_includes_convs_but_not_grouped_or_last_linear() -> None:
    model = lenet()
    assert select(model) == ["features.conv0", "features.conv1", "fc0"]
    out = convert(model, "vanilla", rank=4)
    kinds = {n: type(m).__name__ for n, m in out.named_modules() if isinstance(m, (LowRankLayer, nn.Conv2d, nn.Linear))}
    assert kinds == {"features.conv0": "VanillaConv2d", "features.conv1": "VanillaConv2d",
                     "features.grouped": "Conv2d", "fc0": "VanillaLinear", "fc1": "Linear"}
    assert out.features.conv0.rank == 4 and out(torch.randn(2, 784)).shape == (2, 10)
    assert select(model, target=r"features\..*") == ["features.conv0", "features.conv1"]
    with pytest.raises(ConfigError, match=r"matches no Linear layer or convolution \(features.grouped: groups=4"):
        convert(model, rank=2, target=["grouped"])


def test_conv_rank_rules_apply_to_the_reshaped_kernel() -> None:
    model = lenet()
    w = model.features.conv1.weight.detach().reshape(12, -1)         # 12 x 54
    s = torch.linalg.svdvals(w)
    k = int((torch.cumsum(s ** 2, 0) / (s ** 2).sum() < 0.7).sum()) + 1
    assert convert(model, energy=0.7, target=["conv1"]).features.conv1.rank == k
    assert convert(model, param_ratio=0.5, target=["conv1"]).features.conv1.rank == int(0.5 * 12 * 54 / 66)
    assert convert(model, target=["conv0"]).features.conv0.rank == 6      # default 20, capped at min(6, 25)
    with pytest.raises(RankError, match=r"'features.conv0'.*6x25"):
        convert(model, rank=7)
    out = convert(model, "svd", rank=2, rank_overrides={"conv1": 5})
    assert (out.features.conv0.rank, out.features.conv1.rank, out.fc0.rank) == (2, 5, 2)


def test_method_without_conv_class_keeps_convs_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from lowrank.methods.vanilla import VanillaLinear

    convert_mod = importlib.import_module("lowrank.convert")

    monkeypatch.setattr(convert_mod, "layer_classes_of", lambda method: (VanillaLinear, None))
    model = lenet()
    assert select(model, method="vanilla") == ["fc0"]
    out = convert(model, "vanilla", rank=3)
    assert type(out.features.conv0) is nn.Conv2d and isinstance(out.fc0, VanillaLinear)
    rows = {r["name"]: r for r in plan(model, "vanilla", rank=3)}
    assert rows["features.conv0"]["convert"] is False and "no Conv2d layer" in rows["features.conv0"]["note"]
    with pytest.raises(ConfigError, match="features.conv1: method 'vanilla' has no Conv2d layer"):
        convert(model, "vanilla", rank=3, target=["conv1"])


@pytest.mark.parametrize("method", METHODS)
def test_merge_is_the_inverse_with_dense_keys(method: str) -> None:
    model = lenet().double()
    x = torch.randn(3, 784, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = convert(model, method, rank_overrides={"conv0": 6, "conv1": 12, "fc0": 32}, rank=1)
    if method == "lora":
        for m in out.modules():
            if isinstance(m, LowRankLayer):
                torch.nn.init.normal_(m.B, std=0.1)
    else:
        torch.testing.assert_close(out(x), model(x), atol=1e-10, rtol=0)  # full rank
    merged = merge(out)
    assert not any(isinstance(m, LowRankLayer) for m in merged.modules())
    assert type(merged.features.conv0) is nn.Conv2d and merged.features.conv1.kernel_size == (3, 3)
    sd, ref = merged.state_dict(), model.state_dict()
    assert list(sd) == list(ref) and all(sd[k].shape == ref[k].shape for k in ref)
    torch.testing.assert_close(merged(x), out(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", ["vanilla", "svd"])
def test_merge_after_truncation_is_truncated_svd(method: str) -> None:
    model = lenet().double()
    merged = merge(convert(model, method, rank=3, target=["conv1"]))
    w = model.features.conv1.weight.detach().reshape(12, -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    torch.testing.assert_close(merged.features.conv1.weight.detach(),
                               (u[:, :3] @ torch.diag(s[:3]) @ vh[:3]).reshape(12, 6, 3, 3), atol=1e-12, rtol=0)


def test_structure_round_trip_in_process() -> None:
    torch.manual_seed(3)
    model = convert(lenet(), "vanilla", rank=3, init_decay=2.0)
    model = convert(model, "lora", rank=2, target=["fc1"])
    struct = json.loads(json.dumps(structure(model)))
    assert struct["features.conv1"]["cls"] == "VanillaConv2d"
    assert struct["features.conv1"]["spec"] == {"in_channels": 6, "out_channels": 12, "kernel_size": [3, 3],
                                                "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1],
                                                "padding_mode": "zeros", "rank": 3, "bias": True, "init_decay": 2.0}
    fresh = restore_structure(lenet(seed=9), struct)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 784)
    torch.testing.assert_close(fresh(x), model(x))


def test_plan_rows_for_convs() -> None:
    rows = {r["name"]: r for r in plan(lenet(), "vanilla", rank=4)}
    c1 = rows["features.conv1"]
    assert (c1["kind"], c1["type"], c1["becomes"], c1["convert"]) == ("conv", "Conv2d", "VanillaConv2d", True)
    assert (c1["in_features"], c1["out_features"], c1["rank"]) == (54, 12, 4)
    assert (c1["in_channels"], c1["out_channels"], c1["kernel_size"], c1["groups"]) == (6, 12, [3, 3], 1)
    assert c1["params_before"] == 12 * 6 * 9 + 12
    assert c1["params_after"] == 4 * (54 + 12) + 16 + 12 == VanillaConv2d.count_params(54, 12, 4)
    assert c1["break_even_rank"] == pytest.approx(12 * 54 / (12 + 54))
    g = rows["features.grouped"]
    assert g["convert"] is False and g["rank"] is None and "groups=4" in g["note"]
    assert g["params_before"] == g["params_after"] == 12 * 3 * 9 + 12
    assert rows["fc1"]["convert"] is False and rows["fc0"]["kind"] == "linear"
    # After conversion the layers report their own class and rank.
    rows = {r["name"]: r for r in plan(convert(lenet(), "twofactor", rank=2), "vanilla", rank=2)}
    assert rows["features.conv0"]["type"] == "TwoFactorConv2d" and rows["features.conv0"]["rank"] == 2
    assert rows["features.conv0"]["convert"] is False


def test_lowrank_inspect_lists_convs(capsys: pytest.CaptureFixture) -> None:
    from lowrank.cli import main

    assert main(["inspect", "--model", "lenet5", "--dataset", "mnist", "--train-size", "64", "--test-size", "16",
                 "--method", "vanilla", "--rank", "8"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(lines) == ["conv0", "conv1", "fc0", "fc1"]
    cells = lines["conv1"].split()
    assert cells[1:7] == ["Conv2d", "50x500", "8", str(50 * 500 + 50), str(8 * 550 + 64 + 50), "45.5"]
    assert "conv 50x20x5x5" in lines["conv1"] and "-> VanillaConv2d" in lines["conv1"]
    assert lines["fc1"].rstrip().endswith("(kept dense)")


# ---------------------------------------------------------------------------- accounting

def test_accounting_counts_conv_params_and_flops() -> None:
    model = convert(lenet(), "vanilla", rank=2, target=["conv1"])
    x = torch.randn(1, 784)
    a = count(model, sample=x)
    # conv0: 6*25 + 6 per position, 28x28 positions (pad 2); conv1 vanilla r2 (m 54, n 12) on 14x14 -> 12x12;
    # grouped: 12*(12/4)*9 + 12 on 6x6 -> 6x6 (pad 1); fc0 108*32 + 32; fc1 32*10 + 10.
    conv0 = (150 + 6) * 28 * 28
    conv1 = (2 * (54 + 12) + 12) * 12 * 12
    grouped = (12 * 3 * 9 + 12) * 6 * 6
    fcs = 108 * 32 + 32 + 32 * 10 + 10
    assert a.flops_per_sample == conv0 + conv1 + grouped + fcs
    assert a.dense_flops == conv0 + (12 * 54 + 12) * 144 + grouped + fcs
    assert a.uncounted == ()
    dense_params = 156 + (648 + 12) + (324 + 12) + 108 * 32 + 32 + 330
    assert a.dense_params == dense_params
    assert a.inference.count == dense_params - (648 + 12) + (2 * 66 + 4 + 12)
    # Hidden weights: every Linear-like/conv layer but the last (fc1), without biases.
    hw = hidden_weights(model)
    assert hw.count == 150 + (2 * 66 + 4) + 324 + 108 * 32
    assert hw.ratio == hw.count / (150 + 648 + 324 + 108 * 32)
    # Without a sample: the low-rank conv knows its size from the forward pass above,
    # the dense ones from record_input_sizes (called by count(sample=...)).
    fresh = convert(lenet(), "vanilla", rank=2, target=["conv1"])
    b = count(fresh)
    assert b.uncounted == ("features.conv0", "features.conv1", "features.grouped")
    assert b.flops_per_sample == fcs
    fresh(x)
    assert count(fresh).uncounted == ("features.conv0", "features.grouped")
    assert record_input_sizes(fresh, x) == {"features.conv0": (28, 28), "features.conv1": (14, 14),
                                            "features.grouped": (6, 6)}
    assert count(fresh).flops_per_sample == a.flops_per_sample
    assert count(fresh, dense_reference=lenet()).dense_flops == a.dense_flops


# ---------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def mnist_slice():
    from lowrank.config import DataConfig
    from lowrank.data import load_dataset

    data = load_dataset(DataConfig(dataset="mnist", train_size=256, test_size=16), seed=0)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0))  # the split is sorted by label
    return data.train.x[order], data.train.y[order]


@pytest.mark.parametrize("method", ["vanilla", "svd", "twofactor"])
def test_converted_cnn_trains_with_the_plain_stepper(method: str, mnist_slice) -> None:
    x, y = mnist_slice
    torch.manual_seed(0)
    model = convert(lenet(), method, rank=4)
    assert sum(is_conv_layer(m) for m in model.modules()) == 2
    stepper = Stepper(model, OptimConfig(optimizer="adam", lr=1e-2))
    loss_fn = loss_function("cross_entropy")
    losses = []
    for epoch in range(10):   # measured (seeds 0-2): mean loss of the first 4 steps 2.31, last 4 0.37-0.70
        for i in range(0, 256, 64):
            losses.append(float(stepper.step(x[i:i + 64], y[i:i + 64], loss_fn)))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.6 * first, losses
    assert all(p.grad is not None for n, p in model.features.conv1.named_parameters())


# ---------------------------------------------------------------------------- DLRT

def dlrt_conv(conv: nn.Conv2d, rank: int, **kw):
    from lowrank.methods.dlrt.conv_layer import DLRTConv2d

    return DLRTConv2d.from_conv(conv, rank, **kw)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()))
def test_dlrt_conv_full_rank_and_captured_gradients(geometry: dict) -> None:
    conv = dense_conv(**geometry)
    m = conv.weight[0].numel()
    layer = dlrt_conv(conv, min(5, m)).eval()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    y_ref = conv(x)
    g = torch.randn_like(y_ref)
    (dx_ref, dw_ref) = torch.autograd.grad(y_ref, (x, conv.weight), g)
    y = layer(x)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], dx_ref, atol=1e-12, rtol=0)
    # Manual capture: G_K = dL/dW V, G_L = dL/dW^T U, dS = U^T dL/dW V for the reshaped kernel.
    G = dw_ref.reshape(5, m)
    U, V = layer.U.detach(), layer.V.detach()
    layer.train()
    layer.capture(True, keep_io=True)
    (layer(x) * g).sum().backward()
    torch.testing.assert_close(layer.grad_K, G @ V, atol=1e-11, rtol=0)
    torch.testing.assert_close(layer.grad_L, G.T @ U, atol=1e-11, rtol=0)
    torch.testing.assert_close(layer.grad_S_task, U.T @ G @ V, atol=1e-11, rtol=0)
    torch.testing.assert_close(layer.S.grad, U.T @ G @ V, atol=1e-11, rtol=0)
    gen = torch.Generator().manual_seed(2)
    Ut, Vt = torch.randn(5, 2, generator=gen, dtype=torch.float64), torch.randn(m, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layer.captured_projection(Ut, Vt), Ut.T @ G @ Vt, atol=1e-10, rtol=0)
    layer.capture(False)
    assert layer.captured_io == [] and layer.grad_K is None


def test_dlrt_conv_guard_counts_and_state_of_another_rank() -> None:
    from lowrank.errors import ConfigError as CE
    from lowrank.methods.dlrt.conv_layer import DLRTConv2d

    conv = dense_conv(4, 6, kernel_size=3, stride=2, padding=1)
    layer = dlrt_conv(conv, 3)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with pytest.raises(CE, match="trained by lowrank.DLRT"):   # a plain optimizer would train S only
        layer(x).sum().backward()
    layer.eval()
    assert layer(x).shape == conv(x).shape
    assert layer.num_params() == DLRTConv2d.count_params(36, 6, 3) == 3 * 42 + 9 + 6
    assert layer.flops_per_sample((7, 7)) == (3 * 42 + 6) * 16
    assert layer.max_rank == 3 and layer.training_params(augmented=False) == 3 * 42 + 9 + 6 + 3 * 42
    spec = json.loads(json.dumps(layer.spec()))
    assert spec["min_rank"] == 1 and spec["kernel_size"] == [3, 3] and spec["rank"] == 3
    other = DLRTConv2d(**{**spec, "rank": 2}).double()        # a fresh layer at another rank loads it
    other.load_state_dict(layer.state_dict())
    assert other.rank == 3
    torch.testing.assert_close(other.eval()(x), layer(x))
    assert isinstance(layer.to_dense(), nn.Conv2d)
    torch.testing.assert_close(layer.to_dense()(x), layer(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("integrator", "adaptive"), [("parallel", False), ("kls", True)])
def test_dlrt_optimizer_trains_cnn_with_dlrt_convs(integrator: str, adaptive: bool, mnist_slice) -> None:
    from torch.nn import functional as F

    from lowrank.methods.dlrt import DLRT

    x, y = mnist_slice
    torch.manual_seed(0)
    model = convert(lenet(), "dlrt", rank=4, target=["fc0"])
    for name in ("conv0", "conv1"):
        setattr(model.features, name, dlrt_conv(getattr(model.features, name), 4, max_rank=6))
    opt = DLRT(model, torch.optim.Adam, lr=1e-2, integrator=integrator, adaptive=adaptive, tau=0.05)
    assert sum(1 for layer in opt.layers if is_conv_layer(layer)) == 2
    losses = []
    for epoch in range(10):   # measured: mean of the first 4 steps 2.31, of the last 4 0.65-0.66
        for i in range(0, 256, 64):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses
    assert max(layer.orthonormality_error() for layer in opt.layers) < 1e-4


def test_a_bare_conv_converts_and_merges() -> None:
    conv = dense_conv(3, 8, kernel_size=3)
    out = convert(conv, "vanilla", rank=2)          # no Linear: nothing is "the output layer"
    assert isinstance(out, VanillaConv2d) and out.rank == 2 and type(conv) is nn.Conv2d
    back = merge(out)
    assert type(back) is nn.Conv2d and back.weight.shape == conv.weight.shape
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(back(x), out(x), atol=1e-12, rtol=0)

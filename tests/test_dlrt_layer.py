"""DLRTLinear: forward, captured projected gradients, construction rules, spec / state_dict round trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank.convert import convert, restore_structure, structure
from lowrank.errors import RankError
from lowrank.registry import layer_class
from lowrank.methods.dlrt.layer import DLRTLinear, default_max_rank
from lowrank.linalg import orthonormality_error


def dense(m: int = 9, n: int = 6, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(m, n, dtype=torch.float64)


def test_registered_and_convertible() -> None:
    assert layer_class("DLRTLinear") is DLRTLinear
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    out = convert(model, "dlrt", rank=4, min_rank=2, max_rank=6)
    assert [type(m).__name__ for m in out if not isinstance(m, nn.ReLU)] == ["DLRTLinear", "DLRTLinear", "Linear"]
    assert out[0].min_rank == 2 and out[0].max_rank == 6 and out[2].max_rank == 6


def test_forward_never_forms_w_and_matches_dense() -> None:
    lin = dense()
    layer = DLRTLinear.from_linear(lin, 6)          # full rank: exact
    x = torch.randn(5, 4, 9, dtype=torch.float64)   # extra leading dims
    torch.testing.assert_close(layer(x), lin(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.to_dense()(x), lin(x), atol=1e-12, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), lin(x), atol=1e-12, rtol=0)


def test_from_linear_truncates_and_decays() -> None:
    lin = dense()
    u, s, vh = torch.linalg.svd(lin.weight.detach())
    layer = DLRTLinear.from_linear(lin, 3, init_decay=2.0)
    expected = u[:, :3] @ torch.diag(s[:3] / torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)) @ vh[:3]
    torch.testing.assert_close(layer.dense_weight(), expected, atol=1e-12, rtol=0)
    assert orthonormality_error(layer.U) < 1e-12 and orthonormality_error(layer.V) < 1e-12
    assert not layer.U.requires_grad and not layer.V.requires_grad and layer.S.requires_grad


def test_captured_gradients_are_projections_of_dl_dw() -> None:
    torch.manual_seed(1)
    layer = DLRTLinear(9, 6, 3, dtype=torch.float64)
    x = torch.randn(8, 9, dtype=torch.float64)
    target = torch.randn(8, 6, dtype=torch.float64)
    w = layer.dense_weight().detach().requires_grad_()
    ((x @ w.T + layer.bias.detach() - target) ** 2).sum().backward()
    gw = w.grad                                   # dL/dW (n, m), formed here only as the reference
    layer.capture(True)
    ((layer(x) - target) ** 2).sum().backward()
    layer.capturing = False
    U, V = layer.U.detach(), layer.V.detach()
    torch.testing.assert_close(layer.grad_K, gw @ V)
    torch.testing.assert_close(layer.grad_L, gw.T @ U)
    torch.testing.assert_close(layer.grad_S_task, U.T @ gw @ V)
    torch.testing.assert_close(layer.S.grad, U.T @ gw @ V)


def test_plain_mode_is_an_ordinary_differentiable_layer() -> None:
    layer = DLRTLinear(5, 4, 2, dtype=torch.float64)
    for p in (layer.U, layer.V):
        p.requires_grad_(True)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(x, U, S, V, b):
        return torch.func.functional_call(layer, {"U": U, "S": S, "V": V, "bias": b}, (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in (layer.U, layer.S, layer.V, layer.bias))
    assert torch.autograd.gradcheck(f, (x, *params))


def test_rank_caps_and_errors() -> None:
    assert default_max_rank(784, 256, 20) == 128
    assert default_max_rank(10, 8, 6) == 6                 # raised to the initial rank
    layer = DLRTLinear(10, 8, 3, max_rank=50)
    assert layer.max_rank == 8                             # never above min(m, n)
    with pytest.raises(RankError, match="max_rank=4"):
        DLRTLinear(10, 8, 5, max_rank=4)
    with pytest.raises(RankError, match="min_rank=4"):
        DLRTLinear(10, 8, 3, min_rank=4)
    with pytest.raises(RankError, match="9"):
        DLRTLinear(10, 8, 9)


def test_counts() -> None:
    layer = DLRTLinear(784, 256, 20)
    assert layer.num_params() == 20 * (784 + 256) + 400 + 256
    assert DLRTLinear.count_params(784, 256, 20) == layer.num_params()
    assert layer.flops_per_sample() == 20 * (784 + 256) + 400 + 256
    assert layer.training_params(augmented=False) == layer.num_params() + 20 * (784 + 256)
    assert layer.training_params(augmented=True) == layer.training_params(augmented=False) + 40 * 1040 + 1600


def test_spec_and_state_dict_round_trip_after_rank_change() -> None:
    model = nn.Sequential(DLRTLinear(12, 10, 4, max_rank=8), nn.ReLU(), nn.Linear(10, 3))
    layer = model[0]
    # Simulate an adaptive step that changed the rank to 6.
    layer.set_factors(torch.linalg.qr(torch.randn(10, 6))[0], torch.diag(torch.rand(6)),
                      torch.linalg.qr(torch.randn(12, 6))[0])
    fresh = DLRTLinear(**layer.spec())
    assert fresh.rank == 6 and fresh.max_rank == layer.max_rank
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(4, 12)
    torch.testing.assert_close(fresh(x), layer(x), atol=0, rtol=0)
    # Loading a state of another rank resizes the factors; checkpoint rebuild via structure().
    other = DLRTLinear(12, 10, 2)
    other.load_state_dict(layer.state_dict())
    assert other.rank == 6
    rebuilt = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    restore_structure(rebuilt, structure(model))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)
    with pytest.raises(RankError):
        layer.set_factors(torch.zeros(10, 2), torch.zeros(3, 3), torch.zeros(12, 2))

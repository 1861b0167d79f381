"""The low-rank layers: exactness at full rank, gradients, spec round trip, SVD pruning, LoRA."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from lowrank.errors import RankError
from lowrank.registry import layer_class
from lowrank import (LoRALinear, LowRankLayer, VanillaLinear, SVDLinear,
                            TwoFactorLinear)
from lowrank.linalg import orthonormality_error

FACTORED = [VanillaLinear, TwoFactorLinear, SVDLinear]
ALL = [*FACTORED, LoRALinear]


def dense(m: int = 7, n: int = 5, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(m, n, bias=bias, dtype=torch.float64)


def randomise_adapter(layer: LoRALinear, seed: int = 1) -> None:
    """Give a LoRA layer a nonzero update (B starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.B.copy_(0.1 * torch.randn(layer.B.shape, generator=g, dtype=layer.B.dtype))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_reproduces_dense(cls: type[LowRankLayer], bias: bool) -> None:
    lin = dense(bias=bias)
    x = torch.randn(11, 7, dtype=torch.float64)
    expected = lin(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank is past TwoFactorLinear's break-even on purpose
        layer = cls.from_linear(lin, 5)
    assert layer.rank == 5 and layer.in_features == 7 and layer.out_features == 5
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.to_dense()(x), expected, atol=1e-10, rtol=0)
    assert (layer.bias_tensor is not None) == bias


@pytest.mark.parametrize("cls", FACTORED)
def test_lower_rank_is_truncated_svd(cls: type[LowRankLayer]) -> None:
    lin = dense(9, 6)
    u, s, vh = torch.linalg.svd(lin.weight.detach())
    w2 = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    layer = cls.from_linear(lin, 2)
    torch.testing.assert_close(layer.dense_weight(), w2, atol=1e-12, rtol=0)
    x = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w2.T + lin.bias, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", ALL)
def test_gradcheck_float64(cls: type[LowRankLayer]) -> None:
    layer = cls(4, 3, 2, dtype=torch.float64)
    if isinstance(layer, LoRALinear):
        randomise_adapter(layer)  # with B = 0 the gradient wrt A is trivially 0
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_() for n, p in layer.named_parameters() if p.requires_grad)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("cls", ALL)
def test_spec_rebuilds_same_shapes(cls: type[LowRankLayer]) -> None:
    layer = cls.from_linear(dense(8, 6), 3)
    if isinstance(layer, LoRALinear):
        randomise_adapter(layer)
    fresh = layer_class(type(layer).__name__)(**layer.spec()).double()
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in layer.state_dict().items()}
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), layer(x))


@pytest.mark.parametrize("cls", ALL)
def test_counts_and_repr(cls: type[LowRankLayer]) -> None:
    layer = cls(10, 6, 3)
    stored = sum(p.numel() for p in layer.parameters())
    if cls is LoRALinear:
        assert layer.num_params() == 66  # served merged: the dense layer
        assert layer.training_params() == 3 * 16
    else:
        assert layer.num_params() == stored
    assert layer.num_params() == cls.count_params(10, 6, 3, True)
    assert layer.flops_per_sample() == layer.num_params()  # one multiply-add per stored weight
    text = repr(layer)
    assert "in_features=10" in text and "out_features=6" in text and "rank=3" in text and "% of dense" in text


@pytest.mark.parametrize("cls", ALL)
def test_impossible_rank(cls: type[LowRankLayer]) -> None:
    with pytest.raises(RankError, match="6x10"):
        cls(10, 6, 7)
    with pytest.raises(RankError):
        cls(10, 6, 0)


def test_lowrank_init_orthonormal_and_decay() -> None:
    layer = VanillaLinear(50, 30, 6, init_decay=2.0)
    assert orthonormality_error(layer.U.detach()) < 1e-5
    assert orthonormality_error(layer.V.detach()) < 1e-5
    d = torch.diagonal(layer.S.detach())
    torch.testing.assert_close(d[1:] / d[:-1], torch.full((5,), 0.5))
    assert torch.count_nonzero(layer.S.detach() - torch.diag(d)) == 0
    lin = dense(9, 6)
    s = torch.linalg.svdvals(lin.weight.detach())
    conv = VanillaLinear.from_linear(lin, 4, init_decay=10.0)
    torch.testing.assert_close(torch.diagonal(conv.S.detach()), s[:4] / 10.0 ** torch.arange(4.0, dtype=torch.float64))
    assert conv.spec()["init_decay"] == 10.0


def test_two_factor_split() -> None:
    lin = dense(9, 6)
    u, s, vh = torch.linalg.svd(lin.weight.detach())
    layer = TwoFactorLinear.from_linear(lin, 2)
    torch.testing.assert_close(layer.W1.detach(), u[:, :2] * s[:2].sqrt(), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.W2.detach(), s[:2].sqrt()[:, None] * vh[:2], atol=1e-12, rtol=0)


def test_svd_regularization_formula() -> None:
    layer = SVDLinear(6, 5, 3, lambda_orth=0.5, lambda_sparse=0.25, dtype=torch.float64)
    with torch.no_grad():
        layer.U.mul_(1.1)
        layer.s.copy_(torch.tensor([3.0, -4.0, 0.0]))
    eye = torch.eye(3, dtype=torch.float64)
    orth = ((layer.U.T @ layer.U - eye) ** 2).sum() + ((layer.V.T @ layer.V - eye) ** 2).sum()
    expected = 0.5 * orth + 0.25 * (7.0 / 5.0)
    torch.testing.assert_close(layer.regularization(), expected)
    assert float(orth.detach()) > 0.1
    assert SVDLinear(6, 5, 3).regularization() == 0.0  # no penalty by default


def test_svd_prune_shrinks_and_keeps_function() -> None:
    lin = dense(20, 12)
    layer = SVDLinear.from_linear(lin, 12)
    with torch.no_grad():  # a spectrum with a clear gap, shuffled, one negative
        layer.s.copy_(torch.tensor([1e-3, 5.0, 2e-3, -4.0, 1e-3, 3.0, 1e-3, 2e-3, 1e-3, 1e-3, 2e-3, 1e-3]))
    x = torch.randn(30, 20, dtype=torch.float64)
    before = layer(x)
    r = layer.prune(0.99)
    assert r == 3 and layer.rank == 3
    assert layer.U.shape == (12, 3) and layer.V.shape == (20, 3) and layer.s.shape == (3,)
    torch.testing.assert_close(layer.s.detach(), torch.tensor([5.0, -4.0, 3.0], dtype=torch.float64))
    rel = (layer(x) - before).norm() / (before - lin.bias).norm()
    assert rel < 1e-2
    assert all(p.requires_grad for p in layer.parameters())


def test_svd_prune_exact_rediagonalizes() -> None:
    layer = SVDLinear(10, 8, 5, dtype=torch.float64)
    with torch.no_grad():  # no longer orthonormal: s are not the singular values any more
        layer.U.add_(0.3 * torch.randn(8, 5, dtype=torch.float64))
    w = layer.dense_weight().detach()
    u, s, vh = torch.linalg.svd(w)
    k = int((torch.cumsum(s**2, 0) / (s**2).sum() < 0.9).sum()) + 1
    layer.prune(0.9, exact=True)
    assert layer.rank == k
    torch.testing.assert_close(layer.dense_weight().detach(), u[:, :k] @ torch.diag(s[:k]) @ vh[:k])


def test_lora_merge_unmerge_exact_inverse_float32() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    w0 = lin.weight.detach().clone()
    layer = LoRALinear.from_linear(lin, 4, lora_alpha=8.0)
    randomise_adapter(layer)
    x = torch.randn(10, 32)
    y = layer(x)
    assert not torch.allclose(y, lin(x))  # the adapter changes the function
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-6)  # no double counting
    torch.testing.assert_close(layer.base.weight.detach(), w0 + 2.0 * layer.B.detach() @ layer.A.detach())
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-6)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight.detach(), w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-6, rtol=0)


def test_lora_merged_state_travels_with_state_dict() -> None:
    layer = LoRALinear(12, 6, 2)
    randomise_adapter(layer)
    x = torch.randn(3, 12)
    y = layer(x)
    layer.merge()
    fresh = LoRALinear(**layer.spec())
    fresh.load_state_dict(layer.state_dict())
    assert fresh.merged
    torch.testing.assert_close(fresh(x), y, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(fresh.to_dense()(x), y, atol=1e-5, rtol=1e-6)


def test_lora_trains_only_adapter() -> None:
    torch.manual_seed(0)
    base = nn.Linear(20, 5)
    layer = LoRALinear.from_linear(base, 4)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["A", "B"]
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    x = torch.randn(64, 20)
    target = x @ torch.randn(20, 5)
    torch.testing.assert_close(layer(x), base(x))  # B = 0: a fresh adapter is a no-op
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert torch.equal(base.weight, w0) and torch.equal(base.bias, b0)
    assert base.weight.grad is None


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), data=st.data())
def test_forward_matches_dense_weight_any_shape(m: int, n: int, data: st.DataObject) -> None:
    """For every layer, shape and rank: forward(x) == x W^T + b with W = dense_weight(), and
    num_params() == count_params(); at rank min(m, n) W is the original weight."""
    r = data.draw(st.integers(1, min(m, n)))
    cls = data.draw(st.sampled_from(ALL))
    bias = data.draw(st.booleans())
    lin = dense(m, n, bias=bias, seed=data.draw(st.integers(0, 2**16)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = cls.from_linear(lin, r)
    if isinstance(layer, LoRALinear):
        randomise_adapter(layer)
    x = torch.randn(3, m, dtype=torch.float64)
    w = layer.dense_weight()
    expected = x @ w.T + (lin.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=1e-10)
    assert layer.num_params() == cls.count_params(m, n, r, bias)
    if r == min(m, n) and cls is not LoRALinear:
        torch.testing.assert_close(w, lin.weight, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cls", [*ALL, layer_class("DLRTLinear")])
@pytest.mark.parametrize("bias", [True, False])
def test_drop_in_weight_and_bias(cls: type[LowRankLayer], bias: bool) -> None:
    """``weight`` (the dense product, formed when read, differentiable, read-only) and ``bias`` as
    nn.Linear has them: F.linear(x, layer.weight, layer.bias) is the layer's function."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = cls.from_linear(dense(7, 5, bias=bias), 3)
    if isinstance(layer, LoRALinear):
        randomise_adapter(layer)
    assert (layer.in_features, layer.out_features) == (7, 5)
    assert layer.weight.shape == (5, 7) and "weight" not in dict(layer.named_parameters())
    assert (layer.bias is None) == (not bias)
    x = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.linear(x, layer.weight, layer.bias), layer.eval()(x),
                               atol=1e-12, rtol=0)
    with pytest.raises((AttributeError, KeyError)):
        layer.weight = nn.Parameter(torch.zeros(5, 7, dtype=torch.float64))
    trainable = [p for p in layer.parameters() if p.requires_grad and p.dim() > 1]
    layer.weight.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

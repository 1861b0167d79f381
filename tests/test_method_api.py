"""Each method's behaviour outside the trainer: the calls a user's own loop makes."""

from __future__ import annotations

import torch

from lowrank import SVDLinear, TwoFactorLinear, convert, mlp
from lowrank.methods.lora import LoRALinear, freeze_base
from lowrank.methods.svd import prune
from lowrank.methods.twofactor import factorize, switch_step


def test_freeze_base_leaves_only_adapters_trainable() -> None:
    model = freeze_base(convert(mlp([12, 8, 6, 3]), "lora", rank=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc0.A", "fc0.B", "fc1.A", "fc1.B"}
    assert isinstance(model.fc0, LoRALinear) and not model.fc2.weight.requires_grad


def test_prune_keeps_the_energy_and_restricts_optimizer_state() -> None:
    torch.manual_seed(0)
    model = convert(mlp([12, 10, 3]), "svd")          # full rank: min(10, 12)
    layer = model.fc0
    with torch.no_grad():
        layer.s.copy_(torch.tensor([10.0, 5.0, 1.0] + [1e-3] * 7))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 12)).sum().backward()
    opt.step()
    ranks = prune(model, prune_energy=0.99, optimizer=opt)
    assert ranks == {"fc0": 2} and isinstance(layer, SVDLinear) and layer.s.shape == (2,)
    assert opt.state[layer.s]["exp_avg"].shape == (2,)
    assert any(p is layer.U for g in opt.param_groups for p in g["params"])


def test_factorize_and_switch_step_match_the_trainer() -> None:
    assert switch_step(1000, 0.1) == 100 and switch_step(938 * 10) == 938
    torch.manual_seed(0)
    model = mlp([12, 10, 3])
    w = model.fc0.weight.detach().clone()
    out = factorize(model, rank=4)
    assert out is model and isinstance(model.fc0, TwoFactorLinear) and model.fc0.rank == 4
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(model.fc0.W1 @ model.fc0.W2, u[:, :4] @ torch.diag(s[:4]) @ vh[:4], atol=1e-5, rtol=0)


def test_a_rank_past_break_even_warns_with_the_break_even_rank() -> None:
    import warnings

    import pytest

    with pytest.warns(UserWarning, match=r"'fc0' \(8x12\) at rank 6 .* break-even rank 4\.8"):
        convert(mlp([12, 8, 3]), "vanilla", rank=6)
    with pytest.warns(UserWarning, match="break-even"):
        convert(mlp([12, 8, 3]), "dlrt", energy=0.999)     # a random 8x12 needs nearly full rank
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(mlp([12, 8, 3]), "svd")                    # the method's own default (full rank): no warning
        convert(mlp([12, 8, 3]), "lora", rank=8)           # an adapter adds to the dense layer
        convert(mlp([12, 8, 3]), "vanilla", rank=2)


def test_fit_takes_plain_tensors() -> None:
    from lowrank import OptimConfig
    from lowrank.stepper import Stepper
    from lowrank.train import fit

    torch.manual_seed(0)
    x = torch.randn(300, 6)
    y = (x[:, 0] > 0).long()                                   # a separable rule: learnable
    model = convert(mlp([6, 16, 2]), "vanilla", rank=4)
    history = fit(model, (x, y), Stepper(model, OptimConfig(lr=1e-2)), epochs=5, batch_size=32)
    assert len(history) == 5 and history[-1]["test_acc"] > 0.8

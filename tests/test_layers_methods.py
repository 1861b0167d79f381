"""Method recipes: vanilla / svd / lora prepare, the two-factor switch and its resume, SVD pruning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank import mlp
from lowrank.registry import method_config
from lowrank.config import OptimConfig, TrainConfig
from lowrank.convert import restore_structure, structure
from lowrank.errors import CheckpointError
from lowrank import LoRALinear, VanillaLinear, SVDLinear, TwoFactorLinear
from lowrank.run import apply_method, build_stepper
from lowrank.stepper import penalty

SIZES = [12, 10, 8, 4]


def config(method: str, **kw) -> TrainConfig:
    cfg = TrainConfig(method=method_config(method, **kw), optim=OptimConfig(lr=1e-2), layers=SIZES)
    cfg.validate()
    return cfg


def data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, SIZES[0], generator=g)
    y = (x @ torch.randn(SIZES[0], SIZES[-1], generator=g)).argmax(1)
    return x, y


def build(cfg: TrainConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return apply_method(mlp(SIZES), cfg)


def test_vanilla_prepare_default_rank_capped_and_decay() -> None:
    model = build(config("vanilla", init_decay=3.0))
    assert isinstance(model.fc0, VanillaLinear) and isinstance(model.fc2, nn.Linear)
    assert (model.fc0.rank, model.fc1.rank) == (10, 8)  # default 20, capped at min(m, n)
    d = torch.diagonal(model.fc0.S.detach())
    assert float(d[1] / d[0]) < 1 / 3 + 1e-6
    model = build(config("vanilla", rank=3, target="fc1"))
    assert isinstance(model.fc0, nn.Linear) and model.fc1.rank == 3


def test_svd_method_penalty_and_pruning() -> None:
    cfg = config("svd", rank=6, lambda_orth=1.0, lambda_sparse=0.5, prune_energy=0.9)
    model = build(cfg)
    assert isinstance(model.fc0, SVDLinear) and model.fc0.lambda_orth == 1.0
    pen = penalty(model, cfg.optim)
    torch.testing.assert_close(pen, model.fc0.regularization() + model.fc1.regularization())
    stepper = build_stepper(model, cfg, 20)
    x, y = data()
    for _ in range(20):
        stepper.step(x, y, F.cross_entropy)
    before = model(x)
    old_s = model.fc0.s.detach().clone()
    old_m = stepper.optimizer.state[model.fc0.s]["exp_avg"].clone()
    stepper.end_training()
    idx = torch.tensor([int((old_s == v).nonzero()) for v in model.fc0.s.detach()])
    torch.testing.assert_close(stepper.optimizer.state[model.fc0.s]["exp_avg"], old_m[idx], rtol=0, atol=0)
    assert model.fc0.rank < 6 and stepper.pruned_ranks["fc0"] == model.fc0.rank
    assert (model(x).argmax(1) == before.argmax(1)).float().mean() > 0.8
    # The optimizer follows the pruned parameters, its state restricted to the kept triplets,
    # and a resume into pruned shapes works.
    held = [p for g in stepper.optimizer.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    for p in held:
        assert stepper.optimizer.state[p]["exp_avg"].shape == p.shape
    stepper.step(x, y, F.cross_entropy)
    state, struct, sd = stepper.state_dict(), structure(model), model.state_dict()
    fresh = restore_structure(mlp(SIZES), struct)
    fresh.load_state_dict(sd)
    s2 = build_stepper(fresh, cfg, 20)
    s2.load_state_dict(state)
    assert s2.pruned_ranks == stepper.pruned_ranks


def test_lora_prepare_from_base_checkpoint(tmp_path) -> None:
    from lowrank.checkpoint import write_checkpoint

    torch.manual_seed(5)
    trained = mlp(SIZES)
    write_checkpoint(tmp_path / "base.pt", {"model": trained.state_dict(), "structure": {}})
    cfg = config("lora", rank=2, lora_alpha=4.0, base_checkpoint=str(tmp_path / "base.pt"))
    model = build(cfg)
    assert isinstance(model.fc0, LoRALinear) and model.fc0.scaling == 2.0
    assert torch.equal(model.fc0.base.weight, trained.fc0.weight)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc0.A", "fc0.B", "fc1.A", "fc1.B"]
    x, y = data()
    torch.testing.assert_close(model(x), trained(x))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".A" not in k and ".B" not in k}
    stepper = build_stepper(model, cfg, 10)
    losses = [float(stepper.step(x, y, F.cross_entropy)) for _ in range(10)]
    assert losses[-1] < losses[0]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())


def test_lora_prepare_merges_a_converted_base(tmp_path) -> None:
    from lowrank.checkpoint import write_checkpoint
    from lowrank.convert import convert

    torch.manual_seed(5)
    trained = convert(mlp(SIZES), "vanilla", rank=3)
    write_checkpoint(tmp_path / "base.pt", {"model": trained.state_dict(), "structure": structure(trained)})
    model = build(config("lora", rank=2, base_checkpoint=str(tmp_path / "base.pt")))
    x, _ = data()
    torch.testing.assert_close(model(x), trained(x))


def run(stepper, x, y, steps: int) -> list[float]:
    return [float(stepper.step(x, y, F.cross_entropy)) for _ in range(steps)]


def test_twofactor_switches_at_phi_and_keeps_training() -> None:
    cfg = config("twofactor", phi=0.25, inner_fraction=0.5)
    model = build(cfg)
    assert isinstance(model.fc0, nn.Linear)
    stepper = build_stepper(model, cfg, 40)
    x, y = data()
    losses = run(stepper, x, y, 10)
    assert stepper.steps == 10 and not stepper.switched and isinstance(model.fc0, nn.Linear)
    losses += run(stepper, x, y, 1)
    assert stepper.switched
    assert isinstance(model.fc0, TwoFactorLinear) and isinstance(model.fc1, TwoFactorLinear)
    assert isinstance(model.fc2, nn.Linear)
    assert (model.fc0.rank, model.fc1.rank) == (5, 4)  # alpha * min(m, n)
    held = [p for g in stepper.optimizer.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    losses += run(stepper, x, y, 29)
    assert losses[-1] < losses[11] < losses[0]


def test_twofactor_warns_above_break_even() -> None:
    cfg = config("twofactor", phi=0.0, rank=5)  # fc1: 10*8/18 = 4.4 <= 5
    stepper = build_stepper(build(cfg), cfg, 4)
    x, y = data()
    with pytest.warns(UserWarning, match="break-even"):
        run(stepper, x, y, 1)


@pytest.mark.parametrize("stop", [3, 10, 17])
def test_twofactor_resume_on_either_side_of_switch(stop: int) -> None:
    cfg = config("twofactor", phi=0.25, rank=3)
    x, y = data()
    reference = build(cfg)
    run(build_stepper(reference, cfg, 40), x, y, 25)

    model = build(cfg)
    stepper = build_stepper(model, cfg, 40)
    run(stepper, x, y, stop)
    ckpt = {"structure": structure(model), "model": model.state_dict(), "stepper": stepper.state_dict()}
    # A fresh process: dense model, structure restored, weights, then the stepper.
    resumed = restore_structure(mlp(SIZES), ckpt["structure"])
    resumed.load_state_dict(ckpt["model"])
    s2 = build_stepper(resumed, cfg, 40)
    s2.load_state_dict(ckpt["stepper"])
    assert s2.switched == (stop > 10)
    run(s2, x, y, 25 - stop)
    for (n, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=n)


def test_twofactor_load_detects_structure_mismatch() -> None:
    cfg = config("twofactor", phi=0.0, rank=3)
    x, y = data()
    model = build(cfg)
    stepper = build_stepper(model, cfg, 4)
    run(stepper, x, y, 2)
    fresh = build_stepper(build(cfg), cfg, 4)  # dense: structure not restored
    with pytest.raises(CheckpointError, match="restore the checkpoint's structure"):
        fresh.load_state_dict(stepper.state_dict())
    # A stepper built before the structure was restored follows the model on load.
    dense_model = build(cfg)
    early = build_stepper(dense_model, cfg, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restore_structure(dense_model, structure(model))
    dense_model.load_state_dict(model.state_dict())
    early.load_state_dict(stepper.state_dict())
    assert early.switched
    assert {id(p) for g in early.optimizer.param_groups for p in g["params"]} == {id(p) for p in dense_model.parameters()}

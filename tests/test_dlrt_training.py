"""DLRT training: finds the rank of an exactly low-rank map, Adam converges on real data,
checkpoints resume bit for bit, adaptive-then-fixed, clipping, the method's prepare/make_stepper."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lowrank.run import apply_method, build_stepper
from lowrank.checkpoint import load_model, model_payload, write_checkpoint
from lowrank.registry import method_config
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.errors import ConfigError
from lowrank.methods.dlrt.integrators import DLRTStepper, make_dlrt_stepper
from lowrank.methods.dlrt.layer import DLRTLinear
from lowrank.linalg import orthonormality_error
from lowrank.models import mlp


def dlrt_cfg(layers: list[int], **method) -> TrainConfig:
    opt = method.pop("optim", OptimConfig(optimizer="adam", lr=2e-3))
    epochs = method.pop("epochs", 4)
    return TrainConfig(method=method_config("dlrt", **method), optim=opt, layers=layers, epochs=epochs)


@pytest.mark.parametrize("integrator", ["kls", "parallel"])
def test_finds_rank_of_exactly_low_rank_map(integrator: str) -> None:
    torch.manual_seed(0)
    A = torch.randn(20, 3) @ torch.randn(3, 30) / 3          # the target map: rank exactly 3
    X = torch.randn(512, 30)
    Y = X @ A.T
    model = nn.Sequential(DLRTLinear(30, 20, 8, bias=False, max_rank=12))
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="sgd", lr=0.1), integrator=integrator, adaptive=True, tau=0.05)
    first = None
    for i in range(800):
        b = i % 8
        loss = stepper.step(X[b * 64:(b + 1) * 64], Y[b * 64:(b + 1) * 64], F.mse_loss)
        first = float(loss) if first is None else first
        assert model[0].rank <= 12
    with torch.no_grad():
        final = float(F.mse_loss(model(X), Y))
    assert model[0].rank == 3
    assert final < 1e-4 * first, (first, final)
    assert stepper.end_epoch(0)["ranks"]["0"]["max"] <= 12


@pytest.fixture(scope="module")
def fashion():
    from lowrank.data import load_dataset
    return load_dataset(DataConfig(dataset="fashion-mnist", train_size=2000, test_size=1000), seed=0)


@pytest.mark.parametrize("integrator,adaptive", [("parallel", True), ("kls", False), ("kls", True)])
def test_adam_converges_on_fashion_mnist(fashion, integrator: str, adaptive: bool) -> None:
    cfg = dlrt_cfg([784, 64, 32, 10], rank=10, integrator=integrator, adaptive=adaptive, tau=0.05, max_rank=24)
    torch.manual_seed(0)
    model = apply_method(mlp(cfg.layers), cfg)
    stepper = build_stepper(model, cfg, 0)
    x, y = fashion.train.x, fashion.train.y
    g = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(4):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for b in range(0, len(x), 64):
            idx = perm[b:b + 64]
            total += float(stepper.step(x[idx], y[idx], F.cross_entropy)) * len(idx)
        losses.append(total / len(x))
        stats = stepper.end_epoch(epoch)
        assert stats["orth_error"] <= 1e-5
        assert all(v["max"] <= 24 for v in stats["ranks"].values())
    with torch.no_grad():
        acc = float((model(fashion.test.x).argmax(1) == fashion.test.y).float().mean())
    assert losses[-1] < 0.5 * losses[0], losses
    assert acc > 0.75, acc


def _train(model: nn.Module, stepper: DLRTStepper, steps: range, x: torch.Tensor, y: torch.Tensor) -> None:
    for i in steps:
        b = i % (len(x) // 32)
        stepper.step(x[b * 32:(b + 1) * 32], y[b * 32:(b + 1) * 32], F.cross_entropy)


@pytest.mark.parametrize("integrator", ["kls", "parallel"])
def test_checkpoint_round_trip_is_bit_for_bit(integrator: str, tmp_path) -> None:
    cfg = dlrt_cfg([40, 30, 20, 4], rank=4, integrator=integrator, adaptive=True, tau=2e-3, max_rank=12,
                   optim=OptimConfig(optimizer="adam", lr=1e-2, clip=4.0))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 40, generator=g), torch.randint(0, 4, (256,), generator=g)

    torch.manual_seed(0)
    ref = apply_method(mlp(cfg.layers), cfg)
    ref_stepper = build_stepper(ref, cfg, 0)
    _train(ref, ref_stepper, range(20), x, y)

    torch.manual_seed(0)
    model = apply_method(mlp(cfg.layers), cfg)
    stepper = build_stepper(model, cfg, 0)
    _train(model, stepper, range(8), x, y)
    assert any(l.rank != 4 for l in stepper.layers), "ranks never changed: the test would not exercise specs"
    write_checkpoint(tmp_path / "ck.pt", {**model_payload(model), "stepper": stepper.state_dict()})
    payload = torch.load(tmp_path / "ck.pt", weights_only=True)

    torch.manual_seed(123)                                  # a fresh model with other random values
    fresh = load_model(mlp(cfg.layers), payload)
    fresh_stepper = build_stepper(fresh, cfg, 0)
    fresh_stepper.load_state_dict(payload["stepper"])
    _train(fresh, fresh_stepper, range(8, 20), x, y)

    ref_state, state = ref.state_dict(), fresh.state_dict()
    assert ref_state.keys() == state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], state[k]), k
    assert fresh_stepper.steps == ref_stepper.steps == 20


def test_then_fixed_switches_to_fixed_rank() -> None:
    cfg = dlrt_cfg([40, 30, 4], rank=4, adaptive=True, tau=1e-3, then_fixed=2, epochs=5)
    torch.manual_seed(0)
    model = apply_method(mlp(cfg.layers), cfg)
    stepper = build_stepper(model, cfg, 0)
    x, y = torch.randn(64, 40), torch.randint(0, 4, (64,))
    for epoch in range(5):
        before = model.fc0.rank
        for _ in range(3):
            stepper.step(x, y, F.cross_entropy)
        if epoch >= 3:  # the last two epochs run at fixed rank
            assert model.fc0.rank == before
        assert stepper.end_epoch(epoch)["adaptive"] == (epoch < 3)
    assert not stepper.adaptive
    with pytest.raises(ConfigError, match="then_fixed=5"):
        build_stepper(model, dlrt_cfg([40, 30, 4], rank=4, adaptive=True, then_fixed=5, epochs=5), 0)


@pytest.mark.parametrize("integrator", ["kls", "parallel"])
def test_clipping_bounds_the_step(integrator: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(DLRTLinear(40, 30, 5), nn.ReLU(), nn.Linear(30, 4))
    before = [model[0].dense_weight().detach().clone(), model[2].weight.detach().clone()]
    stepper = make_dlrt_stepper(model, OptimConfig(optimizer="sgd", lr=1.0, clip=1e-6), integrator=integrator)
    stepper.step(torch.randn(64, 40), torch.randint(0, 4, (64,)), F.cross_entropy)
    with torch.no_grad():
        assert float((model[0].dense_weight() - before[0]).norm()) < 3e-6
        assert float((model[2].weight - before[1]).norm()) < 3e-6


def test_prepare_targets_and_caps() -> None:
    cfg = dlrt_cfg([784, 256, 128, 10], max_rank=64, min_rank=2)
    model = apply_method(mlp(cfg.layers), cfg)
    assert isinstance(model.fc0, DLRTLinear) and isinstance(model.fc1, DLRTLinear)
    assert isinstance(model.fc2, nn.Linear)                 # the output layer stays dense
    assert (model.fc0.rank, model.fc0.max_rank, model.fc0.min_rank) == (20, 64, 2)
    assert orthonormality_error(model.fc0.U) < 1e-5
    stepper = build_stepper(model, cfg, 10)
    assert isinstance(stepper, DLRTStepper) and stepper.integrator == "parallel" and not stepper.adaptive
    only = apply_method(mlp(cfg.layers), dlrt_cfg(cfg.layers, target="fc1", rank=7))
    assert isinstance(only.fc0, nn.Linear) and only.fc1.rank == 7


@pytest.mark.parametrize("kind", ["state_dict", "checkpoint"])
def test_train_from_pruned_loads_dense_weights(kind: str, tmp_path) -> None:
    torch.manual_seed(5)
    dense = mlp([30, 20, 12, 4])
    path = tmp_path / "dense.pt"
    if kind == "state_dict":
        torch.save(dense.state_dict(), path)
    else:
        write_checkpoint(path, model_payload(dense))
    cfg = dlrt_cfg([30, 20, 12, 4], rank=5, base_checkpoint=str(path))
    torch.manual_seed(0)                                    # different random init: must be overwritten
    model = apply_method(mlp(cfg.layers), cfg)
    u, s, vh = torch.linalg.svd(dense.fc0.weight.detach())
    torch.testing.assert_close(model.fc0.dense_weight(), u[:, :5] @ torch.diag(s[:5]) @ vh[:5], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.fc2.weight, dense.fc2.weight)
    torch.testing.assert_close(model.fc0.bias, dense.fc0.bias)


def test_phase_clock_splits_time_between_phases() -> None:
    from lowrank.methods.dlrt.phase_clock import PhaseClock

    clock = PhaseClock(("a", "b"))
    clock.start()
    time.sleep(0.02)
    clock.lap("a")
    clock.lap("b")
    t = clock.totals
    assert t["a"] >= 0.02 and t["b"] < t["a"]
    clock.reset()
    assert clock.totals == {"a": 0.0, "b": 0.0}

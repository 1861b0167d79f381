"""DLRT as a torch.optim.Optimizer in a user's own loop: training, the KLS closure, zero_grad,
gradient accumulation, schedulers, state_dict resume, the plain-optimizer guard, autocast, clipping,
and the CLI stepper computing exactly what the user loop computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lowrank.config import DataConfig, OptimConfig
from lowrank.convert import convert, restore_structure, structure
from lowrank.errors import CheckpointError, ConfigError, RankError
from lowrank.linalg import orthonormality_error
from lowrank.methods.dlrt import DLRT, DLRTLayer, DLRTLinear
from lowrank.methods.dlrt.integrators import KLSDLRT, ParallelDLRT, make_dlrt_stepper
from lowrank.models import mlp

F64 = torch.float64
#: (integrator, adaptive) of every step kind.
KINDS = [("parallel", False), ("parallel", True), ("kls", False), ("kls", True)]


def dlrt_model(layers=(40, 30, 20, 4), rank: int = 4, seed: int = 0, dtype=torch.float32, **options) -> nn.Module:
    torch.manual_seed(seed)
    model = convert(mlp(list(layers)).to(dtype), "dlrt", rank=rank, max_rank=options.pop("max_rank", 12), **options)
    return model


def data(n: int = 256, m: int = 40, c: int = 4, seed: int = 0, dtype=torch.float32):
    """Inputs ``(n, m)`` and labels of a random linear teacher (learnable, unlike random labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g, dtype=dtype)
    return x, (x @ torch.randn(m, c, generator=g, dtype=dtype)).argmax(1)


def user_step(opt: DLRT, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=F.cross_entropy) -> float:
    """The documented loop: zero_grad, forward, backward, step(closure) (the closure only for KLS's pass 2)."""
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    loss = closure()
    opt.step(closure)
    return float(loss.detach())


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def fashion():
    from lowrank.data import load_dataset
    return load_dataset(DataConfig(dataset="fashion-mnist", train_size=1024, test_size=512), seed=0)


def test_plain_loop_trains_an_mlp(fashion) -> None:
    model = dlrt_model((784, 64, 32, 10), rank=8, max_rank=24)
    opt = DLRT(model, torch.optim.Adam, lr=1e-2, integrator="parallel", adaptive=True, tau=0.05)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, ParallelDLRT)
    x, y = fashion.train.x, fashion.train.y
    g = torch.Generator().manual_seed(0)
    epoch_loss = []
    for _ in range(3):
        perm, total = torch.randperm(len(x), generator=g), 0.0
        for b in range(0, len(x), 64):
            idx = perm[b:b + 64]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        epoch_loss.append(total / len(x))
    model.eval()
    with torch.no_grad():
        acc = float((model(fashion.test.x).argmax(1) == fashion.test.y).float().mean())
    assert epoch_loss[-1] < 0.5 * epoch_loss[0], epoch_loss
    assert acc > 0.7, acc
    assert max(l.orthonormality_error() for l in opt.layers) < 1e-5
    assert opt.steps == 3 * 16


@pytest.mark.parametrize("rule, kwargs", [
    (torch.optim.SGD, dict(lr=1.0)), (torch.optim.SGD, dict(lr=0.3, momentum=0.9)),
    (torch.optim.Adam, dict(lr=2e-2)), (torch.optim.AdamW, dict(lr=2e-2, weight_decay=0.01))])
@pytest.mark.parametrize("integrator, adaptive", [("parallel", True), ("kls", False)])
def test_any_torch_optimizer_is_the_inner_rule(rule, kwargs, integrator: str, adaptive: bool) -> None:
    model = dlrt_model()
    x, y = data()
    opt = DLRT(model, rule, integrator=integrator, adaptive=adaptive, tau=1e-2, **kwargs)
    assert type(opt.inner) is rule and opt.param_groups is opt.inner.param_groups and opt.state is opt.inner.state
    first = user_step(opt, model, x, y)
    for _ in range(40):
        last = user_step(opt, model, x, y)
    assert last < 0.75 * first, (first, last)
    for layer in opt.layers:
        assert orthonormality_error(layer.U) < 1e-5 and orthonormality_error(layer.V) < 1e-5
    stateful = rule is not torch.optim.SGD or kwargs.get("momentum")
    for k, layer in zip(opt.K, opt.layers):  # the rule's state for K (Adam's moments, momentum) follows the rank
        buffers = [v for v in opt.state[k].values() if torch.is_tensor(v) and v.dim() == 2]
        assert bool(buffers) == bool(stateful) and all(v.shape == layer.U.shape for v in buffers)


def test_model_without_dlrt_layer_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"convert it first: lowrank.convert\(model, 'dlrt', rank=...\)"):
        DLRT(mlp([8, 6, 2]), torch.optim.Adam, lr=1e-3)
    with pytest.raises(ConfigError, match="integrator 'nope'"):
        DLRT(dlrt_model(), integrator="nope")
    model = dlrt_model()
    with pytest.raises(ConfigError, match=r"class, not an optimizer: DLRT\(model, torch.optim.Adam"):
        DLRT(model, torch.optim.Adam(model.parameters()))


def test_rank_caps_can_be_set_by_the_optimizer() -> None:
    model = dlrt_model(rank=4)
    DLRT(model, torch.optim.SGD, lr=0.1, min_rank=2, max_rank=6)
    assert all((l.min_rank, l.max_rank) == (2, 6) for l in model.modules() if isinstance(l, DLRTLayer))
    with pytest.raises(RankError, match="max_rank=3"):
        DLRT(model, torch.optim.SGD, lr=0.1, max_rank=3)


def test_attached_capture_is_the_projected_dense_gradient() -> None:
    torch.manual_seed(0)
    layer = DLRTLinear(9, 6, 3, dtype=F64)                    # used twice in one forward (see loss_of)
    x, target = torch.randn(8, 9, dtype=F64), torch.randn(8, 6, dtype=F64)
    # 6 -> 9 does not fit a 9 -> 6 layer: feed it through a fixed map back to 9 features.
    back = torch.randn(6, 9, dtype=F64)

    def loss_of(f):
        return ((f(torch.tanh(f(x)) @ back) - target) ** 2).sum()

    w = layer.dense_weight().detach().requires_grad_()
    loss_of(lambda z: z @ w.T + layer.bias.detach()).backward()
    gw = w.grad                                               # dL/dW, formed here only as the reference
    opt = DLRT(nn.ModuleList([layer]), torch.optim.SGD, lr=0.1)
    loss = loss_of(layer)
    torch.autograd.grad(loss, layer.bias, retain_graph=True)  # does not accumulate into .grad ...
    assert not opt.has_captured()
    loss.backward()                                           # ... backward does
    U, V = layer.U.detach(), layer.V.detach()
    torch.testing.assert_close(opt.K[0].grad, gw @ V)
    torch.testing.assert_close(opt.L[0].grad, gw.T @ U)
    torch.testing.assert_close(layer.S.grad, U.T @ gw @ V)


# ----------------------------------------------------------------------------- the user loop is the CLI step

@pytest.mark.parametrize("integrator, adaptive", KINDS)
def test_user_loop_computes_what_the_cli_stepper_computes(integrator: str, adaptive: bool) -> None:
    x, y = data()
    cfg = OptimConfig(optimizer="adam", lr=1e-2)
    ref = dlrt_model()
    stepper = make_dlrt_stepper(ref, cfg, integrator=integrator, adaptive=adaptive, tau=1e-3)
    model = dlrt_model()
    opt = DLRT(model, torch.optim.Adam, lr=1e-2, fused=True, integrator=integrator, adaptive=adaptive, tau=1e-3)
    for i in range(12):
        b = slice(32 * (i % 8), 32 * (i % 8 + 1))
        ref_loss = stepper.step(x[b], y[b], F.cross_entropy)
        loss = user_step(opt, model, x[b], y[b])
        assert float(ref_loss) == loss
    assert_same(weights(ref), weights(model))
    assert not adaptive or any(l.rank != 4 for l in opt.layers), "the ranks never changed"


# ----------------------------------------------------------------------------- closure, zero_grad, accumulation

def test_kls_needs_its_closure_and_calls_it_for_pass_two() -> None:
    model = dlrt_model()
    x, y = data()
    opt = DLRT(model, torch.optim.SGD, lr=0.1, integrator="kls")
    assert isinstance(opt, KLSDLRT)
    calls = []

    def closure():
        calls.append(len(calls))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()
    before = weights(model)
    with pytest.raises(ConfigError, match=r"opt.step\(closure\)"):
        opt.step()
    assert_same(before, weights(model))                      # refused before anything moved
    calls.clear()
    opt.step(closure)
    assert calls == [0]                                      # pass 1 was the caller's: only pass 2
    calls.clear()
    first = opt.step(closure)                                # nothing captured: pass 1 and pass 2
    assert calls == [0, 1] and torch.is_tensor(first)
    assert not any(k.grad is not None for k in opt.K)        # pass 2 ran without capture
    opt.adaptive = True                                      # rank-adaptive KLS: one pass, no closure needed
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_zero_grad_clears_the_captured_gradients() -> None:
    model = dlrt_model()
    x, y = data()
    opt = DLRT(model, torch.optim.Adam, lr=1e-2, integrator="kls", adaptive=True)
    F.cross_entropy(model(x), y).backward()
    layer = opt.layers[0]
    assert opt.has_captured() and opt.K[0].grad.shape == layer.U.shape and opt.L[0].grad.shape == layer.V.shape
    assert layer.captured_io and layer.S.grad is not None
    opt.zero_grad()
    assert not opt.has_captured() and all(p.grad is None for p in opt.params())
    assert not layer.captured_io and layer.grad_S_task is None
    # model.zero_grad() starts a new accumulation too: a step after it sees the second batch only.
    ref = copy.deepcopy(model)
    ref_opt = DLRT(ref, torch.optim.Adam, lr=1e-2, integrator="kls", adaptive=True)
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    model.zero_grad()
    F.cross_entropy(model(x[64:]), y[64:]).backward()
    opt.step()
    ref_opt.zero_grad()
    F.cross_entropy(ref(x[64:]), y[64:]).backward()
    ref_opt.step()
    assert_same(weights(ref), weights(model))
    assert not opt.has_captured()                            # step consumed K.grad, L.grad


@pytest.mark.parametrize("integrator, adaptive", KINDS)
def test_accumulated_half_batches_equal_one_combined_batch(integrator: str, adaptive: bool) -> None:
    x, y = data(64, dtype=F64)
    halves = [(x[:32], y[:32]), (x[32:], y[32:])]
    results = []
    tau = {"parallel": 0.5, "kls": 1e-3}[integrator]         # ranks shrink / grow
    for split in (False, True):
        model = dlrt_model(dtype=F64)
        # SGD with momentum: linear in the gradients, so the two sums' rounding is not amplified
        # (Adam normalizes the near-zero gradients of weak kept directions to steps of size lr).
        opt = DLRT(model, torch.optim.SGD, lr=0.2, momentum=0.9, integrator=integrator, adaptive=adaptive,
                   tau=tau, diagonalize_every=2)

        def closure():
            opt.zero_grad()
            if split:                                        # mean losses scaled by the batch fraction
                for xb, yb in halves:
                    (F.cross_entropy(model(xb), yb) * len(xb) / len(x)).backward()
            else:
                F.cross_entropy(model(x), y).backward()

        for _ in range(8):
            closure()
            opt.step(closure)
        # W, not its factors: within (nearly) repeated singular values the SVD may rotate them.
        dense = {n: l.dense_weight().detach() for n, l in zip(opt.names, opt.layers)}
        others = {k: v for k, v in weights(model).items() if k.rsplit(".", 1)[1] not in ("U", "S", "V")}
        results.append(({**dense, **others}, [l.rank for l in opt.layers]))
    (a, ranks_a), (b, ranks_b) = results
    assert ranks_a == ranks_b
    assert not adaptive or ranks_a != [4, 4], "the ranks never changed"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- schedulers, state

@pytest.mark.parametrize("make_scheduler, lr_at", [
    (lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), lambda t: 0.02 * 0.5 ** (t // 3)),
    (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8), None)])
def test_schedulers_set_the_inner_learning_rate(make_scheduler, lr_at) -> None:
    x, y = data()
    runs = {}
    for mode in ("scheduler", "by_hand", "constant"):
        model = dlrt_model()
        opt = DLRT(model, torch.optim.Adam, lr=0.02, integrator="parallel", adaptive=True, tau=1e-3)
        sched = make_scheduler(opt) if mode == "scheduler" else None
        lrs = []
        for t in range(8):
            if mode == "by_hand":
                for group in opt.param_groups:
                    group["lr"] = runs["scheduler"][1][t]
            lrs.append(opt.inner.param_groups[0]["lr"])
            user_step(opt, model, x[32 * t:32 * t + 32], y[32 * t:32 * t + 32])
            if sched is not None:
                sched.step()
        runs[mode] = (weights(model), lrs)
    assert_same(runs["scheduler"][0], runs["by_hand"][0])
    if lr_at is not None:
        assert runs["scheduler"][1] == pytest.approx([lr_at(t) for t in range(8)])
    assert len(set(runs["scheduler"][1])) > 1
    diff = runs["scheduler"][0]["fc0.S"].shape != runs["constant"][0]["fc0.S"].shape or not torch.equal(
        runs["scheduler"][0]["fc2.weight"], runs["constant"][0]["fc2.weight"])
    assert diff, "the schedule changed nothing"


@pytest.mark.parametrize("integrator", ["parallel", "kls"])
def test_state_dict_resume_is_bit_for_bit(integrator: str, tmp_path) -> None:
    x, y = data()
    settings = dict(integrator=integrator, adaptive=True, tau=2e-3, lr=1e-2)

    def train(model, opt, steps):
        for i in steps:
            b = slice(32 * (i % 8), 32 * (i % 8 + 1))
            user_step(opt, model, x[b], y[b])

    ref = dlrt_model()
    ref_opt = DLRT(ref, torch.optim.Adam, **settings)
    train(ref, ref_opt, range(20))

    model = dlrt_model()
    opt = DLRT(model, torch.optim.Adam, **settings)
    train(model, opt, range(8))
    assert any(l.rank != 4 for l in opt.layers), "ranks never changed: the test would not exercise structure"
    torch.save({"structure": structure(model), "model": model.state_dict(), "optimizer": opt.state_dict()},
               tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)

    torch.manual_seed(123)                                   # a fresh dense model with other values
    fresh = restore_structure(mlp([40, 30, 20, 4]), ck["structure"])
    fresh.load_state_dict(ck["model"])
    fresh_opt = DLRT(fresh, torch.optim.Adam, integrator=integrator, lr=1e-2, tau=0.5)  # tau, adaptive restored
    fresh_opt.load_state_dict(ck["optimizer"])
    assert fresh_opt.tau == 2e-3 and fresh_opt.adaptive and fresh_opt.steps == 8
    train(fresh, fresh_opt, range(8, 20))
    assert_same(weights(ref), weights(fresh))
    assert fresh_opt.ranks() == ref_opt.ranks()

    with pytest.raises(CheckpointError, match="restore the model first"):
        DLRT(dlrt_model(), torch.optim.Adam, integrator=integrator, lr=1e-2).load_state_dict(ck["optimizer"])
    other = "kls" if integrator == "parallel" else "parallel"
    with pytest.raises(CheckpointError, match=f"integrator={integrator!r}"):
        DLRT(fresh, torch.optim.Adam, integrator=other, lr=1e-2).load_state_dict(ck["optimizer"])


@pytest.mark.parametrize("integrator", ["parallel", "kls"])
def test_a_schedule_after_load_state_dict_still_sets_the_rule_s_learning_rate(integrator: str) -> None:
    """torch's ``load_state_dict`` gives the inner optimizer new group dicts; a scheduler (or
    the CLI's cosine schedule) acting on the DLRT optimizer must still reach them."""
    x, y = data()
    model = dlrt_model()
    opt = DLRT(model, torch.optim.Adam, integrator=integrator, lr=1e-2)
    user_step(opt, model, x[:32], y[:32])
    fresh_model = copy.deepcopy(model)
    fresh = DLRT(fresh_model, torch.optim.Adam, integrator=integrator, lr=1e-2)
    fresh.load_state_dict(opt.state_dict())
    sched = torch.optim.lr_scheduler.StepLR(fresh, step_size=1, gamma=0.5)
    user_step(fresh, fresh_model, x[32:64], y[32:64])
    sched.step()
    assert [g["lr"] for g in fresh.inner.param_groups] == [5e-3] * len(fresh.inner.param_groups)
    assert fresh.state_dict()["optimizer"]["param_groups"][0]["lr"] == 5e-3
    assert fresh.state is fresh.inner.state


# ----------------------------------------------------------------------------- guard

def test_a_plain_optimizer_is_refused_but_inference_runs() -> None:
    model = dlrt_model()
    x, y = data(32)
    before = weights(model)
    with torch.no_grad():                                    # not attached: inference works ...
        out = model(x)
    model.eval()
    out_eval = model(x)                                      # ... in eval mode with grad enabled too
    F.cross_entropy(out_eval, y).backward()
    torch.testing.assert_close(out, out_eval.detach())
    model.train()
    model.zero_grad()
    torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(ConfigError, match=r"is trained by lowrank.DLRT .*opt = lowrank.DLRT\(model, torch.optim.Adam"):
        F.cross_entropy(model(x), y).backward()
    assert model.fc0.S.grad is None and model.fc1.S.grad is None
    opt = DLRT(model, torch.optim.Adam, lr=1e-2)             # attached: the same pass trains
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(before["fc0.U"], model.fc0.U.detach())
    clone = copy.deepcopy(model)                             # a copy is not attached to opt
    with pytest.raises(ConfigError, match="lowrank.DLRT"):
        F.cross_entropy(clone(x), y).backward()
    for p in (clone.fc0.U, clone.fc0.V, clone.fc1.U, clone.fc1.V):
        p.requires_grad_(True)                               # U, V trained by gradients on purpose: allowed
    F.cross_entropy(clone(x), y).backward()
    assert clone.fc0.U.grad is not None


# ----------------------------------------------------------------------------- autocast, clipping

@pytest.mark.parametrize("integrator, adaptive", KINDS)
def test_bf16_autocast_keeps_captured_gradients_and_factors_float32(integrator: str, adaptive: bool) -> None:
    model = dlrt_model()
    x, y = data()
    opt = DLRT(model, torch.optim.Adam, lr=1e-2, integrator=integrator, adaptive=adaptive, tau=1e-3)

    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = F.cross_entropy(out, y)
        assert out.dtype == torch.bfloat16
        loss.backward()
        return loss

    first = float(closure().detach())
    assert all(k.grad.dtype == torch.float32 for k in opt.K + opt.L)
    opt.step(closure)
    for _ in range(10):
        closure()
        opt.step(closure)
    for layer in opt.layers:
        assert {p.dtype for p in (layer.U, layer.S, layer.V)} == {torch.float32}
        assert orthonormality_error(layer.U.detach().double()) < 1e-5
        assert orthonormality_error(layer.V.detach().double()) < 1e-5
    assert float(closure().detach()) < first


def test_clip_grad_norm_of_the_optimizer_params_clips_what_the_step_uses() -> None:
    x, y = data(64)
    runs = {}
    for mode in ("outside", "inside", "none"):
        model = dlrt_model(layers=(40, 30, 4))
        opt = DLRT(model, torch.optim.SGD, lr=1.0, integrator="parallel", clip=1e-6 if mode == "inside" else None)
        before = model.fc0.dense_weight().detach().clone()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if mode == "outside":
            norm = torch.nn.utils.clip_grad_norm_(opt.params(), 1e-6)
            assert float(norm) > 1e-3
            assert float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in opt.params()]))) <= 1.01e-6
        opt.step()
        runs[mode] = weights(model)
        moved = float((model.fc0.dense_weight().detach() - before).norm())
        assert (moved < 3e-6) == (mode != "none"), (mode, moved)
    assert_same(runs["outside"], runs["inside"])             # the same clip, in or out of step()

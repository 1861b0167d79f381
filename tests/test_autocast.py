"""``--autocast bf16``: training forward passes in bfloat16 (CPU autocast), every method; the
optimizer's and the integrator's tensors stay float32; the flag is validated."""

from __future__ import annotations

import pytest
import torch

from lowrank.config import TrainConfig
from lowrank.data import load_dataset
from lowrank.errors import ConfigError
from lowrank.run import fit_options, prepare
from lowrank.train import fit
from cli_checks import one_line_error

METHODS = [{"method": "dense"}, {"method": "vanilla", "rank": 8}, {"method": "svd"},
           {"method": "dlrt", "integrator": "parallel", "rank": 8, "adaptive": True, "tau": 0.2},
           {"method": "dlrt", "integrator": "kls", "rank": 8}]


def cfg(method: dict, autocast: str) -> TrainConfig:
    return TrainConfig.from_dict({"data": {"dataset": "fashion-mnist", "train_size": 512, "test_size": 256},
                                  "optim": {"optimizer": "adam", "lr": 3e-3, "autocast": autocast},
                                  "method": method, "layers": [784, 32, 10], "batch_size": 64, "epochs": 2})


@pytest.mark.parametrize("method", METHODS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_bf16_forward_trains_like_float32(method) -> None:
    runs = {}
    for mode in ("off", "bf16"):
        c = cfg(method, mode)
        data = load_dataset(c.data, seed=c.seed)
        model, stepper, _ = prepare(c, data, None)
        seen: list[torch.dtype] = []
        last = list(model.children())[-1]
        handle = last.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if torch.is_grad_enabled() else None)
        history = fit(model, data, stepper, **fit_options(c))
        handle.remove()
        assert set(seen) == {torch.bfloat16 if mode == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        held = [p for g in stepper.optimizer.param_groups for p in g["params"]]
        assert all(p.dtype == torch.float32 for p in held)
        assert all(v.dtype == torch.float32 for s in stepper.optimizer.state.values() for v in s.values()
                   if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0)
        runs[mode] = history
    # bf16 rounds the forward pass (8 bits of mantissa), so the runs differ, but both learn and agree closely.
    assert runs["bf16"][-1]["train_loss"] < runs["bf16"][0]["train_loss"]
    assert runs["bf16"][-1]["test_acc"] == pytest.approx(runs["off"][-1]["test_acc"], abs=0.06)
    assert runs["bf16"][-1]["train_loss"] != runs["off"][-1]["train_loss"]


def test_autocast_is_validated(lowrank_cli, tmp_path) -> None:
    with pytest.raises(ConfigError, match="autocast"):
        TrainConfig.from_dict({"optim": {"autocast": "fp16"}})
    one_line_error(lowrank_cli(["train", "--autocast", "fp8", "--db", "x.db"], tmp_path), "autocast", "fp8")

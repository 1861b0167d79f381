"""The DLRT integrators on a GPU compute what they compute on the CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lowrank.config import OptimConfig
from lowrank.methods.dlrt.integrators import make_dlrt_stepper
from lowrank.methods.dlrt.layer import DLRTLinear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(device: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(DLRTLinear(12, 10, 3, max_rank=8, dtype=torch.float64), nn.Tanh(),
                          DLRTLinear(10, 9, 3, max_rank=8, dtype=torch.float64), nn.Tanh(),
                          nn.Linear(9, 4, dtype=torch.float64))
    return model.to(device)


@pytest.mark.parametrize("integrator,adaptive,truncation", [
    ("parallel", False, "power"), ("parallel", True, "power"), ("parallel", True, "svd"),
    ("kls", False, "power"), ("kls", True, "power")])
def test_steps_on_cuda_match_cpu(integrator: str, adaptive: bool, truncation: str) -> None:
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (32,), generator=g))
            for _ in range(12)]
    weights = {}
    for device in ("cpu", "cuda"):
        model = _model(device)
        stepper = make_dlrt_stepper(model, OptimConfig(optimizer="adam", lr=0.01), integrator=integrator,
                              adaptive=adaptive, tau=0.05, truncation=truncation, diagonalize_every=5)
        for x, y in data:
            stepper.step(x.to(device), y.to(device), F.cross_entropy)
        weights[device] = [m.dense_weight().detach().cpu() for m in model if isinstance(m, DLRTLinear)]
        timings = stepper.timings
        assert timings["fwd_bwd"] > 0 and timings["linalg"] > 0 and timings["optim"] > 0
    for w_cpu, w_gpu in zip(weights["cpu"], weights["cuda"]):
        assert w_cpu.shape == w_gpu.shape
        torch.testing.assert_close(w_gpu, w_cpu, atol=1e-8, rtol=1e-8)


# ----------------------------------------------------------------------------- every method, data on the device

_METHODS = [{"method": "dense"}, {"method": "vanilla", "rank": 8}, {"method": "svd"}, {"method": "lora", "rank": 4},
            {"method": "twofactor"},
            {"method": "dlrt", "integrator": "parallel", "rank": 8, "adaptive": True, "tau": 0.2},
            {"method": "dlrt", "integrator": "kls", "rank": 8, "adaptive": True, "tau": 0.2},
            {"method": "dlrt", "integrator": "kls", "rank": 8}]


@pytest.mark.parametrize("autocast", ["off", "bf16"])
@pytest.mark.parametrize("method", _METHODS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_every_method_trains_on_cuda(method, autocast) -> None:
    from lowrank.config import TrainConfig
    from lowrank.data import load_dataset
    from lowrank.run import fit_options, prepare
    from lowrank.train import fit

    cfg = TrainConfig.from_dict({"data": {"dataset": "fashion-mnist", "train_size": 512, "test_size": 256},
                                 "optim": {"optimizer": "adam", "lr": 3e-3, "autocast": autocast},
                                 "method": method, "layers": [784, 32, 10], "batch_size": 64, "epochs": 2,
                                 "device": "cuda"})
    data = load_dataset(cfg.data, seed=cfg.seed)
    model, stepper, _ = prepare(cfg, data, None)
    history = fit(model, data, stepper, **fit_options(cfg))
    assert all(p.is_cuda and p.dtype == torch.float32 for p in model.parameters())
    assert all(p.is_cuda for g in stepper.optimizer.param_groups for p in g["params"])
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["test_acc"] > 0.25


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (NCCL)")
def test_two_nccl_processes_keep_identical_replicas(tmp_path) -> None:
    import sys
    from pathlib import Path

    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).parent))
    import ddp_child

    from lowrank.config import TrainConfig

    cfg = TrainConfig.from_dict({"data": {"dataset": "fashion-mnist", "train_size": 256, "test_size": 128},
                                 "method": {"method": "dlrt", "integrator": "parallel", "rank": 6, "adaptive": True,
                                            "tau": 0.4}, "layers": [784, 32, 10], "batch_size": 64, "epochs": 1,
                                 "device": "cuda"})
    mp.spawn(ddp_child.worker, args=(2, str(tmp_path / "rv"), [cfg.to_dict()], str(tmp_path), "nccl"), nprocs=2)
    out = [torch.load(tmp_path / f"0-{r}.pt", weights_only=False, map_location="cpu") for r in range(2)]
    assert out[0]["checks"] == 4 and out[0]["ranks"] == out[1]["ranks"]
    for k in out[0]["state"]:
        assert torch.equal(out[0]["state"][k], out[1]["state"][k]), k

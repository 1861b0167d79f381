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

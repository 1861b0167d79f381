"""Dynamical low-rank training (DLRT): ``W = U S V^T`` with orthonormal ``U``, ``V`` moved by an
integrator (KLS, fixed-rank or rank-adaptive, or the parallel integrator), never by gradient descent.

:class:`DLRT` is the integrator as a ``torch.optim.Optimizer`` for a user's own loop
(``opt = DLRT(model, torch.optim.Adam, lr=1e-3); ...; loss.backward(); opt.step()``);
the CLI trainer's :class:`DLRTStepper` drives the same object.

``prepare`` turns the targeted ``nn.Linear`` layers (default: all but the output layer)
into :class:`DLRTLinear` by truncated SVD; with ``base_checkpoint`` the dense weights are
loaded first ("train from pruned": factorize a trained model and retrain it with DLRT).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...checkpoint import load_dense_weights
from ...config import TrainConfig
from ...convert import convert
from ...errors import CheckpointError
from ...layer import is_lowrank
from ...registry import Method, register_method
from .config import DEFAULT_RANK, DLRTConfig
from .conv_layer import DLRTConv2d
from .integrators import INTEGRATORS, DLRTStepper, make_dlrt_stepper
from .layer import DLRTLayer, DLRTLinear
from .optimizer import DLRT

__all__ = ["DLRT", "DLRTConfig", "DLRTLayer", "DLRTLinear", "DLRTConv2d", "DLRTStepper", "INTEGRATORS", "DEFAULT_RANK",
           "prepare", "make_stepper"]


def prepare(model: nn.Module, cfg: DLRTConfig) -> nn.Module:
    """Targeted Linears -> :class:`DLRTLinear` (truncated SVD, ``init_decay``, rank caps)."""
    if cfg.base_checkpoint:
        if any(is_lowrank(m) for m in model.modules()):
            raise CheckpointError("base_checkpoint needs a dense model to load into")
        load_dense_weights(model, cfg.base_checkpoint)
    return convert(model, cfg, inplace=True)


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> DLRTStepper:
    """The integrator's stepper for ``model``, by ``cfg.method``'s settings."""
    mc = cfg.method
    return make_dlrt_stepper(model, cfg.optim, total_steps, integrator=mc.integrator, adaptive=mc.adaptive,
                             tau=mc.tau, tau_absolute=mc.tau_absolute, then_fixed=mc.then_fixed, epochs=cfg.epochs,
                             truncation=mc.truncation)


def _label(cfg: dict[str, Any]) -> str:
    m = cfg["method"]
    return f"DLRT {m['integrator']}" + (" adaptive" if m.get("adaptive") else f" r{m.get('rank')}")


register_method(Method(
    name="dlrt", config=DLRTConfig, summary="dynamical low-rank training: KLS or parallel integrator, fixed or adaptive rank",
    prepare=prepare, make_stepper=make_stepper, layers=(DLRTLinear, DLRTConv2d), label=_label,
))

"""Dynamical low-rank training (design §2.5-2.6): DLRTLinear layers moved by the KLS or parallel integrator.

``prepare`` turns the targeted ``nn.Linear`` layers (default: all but the output
layer, which stays dense as in the thesis) into :class:`~lowrank.layers.dlrt.DLRTLinear`
by truncated SVD; with ``base_checkpoint`` the dense weights are loaded first
("train from pruned": factorise a trained model and retrain it with DLRT).
``make_stepper`` returns the :class:`~lowrank.integrators.DLRTStepper`.
"""

from __future__ import annotations

from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError
from ..integrators.stepper import DLRTStepper
from ..layers.base import is_lowrank
from ..stepper import Stepper
from ._common import convert_by_config, load_base_weights

__all__ = ["prepare", "make_stepper", "load_base_weights", "DEFAULT_RANK"]

#: Rank used when the config gives none of rank, energy, param_ratio (capped at min(m, n)).
DEFAULT_RANK = 20


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Targeted Linears -> :class:`DLRTLinear` (truncated SVD, ``init_decay``, rank caps)."""
    mc = cfg.method
    if mc.base_checkpoint:
        if any(is_lowrank(m) for m in model.modules()):
            raise CheckpointError("base_checkpoint needs a dense model to load into")
        load_base_weights(model, mc.base_checkpoint)
    return convert_by_config(model, cfg, "dlrt", lambda n, m: min(DEFAULT_RANK, n, m),
                             min_rank=mc.min_rank, max_rank=mc.max_rank, init_decay=mc.init_decay)


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    mc = cfg.method
    return DLRTStepper(model, cfg.optim, total_steps, integrator=mc.integrator, adaptive=mc.adaptive,
                       tau=mc.tau, tau_absolute=mc.tau_absolute, then_fixed=mc.then_fixed, epochs=cfg.epochs,
                       truncation=mc.truncation)

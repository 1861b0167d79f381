"""Vanilla low-rank (design §2.2): ``W = U S V^T``, all factors trained by the plain optimizer."""

from __future__ import annotations

from torch import nn

from ..config import TrainConfig
from ..stepper import Stepper
from ._common import convert_by_config

__all__ = ["prepare", "make_stepper", "DEFAULT_RANK"]

#: Rank used when the config gives none of rank, energy, param_ratio (capped at min(m, n)).
DEFAULT_RANK = 20


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Targeted Linears -> :class:`~lowrank.layers.LowRankLinear` by truncated SVD (with ``init_decay``)."""
    return convert_by_config(model, cfg, "vanilla", lambda n, m: min(DEFAULT_RANK, n, m),
                             init_decay=cfg.method.init_decay)


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    return Stepper(model, cfg.optim, total_steps)

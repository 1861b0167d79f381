"""Shared glue for the methods that convert layers: config -> :func:`lowrank.convert.convert` call,
and rebuilding a stepper's optimizer when the model's parameters were replaced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..convert import convert, select
from ..stepper import Stepper, make_optimizer

__all__ = ["convert_by_config", "trainable", "optimizer_is_stale", "rebuild_optimizer", "replace_param"]


def convert_by_config(model: nn.Module, cfg: TrainConfig, method: str,
                      default_rank: Callable[[int, int], int], **options: Any) -> nn.Module:
    """Convert ``cfg.method.target``'s layers of ``model`` IN PLACE by ``method``.

    The rank comes from ``cfg.method.rank`` / ``energy`` / ``param_ratio``; when none is
    given, each layer gets ``default_rank(n, m)`` for its ``(n, m)`` weight.
    """
    mc = cfg.method
    overrides = None
    if mc.rank is None and mc.energy is None and mc.param_ratio is None:
        mods = dict(model.named_modules())
        overrides = {name: default_rank(mods[name].out_features, mods[name].in_features)
                     for name in select(model, mc.target)}
    return convert(model, method, rank=mc.rank, energy=mc.energy, param_ratio=mc.param_ratio,
                   target=mc.target, rank_overrides=overrides, inplace=True, **options)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require grad, in module order (the order optimizers see them)."""
    return [p for p in model.parameters() if p.requires_grad]


def optimizer_is_stale(stepper: Stepper) -> bool:
    """True when the stepper's optimizer does not hold exactly the model's trainable parameters."""
    held = [p for g in stepper.optimizer.param_groups for p in g["params"]]
    return [id(p) for p in held] != [id(p) for p in trainable(stepper.model)]


def rebuild_optimizer(stepper: Stepper) -> None:
    """A fresh optimizer (empty state) over the model's current trainable parameters."""
    stepper.optimizer = make_optimizer(trainable(stepper.model), stepper.cfg)


def replace_param(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor,
                  idx: torch.Tensor) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer``, carrying its state over.

    ``new`` must be ``old`` restricted to the indices ``idx`` of its last dimension;
    every state tensor shaped like ``old`` (momentum, Adam's moments) is restricted the
    same way, other state (step counters) is kept as is.
    """
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: v.index_select(-1, idx) if torch.is_tensor(v) and v.shape == old.shape else v
                                for k, v in state.items()}

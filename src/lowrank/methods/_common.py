"""Shared glue for the methods that convert layers: config -> :func:`lowrank.convert.convert` call,
rebuilding a stepper's optimizer when the model's parameters were replaced, and loading a
dense base model ("train from pruned", LoRA's frozen base) from a checkpoint."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError
from ..convert import convert, select
from ..stepper import Stepper, make_optimizer

__all__ = ["convert_by_config", "load_base_weights", "trainable", "optimizer_is_stale", "rebuild_optimizer", "replace_param"]


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


def _dense_state(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dense ``state_dict`` stored at ``path``: a lowrank checkpoint (low-rank layers are
    merged back to dense) or a plain ``torch.save``d state_dict."""
    from ..checkpoint import read_checkpoint

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"base_checkpoint {path} does not exist")
    try:
        payload: dict[str, Any] = read_checkpoint(p)
    except CheckpointError:
        try:
            payload = {"model": torch.load(p if p.is_file() else p / "checkpoint.pt", map_location="cpu",
                                           weights_only=True)}
        except Exception as e:
            raise CheckpointError(f"base_checkpoint {path}: neither a lowrank checkpoint nor a state_dict "
                                  f"({type(e).__name__})") from None
    state = payload.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"base_checkpoint {path} holds no model state_dict")
    return state, payload.get("structure") or {}


def load_base_weights(model: nn.Module, path: str) -> nn.Module:
    """Load the dense weights of ``path`` into the dense ``model`` (in place) and return it."""
    state, struct = _dense_state(path)
    if struct:
        # A low-rank checkpoint: rebuild its layers on a copy, load, merge back to dense.
        from ..checkpoint import load_model
        from ..convert import merge

        state = merge(load_model(copy.deepcopy(model), {"model": state, "structure": struct})).state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"base_checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None
    return model

"""Dynamical low-rank training (design §2.5-2.6): DLRTLinear layers moved by the KLS or parallel integrator.

``prepare`` turns the targeted ``nn.Linear`` layers (default: all but the output
layer, which stays dense as in the thesis) into :class:`~lowrank.layers.dlrt.DLRTLinear`
by truncated SVD; with ``base_checkpoint`` the dense weights are loaded first
("train from pruned": factorise a trained model and retrain it with DLRT).
``make_stepper`` returns the :class:`~lowrank.integrators.DLRTStepper`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError
from ..integrators.stepper import DLRTStepper
from ..layers.base import is_lowrank
from ..stepper import Stepper
from ._common import convert_by_config

__all__ = ["prepare", "make_stepper", "load_base_weights", "DEFAULT_RANK"]

#: Rank used when the config gives none of rank, energy, param_ratio (capped at min(m, n)).
DEFAULT_RANK = 20


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
                       tau=mc.tau, tau_absolute=mc.tau_absolute, then_fixed=mc.then_fixed, epochs=cfg.epochs)

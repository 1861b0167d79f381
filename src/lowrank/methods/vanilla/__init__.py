"""Vanilla low-rank: ``W = U S V^T``, all three factors trained by the plain optimizer."""

from __future__ import annotations

from ...registry import Method, register_method
from ...stepper import Stepper
from ...convert import convert
from .config import DEFAULT_RANK, VanillaConfig
from .layer import VanillaLinear
from .conv_layer import VanillaConv2d

__all__ = ["VanillaConfig", "VanillaLinear", "DEFAULT_RANK", "VanillaConv2d"]

register_method(Method(
    name="vanilla", config=VanillaConfig, summary="W = U S V^T, every factor trained by the optimizer",
    prepare=lambda model, cfg: convert(model, cfg, inplace=True),
    make_stepper=lambda model, cfg, total_steps: Stepper(model, cfg.optim, total_steps),
    layers=(VanillaLinear, VanillaConv2d),
))

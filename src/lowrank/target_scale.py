"""Standardized regression targets, mapped back inside the model.

With ``DataConfig.normalize_target`` the network ``f`` is trained to predict
``(y - mean) / std`` (the training targets' mean and std), and the model is
``mean + std * f(x)``: its predictions, the loss and every metric stay in the
target's own units. The loss is therefore the standardized loss times ``std``
(MAE) or ``std^2`` (MSE), a constant factor: with Adam (scale-invariant up to its
epsilon) the updates are those of training on standardized targets; with SGD the
factor acts on the learning rate.

:class:`TargetScale` holds ``mean`` and ``std`` as non-persistent buffers: they
are not in the state dict (checkpoints load into the unscaled model, as
``lowrank inspect`` builds it) and are rebuilt from the data, which gives the
same values, when a run is resumed; a run's summary records them
(``target_scale``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TargetScale", "with_target_scale"]


class TargetScale(nn.Module):
    """``y = mean + std * x`` for the network's output ``x`` (N, 1)."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def extra_repr(self) -> str:
        return f"mean={float(self.mean):.6g}, std={float(self.std):.6g}"


def with_target_scale(model: nn.Module, mean: float, std: float) -> nn.Module:
    """``model`` followed by :class:`TargetScale`: appended in place to an ``nn.Sequential`` (its parameter
    names unchanged), else wrapped as ``nn.Sequential(model, scale)``."""
    scale = TargetScale(mean, std)
    if isinstance(model, nn.Sequential):
        model.add_module("target_scale", scale)
        return model
    return nn.Sequential(model, scale)

"""Dense baseline: plain ``nn.Linear`` layers and any torch optimizer (SGD, momentum, clipping, Adam)."""

from __future__ import annotations

from torch import nn

from ..config import TrainConfig
from ..stepper import Stepper


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    return model


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    return Stepper(model, cfg.optim, total_steps)

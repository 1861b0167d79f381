"""Registry of training methods.

Each method is a module in this package with two functions:

``prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module``
    turn a freshly built dense model into the method's form (convert layers,
    load a base checkpoint, freeze weights ...);
``make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper``
    the object that performs one training step (see :mod:`lowrank.stepper`).

The trainer only calls :func:`prepare` and :func:`make_stepper`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import nn

from ..config import METHODS, TrainConfig
from ..errors import ConfigError
from ..stepper import Stepper

__all__ = ["prepare", "make_stepper", "METHODS"]


def _module(name: str) -> ModuleType:
    if name not in METHODS:
        raise ConfigError(f"method {name!r} is not one of {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}")


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The method's form of a dense ``model``."""
    return _module(cfg.method.method).prepare(model, cfg)


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    """The stepper that trains ``model`` by ``cfg``'s method for ``total_steps`` steps."""
    return _module(cfg.method.method).make_stepper(model, cfg, total_steps)

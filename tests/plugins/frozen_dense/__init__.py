"""A method living outside lowrank, in one folder: "frozen" trains only the last Linear layers.

It exists to test the plugin path of :mod:`lowrank.registry`: the CLI imports it when
``$LOWRANK_PLUGINS`` names it (``LOWRANK_PLUGINS=frozen_dense`` with ``tests/plugins`` on
``PYTHONPATH``), and everything else (``--method frozen``, ``--train-last``, checkpoints,
the runs database) must follow from the one :func:`lowrank.registry.register_method`
call at the bottom. Dense layers, no low-rank parameterisation: every parameter but
those of the last ``train_last`` ``nn.Linear`` layers is frozen (``requires_grad=False``),
so the plain :class:`lowrank.stepper.Stepper` never hands it to the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowrank.errors import ConfigError
from lowrank.method_config import MethodConfig
from lowrank.registry import Method, register_method
from lowrank.stepper import Stepper

__all__ = ["FrozenConfig", "prepare", "make_stepper", "METHOD"]


@dataclass
class FrozenConfig(MethodConfig):
    train_last: int = 1
    """frozen: number of final Linear layers left trainable (every other parameter is frozen)."""

    def __post_init__(self) -> None:
        v = self.train_last
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"train_last must be a positive integer, got {v!r}")


def prepare(model: nn.Module, cfg: FrozenConfig) -> nn.Module:
    """Freeze every parameter of ``model`` except those of its last ``cfg.train_last`` Linear layers (in place)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if cfg.train_last > len(linears):
        raise ConfigError(f"train_last is {cfg.train_last} but the model has only {len(linears)} Linear layers")
    model.requires_grad_(False)
    for layer in linears[len(linears) - cfg.train_last:]:
        layer.requires_grad_(True)
    return model


def make_stepper(model: nn.Module, cfg, total_steps: int) -> Stepper:
    """The plain step: it optimizes only the parameters that require grad."""
    return Stepper(model, cfg.optim, total_steps)


METHOD = register_method(Method(
    name="frozen", config=FrozenConfig, summary="dense, all but the last --train-last Linear layers frozen",
    prepare=prepare, make_stepper=make_stepper,
))

"""Two-factor / SVD-DNN (design §2.3): dense warm-up, then ``W ~ W1 W2`` by truncated SVD.

The model trains dense for the first ``round(phi * total_steps)`` steps; before the
next step every targeted Linear is replaced IN PLACE (same model object) by a
:class:`~lowrank.layers.TwoFactorLinear` of inner dimension ``l`` and the optimizer
is rebuilt (fresh state) over the new parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..layers.two_factor import TwoFactorLinear
from ..stepper import LossFn, Stepper
from ._common import convert_by_config, optimizer_is_stale, rebuild_optimizer

__all__ = ["prepare", "make_stepper", "TwoFactorStepper", "inner_dim"]


def inner_dim(n: int, m: int, alpha: float) -> int:
    """Default ``l = alpha * min(m, n)`` (at least 1)."""
    return max(1, int(alpha * min(n, m)))


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Nothing yet: the model starts dense (see :class:`TwoFactorStepper`)."""
    if not 0 <= cfg.method.phi <= 1:
        raise ConfigError(f"phi must be in [0, 1], got {cfg.method.phi}")
    if not 0 < cfg.method.alpha <= 1:
        raise ConfigError(f"alpha must be in (0, 1], got {cfg.method.alpha}")
    return model


def is_converted(model: nn.Module) -> bool:
    """True when the model already holds two-factor layers (e.g. rebuilt from a checkpoint)."""
    return any(isinstance(m, TwoFactorLinear) for m in model.modules())


class TwoFactorStepper(Stepper):
    """Plain steps; at step ``switch_step = round(phi * total_steps)`` the targeted layers are
    factorised. Resumes on either side of the switch: a model already holding two-factor
    layers (restored structure) counts as switched."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int = 0):
        super().__init__(model, cfg.optim, total_steps)
        self.train_cfg = cfg
        self.switch_step = int(round(cfg.method.phi * total_steps))
        self.switched = is_converted(model)

    def switch(self) -> None:
        """Factorise the targeted layers in place and rebuild the optimizer."""
        alpha = self.train_cfg.method.alpha
        convert_by_config(self.model, self.train_cfg, "twofactor", lambda n, m: inner_dim(n, m, alpha))
        rebuild_optimizer(self)
        self.switched = True

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        if not self.switched and self.steps >= self.switch_step:
            self.switch()
        return super().step(x, y, loss_fn)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        return {"switched": self.switched}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "switched": self.switched, "switch_step": self.switch_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        converted = is_converted(self.model)
        if bool(state.get("switched", False)) != converted:
            raise CheckpointError(
                f"twofactor checkpoint was taken {'after' if state.get('switched') else 'before'} the "
                f"switch (step {state.get('switch_step')}) but the model is "
                f"{'already' if converted else 'not'} factorised: restore the checkpoint's structure first")
        self.switched = converted
        if optimizer_is_stale(self):
            rebuild_optimizer(self)
        super().load_state_dict(state)


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    return TwoFactorStepper(model, cfg, total_steps)

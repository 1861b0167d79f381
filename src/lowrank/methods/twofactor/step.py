"""The two-factor step: dense warm-up, then ``W ~ W1 W2`` by truncated SVD.

The model trains dense for the first ``round(phi * total_steps)`` steps; before the
next step every targeted Linear is replaced IN PLACE (same model object) by a
:class:`TwoFactorLinear` of inner dimension ``l`` and the optimizer is rebuilt (fresh
state) over the new parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...config import TrainConfig
from ...convert import convert
from ...errors import CheckpointError
from ...losses import LossFn
from ...stepper import Stepper
from .layer import TwoFactorLinear

__all__ = ["TwoFactorStepper", "is_converted", "switch_step", "factorize"]


def switch_step(total_steps: int, phi: float = 0.1) -> int:
    """The step before which a run of ``total_steps`` steps factorizes: ``round(phi * total_steps)``."""
    return int(round(phi * total_steps))


def factorize(model: nn.Module, **options: Any) -> nn.Module:
    """The warm-up's end: replace the selected Linears of ``model`` in place by
    :class:`TwoFactorLinear` (``W1 = U_l S_l^(1/2)``, ``W2 = S_l^(1/2) V_l^T``); ``options`` are
    the two-factor config's fields (``rank``, ``inner_fraction``, ``target`` ...). The
    optimizer must be rebuilt over the new parameters afterwards."""
    return convert(model, "twofactor", inplace=True, **options)


def is_converted(model: nn.Module) -> bool:
    """True when the model already holds two-factor layers (e.g. rebuilt from a checkpoint)."""
    return any(isinstance(m, TwoFactorLinear) for m in model.modules())


class TwoFactorStepper(Stepper):
    """Plain steps; at step ``switch_step = round(phi * total_steps)`` the targeted layers are
    factorized. Resumes on either side of the switch: a model already holding two-factor
    layers (restored structure) counts as switched."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int = 0):
        super().__init__(model, cfg.optim, total_steps)
        self.method_cfg = cfg.method
        self.switch_step = switch_step(total_steps, cfg.method.phi)
        self.switched = is_converted(model)

    def switch(self) -> None:
        """Factorize the targeted layers in place and rebuild the optimizer."""
        convert(self.model, self.method_cfg, inplace=True)   # factorize() with this run's options
        self.rebuild_optimizer()
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
                f"{'already' if converted else 'not'} factorized: restore the checkpoint's structure first")
        self.switched = converted
        if self.optimizer_is_stale():
            self.rebuild_optimizer()
        super().load_state_dict(state)

"""The SVD method's step: plain steps (the penalties are each layer's ``regularization()``),
then energy pruning at the end of training."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...config import TrainConfig
from ...stepper import Stepper, replace_param
from .layer import SVDLinear

__all__ = ["SVDStepper", "prune"]


def prune(model: nn.Module, prune_energy: float = 0.99, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Shrink each :class:`SVDLinear` of ``model``, in place, to the fewest singular values holding
    ``prune_energy`` of its ``sum s^2`` (the SVD method's end of training, with the CLI's
    default); returns the new ranks by layer name.

    With ``optimizer``, its state (momentum, Adam's moments) is restricted to the kept
    singular triplets, so training could continue over the smaller parameters.
    """
    ranks: dict[str, int] = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SVDLinear):
            idx = mod.prune_indices(prune_energy)
            old = {"U": mod.U, "s": mod.s, "V": mod.V}
            mod.keep(idx)
            if optimizer is not None:
                for attr, p in old.items():
                    replace_param(optimizer, p, getattr(mod, attr), idx)
            ranks[name] = mod.rank
    return ranks


class SVDStepper(Stepper):
    """Plain steps; :meth:`end_training` prunes every :class:`SVDLinear` to ``prune_energy``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int = 0):
        super().__init__(model, cfg.optim, total_steps)
        self.prune_energy = cfg.method.prune_energy
        self.pruned_ranks: dict[str, int] = {}

    def end_training(self) -> None:
        self.pruned_ranks = prune(self.model, self.prune_energy, self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pruned_ranks": dict(self.pruned_ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A checkpoint taken after pruning was restored into pruned shapes: follow them.
        if self.optimizer_is_stale():
            self.rebuild_optimizer()
        super().load_state_dict(state)
        self.pruned_ranks = dict(state.get("pruned_ranks", {}))

"""SVD-parameterised training (design §2.4): train ``U, s, V``, then prune by energy.

The penalties ``lambda_orth`` and ``lambda_sparse`` live in each layer's
``regularization()``, which the plain :class:`~lowrank.stepper.Stepper` adds to the loss.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import TrainConfig
from ..layers.svd_linear import SVDLinear
from ..stepper import Stepper
from ._common import convert_by_config, optimizer_is_stale, rebuild_optimizer, replace_param

__all__ = ["prepare", "make_stepper", "SVDStepper"]


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Targeted Linears -> :class:`~lowrank.layers.SVDLinear` (default: full rank ``min(m, n)``,
    since pruning picks the final rank)."""
    return convert_by_config(model, cfg, "svd", min, lambda_orth=cfg.method.lambda_orth,
                             lambda_sparse=cfg.method.lambda_sparse)


class SVDStepper(Stepper):
    """Plain steps; :meth:`end_training` prunes every :class:`SVDLinear` to ``prune_energy``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int = 0):
        super().__init__(model, cfg.optim, total_steps)
        self.prune_energy = cfg.method.prune_energy
        self.pruned_ranks: dict[str, int] = {}

    def end_training(self) -> None:
        """Shrink each SVDLinear to the fewest singular values holding ``prune_energy``.

        The optimizer keeps going over the smaller parameters: its state (momentum, Adam's
        moments) is restricted to the kept singular triplets, so training could continue.
        """
        for name, mod in list(self.model.named_modules()):
            if isinstance(mod, SVDLinear):
                idx = mod.prune_indices(self.prune_energy)
                old = {"U": mod.U, "s": mod.s, "V": mod.V}
                mod.keep(idx)
                for attr, p in old.items():
                    replace_param(self.optimizer, p, getattr(mod, attr), idx)
                self.pruned_ranks[name] = mod.rank

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pruned_ranks": dict(self.pruned_ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A checkpoint taken after pruning was restored into pruned shapes: follow them.
        if optimizer_is_stale(self):
            rebuild_optimizer(self)
        super().load_state_dict(state)
        self.pruned_ranks = dict(state.get("pruned_ranks", {}))


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    return SVDStepper(model, cfg, total_steps)

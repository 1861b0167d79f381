"""One training step, behind one small interface the trainer drives.

The trainer knows nothing of any method: it calls :meth:`Stepper.step` once per
mini-batch and :meth:`Stepper.end_epoch` once per epoch. Methods that need more
than "forward, backward, optimizer.step()" (the DLRT integrators' two phases,
the two-factor warm-up switch) subclass :class:`Stepper`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .layer import regularization
from .losses import LossFn
from .optimizers import make_optimizer

if TYPE_CHECKING:
    from .config import OptimConfig

__all__ = ["Stepper", "penalty", "trainable", "replace_param", "GradientHook", "forward_autocast"]

#: What averages a set of gradients in place across data-parallel processes (None entries skipped).
GradientHook = Callable[[Sequence["torch.Tensor | None"]], None]


def forward_autocast(mode: str, device: torch.device) -> torch.autocast:
    """The context of a training forward pass: ``torch.autocast`` in bfloat16 for ``mode`` ``"bf16"``,
    disabled for ``"off"`` (the optimizer's and the integrator's math stay in the parameters' dtype)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require grad, in module order (the order optimizers see them)."""
    return [p for p in model.parameters() if p.requires_grad]


def replace_param(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor,
                  idx: torch.Tensor) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer``, carrying its state over.

    ``new`` must be ``old`` restricted to the indices ``idx`` of its last dimension;
    every state tensor shaped like ``old`` (momentum, Adam's moments) is restricted the
    same way, other state (step counters) is kept as is.
    """
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: v.index_select(-1, idx) if torch.is_tensor(v) and v.shape == old.shape else v
                                for k, v in state.items()}


def penalty(model: nn.Module, cfg: "OptimConfig") -> torch.Tensor | float:
    """L1/L2 penalties over trainable weight tensors plus every low-rank layer's own regularizer.

    Biases (1-D tensors) are not penalized.
    """
    total: torch.Tensor | float = 0.0
    if cfg.l1 or cfg.l2:
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1:
                if cfg.l1:
                    total = total + cfg.l1 * p.abs().sum()
                if cfg.l2:
                    total = total + cfg.l2 * p.pow(2).sum()
    reg = regularization(model)
    return total + reg if torch.is_tensor(reg) else total


class Stepper:
    """Plain step: forward, task loss + penalties, backward, optional clipping, optimizer step.

    Subclasses may override everything but must keep the contract: ``step`` returns
    the task loss of the batch (without penalties) as a 0-d tensor, detached.
    """

    def __init__(self, model: nn.Module, cfg: "OptimConfig", total_steps: int = 0):
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.steps = 0
        self.optimizer = make_optimizer(trainable(model), cfg)
        # Seconds spent in the method's own linear algebra vs forward/backward (DLRT fills both).
        self.timings: dict[str, float] = {}
        #: Averages the gradients across data-parallel processes after each backward pass (None: one process).
        self.gradient_averager: GradientHook | None = None

    def set_gradient_averager(self, averager: GradientHook | None) -> None:
        """Average every step's gradients with ``averager`` before clipping and the optimizer step
        (:class:`~lowrank.distributed.DataParallelStepper` sets it)."""
        self.gradient_averager = averager

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with forward_autocast(self.cfg.autocast, self._device()):
            loss = loss_fn(self.model(x), y)
        extra = penalty(self.model, self.cfg)
        # Skip the add when there is no penalty: one autograd node less per step.
        (loss + extra if torch.is_tensor(extra) else loss).backward()
        if self.gradient_averager is not None:
            self.gradient_averager([p.grad for g in self.optimizer.param_groups for p in g["params"]])
        if self.cfg.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.optimizer.step()
        self.steps += 1
        return loss.detach()

    def optimizer_is_stale(self) -> bool:
        """True when the optimizer does not hold exactly the model's trainable parameters
        (a method replaced layers: a two-factor switch, energy pruning, a restored structure)."""
        held = [p for g in self.optimizer.param_groups for p in g["params"]]
        return [id(p) for p in held] != [id(p) for p in trainable(self.model)]

    def rebuild_optimizer(self) -> None:
        """A fresh optimizer (empty state) over the model's current trainable parameters."""
        self.optimizer = make_optimizer(trainable(self.model), self.cfg)

    def set_lr_scale(self, factor: float) -> None:
        """Set every parameter group's learning rate to ``factor`` times the configured one."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Called after each epoch; returns extra per-epoch metrics to record (e.g. ranks)."""
        return {}

    def end_training(self) -> None:
        """Called once after the last epoch (e.g. energy pruning)."""

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

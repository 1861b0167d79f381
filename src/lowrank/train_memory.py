"""Exact memory of training a model: weights, gradients, optimizer state and saved activations.

Counted from the tensors themselves (not sampled from the process), so the figures of two
runs compare exactly whatever else the machine is doing:

- ``weights``: every parameter, trainable or frozen (a frozen base is still held);
- ``gradients``: one gradient per trainable parameter element;
- ``optimizer_state``: every tensor in ``optimizer.state`` (Adam: two per trainable element);
- ``activations``: what one training step's forward pass saves for the backward pass, at
  the given batch, measured with :func:`torch.autograd.graph.saved_tensors_hooks`: each
  saved tensor's elements, a tensor saved twice counted once, parameters left out (they
  are ``weights``).

``total`` is their sum: the memory one training step needs beyond the data and the
framework itself. Bytes use each tensor's own dtype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .losses import LossFn

__all__ = ["TrainingMemory", "training_memory", "saved_activation_bytes"]


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of each part of the training state (see the module docstring)."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    batch_size: int
    """The batch the activations were measured at."""

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> int:
    """Bytes saved for backward by one forward pass of ``loss_fn(model(x), y)`` (train mode kept
    as it is; no backward pass is run, no gradient is changed)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # A tensor's own elements (not its whole storage: the input batch may be a view into the
        # dataset); one tensor saved twice, or a view of the same start, counts once.
        if t.untyped_storage().data_ptr() not in params:
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x), y)
    del loss
    return sum(seen.values())


def training_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                    optimizer: torch.optim.Optimizer | None = None, optimizer_state_bytes: int | None = None
                    ) -> TrainingMemory:
    """The :class:`TrainingMemory` of training ``model`` on batches like ``x``, ``y``; the optimizer
    state is that of ``optimizer`` as it is now (e.g. after training), or ``optimizer_state_bytes``
    when it was counted already (a run's summary holds it)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = int(optimizer_state_bytes or 0)
    if optimizer is not None:
        state = sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
                    if torch.is_tensor(v))
    return TrainingMemory(weights, grads, state, saved_activation_bytes(model, x, y, loss_fn), len(x))

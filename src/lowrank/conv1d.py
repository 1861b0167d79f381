"""GPT-2's ``Conv1D`` (Hugging Face ``transformers``): a linear layer storing its weight as ``(in, out)``.

``Conv1D(nf, nx)`` computes ``y = x W + b`` with ``W: (nx, nf)`` (``nx`` inputs, ``nf``
outputs), the transpose of ``nn.Linear``'s ``(out, in)``. :func:`lowrank.convert.convert`
treats one as the ``(nf, nx)`` matrix ``W^T`` (:func:`conv1d_as_linear`), and
:func:`lowrank.convert.merge` puts a ``Conv1D`` of the original class back
(:func:`linear_as_conv1d`), with its own state_dict layout. It is recognized by duck
typing (a class named ``Conv1D`` with ``nf`` and a 2-d ``weight``), so ``transformers``
is never imported here.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_conv1d", "conv1d_as_linear", "linear_as_conv1d"]


def is_conv1d(module: nn.Module) -> bool:
    """True for a ``transformers`` ``Conv1D`` (or any class of that name and layout)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(w, torch.Tensor)
            and w.dim() == 2)


def conv1d_as_linear(conv: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing what ``conv`` does: ``weight = W^T`` ``(nf, nx)``, the same bias (copies)."""
    w = conv.weight.detach()                          # (nx, nf)
    bias = getattr(conv, "bias", None)
    lin = nn.Linear(w.shape[0], w.shape[1], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.T)
        if bias is not None:
            lin.bias.copy_(bias.detach())
    lin.weight.requires_grad_(conv.weight.requires_grad)
    lin.train(conv.training)
    return lin


def linear_as_conv1d(linear: nn.Linear, cls: type) -> nn.Module:
    """A ``cls(nf, nx)`` (``Conv1D``) computing what ``linear`` does: ``W = linear.weight^T``."""
    conv = cls(linear.out_features, linear.in_features)
    w = linear.weight.detach()                        # (nf, nx)
    conv = conv.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w.T)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias.detach())
        else:
            conv.bias.zero_()
    conv.train(linear.training)
    return conv

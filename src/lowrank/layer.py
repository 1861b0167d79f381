"""The small interface every low-rank layer shares.

A low-rank layer stands in for ``nn.Linear(in_features, out_features)``:
``y = W x + b`` with ``W`` of shape ``(out_features, in_features)`` = ``(n, m)``
never formed in the forward pass. Trainers, conversion, accounting and reports
only use this interface, never a concrete class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LowRankLayer", "is_lowrank"]


class LowRankLayer(nn.Module):
    """Base class: a linear map ``R^m -> R^n`` stored in factored form.

    Subclasses set ``in_features`` (m), ``out_features`` (n) and implement
    :meth:`rank`, :meth:`weight_factors` or :meth:`to_dense`, :meth:`num_params`
    and :meth:`flops_per_sample`. They may override :meth:`regularization`
    (added to the loss by the trainer) and :meth:`spec` (what a checkpoint needs
    to rebuild the layer with the right shapes).
    """

    in_features: int
    out_features: int

    @property
    def rank(self) -> int:  # pragma: no cover - abstract
        """Current rank ``r`` of the stored factorization."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The ``(n, m)`` matrix ``W`` this layer represents (for merging/inspection only)."""
        raise NotImplementedError

    @property
    def bias_tensor(self) -> torch.Tensor | None:
        """The bias ``b`` (shape ``(n,)``) or None."""
        return getattr(self, "bias", None)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (``merge``'s building block)."""
        w = self.dense_weight().detach()
        b = self.bias_tensor
        lin = nn.Linear(self.in_features, self.out_features, bias=b is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b.detach())
        return lin

    def copy_bias_from(self, linear: nn.Linear) -> None:
        """Take ``linear``'s bias, if it has one (each ``from_linear``'s last step; the inverse
        of :meth:`to_dense`'s)."""
        if linear.bias is not None:
            with torch.no_grad():
                self.bias.copy_(linear.bias.detach())

    @classmethod
    def count_params(cls, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        """Inference weights of a layer of this class with these shapes, without building one
        (``convert.inspect`` plans with it). Must agree with :meth:`num_params`."""
        return rank * (in_features + out_features) + (out_features if bias else 0)

    def num_params(self) -> int:
        """Weights needed at inference (all stored factors + bias); subclasses with a core add it."""
        r, m, n = self.rank, self.in_features, self.out_features
        return r * (m + n) + (n if self.bias_tensor is not None else 0)

    def flops_per_sample(self) -> int:
        """Multiply-adds of one forward pass for one sample: ``r (m + n)`` (+ ``n`` bias adds)."""
        r = self.rank
        return r * (self.in_features + self.out_features) + (self.out_features if self.bias_tensor is not None else 0)

    def training_params(self) -> int:
        """Elements trained per step: the parameters that require grad by default.

        Layers whose training touches more than their stored parameters (DLRT's ``K``,
        ``L`` and augmented ``2r`` bases) override this; accounting uses it.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def regularization(self) -> torch.Tensor | float:
        """Extra loss term this layer asks the trainer to add (0 by default)."""
        return 0.0

    def spec(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer with its current shapes."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "rank": self.rank, "bias": self.bias_tensor is not None}

    def compression(self) -> float:
        """Inference weights kept, relative to the dense layer (weights + bias)."""
        dense = self.in_features * self.out_features + (self.out_features if self.bias_tensor is not None else 0)
        return self.num_params() / dense

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, params={self.num_params()} ({100 * self.compression():.1f}% of dense)")


def is_lowrank(module: nn.Module) -> bool:
    """True for any module implementing the low-rank layer interface."""
    return isinstance(module, LowRankLayer)

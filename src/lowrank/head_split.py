"""One linear projection split into one layer per attention head: :class:`HeadSplitLinear`.

An attention projection ``W: (E, m)`` (``E = H d``, ``d`` the head size) computes every
head's ``d`` rows at once, so a low-rank layer in its place has one rank for all heads.
:class:`HeadSplitLinear` holds the ``H`` row blocks ``W_h: (d, m)`` as separate
``nn.Linear`` submodules ``heads.0`` ... ``heads.{H-1}`` and concatenates their outputs:
the same function, and :func:`lowrank.convert.convert` gives each head its own layer and
so its own rank (a rank-adaptive DLRT layer adapts each one on its own). It offers the
``weight`` (``(E, m)``, dense, formed when read) and ``bias`` that
:class:`~lowrank.attention.LowRankMultiheadAttention` reads when it is merged back.

Only the query, key and value projections split this way: their output rows belong to one
head each. The output projection mixes the heads' outputs (its columns are per head), so it
keeps one rank.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import is_lowrank

__all__ = ["HeadSplitLinear", "split_heads"]


class HeadSplitLinear(nn.Module):
    """``y = [x W_0^T + b_0, ..., x W_{H-1}^T + b_{H-1}]``: ``heads`` rank-independent blocks of one projection.

    Args:
        in_features: ``m``.
        out_features: ``E``, divisible by ``heads``.
        heads: ``H``.
        bias: a bias per block.
    """

    def __init__(self, in_features: int, out_features: int, heads: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if heads <= 0 or out_features % heads:
            raise ValueError(f"out_features {out_features} must split into {heads} equal heads")
        self.in_features, self.out_features, self.num_heads = in_features, out_features, heads
        d = out_features // heads
        self.heads = nn.ModuleList(nn.Linear(in_features, d, bias=bias, device=device, dtype=dtype)
                                   for _ in range(heads))

    @classmethod
    def from_linear(cls, linear: nn.Linear, heads: int) -> "HeadSplitLinear":
        """The same function as ``linear`` (its row blocks copied)."""
        w = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, heads, linear.bias is not None,
                  device=w.device, dtype=w.dtype)
        d = linear.out_features // heads
        with torch.no_grad():
            for h, block in enumerate(new.heads):
                block.weight.copy_(w[h * d:(h + 1) * d])
                if linear.bias is not None:
                    block.bias.copy_(linear.bias.detach()[h * d:(h + 1) * d])
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(x) for block in self.heads], dim=-1)   # (..., H d)

    @property
    def weight(self) -> torch.Tensor:
        """``(E, m)``: the blocks' dense weights stacked (a low-rank block's product)."""
        return torch.cat([b.dense_weight() if is_lowrank(b) else b.weight for b in self.heads])

    @property
    def bias(self) -> torch.Tensor | None:
        biases = [b.bias_tensor if is_lowrank(b) else b.bias for b in self.heads]
        return None if any(b is None for b in biases) else torch.cat(biases)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, heads={self.num_heads}"


def split_heads(attention: nn.Module) -> None:
    """In place: the ``q_proj``, ``k_proj``, ``v_proj`` of a
    :class:`~lowrank.attention.LowRankMultiheadAttention` as :class:`HeadSplitLinear`."""
    for name in ("q_proj", "k_proj", "v_proj"):
        proj = getattr(attention, name)
        if isinstance(proj, nn.Linear):
            setattr(attention, name, HeadSplitLinear.from_linear(proj, attention.num_heads))

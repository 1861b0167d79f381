"""Vanilla low-rank convolution: the kernel reshaped to ``W (out, in kh kw) = U S V^T``.

Computed as a ``kh x kw`` convolution by the ``r`` kernels ``V^T`` (reshaped to
``(r, in, kh, kw)``) followed by a ``1 x 1`` convolution by ``U S`` (the ``r x r`` core
folded into the pointwise factor once per forward call, ``n r^2`` multiply-adds, not per
position). The dense kernel is never formed in ``forward``.
"""

from __future__ import annotations

import torch

from ...layer import ConvLayer
from .layer import VanillaLinear

__all__ = ["VanillaConv2d"]


class VanillaConv2d(ConvLayer, VanillaLinear):
    """``nn.Conv2d`` stand-in with ``K.reshape(out, in kh kw) = U S V^T``; ``U (out, r)``,
    ``S (r, r)``, ``V (in kh kw, r)`` and the bias trained by any optimizer.

    Args: the geometry of ``nn.Conv2d`` (``in_channels, out_channels, kernel_size``,
    ``stride``, ``padding``, ``dilation``, ``padding_mode``; ``groups=1``), ``rank``, ``bias``
    and ``init_decay`` as :class:`VanillaLinear`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rank: int,
                 bias: bool = True, *, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros", init_decay: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels * kh * kw, out_channels, rank, bias, init_decay=init_decay,
                         device=device, dtype=dtype)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, dilation, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_first(x, self.V.T)                       # (B, r, H', W')
        return self.conv_pointwise(h, self.U @ self.S, self.bias)  # (B, out, H', W')

"""Two-factor convolution of SVD-DNN: the kernel reshaped to ``W (out, in kh kw) ~ W1 W2``.

A ``kh x kw`` convolution by the ``l`` kernels ``W2 (l, in kh kw)`` then a ``1 x 1``
convolution by ``W1 (out, l)``; saves weights and time only when
``l < out in kh kw / (out + in kh kw)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...layer import ConvLayer
from .layer import TwoFactorLinear

__all__ = ["TwoFactorConv2d"]


class TwoFactorConv2d(ConvLayer, TwoFactorLinear):
    """``nn.Conv2d`` stand-in with ``K.reshape(out, in kh kw) = W1 W2``.

    Args: the geometry of ``nn.Conv2d`` (``groups=1``), ``rank`` (``l``) and ``bias``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rank: int,
                 bias: bool = True, *, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels * kh * kw, out_channels, rank, bias, device=device, dtype=dtype)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, dilation, padding_mode)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> "TwoFactorConv2d":
        """``W1 = U_l S_l^(1/2)``, ``W2 = S_l^(1/2) V_l^T`` from the truncated SVD of the reshaped kernel."""
        cls.check_convertible(conv)
        w = conv.weight.detach()
        n = conv.out_channels
        layer = cls(**cls.conv_geometry(conv), rank=rank, bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        layer.factorize_(w.reshape(n, -1))
        layer.copy_bias_from(conv)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pointwise(self.conv_first(x, self.W2), self.W1, self.bias)

"""Two-factor convolution of SVD-DNN: the kernel reshaped to ``W (out, in kh kw) ~ W1 W2``.

A ``kh x kw`` convolution by the ``l`` kernels ``W2 (l, in kh kw)`` then a ``1 x 1``
convolution by ``W1 (out, l)``; saves weights and time only when
``l < out in kh kw / (out + in kh kw)``.
"""

from __future__ import annotations

import torch

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pointwise(self.conv_first(x, self.W2), self.W1, self.bias)

"""SVD-parameterized convolution: the kernel reshaped to ``W (out, in kh kw) = U diag(s) V^T``.

A ``kh x kw`` convolution by the ``r`` kernels ``V^T`` then a ``1 x 1`` convolution by
``U diag(s)`` (``s`` folded into the pointwise factor once per forward call). The same
penalties and energy pruning as :class:`~lowrank.methods.svd.layer.SVDLinear`, which it
extends (``prune``, ``keep``, ``rediagonalize`` act on the reshaped kernel's factors).
"""

from __future__ import annotations

import torch

from ...layer import ConvLayer
from .layer import SVDLinear

__all__ = ["SVDConv2d"]


class SVDConv2d(ConvLayer, SVDLinear):
    """``nn.Conv2d`` stand-in with ``K.reshape(out, in kh kw) = U diag(s) V^T``.

    Args: the geometry of ``nn.Conv2d`` (``groups=1``), ``rank``, ``bias``, ``lambda_orth``
    and ``lambda_sparse`` as :class:`SVDLinear`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rank: int,
                 bias: bool = True, *, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros", lambda_orth: float = 0.0,
                 lambda_sparse: float = 0.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels * kh * kw, out_channels, rank, bias, lambda_orth=lambda_orth,
                         lambda_sparse=lambda_sparse, device=device, dtype=dtype)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, dilation, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_first(x, self.V.T)                        # (B, r, H', W')
        return self.conv_pointwise(h, self.U * self.s, self.bias)  # (B, out, H', W')

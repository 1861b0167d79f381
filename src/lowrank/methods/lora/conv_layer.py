"""LoRA adapter around a frozen ``nn.Conv2d``.

``y = conv0(x) + (lora_alpha / r) conv_1x1(conv_khxkw(x; A); B)``: ``A (r, in kh kw)``
applied as ``r`` kernels ``kh x kw`` with the base's stride, padding and dilation, ``B
(out, r)`` as a ``1 x 1`` convolution, so the update of the reshaped kernel is
``(lora_alpha / r) B A`` (as peft's ``Conv2d`` LoRA). ``merge`` folds it into the base's
kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from ...layer import ConvLayer, LowRankLayer
from ...linalg import check_rank
from .layer import LoRALinear

__all__ = ["LoRAConv2d"]


class LoRAConv2d(ConvLayer, LoRALinear):
    """Frozen ``base`` (an ``nn.Conv2d``, ``groups=1``) plus a trainable rank-``r`` update.

    Accounting as :class:`LoRALinear`: served merged, so :meth:`num_params` and the FLOPs are
    the dense convolution's; :meth:`training_params` counts ``A`` and ``B``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rank: int,
                 bias: bool = True, *, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros", lora_alpha: float = 16.0,
                 base: nn.Conv2d | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        LowRankLayer.__init__(self)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        m = in_channels * kh * kw
        check_rank(rank, out_channels, m, type(self).__name__)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, dilation, padding_mode)
        if base is None:
            base = nn.Conv2d(in_channels, out_channels, (kh, kw), stride=self.stride, padding=self.padding,
                             dilation=self.dilation, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        else:
            self.check_convertible(base)
            if self.conv_geometry(base) != self.conv_geometry(self) or (base.bias is not None) != bias:  # type: ignore[arg-type]
                raise ValueError(f"base {base} does not match the geometry {self._geometry()} / bias={bias}")
        self._init_adapter(base, m, out_channels, rank, lora_alpha)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, *, lora_alpha: float = 16.0) -> "LoRAConv2d":
        """Wrap ``conv`` itself (not a copy) as the frozen base; the adapter starts at zero."""
        cls.check_convertible(conv)
        return cls(**cls.conv_geometry(conv), rank=rank, bias=conv.bias is not None, lora_alpha=lora_alpha,
                   base=conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        self.input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.merged:  # the update already lives in base.weight
            return y
        return y + self.scaling * self.conv_pointwise(self.conv_first(x, self.A), self.B)

    def position_flops(self) -> int:
        """The merged (inference) convolution's: ``m n (+ n)`` per output position."""
        return self.num_params()

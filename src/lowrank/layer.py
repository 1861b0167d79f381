"""The small interface every low-rank layer shares.

A low-rank layer stands in for ``nn.Linear(in_features, out_features)``:
``y = W x + b`` with ``W`` of shape ``(out_features, in_features)`` = ``(n, m)``
never formed in the forward pass. Trainers, conversion, accounting and reports
only use this interface, never a concrete class.

Drop-in: every layer also has a read-only ``weight`` property, the dense ``W`` formed
when read (differentiable, so code that reads ``module.weight``, such as PyTorch's
fused ``TransformerEncoderLayer`` inference path, keeps working), and ``bias``.

A layer standing in for ``nn.Conv2d`` (:class:`ConvLayer`, mixed into a method's
linear layer class) factorizes the kernel reshaped to ``out x (in kh kw)``: its
``in_features`` is ``in_channels * kh * kw``, ``out_features`` is ``out_channels``, its
``weight`` is the ``(out, in, kh, kw)`` kernel, and it computes a ``kh x kw``
convolution to ``r`` channels followed by a ``1 x 1`` convolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

__all__ = ["LowRankLayer", "ConvLayer", "is_lowrank", "is_conv_layer", "conv_output_hw", "regularization"]


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
    def weight(self) -> torch.Tensor:
        """The dense ``(n, m)`` weight ``W``, formed only when read (differentiable; read-only).

        For drop-in use by code that reads ``module.weight`` (PyTorch's fused transformer
        inference path, weight-norm statistics ...). The forward pass never forms it.
        """
        return self.dense_weight()

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

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, **options: Any) -> "LowRankLayer":
        """A rank-``r`` layer computing as close to ``linear`` as its form allows: built with
        ``linear``'s shapes, device and dtype and the constructor's ``options``, then
        :meth:`factorize_` of ``linear.weight`` and its bias. (LoRA wraps ``linear`` instead.)"""
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None, **options,
                    device=w.device, dtype=w.dtype)
        layer.factorize_(w)
        layer.copy_bias_from(linear)
        return layer

    def factorize_(self, w: torch.Tensor) -> None:  # pragma: no cover - abstract
        """Set the factors, in place, from the ``(n, m)`` matrix ``w`` at the current rank."""
        raise NotImplementedError

    def init_bias(self, bias: bool, dtype: torch.dtype | None, device: torch.device | str | None) -> None:
        """A ``bias`` parameter of ``out_features`` entries with nn.Linear's default init
        ``U(-1/sqrt(m), 1/sqrt(m))``, or a registered ``None`` (``in_features`` set first)."""
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=dtype, device=device))
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

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


def regularization(model: nn.Module) -> torch.Tensor | float:
    """The sum of every low-rank layer's own loss term (the SVD method's orthogonality and Hoyer
    penalties, with the ``lambda_orth`` / ``lambda_sparse`` each layer was converted with; 0
    for the other methods): add it to the task loss in your own loop, as the CLI does."""
    total: torch.Tensor | float = 0.0
    for m in model.modules():
        if is_lowrank(m):
            total = total + m.regularization()
    return total


def is_conv_layer(module: nn.Module) -> bool:
    """True for a low-rank layer standing in for an ``nn.Conv2d``."""
    return isinstance(module, ConvLayer) and isinstance(module, LowRankLayer)


def conv_output_hw(input_hw: tuple[int, int], kernel_size: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int] | str, dilation: tuple[int, int]) -> tuple[int, int]:
    """Spatial size ``(H_out, W_out)`` of a 2-D convolution of an ``input_hw`` input (nn.Conv2d's formula)."""
    if padding == "same":
        return (int(input_hw[0]), int(input_hw[1]))
    pad = (0, 0) if padding == "valid" else _pair(padding)
    return tuple(  # type: ignore[return-value]
        (int(input_hw[i]) + 2 * pad[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1 for i in range(2))


class ConvLayer:
    """Mixin for a low-rank layer standing in for ``nn.Conv2d`` (``groups=1``); put it first in
    the bases, before the method's linear layer class: ``class VanillaConv2d(ConvLayer, VanillaLinear)``.

    The kernel ``K (out, in, kh, kw)`` is the matrix ``W = K.reshape(out, in kh kw)`` of the
    linear layer, so ``in_features = in_channels kh kw``, ``out_features = out_channels``, and
    rank rules, ranks, break-even ``out in kh kw / (out + in kh kw)`` and parameter counts are
    those of ``W``. A factor ``R (r, in kh kw)`` on the input side is applied as a ``kh x kw``
    convolution to ``r`` channels with the layer's stride, padding and dilation
    (:meth:`conv_first`), a factor ``L (out, r)`` on the output side as a ``1 x 1``
    convolution (:meth:`conv_pointwise`). The dense kernel is never formed in ``forward``.

    Accounting: :meth:`flops_per_sample` needs the input's spatial size; each forward pass
    stores it in ``input_hw`` (a plain attribute, not part of the state_dict).
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    padding_mode: str
    input_hw: tuple[int, int] | None

    def _init_conv(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                   stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                   dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros") -> None:
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(int(k) for k in _pair(kernel_size))  # type: ignore[assignment]
        self.stride = tuple(int(k) for k in _pair(stride))  # type: ignore[assignment]
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or integers, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = tuple(int(k) for k in _pair(padding))  # type: ignore[assignment]
        self.dilation = tuple(int(k) for k in _pair(dilation))  # type: ignore[assignment]
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be zeros, reflect, replicate or circular, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.input_hw = None

    @staticmethod
    def conv_geometry(conv: nn.Conv2d) -> dict[str, Any]:
        """The constructor arguments of a conv layer copying ``conv``'s geometry (not its rank)."""
        return {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
                "kernel_size": tuple(conv.kernel_size), "stride": tuple(conv.stride),
                "padding": conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
                "dilation": tuple(conv.dilation), "padding_mode": conv.padding_mode}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, **options: Any) -> Any:
        """A rank-``r`` layer with ``conv``'s geometry, device and dtype and the constructor's
        ``options``, factorizing its kernel reshaped to ``(out, in kh kw)``, with its bias.
        (LoRA wraps ``conv`` instead.)"""
        cls.check_convertible(conv)
        w = conv.weight.detach()
        layer = cls(**cls.conv_geometry(conv), rank=rank, bias=conv.bias is not None, **options,
                    device=w.device, dtype=w.dtype)
        layer.factorize_(w.reshape(conv.out_channels, -1))
        layer.copy_bias_from(conv)
        return layer

    @staticmethod
    def check_convertible(conv: nn.Module) -> None:
        """A ValueError unless ``conv`` is an ``nn.Conv2d`` with ``groups=1``."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"only groups=1 convolutions are factorized, this one has groups={conv.groups}")

    def _geometry(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "padding_mode": self.padding_mode}

    # ------------------------------------------------------------------ computing

    def conv_first(self, x: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``x (B, in, H, W)`` convolved with the rows of ``right (r, in kh kw)`` as ``r`` kernels
        ``kh x kw`` (this layer's stride, padding, dilation): ``(B, r, H_out, W_out)``.
        Records the input's spatial size in ``input_hw``."""
        self.input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        kernel = right.reshape(right.shape[0], self.in_channels, *self.kernel_size)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad_amounts(), mode=self.padding_mode)
            return F.conv2d(x, kernel, None, self.stride, 0, self.dilation)
        return F.conv2d(x, kernel, None, self.stride, self.padding, self.dilation)

    @staticmethod
    def conv_pointwise(h: torch.Tensor, left: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``h (B, r, H, W)`` mapped by ``left (out, r)`` per position (a ``1 x 1`` convolution) plus ``bias``."""
        return F.conv2d(h, left[:, :, None, None], bias)

    def _pad_amounts(self) -> tuple[int, ...]:
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return (0, 0, 0, 0)
            amounts: list[int] = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                amounts += [total // 2, total - total // 2]
            return tuple(amounts)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    # ------------------------------------------------------------------ interface

    @property
    def weight(self) -> torch.Tensor:
        """The dense kernel ``(out, in, kh, kw)``, formed only when read (differentiable; read-only)."""
        return self.dense_weight().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` computing the same function (``merge``'s building block)."""
        w = self.weight.detach()
        b = self.bias_tensor  # type: ignore[attr-defined]
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, bias=b is not None,
                         padding_mode=self.padding_mode, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if b is not None:
                conv.bias.copy_(b.detach())
        return conv

    def output_hw(self, input_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """Spatial size of the output for an ``input_hw`` input (default: the last input seen)."""
        hw = input_hw if input_hw is not None else self.input_hw
        if hw is None:
            raise ValueError(f"{type(self).__name__}: input size unknown; pass input_hw or run a forward pass first")
        return conv_output_hw(hw, self.kernel_size, self.stride, self.padding, self.dilation)

    def position_flops(self) -> int:
        """Multiply-adds per output position: ``r (m + n)`` (+ ``n`` bias adds); a core (``S``,
        ``s``) is folded into the ``1 x 1`` factor once per forward call, not per position."""
        r, m, n = self.rank, self.in_features, self.out_features  # type: ignore[attr-defined]
        return r * (m + n) + (n if self.bias_tensor is not None else 0)  # type: ignore[attr-defined]

    def flops_per_sample(self, input_hw: tuple[int, int] | None = None) -> int:
        """Multiply-adds for one sample (image) of spatial size ``input_hw`` (default: the size of
        the last input seen, ``input_hw``): :meth:`position_flops` times ``H_out W_out``."""
        ho, wo = self.output_hw(input_hw)
        return self.position_flops() * ho * wo

    def spec(self) -> dict[str, Any]:
        base = dict(super().spec())  # type: ignore[misc]
        base.pop("in_features", None)
        base.pop("out_features", None)
        return {**self._geometry(), **base}

    def extra_repr(self) -> str:
        pad = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, padding={pad}, rank={self.rank}, "  # type: ignore[attr-defined]
                f"params={self.num_params()} ({100 * self.compression():.1f}% of dense)")  # type: ignore[attr-defined]

"""Dynamical low-rank convolution: the kernel reshaped to ``W (out, in kh kw) = U S V^T``.

``U (n, r)``, ``V (m, r)`` orthonormal (moved by a DLRT integrator, no grad), ``S (r, r)``
and the bias trained, with ``n = out_channels``, ``m = in_channels kh kw``. It implements
the :class:`~lowrank.methods.dlrt.layer.DLRTLayer` protocol for that ``W``, so the DLRT
optimizer trains it like a :class:`~lowrank.methods.dlrt.layer.DLRTLinear` (whose
construction, counts and spec it reuses).

Forward: ``h = conv_{kh x kw}(x; V^T)`` (``r`` channels, the layer's stride / padding /
dilation; padding modes other than zeros and string paddings are applied by ``F.pad``
first, so the convolution itself is unpadded), then ``y = conv_{1x1}(h; U S) + b`` (the
core folded into the pointwise factor once per call). Plain autograd differentiates that.

Capture. With ``X_p`` the input patch (``m``) and ``dY_p`` the output gradient (``n``) at
output position ``p``, ``dL/dW = sum_p dY_p X_p^T``, so

    G_K = dL/dW V   = sum_p dY_p h_p^T                       (n, r): one contraction of dY with h
    G_L = dL/dW^T U = (conv2d_weight(x, (r, in, kh, kw), dY U)).reshape(r, m)^T   (m, r)

``h`` is the forward activation; ``dY U`` (``r`` channels) is one ``1 x 1`` contraction of
the output gradient; ``torch.nn.grad.conv2d_weight`` is the weight gradient of the
``kh x kw`` convolution for that output gradient. ``dL/dW`` (``n x m``) and the im2col
patches are never formed. A capture node (an identity on ``y`` whose backward sees
``dY``) adds these as the gradients of the optimizer's sinks ``K``, ``L`` (attached
layer), or to ``grad_K`` / ``grad_L`` / ``grad_S_task`` (manual :meth:`capture`); with
``keep_io`` it keeps the (padded) input and the output gradient, and
:meth:`captured_projection` projects ``dL/dW`` onto other bases from them by the same
two convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torch.nn.grad import conv2d_weight

from ...errors import ConfigError
from ...layer import ConvLayer
from .layer import DLRTLinear, attached_optimizer

__all__ = ["DLRTConv2d"]


class _ConvCapture(torch.autograd.Function):
    """Identity on the layer output ``y (B, n, H', W')``; its backward, given ``dY``, computes
    ``G_K``, ``G_L`` (and ``dS = U^T G_K``) from the saved activation ``h (B, r, H', W')`` and
    padded input ``xp``, returns them as the gradients of the sinks ``K``, ``L`` and/or hands
    them to the layer (manual capture / record), and guards against plain optimizers.

    Inputs: ``y, h, xp, U, S, V, K, L, layer``; gradient flows to ``y`` (unchanged) and the sinks.
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, h: torch.Tensor, xp: torch.Tensor, U: torch.Tensor, S: torch.Tensor,
                V: torch.Tensor, K: torch.Tensor | None, L: torch.Tensor | None,
                layer: "DLRTConv2d") -> torch.Tensor:
        ctx.save_for_backward(h, xp, U)
        layer._save_capture_mode(ctx, K is not None)
        ctx.conv = layer
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):  # type: ignore[override]
        h, xp, U = ctx.saved_tensors
        _, _, _, need_u, need_s, need_v, need_k, need_l, _ = ctx.needs_input_grad
        if ctx.guard is not None and need_s and not (need_u or need_v):
            raise ConfigError(ctx.guard._not_attached_message())
        layer, record, conv = ctx.layer, ctx.record, ctx.conv
        gk = gl = None
        if layer is not None or record is not None or need_k or need_l:
            dy = dy.to(U.dtype)
            gk = torch.einsum("bnhw,brhw->nr", dy, h.to(U.dtype))      # (n, r) = dL/dW V
            gl = conv._grad_right(xp.to(U.dtype), dy, U)               # (m, a) = dL/dW^T U
            ds = U.T @ gk                                              # (a, r) = U^T dL/dW V
            if layer is not None:
                layer._accumulate(gk, gl, ds, xp, dy)
            if record is not None and need_k:
                record._record_capture(ds, xp, dy)
        return dy, None, None, None, None, None, gk if need_k else None, gl if need_l else None, None


class DLRTConv2d(ConvLayer, DLRTLinear):
    """``nn.Conv2d`` stand-in (``groups=1``) with ``K.reshape(out, in kh kw) = U S V^T``, trained by DLRT.

    Args: the geometry of ``nn.Conv2d`` (``in_channels, out_channels, kernel_size``, ``stride``,
    ``padding``, ``dilation``, ``padding_mode``), ``rank``, ``bias``, ``min_rank``, ``max_rank``
    and ``init_decay`` as :class:`DLRTLinear` (for the ``(out, in kh kw)`` matrix).

    ``captured_io`` holds ``(xp, dY)`` per use: the input after this layer's own padding
    ``(B, in, H_p, W_p)`` and the output gradient ``(B, out, H', W')`` (read by
    :meth:`captured_projection`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], rank: int,
                 bias: bool = True, *, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros", min_rank: int = 1,
                 max_rank: int | None = None, init_decay: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels * kh * kw, out_channels, rank, bias, min_rank=min_rank, max_rank=max_rank,
                         init_decay=init_decay, device=device, dtype=dtype)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, dilation, padding_mode)

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``(input as the kh x kw convolution sees it, the padding to pass it)``: explicit
        ``F.pad`` for padding modes other than zeros and for string paddings."""
        if self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return x, self.padding
        amounts = self._pad_amounts()
        if any(amounts):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, amounts, mode=mode)
        return x, 0

    def _kernel(self, right: torch.Tensor) -> torch.Tensor:
        """``right (k, m)`` as ``k`` kernels ``(k, in, kh, kw)``."""
        return right.reshape(right.shape[0], self.in_channels, *self.kernel_size)

    def _pad_arg(self) -> Any:
        return self.padding if self.padding_mode == "zeros" and not isinstance(self.padding, str) else 0

    def _grad_right(self, xp: torch.Tensor, dy: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """``dL/dW^T left (m, k)`` for ``left (n, k)``: the weight gradient of the ``kh x kw``
        convolution for the output gradient ``dY left`` (``k`` channels)."""
        t = self.conv_pointwise(dy, left.T)                           # (B, k, H', W') = dY left
        k = left.shape[1]
        g = conv2d_weight(xp, (k, self.in_channels, *self.kernel_size), t, self.stride, self._pad_arg(),
                          self.dilation)                              # (k, in, kh, kw) = left^T dL/dW
        return g.reshape(k, -1).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:                                              # unbatched (C, H, W)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        self.input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        sinks = self._capture_sinks()
        xp, pad = self._padded(x)
        h = F.conv2d(xp, self._kernel(self.V.T), None, self.stride, pad, self.dilation)   # (B, r, H', W')
        y = self.conv_pointwise(h, self.U @ self.S, self.bias)                              # (B, n, H', W')
        if torch.is_grad_enabled() and (sinks is not None or self.capturing
                                        or (self.training and attached_optimizer(self) is None)):
            K, L = sinks if sinks is not None else (None, None)
            y = _ConvCapture.apply(y, h, xp, self.U, self.S, self.V, K, L, self)
        return y

    def captured_projection(self, Ut: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
        """``U~^T dL/dW V~ (kU, kV)`` for ``U~ (n, kU)``, ``V~ (m, kV)`` from the captured ``(xp, dY)``:
        ``sum_p (U~^T dY_p) (V~^T X_p)^T``, by a ``1 x 1`` and a ``kh x kw`` convolution."""
        total = None
        for xp, dy in self.captured_io:
            a = self.conv_pointwise(dy, Ut.T)                                          # (B, kU, H', W')
            b = F.conv2d(xp, self._kernel(Vt.T), None, self.stride, self._pad_arg(), self.dilation)  # (B, kV, H', W')
            p = torch.einsum("bihw,bjhw->ij", a, b)
            total = p if total is None else total + p
        if total is None:
            return Ut.new_zeros(Ut.shape[1], Vt.shape[1])
        return total

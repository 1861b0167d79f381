"""Dynamical low-rank layers: the :class:`DLRTLayer` protocol and :class:`DLRTLinear`.

``W = U S V^T`` with ``U: (n, r)`` and ``V: (m, r)`` orthonormal and ``S: (r, r)``.
Unlike the vanilla layer, ``U`` and ``V`` are never trained by gradient descent: a
DLRT integrator (:class:`~lowrank.methods.dlrt.optimizer.DLRT`) moves them, keeping them
orthonormal, and may change the rank ``r`` between steps. So ``U`` and ``V`` are
parameters that do not require grad; ``S`` and the bias do.

What an integrator needs from one backward pass are the projected gradients

    G_K = dL/dW V   (n, r)        G_L = (dL/dW)^T U   (m, r)

With the layer input ``X (B, m)`` and output gradient ``dY (B, n)``,
``dL/dW = dY^T X``, so ``G_K = dY^T (X V)`` and ``G_L = X^T (dY U)``. ``X V`` is
the forward activation and ``dY U`` is needed for the input gradient anyway, so
both cost one ``(B, r)`` product each and ``dL/dW`` (``n x m``) is never formed.

Capture. The custom autograd function below computes them in two situations:

- the layer is *attached* to a :class:`~lowrank.methods.dlrt.optimizer.DLRT` optimizer
  (it attaches every DLRT layer of its model) and grad is enabled: the optimizer's own
  parameters ``K (n, r)`` and ``L (m, r)`` are extra inputs of the product, and its
  backward returns ``G_K``, ``G_L`` as their gradients, so autograd accumulates them in
  ``K.grad``, ``L.grad`` like any gradient (several backward passes add up;
  ``torch.autograd.grad`` leaves them alone; ``optimizer.zero_grad()`` clears them);
- *manual capture* (:meth:`DLRTLayer.capture`, no optimizer needed): ``G_K``, ``G_L`` and
  ``dS`` are added to the layer's ``grad_K``, ``grad_L``, ``grad_S_task``.

Outside both it is an ordinary differentiable layer.

Guard. A layer in training mode that is not attached to a DLRT optimizer raises a
:class:`~lowrank.errors.ConfigError` in a backward pass that would give ``S`` a gradient
but not ``U`` and ``V``: training it with a plain optimizer would silently train only
``S`` and the bias. Evaluation (``model.eval()`` or ``torch.no_grad()``) never trips it,
nor does making ``U`` and ``V`` trainable on purpose (``requires_grad_(True)``).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import ConfigError, RankError
from ...layer import LowRankLayer
from ...linalg import check_rank, orthonormal, orthonormality_error, qr_positive, truncated_svd

if TYPE_CHECKING:
    from .optimizer import DLRT

__all__ = ["DLRTLayer", "DLRTLinear", "default_max_rank", "reorthonormalize", "attach", "detach",
           "attached_optimizer"]


def default_max_rank(in_features: int, out_features: int, rank: int) -> int:
    """``min(m, n) // 2``, raised to at least ``rank``, never above ``min(m, n)``."""
    full = min(in_features, out_features)
    return min(full, max(full // 2, rank))


# ---------------------------------------------------------------------------- attachment

@dataclass
class _Attachment:
    """A layer's link to the DLRT optimizer that trains it: the optimizer (weakly) and its
    gradient sinks ``K (n, r)``, ``L (m, r)`` for this layer."""

    optimizer: "weakref.ReferenceType[DLRT]"
    K: nn.Parameter
    L: nn.Parameter


# Kept outside the modules, so ``copy.deepcopy``, pickling and ``state_dict`` never see it: a
# copy of an attached model is not attached (it is trained by the DLRT built over it).
_ATTACHED: "weakref.WeakKeyDictionary[DLRTLayer, _Attachment]" = weakref.WeakKeyDictionary()


def attach(layer: "DLRTLayer", optimizer: "DLRT", K: nn.Parameter, L: nn.Parameter) -> None:
    """Make ``optimizer`` the trainer of ``layer``: from now on a grad-enabled forward pass
    captures ``G_K``, ``G_L`` into ``K.grad``, ``L.grad`` (replaces an earlier attachment)."""
    _ATTACHED[layer] = _Attachment(weakref.ref(optimizer), K, L)


def detach(layer: "DLRTLayer") -> None:
    """Undo :func:`attach` (no-op for a layer that is not attached)."""
    _ATTACHED.pop(layer, None)


def attached_optimizer(layer: "DLRTLayer") -> "DLRT | None":
    """The live DLRT optimizer ``layer`` is attached to, or None."""
    att = _ATTACHED.get(layer)
    return None if att is None else att.optimizer()


def _placeholder(like: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like ``like`` without memory of its own (a sink's value between
    steps: only its shape matters, the step sets the value it steps from)."""
    return like.new_zeros(()).expand(like.shape)


# ---------------------------------------------------------------------------- the product

class _DLRTProduct(torch.autograd.Function):
    """``y = ((x V) S^T) U^T + b`` with a hand-written backward that can capture ``G_K``, ``G_L``.

    Inputs: ``x (..., m)``, ``U (n, r)``, ``S (r, r)``, ``V (m, r)``, ``bias (n,)`` or None,
    the sinks ``K (n, r)``, ``L (m, r)`` (or None; their values are not used) and the layer.

    Gradients returned (only for inputs that require grad):
    ``dx = ((dY U) S) V^T``, ``dS = (dY U)^T (X V)``, ``dU = G_K S^T``, ``dV = G_L S``,
    ``db = sum_batch dY``, and ``G_K``, ``G_L`` for the sinks. In manual capture mode ``G_K``,
    ``G_L`` (and ``dS``) are also added to the layer's ``grad_K``, ``grad_L``, ``grad_S_task``
    (added, so a layer used twice in one forward sums its contributions, as autograd would).

    Under autocast the forward runs in the autocast dtype (as ``nn.Linear`` does) and the
    backward in the parameters' dtype, so the captured gradients stay float32.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor,
                bias: torch.Tensor | None, K: torch.Tensor | None, L: torch.Tensor | None,
                layer: "DLRTLinear") -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])            # (B, m)
        h = x2 @ V                                 # (B, r): reused by the backward
        z = h @ S.T                                # (B, r)
        y = torch.addmm(bias, z, U.T) if bias is not None else z @ U.T  # (B, n)
        ctx.save_for_backward(x2, h, U, S, V)
        layer._save_capture_mode(ctx, K is not None)
        ctx.lead = lead
        ctx.has_bias = bias is not None
        ctx.x_dtype = x.dtype
        ctx.cast = h.dtype != U.dtype or x.dtype != U.dtype      # autocast (or low-precision input)
        return y.reshape(*lead, U.shape[0])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):  # type: ignore[override]
        x2, h, U, S, V = ctx.saved_tensors
        need_x, need_u, need_s, need_v, need_b, need_k, need_l, _ = ctx.needs_input_grad
        if ctx.guard is not None and need_s and not (need_u or need_v):
            raise ConfigError(ctx.guard._not_attached_message())
        layer, record = ctx.layer, ctx.record
        # In float32 whatever autocast computed the forward in (and even if the backward is
        # called inside an autocast region): the integrator's gradients must not be bf16.
        with torch.autocast(dy.device.type, enabled=False) if ctx.cast else contextlib.nullcontext():
            dy2 = dy.reshape(-1, U.shape[0])       # (B, n)
            if ctx.cast:
                dy2, x2, h = dy2.to(U.dtype), x2.to(U.dtype), h.to(U.dtype)
            t = dy2 @ U                            # (B, r) = dY U
            dx = du = ds = dv = db = gk = gl = None
            if need_x:
                dx = ((t @ S) @ V.T).reshape(*ctx.lead, V.shape[0])
                if ctx.cast:
                    dx = dx.to(ctx.x_dtype)
            if layer is not None or need_u or need_k:
                gk = dy2.T @ h                     # (n, r) = dY^T X V = dL/dW V
            if layer is not None or need_v or need_l:
                gl = x2.T @ t                      # (m, r) = X^T dY U = dL/dW^T U
            if layer is not None or need_s or record is not None:
                ds = t.T @ h                       # (r, r) = U^T dL/dW V
            if layer is not None:
                layer._accumulate(gk, gl, ds, x2, dy2)
            if record is not None and need_k:
                record._record_capture(ds, x2, dy2)
            if need_u:
                du = gk @ S.T
            if need_v:
                dv = gl @ S
            if not need_s:
                ds = None
            if need_b and ctx.has_bias:
                db = dy2.sum(0)
        return dx, du, ds, dv, db, gk if need_k else None, gl if need_l else None, None


# ---------------------------------------------------------------------------- the protocol

class DLRTLayer(LowRankLayer):
    """What a DLRT optimizer needs of a layer; :class:`DLRTLinear` implements it, and so must a
    DLRT convolution (``W`` its kernel reshaped to ``(out, in kh kw)``).

    Attributes a subclass sets: ``U (n, r)``, ``S (r, r)``, ``V (m, r)`` (``nn.Parameter``;
    ``U``, ``V`` with ``requires_grad=False``), ``in_features`` (m), ``out_features`` (n),
    ``min_rank``, ``max_rank``; and :meth:`spec`.

    What its ``forward`` must do in training: when :meth:`_capture_sinks` returns the
    sinks ``(K, L)``, pass them into its autograd function as inputs and, in the backward,
    return ``G_K = dL/dW V (n, r)`` and ``G_L = dL/dW^T U (m, r)`` as their gradients; call
    ``ctx.layer._accumulate(G_K, G_L, dS, X, dY)`` when ``ctx.layer`` is set (manual capture)
    and ``ctx.record._record_capture(dS, X, dY)`` when ``ctx.record`` is set and the sinks
    need grad (both set by :meth:`_save_capture_mode` in the forward); raise
    ``ConfigError(ctx.guard._not_attached_message())`` when ``ctx.guard`` is set and ``S``
    needs a gradient but ``U`` and ``V`` do not. ``X`` and ``dY`` are what
    :meth:`captured_projection` reads back: a convolution may keep its input and output
    gradient in any form and override that method.

    The rest (factors, rank, orthonormality, capture buffers, resizing on load) is here.
    """

    U: nn.Parameter
    S: nn.Parameter
    V: nn.Parameter
    min_rank: int
    max_rank: int

    def __init__(self) -> None:
        super().__init__()
        self.capturing = False
        # Set by the optimizer: does the integrator hold augmented (2r) bases? (for training_params)
        self.augments = True
        self.grad_K: torch.Tensor | None = None
        self.grad_L: torch.Tensor | None = None
        self.grad_S_task: torch.Tensor | None = None
        self.keep_io = False
        # Set by the optimizer: keep the task part of dS (to lift penalties on S to K and L).
        self.keep_task_ds = False
        self.captured_io: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def rank(self) -> int:
        return min(self.S.shape)

    # ------------------------------------------------------------------ factors

    def set_factors(self, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> None:
        """Replace the factors in place (shapes may change: ``U (n, r)``, ``S (r, r)``, ``V (m, r)``).

        The parameter objects are kept (``.data`` is swapped), so optimizers and
        hooks holding them stay valid. Inside a rank-adaptive KLS step the core may
        briefly be rectangular, ``S (a, b)`` with ``U (n, a)``, ``V (m, b)``, when the two
        bases could not grow equally (``2r > min(m, n)``).
        """
        a, b = S.shape
        if U.shape != (self.out_features, a) or V.shape != (self.in_features, b):
            raise RankError(f"{type(self).__name__} {self.out_features}x{self.in_features}: factor shapes "
                            f"U {tuple(U.shape)}, S {tuple(S.shape)}, V {tuple(V.shape)} do not fit")
        # Row-major always: BLAS rounds differently for other layouts, and a layer rebuilt
        # from a checkpoint must compute bit for bit what the saved one would have.
        self.U.data = U.contiguous()
        self.S.data = S.contiguous()
        self.V.data = V.contiguous()

    def dense_weight(self) -> torch.Tensor:
        return self.U @ self.S @ self.V.T          # (n, m), for merging / inspection only

    def orthonormality_error(self) -> float:
        """``max(||U^T U - I||_F, ||V^T V - I||_F)``, measured in float64 (a float32 Gram of a
        784-row basis has ~1e-6 rounding of its own)."""
        return max(orthonormality_error(self.U.detach().double()), orthonormality_error(self.V.detach().double()))

    def reorthonormalize(self) -> None:
        """``U = Q_U R_U``, ``V = Q_V R_V``, ``S <- R_U S R_V^T``: the same ``W`` on bases orthonormal to rounding."""
        reorthonormalize(self)

    def set_rank_caps(self, min_rank: int | None = None, max_rank: int | None = None) -> None:
        """New caps of rank-adaptive training; ``max_rank`` above ``min(m, n)`` is lowered to it.
        The current rank must lie within them (:class:`RankError` otherwise)."""
        full = min(self.in_features, self.out_features)
        lo = self.min_rank if min_rank is None else int(min_rank)
        hi = self.max_rank if max_rank is None else min(int(max_rank), full)
        if not 1 <= lo <= self.rank <= hi:
            raise RankError(f"{type(self).__name__} {self.out_features}x{self.in_features} at rank {self.rank}: "
                            f"need 1 <= min_rank <= rank <= max_rank, got min_rank={lo}, max_rank={hi}")
        self.min_rank, self.max_rank = lo, hi

    # ------------------------------------------------------------------ capture

    def capture(self, on: bool = True, keep_io: bool = False) -> None:
        """Enter (or leave) manual capture mode and clear the captured gradients.

        In manual capture a backward pass adds ``G_K``, ``G_L``, ``dS`` to ``grad_K``,
        ``grad_L``, ``grad_S_task`` (no optimizer needed). ``keep_io``: also keep references
        to each use's input ``X (B, m)`` and output gradient ``dY (B, n)`` in
        ``captured_io``, for projections of ``dL/dW = dY^T X`` onto other bases
        (:meth:`captured_projection`) without another pass.
        """
        self.capturing = on
        self.keep_io = keep_io
        self.clear_capture()

    def clear_capture(self) -> None:
        """Drop the captured buffers (``grad_K``, ``grad_L``, ``grad_S_task``, ``captured_io``)."""
        self.grad_K = self.grad_L = self.grad_S_task = None
        self.captured_io = []

    def captured_projection(self, Ut: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
        """``U~^T dL/dW V~ (kU, kV)`` for bases ``U~ (n, kU)``, ``V~ (m, kV)``, from the captured
        inputs and output gradients: ``sum_uses (dY U~)^T (X V~)``."""
        return sum((dy @ Ut).T @ (xx @ Vt) for xx, dy in self.captured_io)  # type: ignore[return-value]

    def _capture_sinks(self) -> tuple[nn.Parameter, nn.Parameter] | None:
        """The sinks ``(K, L)`` a forward pass must feed to its product, or None: when the layer
        is attached to a live DLRT optimizer that captures now and grad is enabled.

        Resizes a sink whose shape no longer matches the factors (the rank changed, or the model
        moved to another device or dtype), and
        drops sink gradients left over when someone cleared ``S.grad`` but not theirs
        (``model.zero_grad()``), so that call starts a new accumulation too.
        """
        att = _ATTACHED.get(self)
        if att is None or not torch.is_grad_enabled():
            return None
        opt = att.optimizer()
        if opt is None or not opt.capture_enabled:
            return None
        K, L, U, V = att.K, att.L, self.U, self.V
        if K.shape != U.shape or K.device != U.device or K.dtype != U.dtype:
            K.data = _placeholder(U)
        if L.shape != V.shape or L.device != V.device or L.dtype != V.dtype:
            L.data = _placeholder(V)
        if K.grad is not None and self.S.grad is None and self.S.requires_grad:
            K.grad = L.grad = None
            self.clear_capture()
        return K, L

    def _save_capture_mode(self, ctx: Any, sinks: bool) -> None:
        """Put on ``ctx`` what the backward does besides the gradients: ``ctx.layer`` (manual
        capture), ``ctx.record`` (the attached optimizer wants ``dS`` and/or ``X``, ``dY`` kept),
        ``ctx.guard`` (raise if trained by a plain optimizer)."""
        ctx.layer = self if self.capturing else None
        ctx.record = self if sinks and (self.keep_io or self.keep_task_ds) else None
        ctx.guard = (self if self.training and not sinks and not self.capturing
                     and attached_optimizer(self) is None else None)

    def _accumulate(self, gk: torch.Tensor, gl: torch.Tensor, ds: torch.Tensor, x: torch.Tensor,
                    dy: torch.Tensor) -> None:
        """Manual capture: add one use's ``G_K``, ``G_L``, ``dS`` (and keep ``X``, ``dY``)."""
        if self.grad_K is None:
            self.grad_K, self.grad_L, self.grad_S_task = gk, gl, ds
        else:
            self.grad_K = self.grad_K + gk
            self.grad_L = self.grad_L + gl
            self.grad_S_task = self.grad_S_task + ds
        if self.keep_io:
            self.captured_io.append((x, dy))

    def _record_capture(self, ds: torch.Tensor, x: torch.Tensor, dy: torch.Tensor) -> None:
        """Attached capture: keep one use's task ``dS`` (summed) and its ``X``, ``dY``, as asked."""
        if self.keep_task_ds or self.keep_io:
            self.grad_S_task = ds if self.grad_S_task is None else self.grad_S_task + ds
        if self.keep_io:
            self.captured_io.append((x, dy))

    def _not_attached_message(self) -> str:
        return (f"{type(self).__name__} ({self.out_features}x{self.in_features}, rank {self.rank}) is trained by "
                f"lowrank.DLRT (its U and V move by the integrator, not by gradients; a plain optimizer would "
                f"train only S and the bias): opt = lowrank.DLRT(model, torch.optim.Adam, lr=...). "
                f"For inference use model.eval() or torch.no_grad()")

    # ------------------------------------------------------------------ loading

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint may hold another rank than this layer (ranks adapt): resize first.
        s = state_dict.get(prefix + "S")
        if s is not None and s.dim() == 2 and s.shape[0] == s.shape[1] and s.shape[0] != self.rank:
            r = s.shape[0]
            like = self.S
            self.set_factors(like.new_empty(self.out_features, r), like.new_empty(r, r),
                             like.new_empty(self.in_features, r))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DLRTLinear(DLRTLayer):
    """``y = ((x V) S^T) U^T + b`` with orthonormal ``U``, ``V`` moved by a DLRT integrator.

    Args:
        in_features: ``m``.
        out_features: ``n``.
        rank: current rank ``r``, ``min_rank <= r <= max_rank``.
        bias: learn an additive bias ``b: (n,)``.
        min_rank: ``r_min``, lower cap of rank-adaptive training (>= 1).
        max_rank: ``r_max``, upper cap; default ``min(m, n) // 2`` raised to ``rank``;
            a value above ``min(m, n)`` is lowered to ``min(m, n)``.
        init_decay: ``d``; the initial singular values are ``sigma / d^i``.

    A freshly built layer has random orthonormal ``U``, ``V`` and
    ``S = diag(sigma / d^i)`` with ``sigma = sqrt(n / (3 r))`` (nn.Linear's output
    scale); :meth:`from_linear` starts from a trained ``nn.Linear`` instead.
    ``U``, ``S``, ``V`` change shape when the rank changes; :meth:`spec` always
    describes the current shapes, and :meth:`load_state_dict` accepts a state of
    any rank (the factors are resized to it). Train it with
    :class:`~lowrank.methods.dlrt.optimizer.DLRT` (see the module docstring).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 min_rank: int = 1, max_rank: int | None = None, init_decay: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        name = type(self).__name__
        check_rank(rank, out_features, in_features, name)
        full = min(in_features, out_features)
        max_rank = default_max_rank(in_features, out_features, rank) if max_rank is None else min(int(max_rank), full)
        if not 1 <= min_rank <= rank <= max_rank:
            raise RankError(f"{name} {out_features}x{in_features}: need 1 <= min_rank <= rank <= max_rank, "
                            f"got min_rank={min_rank}, rank={rank}, max_rank={max_rank}")
        if init_decay <= 0:
            raise RankError(f"{name}: init_decay must be positive, got {init_decay}")
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        self.min_rank, self.max_rank = int(min_rank), int(max_rank)
        self.init_decay = float(init_decay)
        sigma = math.sqrt(out_features / (3.0 * rank))
        decay = torch.tensor(float(init_decay), dtype=torch.float64).pow(-torch.arange(rank, dtype=torch.float64))
        # U, V: moved by the integrator only (no grad); S and b: ordinary gradients.
        self.U = nn.Parameter(orthonormal(out_features, rank, dtype=dtype, device=device).contiguous(),
                              requires_grad=False)
        self.S = nn.Parameter(torch.diag(sigma * decay).to(dtype=dtype, device=device))
        self.V = nn.Parameter(orthonormal(in_features, rank, dtype=dtype, device=device).contiguous(),
                              requires_grad=False)
        self.init_bias(bias, dtype, device)

    # ------------------------------------------------------------------ construction

    def factorize_(self, w: torch.Tensor) -> None:
        """Factors from the ``(n, m)`` matrix ``w`` at the current rank ``r``: ``U = U_r``,
        ``S = diag(s_i / d^i)`` (``d = init_decay``), ``V = V_r`` of its truncated SVD."""
        rank, init_decay = self.rank, self.init_decay
        u, s, v = truncated_svd(w if w.dtype in (torch.float32, torch.float64) else w.float(), rank)
        s = s / torch.tensor(float(init_decay), dtype=s.dtype, device=s.device).pow(
            torch.arange(rank, dtype=s.dtype, device=s.device))
        u, S, v = u.to(w.dtype), torch.diag(s).to(w.dtype), v.to(w.dtype)
        if w.dtype != torch.float64:
            # A float32 SVD leaves ||U^T U - I|| ~ 1e-6; re-orthonormalize and fold R into S
            # (W unchanged) so the integrator starts from bases orthonormal to rounding.
            u, ru = qr_positive(u)
            v, rv = qr_positive(v)
            S = ru @ S @ rv.T
        self.set_factors(u, S, v)

    # ------------------------------------------------------------------ interface

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sinks = self._capture_sinks()
        if sinks is not None or self.capturing or (torch.is_grad_enabled() and (
                x.requires_grad or self.S.requires_grad or self.U.requires_grad or self.V.requires_grad)):
            K, L = sinks if sinks is not None else (None, None)
            return _DLRTProduct.apply(x, self.U, self.S, self.V, self.bias, K, L, self)
        y = (x @ self.V) @ self.S.T                # (..., r)
        return torch.nn.functional.linear(y, self.U, self.bias)

    @classmethod
    def count_params(cls, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        return rank * (in_features + out_features) + rank ** 2 + (out_features if bias else 0)

    def num_params(self) -> int:
        """Inference weights ``r (m + n) + r^2 (+ n)``: both bases, the core and the bias."""
        return super().num_params() + self.rank ** 2

    def flops_per_sample(self) -> int:
        """``r (m + n) + r^2 (+ n)`` multiply-adds: ``x V``, ``S^T``, ``U^T`` (and the bias)."""
        return super().flops_per_sample() + self.rank ** 2

    def training_params(self, augmented: bool | None = None) -> int:
        """Elements live during a training step, for accounting.

        ``U, S, V, b`` plus the integrator's ``K (n, r)``, ``L (m, r)``; a rank-adaptive or
        parallel step (``augmented``, default: what the integrator set in ``self.augments``)
        also holds the augmented bases ``(n + m) 2r`` and the ``2r x 2r`` core.
        """
        r, m, n = self.rank, self.in_features, self.out_features
        b = n if self.bias is not None else 0
        live = r * (m + n) + r * r + b + r * (m + n)
        if self.augments if augmented is None else augmented:
            k = min(2 * r, m, n)
            live += k * (m + n) + k * k
        return live

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "min_rank": self.min_rank, "max_rank": self.max_rank,
                "init_decay": self.init_decay}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank caps=[{self.min_rank}, {self.max_rank}]"


def reorthonormalize(layer: DLRTLayer) -> None:
    """See :meth:`DLRTLayer.reorthonormalize`. Since ``R ~= I`` for bases that are already almost
    orthonormal, coordinates (and an optimizer's state in them) are unchanged to rounding."""
    qu, ru = qr_positive(layer.U.data)
    qv, rv = qr_positive(layer.V.data)
    layer.set_factors(qu, ru @ layer.S.data @ rv.T, qv)

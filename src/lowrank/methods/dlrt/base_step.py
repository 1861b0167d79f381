"""The DLRT training step: any torch optimizer's rule driven through a DLRT integrator.

This module holds :class:`DLRTStepper`, the base the three integrators share; each lives in
its own module and implements one step, :meth:`DLRTStepper._step`:

- :class:`~.parallel_step.ParallelStepper`: the parallel integrator (one pass per step);
- :class:`~.kls_step.KLSStepper`: fixed-rank KLS (two passes per step);
- :class:`~.adaptive_kls_step.AdaptiveKLSStepper`: rank-adaptive KLS (one pass per step).

:func:`~.integrators.make_dlrt_stepper` picks the class by integrator name and ``adaptive``.

The integrator treats, per :class:`~lowrank.methods.dlrt.layer.DLRTLinear` layer, ``K (n, r)``,
``L (m, r)`` and ``S (r, r)`` as parameters of one ordinary torch optimizer (built by
:func:`~lowrank.optimizers.make_optimizer`, so SGD, momentum, Adam, AdamW, weight decay
all work), together with every other trainable parameter of the model (biases, the
dense output layer). A step of the rule is "``p.data`` = current value, ``p.grad`` =
the integrator's gradient, ``optimizer.step()``".

Truncation (``truncation``): ``"power"`` (default) reduces the augmented weights by one
block power step warm-started at the current bases and takes the SVD of the resulting
``r x r`` core (:mod:`.power`); a rank-adaptive step whose tolerance asks for a higher rank
falls back to the exact path (counted in ``exact_fallbacks``). ``"svd"`` always takes the
exact SVD of the augmented core (:mod:`.truncation`), the algorithm as published.

Optimizer state across a change of basis is projected onto the new basis
(:mod:`.optim_state`), never reset: first moments linearly, second moments by the
squared maps.

Gradient clipping (``cfg.clip``) acts on the gradients one optimizer call uses: ``K, L, S``
and the rest together for ``parallel``; ``K, L`` in pass 1 and ``S`` plus the rest in pass 2
for ``kls``. L1/L2 penalties (:func:`~lowrank.stepper.penalty`) are added to the loss; their
gradient reaches ``S`` by autograd and is lifted to ``K``, ``L`` as ``U0 dP/dS`` and
``V0 (dP/dS)^T`` (the gradient of ``P(U^T W V)`` in ``W``).

``then_fixed = N``: the last ``N`` of ``epochs`` run at fixed rank; the switch happens
in :meth:`DLRTStepper.end_epoch` when ``epoch + 1 == epochs - N`` (it sets ``adaptive``
to False; every stepper then takes its fixed-rank step).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ...config import OptimConfig
from ...errors import ConfigError
from ...losses import LossFn
from ...optimizers import make_optimizer
from ...stepper import Stepper, penalty
from .layer import DLRTLinear
from .optim_state import transform_state
from .parallel import rotate_basis
from .phase_clock import PhaseClock
from .truncation import TRUNCATIONS

__all__ = ["DLRTStepper"]


class DLRTStepper(Stepper, ABC):
    """One DLRT training step per call; the base of the integrators (see the module docstring).

    A subclass names its ``integrator`` and implements :meth:`_step` (one step of its
    algorithm, returning the batch's task loss) and :meth:`_augments`; :meth:`step` adds
    the bookkeeping every integrator shares (step count, reorthonormalization, ranks).

    Args:
        model: a model with at least one :class:`DLRTLinear`.
        cfg: optimizer settings (rule, lr, momentum, weight decay, penalties, clipping).
        total_steps: planned number of steps (informational).
        adaptive: rank-adaptive truncation with tolerance ``tau``.
        tau: truncation tolerance, relative to ``||S||_F`` unless ``tau_absolute``.
        tau_absolute: read ``tau`` as an absolute tolerance.
        then_fixed: the last ``then_fixed`` epochs of ``epochs`` run at fixed rank.
        epochs: number of epochs of the run (needed by ``then_fixed``).
        truncation: ``"power"`` or ``"svd"`` (see the module docstring).
        reorth_every: every this many steps reorthonormalize ``U``, ``V`` by QR (folding
            the triangular factors into ``S``, so ``W`` is unchanged). Every step rotates
            the bases in float32, adding ~3e-8 of random orthonormality error; this
            bounds the walk over long runs. 0 disables it. Steppers whose bases are fresh
            QRs every step (``_fresh_bases``) need none.
    """

    #: The integrator's name (a key of :data:`~.integrators.INTEGRATORS`).
    integrator: ClassVar[str]
    #: Can this stepper run rank-adaptive steps? (False: fixed rank only.)
    supports_adaptive: ClassVar[bool] = True

    def __init__(self, model: nn.Module, cfg: OptimConfig, total_steps: int = 0, *,
                 adaptive: bool = False, tau: float = 0.1, tau_absolute: bool = False, then_fixed: int = 0,
                 epochs: int | None = None, truncation: str = "power", reorth_every: int = 50):
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
        if tau < 0:
            raise ConfigError(f"tau must be >= 0, got {tau}")
        if then_fixed < 0:
            raise ConfigError(f"then_fixed must be >= 0, got {then_fixed}")
        if then_fixed and adaptive and (epochs is None or then_fixed >= epochs):
            raise ConfigError(f"then_fixed={then_fixed} needs more epochs than that (epochs={epochs}): "
                              f"the adaptive phase would be empty")
        self._check_adaptive(bool(adaptive))
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.steps = 0
        self.adaptive = bool(adaptive)
        self.tau, self.tau_absolute = float(tau), bool(tau_absolute)
        self.then_fixed, self.epochs = int(then_fixed), epochs
        self.truncation = truncation
        self.reorth_every = int(reorth_every)
        self.names: list[str] = []
        self.layers: list[DLRTLinear] = []
        for name, mod in model.named_modules():
            if isinstance(mod, DLRTLinear):
                self.names.append(name)
                self.layers.append(mod)
        if not self.layers:
            raise ConfigError("the model has no DLRTLinear layer: convert it with method 'dlrt' first")
        for layer in self.layers:
            layer.U.requires_grad_(False)
            layer.V.requires_grad_(False)
            layer.S.requires_grad_(True)
            layer.augments = self._augments()
        # K (n, r) and L (m, r): held here, not in the model; .data is set at every step.
        self.K = [nn.Parameter(l.U.detach() @ l.S.detach()) for l in self.layers]
        self.L = [nn.Parameter(l.V.detach() @ l.S.detach().T) for l in self.layers]
        own = {id(p) for l in self.layers for p in (l.U, l.S, l.V)}
        self.rest = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
        params: list[nn.Parameter] = []
        for k, lp, layer in zip(self.K, self.L, self.layers):
            params += [k, lp, layer.S]
        self.optimizer = make_optimizer(params + self.rest, cfg)
        self._all_params = params + self.rest
        self._penalized = bool(cfg.l1 or cfg.l2)
        self.clock = PhaseClock(("fwd_bwd", "linalg", "optim"), cuda=any(p.is_cuda for p in self._all_params))
        # Per layer: S's diagonal when S is known to be diagonal (after a truncation), else None;
        # V S^T when the step that set the factors formed it already (an aligned power step), else
        # None; and the K-, L-steps' starting values U0 S0, V0 S0^T of the current step.
        self._sigma: list[torch.Tensor | None] = [None] * len(self.layers)
        self._VSt: list[torch.Tensor | None] = [None] * len(self.layers)
        self._KL0: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._reset_epoch_stats()

    # ------------------------------------------------------------------ what a subclass defines

    @abstractmethod
    def _step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """One step of the integrator; returns the batch task loss at the weights before it (detached)."""

    @abstractmethod
    def _augments(self) -> bool:
        """Does a step hold the augmented ``2r`` bases? (for :meth:`DLRTLinear.training_params`)"""

    @property
    def _keep_KL0(self) -> bool:
        """Does a step read the K-, L-steps' starting values ``U0 S0``, ``V0 S0^T`` after the
        optimizer has moved them? (to form augmented bases)"""
        return False

    @property
    def _fresh_bases(self) -> bool:
        """Are the bases fresh QRs every step? (then no periodic reorthonormalization is needed)"""
        return False

    # ------------------------------------------------------------------ bookkeeping

    def _check_adaptive(self, adaptive: bool) -> None:
        if adaptive and not self.supports_adaptive:
            raise ConfigError(f"{type(self).__name__} runs at fixed rank only; a rank-adaptive "
                              f"{self.integrator} run needs make_dlrt_stepper(..., adaptive=True)")

    def _reset_epoch_stats(self) -> None:
        self.clock.reset()
        self.exact_fallbacks = 0
        self._rank_lo = [l.rank for l in self.layers]
        self._rank_hi = [l.rank for l in self.layers]

    @property
    def timings(self) -> dict[str, float]:
        """Seconds this epoch in forward/backward (``fwd_bwd``), the optimizer (``optim``) and
        the integrator's own linear algebra (``linalg``)."""
        return self.clock.totals

    def _track_ranks(self) -> None:
        for i, layer in enumerate(self.layers):
            r = layer.rank
            if r < self._rank_lo[i]:
                self._rank_lo[i] = r
            if r > self._rank_hi[i]:
                self._rank_hi[i] = r

    def _clip(self, params: Iterable[torch.Tensor]) -> None:
        if self.cfg.clip:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.cfg.clip)

    def _zero_grad(self) -> None:
        for p in self._all_params:
            p.grad = None

    # ------------------------------------------------------------------ pieces of a step

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, capture: bool,
                          keep_io: bool = False) -> torch.Tensor:
        """Task loss at the current weights; ``loss + penalty`` backpropagated."""
        self._zero_grad()
        if capture:
            for layer in self.layers:
                layer.capture(True, keep_io)
        try:
            loss = loss_fn(self.model(x), y)
            extra = penalty(self.model, self.cfg)
            (loss + extra if torch.is_tensor(extra) else loss).backward()  # no add node without a penalty
        finally:
            if capture:
                for layer in self.layers:
                    layer.capturing = False
        return loss.detach()

    def _captured_pass(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, keep_io: bool = False
                       ) -> torch.Tensor:
        """A step's first pass: the clock started, :meth:`_forward_backward` with capture, timed."""
        self.clock.start()
        loss = self._forward_backward(x, y, loss_fn, capture=True, keep_io=keep_io)
        self.clock.lap("fwd_bwd")
        return loss

    def _set_kl_grads(self, i: int) -> bool:
        """``K.data = U0 S0``, ``L.data = V0 S0^T`` and their gradients from the captured pass;
        False when layer ``i`` was not used in that pass (then it is left alone)."""
        layer = self.layers[i]
        gk, gl = layer.grad_K, layer.grad_L
        if gk is None:          # layer not used in this forward pass: leave it alone
            return False
        U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
        if self._penalized and layer.S.grad is not None:
            dpen = layer.S.grad - layer.grad_S_task          # (r, r): penalty gradient in S
            gk = torch.addmm(gk, U0, dpen)                   # + U0 dP/dS
            gl = torch.addmm(gl, V0, dpen.T)                 # + V0 (dP/dS)^T
        sigma, VSt = self._sigma[i], self._VSt[i]
        if sigma is not None:                                # S0 = diag(sigma) after a truncation
            K0, L0 = U0 * sigma, V0 * sigma                  # (n, r), (m, r): no matrix product
        else:
            K0, L0 = U0 @ S0, (V0 @ S0.T if VSt is None else VSt)
        self._VSt[i] = None                                  # the optimizer may step it in place
        if self._keep_KL0:                                   # kept: the optimizer steps K, L in place
            self._KL0[i] = (K0, L0)
            K0, L0 = K0.clone(), L0.clone()
        self.K[i].data = K0
        self.L[i].data = L0
        self.K[i].grad, self.L[i].grad = gk, gl
        layer.grad_K = layer.grad_L = layer.grad_S_task = None
        return True

    def _set_all_kl_grads(self) -> list[bool]:
        """:meth:`_set_kl_grads` for every layer: which layers the captured pass used."""
        return [self._set_kl_grads(i) for i in range(len(self.layers))]

    def _optimizer_step(self, params: Iterable[torch.Tensor]) -> None:
        """Clip the gradients of ``params`` (the ones this optimizer call uses), step, time it."""
        self._clip(params)
        self.optimizer.step()
        self.clock.lap("optim")

    # ------------------------------------------------------------------ state projection

    def _project(self, i: int, A: torch.Tensor | None, B: torch.Tensor | None,
                 KB: torch.Tensor | None, LB: torch.Tensor | None) -> None:
        """Carry layer ``i``'s optimizer state: ``S -> A S B``, ``K -> K KB``, ``L -> L LB``."""
        opt = self.optimizer
        A2 = None if A is None else A * A
        B2 = None if B is None else B * B
        transform_state(opt, self.layers[i].S, A, B, A2, B2)
        transform_state(opt, self.K[i], None, KB)
        transform_state(opt, self.L[i], None, LB)

    def _set_factors(self, i: int, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, *,
                     sigma: torch.Tensor | None = None, VSt: torch.Tensor | None = None) -> None:
        """Layer ``i``'s new factors, with what is known of them: ``S = diag(sigma)``, ``V S^T = VSt``."""
        self.layers[i].set_factors(U, S, V)
        self._sigma[i], self._VSt[i] = sigma, VSt

    def _set_truncated(self, i: int, U0: torch.Tensor, Ut: Any, P: torch.Tensor, sigma: torch.Tensor,
                       V0: torch.Tensor, Vt: Any, Q: torch.Tensor) -> None:
        """Layer ``i``'s factors after truncating an augmented core ``S^ ~= P diag(sigma) Q^T``:
        ``U1 = [U0 | U~] P (n, r1)``, ``S1 = diag(sigma)``, ``V1 = [V0 | V~] Q (m, r1)``
        (``U~``, ``V~`` as :func:`~.parallel.rotate_basis` takes them)."""
        self._set_factors(i, rotate_basis(U0, Ut, P), torch.diag(sigma), rotate_basis(V0, Vt, Q), sigma=sigma)

    # ------------------------------------------------------------------ steps

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """One training step; returns the batch task loss at the weights before the step (detached)."""
        loss = self._step(x, y, loss_fn)
        self.steps += 1
        if self.reorth_every and not self._fresh_bases and self.steps % self.reorth_every == 0:
            self._reorthonormalize()
        self._track_ranks()
        return loss

    def _reorthonormalize(self) -> None:
        """``U = Q_U R_U``, ``V = Q_V R_V``, ``S <- R_U S R_V^T``: same ``W``, fresh orthonormal bases."""
        for layer in self.layers:
            layer.reorthonormalize()
        self._sigma = [None] * len(self.layers)
        self._VSt = [None] * len(self.layers)

    # ------------------------------------------------------------------ epochs & state

    def _set_adaptive(self, adaptive: bool) -> None:
        """Switch rank adaptivity (``then_fixed``, a restored checkpoint)."""
        self._check_adaptive(adaptive)
        self.adaptive = adaptive
        for layer in self.layers:
            layer.augments = self._augments()

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Per-epoch metrics: ranks (current, min, max per layer), orthonormality error, timings.

        Also performs the ``then_fixed`` switch to fixed-rank training.
        """
        ranks = {name: {"rank": layer.rank, "min": lo, "max": hi}
                 for name, layer, lo, hi in zip(self.names, self.layers, self._rank_lo, self._rank_hi)}
        orth = max(layer.orthonormality_error() for layer in self.layers)
        t = self.timings
        out = {"ranks": ranks, "orth_error": orth, "time_linalg": t["linalg"],
               "time_fwd_bwd": t["fwd_bwd"], "time_optim": t["optim"],
               "adaptive": self.adaptive, "exact_fallbacks": self.exact_fallbacks}
        if self.then_fixed and self.adaptive and self.epochs is not None and epoch + 1 == self.epochs - self.then_fixed:
            self._set_adaptive(False)
        self._reset_epoch_stats()
        return out

    def state_dict(self) -> dict[str, Any]:
        # "VSt": the next step starts its L-step from it; recomputing V S^T instead would round
        # differently, and a resumed run would no longer repeat the uninterrupted one bit for bit.
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "adaptive": self.adaptive,
                "rank_lo": list(self._rank_lo), "rank_hi": list(self._rank_hi), "VSt": list(self._VSt)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        adaptive = bool(state.get("adaptive", self.adaptive))
        self._check_adaptive(adaptive)                       # before anything is changed
        self.optimizer.load_state_dict(state["optimizer"])
        self._sigma = [None] * len(self.layers)
        vst = state.get("VSt")
        self._VSt = list(vst) if vst is not None and len(vst) == len(self.layers) else [None] * len(self.layers)
        self.steps = int(state["steps"])
        self._set_adaptive(adaptive)
        self._rank_lo = [int(v) for v in state.get("rank_lo", self._rank_lo)]
        self._rank_hi = [int(v) for v in state.get("rank_hi", self._rank_hi)]

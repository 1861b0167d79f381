"""The DLRT training step: any torch optimizer's rule driven through the KLS or parallel integrator.

The integrator treats, per :class:`~lowrank.layers.dlrt.DLRTLinear` layer, ``K (n, r)``,
``L (m, r)`` and ``S (r, r)`` as parameters of one ordinary torch optimizer (built by
:func:`~lowrank.stepper.make_optimizer`, so SGD, momentum, Adam, AdamW, weight decay
all work), together with every other trainable parameter of the model (biases, the
dense output layer). A step of the rule is "``p.data`` = current value, ``p.grad`` =
the integrator's gradient, ``optimizer.step()``".

``parallel`` (default; one forward/backward pass per step)::

    pass at W0 -> G_K, G_L, dS;  K, L, S, rest take one optimizer step together
    U^ = [U0 | U~], V^ = [V0 | V~], S^ = [[S1, L1^T V~], [U~^T K1, 0]] -> truncate

``kls`` (two passes per step)::

    pass 1 at W0 -> G_K, G_L;  K, L step;  U1, V1 from K1, L1;  S~ = (U1^T U0) S0 (V1^T V0)^T
    pass 2 at U1 S~ V1^T -> dS;  S and rest step;  (adaptive) truncate

  Rank-adaptive KLS needs no second pass: ``U1 S~ V1^T = W0`` there, so pass 2's
  gradients are formed from pass 1's (see :meth:`DLRTStepper._step_kls_adaptive`).

Truncation (``truncation``): ``"power"`` (default) reduces the augmented weights by one
block power step warm-started at the current bases and takes the SVD of the resulting
``r x r`` core (:mod:`.power`; the parallel step then never forms the augmented bases);
a rank-adaptive step whose tolerance asks for a higher rank falls back to the exact
path. The weights of a parallel step need that SVD only when the rank changes: otherwise
the power step's triangular core and bases are already the truncation, and the bases
move only by the step's own motion ("aligned" steps). The optimizer's coordinates need
it now and then, so it is taken every ``diagonalise_every`` steps. ``"svd"`` always takes
the exact SVD of the ``2r x 2r`` augmented core (:mod:`.truncation`), the algorithm as published.

Optimizer state across a change of basis is projected onto the new basis
(:mod:`.optim_state`), never reset: first moments linearly, second moments by the
squared maps. An aligned step keeps it as it is (its bases turn by ``O(step)``, and
projecting changed nothing measurable).

Gradient clipping (``cfg.clip``) acts on the gradients one optimizer call uses: ``K, L, S``
and the rest together for ``parallel``; ``K, L`` in pass 1 and ``S`` plus the rest in pass 2
for ``kls``. L1/L2 penalties (:func:`~lowrank.stepper.penalty`) are added to the loss; their
gradient reaches ``S`` by autograd and is lifted to ``K``, ``L`` as ``U0 dP/dS`` and
``V0 (dP/dS)^T`` (the gradient of ``P(U^T W V)`` in ``W``).

``then_fixed = N``: the last ``N`` of ``epochs`` run at fixed rank; the switch happens
in :meth:`DLRTStepper.end_epoch` when ``epoch + 1 == epochs - N``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import INTEGRATORS, TRUNCATIONS, OptimConfig
from ..errors import ConfigError
from ..layers.dlrt import DLRTLinear
from ..stepper import LossFn, Stepper, make_optimizer, penalty
from .kls import kls_augmented_basis, kls_coefficients, kls_fixed_basis
from .optim_state import fill_augmented_state, transform_state
from .parallel import parallel_augment, rotate_basis
from .phase_clock import PhaseClock
from .power import core_power_step, needs_exact, parallel_power_step
from .truncation import select_rank, truncate

__all__ = ["DLRTStepper", "INTEGRATORS", "TRUNCATIONS"]


class DLRTStepper(Stepper):
    """One DLRT training step per call; see the module docstring for the algorithm.

    Args:
        model: a model with at least one :class:`DLRTLinear`.
        cfg: optimizer settings (rule, lr, momentum, weight decay, penalties, clipping).
        total_steps: planned number of steps (informational).
        integrator: ``"parallel"`` or ``"kls"``.
        adaptive: rank-adaptive truncation with tolerance ``tau``.
        tau: truncation tolerance, relative to ``||S||_F`` unless ``tau_absolute``.
        tau_absolute: read ``tau`` as an absolute tolerance.
        then_fixed: the last ``then_fixed`` epochs of ``epochs`` run at fixed rank.
        epochs: number of epochs of the run (needed by ``then_fixed``).
        truncation: ``"power"`` or ``"svd"`` (see the module docstring).
        reorth_every: every this many steps re-orthonormalise ``U``, ``V`` by QR (folding
            the triangular factors into ``S``, so ``W`` is unchanged). Every step rotates
            the bases in float32, adding ~3e-8 of random orthonormality error; this
            bounds the walk over long runs. 0 disables it. The parallel step with the power
            truncation needs none: its bases are fresh QRs every step.
        diagonalise_every: a parallel step with the power truncation takes the SVD of its
            ``r x r`` core only every this many steps (1: every step), or when a rank-adaptive
            rule changes the rank. The other steps keep the triangular core the power step
            leaves, whose bases stay aligned with the old ones (:mod:`.power`): the same ``W``,
            no SVD, no projection of the optimizer state. Adam needs the periodic SVD: on
            Fashion-MNIST (784-256-128-10, rank 20, 5 epochs) never diagonalising reached
            86.95% test accuracy, every 10 or 50 steps 87.36% / 87.48%, every step 87.47%.
    """

    def __init__(self, model: nn.Module, cfg: OptimConfig, total_steps: int = 0, *,
                 integrator: str = "parallel", adaptive: bool = False, tau: float = 0.1,
                 tau_absolute: bool = False, then_fixed: int = 0, epochs: int | None = None,
                 truncation: str = "power", reorth_every: int = 50, diagonalise_every: int = 10):
        if integrator not in INTEGRATORS:
            raise ConfigError(f"integrator {integrator!r} is not one of {', '.join(INTEGRATORS)}")
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
        if tau < 0:
            raise ConfigError(f"tau must be >= 0, got {tau}")
        if then_fixed < 0:
            raise ConfigError(f"then_fixed must be >= 0, got {then_fixed}")
        if then_fixed and adaptive and (epochs is None or then_fixed >= epochs):
            raise ConfigError(f"then_fixed={then_fixed} needs more epochs than that (epochs={epochs}): "
                              f"the adaptive phase would be empty")
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.steps = 0
        self.integrator = integrator
        self.adaptive = bool(adaptive)
        self.tau, self.tau_absolute = float(tau), bool(tau_absolute)
        self.then_fixed, self.epochs = int(then_fixed), epochs
        self.truncation = truncation
        self.reorth_every = int(reorth_every)
        if diagonalise_every < 1:
            raise ConfigError(f"diagonalise_every must be >= 1, got {diagonalise_every}")
        self.diagonalise_every = int(diagonalise_every)
        # The parallel power step takes fresh QRs every step: no rounding walk to bound.
        self._fresh_bases = integrator == "parallel" and truncation == "power"
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
        self._penalised = bool(cfg.l1 or cfg.l2)
        self.clock = PhaseClock(("fwd_bwd", "linalg", "optim"), cuda=any(p.is_cuda for p in self._all_params))
        # Per layer: S's diagonal when S is known to be diagonal (after a truncation), else None;
        # V S^T when the step that set the factors formed it already (an aligned power step), else
        # None; and the K-, L-steps' starting values U0 S0, V0 S0^T of the current step.
        self._sigma: list[torch.Tensor | None] = [None] * len(self.layers)
        self._VSt: list[torch.Tensor | None] = [None] * len(self.layers)
        self._KL0: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._reset_epoch_stats()

    # ------------------------------------------------------------------ bookkeeping

    def _augments(self) -> bool:
        """Does a step hold the augmented ``2r`` bases? (for :meth:`DLRTLinear.training_params`)
        Rank-adaptive KLS always; parallel only with the exact truncation (the power step
        never forms them, apart from its rare exact fallback)."""
        if self.integrator == "kls":
            return self.adaptive
        return self.truncation == "svd"

    @property
    def _keep_KL0(self) -> bool:
        """Does a step read the K-, L-steps' starting values ``U0 S0``, ``V0 S0^T`` after the
        optimizer has moved them? (the augmented bases of the exact parallel path, which the
        adaptive power step may fall back to, and of adaptive KLS)"""
        return self.adaptive or (self.integrator == "parallel" and self.truncation == "svd")

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

    def _set_kl_grads(self, i: int) -> bool:
        """``K.data = U0 S0``, ``L.data = V0 S0^T`` and their gradients from the captured pass."""
        layer = self.layers[i]
        gk, gl = layer.grad_K, layer.grad_L
        if gk is None:          # layer not used in this forward pass: leave it alone
            return False
        U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
        if self._penalised and layer.S.grad is not None:
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

    # ------------------------------------------------------------------ steps

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """One training step; returns the batch task loss at the weights before the step (detached)."""
        if self.integrator == "parallel":
            loss = self._step_parallel(x, y, loss_fn)
        else:
            loss = self._step_kls(x, y, loss_fn)
        self.steps += 1
        if self.reorth_every and not self._fresh_bases and self.steps % self.reorth_every == 0:
            self._reorthonormalise()
        self._track_ranks()
        return loss

    def _step_parallel(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        self.clock.start()
        loss = self._forward_backward(x, y, loss_fn, capture=True)
        self.clock.lap("fwd_bwd")
        active = [self._set_kl_grads(i) for i in range(len(self.layers))]
        old = [(l.U.data, l.V.data) for l in self.layers]
        self._clip(self._all_params)
        self.optimizer.step()
        self.clock.lap("optim")
        for i, layer in enumerate(self.layers):
            if not active[i]:
                continue
            U0, V0 = old[i]
            if self.truncation == "power" and self._parallel_power(i, U0, V0):
                continue
            r0 = U0.shape[1]
            K0, L0 = self._KL0[i]
            Ut, Vt, Sh = parallel_augment(U0, V0, layer.S.data, self.K[i].data, self.L[i].data, K0, L0)  # (Q, D) pairs
            P, sigma, Q = truncate(Sh, rank=None if self.adaptive else r0, tau=self.tau,
                                   absolute=self.tau_absolute, min_rank=layer.min_rank, max_rank=layer.max_rank)
            # New coordinates relative to the old: U1^T U0 = P[:r0]^T, V0^T V1 = Q[:r0].
            Pr, Qr = P[:r0], Q[:r0]
            self._project(i, Pr.T, Qr, Qr, Pr)
            self._set_factors(i, rotate_basis(U0, Ut, P), torch.diag(sigma), rotate_basis(V0, Vt, Q), sigma=sigma)
        self.clock.lap("linalg")
        return loss

    def _parallel_power(self, i: int, U0: torch.Tensor, V0: torch.Tensor) -> bool:
        """Layer ``i``'s parallel step truncated by :func:`parallel_power_step`; False (nothing
        changed) when a rank-adaptive step needs the exact path to grow the rank.

        An *aligned* step keeps the power step's triangular core and its bases, which differ
        from the old ones only by the step's own motion (see :mod:`.power`): no SVD, and the
        optimizer state is kept as it is rather than projected. Every ``diagonalise_every``-th
        step, and every rank-adaptive step whose rule changes the rank, takes the core's SVD
        and projects the state onto the rotated bases.
        """
        layer, r0 = self.layers[i], U0.shape[1]
        st = parallel_power_step(U0, V0, layer.S.data, self.K[i].data, self.L[i].data, energies=self.adaptive)
        if self.adaptive and needs_exact(st, self.tau, self.tau_absolute, r0, layer.max_rank):
            self.exact_fallbacks += 1
            return False
        rule = dict(tau=self.tau, absolute=self.tau_absolute, min_rank=layer.min_rank, max_rank=layer.max_rank,
                    outside_sq=st.outside_sq)
        aligned = self.steps % self.diagonalise_every != 0
        if aligned and self.adaptive:
            # The rank rule needs the singular values only; the vectors only if the rank changes.
            aligned = select_rank(torch.linalg.svdvals(st.core.double()), **rule) == r0
        if aligned:
            # U0^T Q_Y = I + O(step), and the same for V: the state, a running average over many
            # steps, is kept in these slowly turning coordinates, as vanilla Adam keeps its own
            # while U and V drift. (Projecting it changed nothing measurable: 784-256-128-10, rank
            # 20, 10 epochs, seeds 0-2: 88.35 % test accuracy projected, 88.38 % kept.)
            self._set_factors(i, st.left, st.core, st.right, VSt=st.right_core)
            return True
        p, sigma, q = truncate(st.core, rank=None if self.adaptive else r0, **rule)
        Cu, Cv = st.left_overlap @ p, (V0.T @ st.right) @ q   # U0^T U1, V0^T V1 (r0, r1)
        self._project(i, Cu.T, Cv, Cv, Cu)
        self._set_factors(i, st.left @ p, torch.diag(sigma), st.right @ q, sigma=sigma)
        return True

    def _truncate_core(self, S: torch.Tensor, r0: int, layer: DLRTLinear
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``P (a, r1)``, ``sigma (r1,)``, ``Q (b, r1)`` of a rank-adaptive KLS core whose first ``r0``
        rows and columns are the old bases' coordinates."""
        kw = dict(tau=self.tau, absolute=self.tau_absolute, min_rank=layer.min_rank, max_rank=layer.max_rank)
        if self.truncation == "power":
            st = core_power_step(S, r0)
            if not needs_exact(st, self.tau, self.tau_absolute, r0, layer.max_rank):
                p, sigma, q = truncate(st.core, outside_sq=st.outside_sq, **kw)
                return st.left @ p, sigma, st.right @ q
            self.exact_fallbacks += 1
        return truncate(S, **kw)

    def _step_kls(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        if self.adaptive:
            return self._step_kls_adaptive(x, y, loss_fn)
        self.clock.start()
        loss = self._forward_backward(x, y, loss_fn, capture=True)
        self.clock.lap("fwd_bwd")
        # Pass 1 moves K and L only: drop every other gradient of this pass.
        for p in self.rest:
            p.grad = None
        active = [self._set_kl_grads(i) for i in range(len(self.layers))]
        for layer in self.layers:
            layer.S.grad = None
        self._clip([p for pair in zip(self.K, self.L) for p in pair])
        self.optimizer.step()
        self.clock.lap("optim")
        for i, layer in enumerate(self.layers):
            if not active[i]:
                continue
            U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
            # The published QR / QR bases, projected state. Aligned QR / QL bases with the state kept
            # and an SVD every 10th step (as the parallel step does) measured 0.2 points lower
            # (10 epochs, rank 20, seeds 0-2: 88.35 against 88.57 %) and no faster in one run.
            U1, MU = kls_fixed_basis(U0, self.K[i].data)     # U1 = qr(K1), MU = U1^T U0
            V1, MV = kls_fixed_basis(V0, self.L[i].data)
            self._project(i, MU, MV.T, MV.T, MU.T)
            self._set_factors(i, U1, kls_coefficients(MU, S0, MV), V1)
        self.clock.lap("linalg")
        # Pass 2 at U1 S~ V1^T: the S-step, and the step of everything else.
        self._forward_backward(x, y, loss_fn, capture=False)
        self.clock.lap("fwd_bwd")
        self._clip([l.S for l in self.layers] + self.rest)
        self.optimizer.step()
        self.clock.lap("optim")
        return loss

    def _step_kls_adaptive(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """Rank-adaptive KLS in one forward/backward pass.

        The S-step is taken at ``U1 S~ V1^T`` with ``U1 = [U0 | U~] ⊇ range(U0)`` and
        ``V1 = [V0 | V~]``, so ``U1 S~ V1^T = U1 U1^T W0 V1 V1^T = W0``, and nothing else
        moved in between (the K- and L-steps only change the bases): the second pass
        would evaluate exactly the network of the first. Its gradients are therefore
        formed from the first pass's: every other parameter keeps its gradient, and
        ``dL/dS~ = U1^T dL/dW V1`` has the blocks ``U0^T G V0`` (captured), ``U~^T G_K``,
        ``G_L^T V~`` and ``(dY U~)^T (X V~)`` (from the captured layer input ``X`` and
        output gradient ``dY``). The elementwise L1/L2 penalties vanish on the new
        (zero) blocks of ``S~``, so their gradient is the captured one embedded.
        (With dropout or batch-norm statistics a real second pass would differ; the
        models here have neither.)
        """
        self.clock.start()
        loss = self._forward_backward(x, y, loss_fn, capture=True, keep_io=True)
        self.clock.lap("fwd_bwd")
        rest_grads = [p.grad for p in self.rest]
        for p in self.rest:
            p.grad = None
        saved = [(l.grad_K, l.grad_L, l.S.grad if l.S.grad is not None else l.grad_S_task, l.captured_io)
                 for l in self.layers]
        active = [self._set_kl_grads(i) for i in range(len(self.layers))]
        for layer in self.layers:
            layer.S.grad = None
            layer.captured_io = []
        self._clip([p for pair in zip(self.K, self.L) for p in pair])
        self.optimizer.step()                              # K- and L-steps
        self.clock.lap("optim")
        old = []
        for i, layer in enumerate(self.layers):
            U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
            old.append(U0.shape[1])
            if not active[i]:
                continue
            gk, gl, ds0, io = saved[i]
            K0, L0 = self._KL0[i]
            U1, MU = kls_augmented_basis(U0, self.K[i].data, K0)   # [U0 | U~], [I; 0]
            V1, MV = kls_augmented_basis(V0, self.L[i].data, L0)
            r0 = U0.shape[1]
            Ut, Vt = U1[:, r0:], V1[:, r0:]
            St = kls_coefficients(MU, S0, MV)                  # [[S0, 0], [0, 0]]
            dS = torch.zeros_like(St)
            dS[:r0, :r0] = ds0                                 # U0^T G V0 (+ penalty)
            dS[r0:, :r0] = Ut.T @ gk                           # U~^T G V0
            dS[:r0, r0:] = (Vt.T @ gl).T                       # U0^T G V~
            if Ut.shape[1] and Vt.shape[1]:
                dS[r0:, r0:] = sum((dy @ Ut).T @ (xx @ Vt) for xx, dy in io)  # U~^T G V~
            self._project(i, MU, MV.T, None, None)
            fill_augmented_state(self.optimizer, layer.S, self.K[i], self.L[i], Ut, Vt, r0)
            layer.set_factors(U1, St, V1)
            layer.S.grad = dS
        for p, g in zip(self.rest, rest_grads):
            p.grad = g
        self.clock.lap("linalg")
        self._clip([l.S for l in self.layers] + self.rest)
        self.optimizer.step()                              # S-step and everything else
        self.clock.lap("optim")
        for i, layer in enumerate(self.layers):
            if not active[i]:
                continue
            r0 = old[i]
            P, sigma, Q = self._truncate_core(layer.S.data, r0, layer)
            # S state lives in U1/V1 coordinates; K, L states still in V0/U0 ones (U1 = [U0 | U~]).
            self._project(i, P.T, Q, Q[:r0], P[:r0])
            self._set_factors(i, rotate_basis(layer.U.data[:, :r0], layer.U.data[:, r0:], P), torch.diag(sigma),
                              rotate_basis(layer.V.data[:, :r0], layer.V.data[:, r0:], Q), sigma=sigma)
        self.clock.lap("linalg")
        for layer in self.layers:
            layer.keep_io = False
        return loss

    def _reorthonormalise(self) -> None:
        """``U = Q_U R_U``, ``V = Q_V R_V``, ``S <- R_U S R_V^T``: same ``W``, fresh orthonormal bases."""
        for layer in self.layers:
            layer.reorthonormalise()
        self._sigma = [None] * len(self.layers)
        self._VSt = [None] * len(self.layers)

    # ------------------------------------------------------------------ epochs & state

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
            self.adaptive = False
            for layer in self.layers:
                layer.augments = self._augments()
        self._reset_epoch_stats()
        return out

    def state_dict(self) -> dict[str, Any]:
        # "VSt": the next step starts its L-step from it; recomputing V S^T instead would round
        # differently, and a resumed run would no longer repeat the uninterrupted one bit for bit.
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "adaptive": self.adaptive,
                "rank_lo": list(self._rank_lo), "rank_hi": list(self._rank_hi), "VSt": list(self._VSt)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._sigma = [None] * len(self.layers)
        vst = state.get("VSt")
        self._VSt = list(vst) if vst is not None and len(vst) == len(self.layers) else [None] * len(self.layers)
        self.steps = int(state["steps"])
        self.adaptive = bool(state.get("adaptive", self.adaptive))
        for layer in self.layers:
            layer.augments = self._augments()
        self._rank_lo = [int(v) for v in state.get("rank_lo", self._rank_lo)]
        self._rank_hi = [int(v) for v in state.get("rank_hi", self._rank_hi)]

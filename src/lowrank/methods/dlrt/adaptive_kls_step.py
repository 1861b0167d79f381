"""The rank-adaptive KLS integrator's training step (one forward/backward pass per step)::

    pass 1 at W0 -> G_K, G_L;  K, L step;  U1 = [U0 | U~], V1 = [V0 | V~];  S~ = [[S0, 0], [0, 0]]
    (pass 2 at U1 S~ V1^T = W0 -> dS: formed from pass 1's gradients);  S and rest step;  truncate

A second pass would evaluate exactly the network of the first, so its gradients are formed
from the first pass's (see :meth:`AdaptiveKLSStepper._step`). The new blocks of the optimizer
state of the augmented ``S`` are seeded from the K- and L-states (:func:`~.optim_state.fill_augmented_state`).
Truncation ``"power"`` reduces the augmented core by one block power step
(:func:`~.power.core_power_step`), falling back to its exact SVD when the tolerance asks for a
higher rank; ``"svd"`` always takes the exact SVD.

After the ``then_fixed`` switch (``adaptive`` False) the steps are those of fixed-rank KLS
(:class:`~.kls_step.KLSStepper`, this class's base).
"""

from __future__ import annotations

import torch

from ...losses import LossFn
from .kls import kls_augmented_basis, kls_coefficients
from .kls_step import KLSStepper
from .layer import DLRTLinear
from .optim_state import fill_augmented_state
from .power import core_power_step, needs_exact
from .truncation import truncate

__all__ = ["AdaptiveKLSStepper"]


class AdaptiveKLSStepper(KLSStepper):
    """Rank-adaptive KLS in one pass per step (see the module docstring); arguments as for
    :class:`~.base_step.DLRTStepper`. With ``adaptive`` False (``then_fixed``) it takes
    fixed-rank KLS steps."""

    supports_adaptive = True

    def _step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
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
        if not self.adaptive:                              # after the then_fixed switch
            return super()._step(x, y, loss_fn)
        loss = self._captured_pass(x, y, loss_fn, keep_io=True)
        rest_grads = [p.grad for p in self.rest]
        saved = [(l.grad_K, l.grad_L, l.S.grad if l.S.grad is not None else l.grad_S_task, l.captured_io)
                 for l in self.layers]
        for layer in self.layers:
            layer.captured_io = []
        active = self._kl_step()                           # K- and L-steps
        old = []
        for i, layer in enumerate(self.layers):
            U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
            old.append(U0.shape[1])
            if not active[i]:
                continue
            gk, gl, ds0, io = saved[i]
            K0, L0 = self._KL0[i]
            U1, MU = kls_augmented_basis(U0, self.K[i].data, K0)   # [U0 | U~] (n, r0 + kU), [I; 0]
            V1, MV = kls_augmented_basis(V0, self.L[i].data, L0)   # [V0 | V~] (m, r0 + kV), [I; 0]
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
        self._s_step()                                     # S-step and everything else
        for i, layer in enumerate(self.layers):
            if not active[i]:
                continue
            r0 = old[i]
            P, sigma, Q = self._truncate_core(layer.S.data, r0, layer)
            # S state lives in U1/V1 coordinates; K, L states still in V0/U0 ones (U1 = [U0 | U~]).
            self._project(i, P.T, Q, Q[:r0], P[:r0])
            U1, V1 = layer.U.data, layer.V.data
            self._set_truncated(i, U1[:, :r0], U1[:, r0:], P, sigma, V1[:, :r0], V1[:, r0:], Q)
        self.clock.lap("linalg")
        for layer in self.layers:
            layer.keep_io = False
        return loss

    def _truncate_core(self, S: torch.Tensor, r0: int, layer: DLRTLinear
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``P (a, r1)``, ``sigma (r1,)``, ``Q (b, r1)`` of a rank-adaptive KLS core ``S (a, b)`` whose
        first ``r0`` rows and columns are the old bases' coordinates."""
        kw = dict(tau=self.tau, absolute=self.tau_absolute, min_rank=layer.min_rank, max_rank=layer.max_rank)
        if self.truncation == "power":
            st = core_power_step(S, r0)
            if not needs_exact(st, self.tau, self.tau_absolute, r0, layer.max_rank):
                p, sigma, q = truncate(st.core, outside_sq=st.outside_sq, **kw)
                return st.left @ p, sigma, st.right @ q
            self.exact_fallbacks += 1
        return truncate(S, **kw)

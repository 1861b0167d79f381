"""The rank-adaptive KLS integrator's step (one forward/backward pass per step)::

    pass 1 at W0 -> G_K, G_L;  K, L step;  U1 = [U0 | U~], V1 = [V0 | V~];  S~ = [[S0, 0], [0, 0]]
    (pass 2 at U1 S~ V1^T = W0 -> dS: formed from pass 1's gradients);  S and rest step;  truncate

A second pass would evaluate exactly the network of the first, so its gradients are formed
from the first pass's (see :meth:`AdaptiveKLSStepper._step`). The new blocks of the optimizer
state of the augmented ``S`` are seeded from the K- and L-states (:func:`~.optim_state.fill_augmented_state`).
Truncation ``"power"`` reduces the augmented core by one block power step
(:func:`~.power.core_power_step`), falling back to its exact SVD when the tolerance asks for a
higher rank; ``"svd"`` always takes the exact SVD.

With ``adaptive`` False (e.g. after an adaptive-then-fixed switch) the KLS optimizer takes
fixed-rank steps (:class:`~.kls_step.KLSDLRT`, which mixes this class in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .kls import kls_augmented_basis, kls_coefficients
from .layer import DLRTLayer
from .optim_state import fill_augmented_state
from .power import core_power_step, needs_exact
from .truncation import truncate

if TYPE_CHECKING:
    from .kls_step import KLSDLRT

__all__ = ["AdaptiveKLSSteps"]


class AdaptiveKLSSteps:
    """The rank-adaptive step of :class:`~.kls_step.KLSDLRT` (see the module docstring)."""

    def _adaptive_step(self: "KLSDLRT") -> None:
        """Rank-adaptive KLS from one forward/backward pass (the captured one).

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

        ``G_K``, ``G_L`` here are the captured task gradients (``K.grad``, ``L.grad`` as the
        backward left them, before any penalty is lifted onto them).
        """
        rest_grads = [p.grad for p in self.rest]
        saved = [(k.grad, lp.grad, l.S.grad if l.S.grad is not None else l.grad_S_task)
                 for k, lp, l in zip(self.K, self.L, self.layers)]
        active = self._kl_step()                           # K- and L-steps
        old = []
        local: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
            old.append(U0.shape[1])
            if not active[i]:
                continue
            gk, gl, ds0 = saved[i]
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
                dS[r0:, r0:] = layer.captured_projection(Ut, Vt)  # U~^T G V~ from the captured X, dY
                local.append(dS[r0:, r0:])                     # this process's rows only (a view)
            self._project(i, MU, MV.T, None, None)
            fill_augmented_state(self.inner, layer.S, self.K[i], self.L[i], Ut, Vt, r0)
            layer.set_factors(U1, St, V1)
            layer.S.grad = dS
        for p, g in zip(self.rest, rest_grads):
            p.grad = g
        self._average_gradients(local)                     # data-parallel: U~^T G V~ of the whole batch
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

    def _truncate_core(self: "KLSDLRT", S: torch.Tensor, r0: int, layer: DLRTLayer
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``P (a, r1)``, ``sigma (r1,)``, ``Q (b, r1)`` of a rank-adaptive KLS core ``S (a, b)`` whose
        first ``r0`` rows and columns are the old bases' coordinates."""
        kw = dict(tau=self.tau, absolute=self.tau_absolute, min_rank=layer.min_rank, max_rank=layer.max_rank)
        if self.truncation == "power":
            st = core_power_step(S, r0)
            if not needs_exact(st, self.tau, self.tau_absolute, r0, layer.max_rank):
                p, sigma, q = truncate(st.core, outside_sq=st.outside_sq, **kw)
                left, right = st.rotated(p, q)
                return left, sigma, right
            self.exact_fallbacks += 1
        return truncate(S, **kw)

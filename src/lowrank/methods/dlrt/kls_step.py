"""The KLS (basis update & Galerkin) integrator; its fixed-rank step (two passes per step)::

    pass 1 at W0 -> G_K, G_L;  K, L step;  U1 = qr(K1), V1 = qr(L1);  S~ = (U1^T U0) S0 (V1^T V0)^T
    pass 2 at U1 S~ V1^T -> dS;  S and rest step

(:mod:`.kls`). Pass 1 is the caller's backward pass (or the closure's first call); pass 2
is ``step(closure)``'s call of the closure, which runs without capture. The optimizer
state of ``S``, ``K``, ``L`` is projected onto the new bases ``U1``, ``V1`` every step.
The rank-adaptive step (one pass) is :class:`~.adaptive_kls_step.AdaptiveKLSSteps`'.
"""

from __future__ import annotations

from .adaptive_kls_step import AdaptiveKLSSteps
from .kls import kls_coefficients, kls_fixed_basis
from .optimizer import DLRT, Closure

__all__ = ["KLSDLRT"]


class KLSDLRT(AdaptiveKLSSteps, DLRT, integrator="kls"):
    """The KLS integrator, fixed-rank (see the module docstring) or rank-adaptive
    (:class:`~.adaptive_kls_step.AdaptiveKLSSteps`); build it as ``DLRT(model, ...,
    integrator="kls")``, arguments as for :class:`~.optimizer.DLRT`.

    At fixed rank ``step`` needs a closure for the second pass: ``opt.step(closure)``.
    """

    def _augments(self) -> bool:
        # Only the rank-adaptive variant holds the augmented bases [U0 | U~], [V0 | V~].
        return self.adaptive

    @property
    def _keep_KL0(self) -> bool:
        # The augmented bases of the rank-adaptive variant are formed from the starting values.
        return self.adaptive

    @property
    def _reads_moves(self) -> bool:
        # The fixed-rank step finds its QR bases from the K-, L-moves (kls.kls_fixed_basis).
        return not self.adaptive

    @property
    def _keep_io(self) -> bool:
        # The rank-adaptive step forms its S-step gradient from pass 1's inputs and output gradients.
        return self.adaptive

    def _needs_closure(self) -> bool:
        return not self.adaptive

    def _kl_step(self) -> list[bool]:
        """Pass 1's optimizer call: the K- and L-steps from the captured gradients, every other
        gradient of the pass dropped. Returns which layers the pass used."""
        for p in self.rest:
            p.grad = None
        active = self._set_all_kl_grads()
        for layer in self.layers:
            layer.S.grad = None
        kl = [p for pair in zip(self.K, self.L) for p in pair]
        self._optimizer_step(kl)
        for p in kl:  # moved once: the S-step's optimizer call must not step K and L again
            p.grad = None
        return active

    def _s_step(self) -> None:
        """Pass 2's optimizer call: the S-step, and the step of everything else."""
        self._optimizer_step([l.S for l in self.layers] + self.rest)

    def _integrate(self, closure: Closure | None) -> None:
        if self.adaptive:
            self._adaptive_step()
            return
        assert closure is not None                  # checked by step()
        active = self._kl_step()
        for i, layer in enumerate(self.layers):
            if not active[i]:
                continue
            U0, S0, V0 = layer.U.data, layer.S.data, layer.V.data
            # The published QR / QR bases, projected state; from rank 32 the QRs are found from the
            # moves (kls.kls_fixed_basis: the same bases, 8 % less per step at 2048 x 102 and x 205).
            # Aligned QR / QL bases with the state kept and an SVD every 10th step (as the parallel
            # step does) measured 0.2 points lower (10 epochs, rank 20, seeds 0-2: 88.35 against
            # 88.57 %) and no faster in one run. Bases turned from U0, V0 without a QR
            # (basis.turned_basis, the same ranges; the state projected) measured a point lower:
            # 784-500x4-10, rank 50, Adam, 5 epochs, seeds 0-1: 86.20 / 86.44 against 87.39 / 87.16 %.
            dK, dL = self._moves(i)
            U1, MU = kls_fixed_basis(U0, S0, dK)             # U1 = qr(K1) (n, r), MU = U1^T U0 (r, r)
            V1, MV = kls_fixed_basis(V0, S0.T, dL)           # V1 = qr(L1) (m, r), MV = V1^T V0 (r, r)
            self._project(i, MU, MV.T, MV.T, MU.T)
            self._set_factors(i, U1, kls_coefficients(MU, S0, MV), V1)
        self.clock.lap("linalg")
        # Pass 2 at U1 S~ V1^T: the S-step, and the step of everything else.
        self._second_pass(closure)
        self._s_step()

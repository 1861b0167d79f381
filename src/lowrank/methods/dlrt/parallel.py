"""The parallel (rank-augmenting) integrator of Ceruti, Kusch & Lubich, as used by GeoLoRA.

From one backward pass at ``W0 = U0 S0 V0^T`` the optimizer takes
``K1 = step(U0 S0, G_K)``, ``L1 = step(V0 S0^T, G_L)`` and ``S1 = step(S0, U0^T G_K V0 ...)``
(``dL/dS = U0^T dL/dW V0``) all at once. Then

    U~ = orth((I - U0 U0^T) K1),   V~ = orth((I - V0 V0^T) L1)
    U^ = [U0 | U~],                V^ = [V0 | V~]
    S^ = [[S1, L1^T V~], [U~^T K1, 0]]

and ``W^ = U^ S^ V^^T`` is truncated (:mod:`.truncation`); a fixed-rank run truncates
back to ``r``. ``U~^T K1`` and ``V~^T L1`` are the ``R`` factors :func:`augment_basis`
returns, so no extra products are needed. The step reads ``K1`` and ``L1`` only through their moves
``dK = K1 - U0 S0``, ``dL = L1 - V0 S0^T`` (``U~^T K1 = U~^T dK``).
"""

from __future__ import annotations

import torch

from .basis import augment_step_parts

__all__ = ["parallel_core", "parallel_augment", "rotate_basis"]


def parallel_core(S1: torch.Tensor, R_U: torch.Tensor, R_V: torch.Tensor) -> torch.Tensor:
    """``S^ = [[S1, R_V^T], [R_U, 0]]`` of shape ``(r + kU, r + kV)``; ``R_U = U~^T K1``, ``R_V = V~^T L1``."""
    r = S1.shape[0]
    ku, kv = R_U.shape[0], R_V.shape[0]
    Sh = S1.new_zeros(r + ku, r + kv)
    Sh[:r, :r] = S1
    Sh[:r, r:] = R_V.T          # L1^T V~  (r, kV)
    Sh[r:, :r] = R_U            # U~^T K1  (kU, r)
    return Sh


def parallel_augment(U0: torch.Tensor, V0: torch.Tensor, S1: torch.Tensor, dK: torch.Tensor, dL: torch.Tensor
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None],
                                torch.Tensor]:
    """The new directions ``U~ = Q_U - U0 D_U`` (n, kU), ``V~ = Q_V - V0 D_V`` (m, kV) as
    ``(Q, D)`` pairs (see :func:`augment_parts`; ``D`` may be None) and the core ``S^ (r + kU, r + kV)``,
    from the K- and L-steps' moves ``dK = K1 - U0 S0`` (n, r), ``dL = L1 - V0 S0^T`` (m, r):
    ``(I - U0 U0^T) K1 = (I - U0 U0^T) dK`` and ``U~^T K1 = U~^T dK`` (:func:`augment_step_parts`).
    """
    Qu, Du, R_U = augment_step_parts(U0, dK)
    Qv, Dv, R_V = augment_step_parts(V0, dL)
    return (Qu, Du), (Qv, Dv), parallel_core(S1, R_U, R_V)


def rotate_basis(B0: torch.Tensor, Bt: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None],
                 P: torch.Tensor) -> torch.Tensor:
    """``[B0 | B~] P`` (n, r1) without concatenating. ``B~`` may be given as ``(Q, D)``,
    ``B~ = Q - B0 D``: then ``[B0 | B~] P = B0 (P[:r] - D P[r:]) + Q P[r:]``."""
    r = B0.shape[1]
    Q, D = Bt if isinstance(Bt, tuple) else (Bt, None)
    if not Q.shape[1]:
        return B0 @ P[:r]
    top = P[:r] if D is None else torch.addmm(P[:r], D, P[r:], alpha=-1)
    return torch.addmm(B0 @ top, Q, P[r:])

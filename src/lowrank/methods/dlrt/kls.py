"""The sequential KLS (basis update & Galerkin) integrator's basis and coefficient updates.

With ``W0 = U0 S0 V0^T`` and the K-, L-step results
``K1 = step(U0 S0, G_K)``, ``L1 = step(V0 S0^T, G_L)`` computed by the optimizer:

- fixed rank: ``U1 = qr(K1)``, ``V1 = qr(L1)``, or any orthonormal bases of the same ranges:
  from the move ``dK = K1 - U0 S0`` the one turned from ``U0`` (:func:`kls_step_basis`);
- rank-adaptive: ``U1 = [U0 | U~]`` spanning ``[K1 | U0]`` (see :mod:`.basis`), same for ``V1``;
- both: ``S~ = (U1^T U0) S0 (V1^T V0)^T``, the starting value of the S-step, which
  the trainer then takes at ``U1 S~ V1^T``.

Pure functions on tensors; no modules, no optimizer.
"""

from __future__ import annotations

import torch

from ...linalg import orthonormalize
from .basis import MAX_TURN_SQ, TURNED_MIN_RANK, augment_basis, turned_basis

__all__ = ["kls_fixed_basis", "kls_step_basis", "kls_augmented_basis", "kls_coefficients"]


def kls_fixed_basis(U0: torch.Tensor, K1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U1 = qr(K1)`` (n, r) and the change of basis ``M = U1^T U0`` (r, r)."""
    U1 = orthonormalize(K1)
    return U1, U1.T @ U0


def kls_step_basis(U0: torch.Tensor, S0: torch.Tensor, dK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal ``U1`` (n, r) spanning ``range(K1)``, ``K1 = U0 S0 + dK``, and ``M = U1^T U0``
    (r, r), from the move ``dK (n, r)``, without a QR.

    With ``A = U0^T dK``, ``K1 = (U0 + Z N) (S0 + A)`` for the
    part ``Z = dK - U0 A`` outside ``range(U0)`` and ``N = (S0 + A)^{-1}``, so :func:`~.basis.turned_basis`
    gives ``U1 = (U0 + Z N) R^{-1}`` and ``M = R^{-T}`` (``I`` to second order in the move: the
    basis does not turn within ``range(U0)``). When ``S0 + A`` is singular or the turn exceeds
    :data:`~.basis.MAX_TURN_SQ`, and below :data:`~.basis.TURNED_MIN_RANK`, :func:`kls_fixed_basis`
    of ``K1`` instead. One host sync.
    """
    if S0.shape[0] < TURNED_MIN_RANK:
        return kls_fixed_basis(U0, torch.addmm(dK, U0, S0))
    A = U0.T @ dK                                          # (r, r)
    N, info = torch.linalg.inv_ex(S0 + A)                  # (r, r) = (U0^T K1)^{-1}
    U1, _, R_inv, turn = turned_basis(U0, dK, A, dK.T @ dK, N)
    if bool((info == 0) & (turn <= MAX_TURN_SQ)):
        return U1, R_inv.T
    return kls_fixed_basis(U0, torch.addmm(dK, U0, S0))


def kls_augmented_basis(U0: torch.Tensor, K1: torch.Tensor,
                        K0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``U1 = [U0 | U~]`` (n, r + k) spanning ``[K1 | U0]``, and ``M = U1^T U0 = [I; 0]`` (r + k, r).

    ``K0 = U0 S0`` (optional) is the K-step's starting value (see :func:`augment_basis`).
    """
    Ut, _ = augment_basis(U0, K1, K0)
    r, k = U0.shape[1], Ut.shape[1]
    M = torch.eye(r + k, r, dtype=U0.dtype, device=U0.device)
    return torch.cat([U0, Ut], dim=1), M


def kls_coefficients(M_U: torch.Tensor, S0: torch.Tensor, M_V: torch.Tensor) -> torch.Tensor:
    """``S~ = M_U S0 M_V^T`` with ``M_U = U1^T U0``, ``M_V = V1^T V0``."""
    return M_U @ S0 @ M_V.T

"""The sequential KLS (basis update & Galerkin) integrator's basis and coefficient updates.

With ``W0 = U0 S0 V0^T`` and the K-, L-step results
``K1 = step(U0 S0, G_K)``, ``L1 = step(V0 S0^T, G_L)`` computed by the optimizer:

- fixed rank: ``U1 = qr(K1)``, ``V1 = qr(L1)`` (from rank :data:`MOVED_QR_MIN_RANK` on found
  from the K-step's move ``dK = K1 - U0 S0`` without factoring ``K1``: :func:`~.basis.moved_qr`);
- rank-adaptive: ``U1 = [U0 | U~]`` spanning ``[K1 | U0]`` (see :mod:`.basis`), same for ``V1``;
- both: ``S~ = (U1^T U0) S0 (V1^T V0)^T``, the starting value of the S-step, which
  the trainer then takes at ``U1 S~ V1^T``.

Pure functions on tensors; no modules, no optimizer.
"""

from __future__ import annotations

import torch

from ...linalg import orthonormalize
from .basis import augment_basis, moved_qr

__all__ = ["kls_fixed_basis", "kls_augmented_basis", "kls_coefficients", "MOVED_QR_MIN_RANK"]

#: Smallest rank from which the fixed-rank step finds ``qr(K1)`` from the move (:func:`~.basis.moved_qr`).
#: Below it a QR of ``K1`` is faster on a CPU, the ``r x r`` float64 work's many small calls
#: costing more than the products they save (one basis, 2 threads, ms, QR of ``K1`` formed /
#: from the move: 0.044 / 0.076 at (256, r=20), 0.17 / 0.14 at (1024, 32), 0.29 / 0.23 at
#: (784, 50), 2.19 / 1.52 at (2048, 102), 9.75 / 8.02 at (2048, 205)).
MOVED_QR_MIN_RANK = 32


def kls_fixed_basis(U0: torch.Tensor, S0: torch.Tensor, dK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U1 = qr(K1)`` (n, r, positive ``diag(R)``) of the K-step's result ``K1 = U0 S0 + dK`` and the
    change of basis ``M = U1^T U0`` (r, r), from the move ``dK`` (n, r)."""
    if U0.shape[1] >= MOVED_QR_MIN_RANK:
        found = moved_qr(U0, S0, dK)
        if found is not None:
            return found
    U1 = orthonormalize(torch.addmm(dK, U0, S0))
    return U1, U1.T @ U0


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

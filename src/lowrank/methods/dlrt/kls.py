"""The sequential KLS (basis update & Galerkin) integrator's basis and coefficient updates.

With ``W0 = U0 S0 V0^T`` and the K-, L-step results
``K1 = step(U0 S0, G_K)``, ``L1 = step(V0 S0^T, G_L)`` computed by the optimizer:

- fixed rank: ``U1 = qr(K1)``, ``V1 = qr(L1)``;
- rank-adaptive: ``U1 = [U0 | U~]`` spanning ``[K1 | U0]`` (see :mod:`.basis`), same for ``V1``;
- both: ``S~ = (U1^T U0) S0 (V1^T V0)^T``, the starting value of the S-step, which
  the trainer then takes at ``U1 S~ V1^T``.

Pure functions on tensors; no modules, no optimizer.
"""

from __future__ import annotations

import torch

from ...linalg import orthonormalize
from .basis import augment_basis

__all__ = ["kls_fixed_basis", "kls_augmented_basis", "kls_coefficients"]


def kls_fixed_basis(U0: torch.Tensor, K1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U1 = qr(K1)`` (n, r) and the change of basis ``M = U1^T U0`` (r, r)."""
    U1 = orthonormalize(K1)
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

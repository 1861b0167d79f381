"""Basis augmentation shared by the rank-adaptive KLS and the parallel integrator.

Given an orthonormal basis ``U0 (n, r)`` and a matrix ``K1 (n, c)`` (the K-step
result), find an orthonormal ``U~ (n, k)`` with ``U~^T U0 = 0`` such that
``[U0 | U~]`` spans ``[U0 | K1]``, and the coefficients ``R = U~^T K1 (k, c)``.
``k = min(c, n - r)``: never more directions than the space has.

``[U0 | U~]`` is what the KLS rank-adaptive step calls ``qr([K1 | U0])`` (same span;
keeping ``U0`` as the leading block makes ``[U0 | U~]^T U0 = [I; 0]`` exact, so
the core and the optimizer state embed without mixing) and what the parallel
integrator calls ``[U0 | orth((I - U0 U0^T) K1)]``.
"""

from __future__ import annotations

import torch

__all__ = ["augment_basis", "augment_parts", "overlap_tolerance"]


def overlap_tolerance(dtype: torch.dtype) -> float:
    """Largest ``||U0^T Q||_F`` the fast path repairs by projection (its square, the loss of
    orthonormality the repair leaves, is then below ``eps``); above it, a full QR is taken."""
    return torch.finfo(dtype).eps ** 0.5


def augment_basis(U0: torch.Tensor, K1: torch.Tensor,
                  K0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``U~ (n, k)`` orthonormal, orthogonal to ``U0``, with ``span [U0 | U~] = span [U0 | K1]``; and ``R = U~^T K1``.

    ``U~ = Q - U0 D`` from :func:`augment_parts`.
    """
    q, d, rr = augment_parts(U0, K1, K0)
    return (q if d is None else torch.addmm(q, U0, d, alpha=-1)), rr


def augment_parts(U0: torch.Tensor, K1: torch.Tensor,
                  K0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``Q (n, k)``, ``D (r, k)`` or None, ``R (k, c)`` with ``U~ = Q - U0 D`` as in :func:`augment_basis`.

    Returning ``U~`` in this factored form lets a caller that only needs ``U~ X`` skip
    one ``(n, r) x (r, k)`` product (``[U0 | U~] P = U0 (P_0 - D P_1) + Q P_1``).

    Fast path (about half the cost of a QR of the ``(n, r + c)`` augmented matrix):

    1. ``Z = (I - U0 U0^T) K1``. ``K1`` lies mostly inside ``range(U0)``, so projecting
       it directly cancels almost everything and leaves a rounding-size component in
       ``range(U0)`` relative to the small remainder; it is projected twice (classical
       Gram-Schmidt with re-orthogonalization). When ``K0`` with ``range(K0) ⊆ range(U0)``
       is given (the K-step's starting value ``U0 S0``), the step ``K1 - K0`` is projected
       instead, once: same ``Z``, no cancellation, two products fewer;
    2. Householder ``Z = Q R``: ``Q`` is orthonormal to rounding, but its overlap
       ``D = U0^T Q`` is the rounding of ``Z`` amplified by ``cond(Z)`` (1e-6..1e-5 in
       float32 for Adam updates);
    3. ``U~ = Q - U0 D`` removes that overlap (formed by :func:`augment_basis`);
       ``U~`` stays orthonormal up to ``||D||^2``,
       and ``U~^T K1 = Q^T Z = R`` still holds because ``U~ = (I - U0 U0^T) Q``.

    If ``||D||_F`` exceeds :func:`overlap_tolerance` (a rank-deficient remainder, e.g. a
    zero gradient, for which Householder fills columns with arbitrary unit vectors),
    the slow, always-orthogonal path ``qr([U0 | K1])`` is taken instead.
    """
    n, r = U0.shape
    c = K1.shape[1]
    k = min(c, n - r)
    if k <= 0:
        return U0.new_zeros(n, 0), None, K1.new_zeros(0, c)
    if k == c:
        if K0 is not None:
            delta = K1 - K0                                # (n, c): the K-step's move
            z = torch.addmm(delta, U0, U0.T @ delta, alpha=-1)
        else:
            z = torch.addmm(K1, U0, U0.T @ K1, alpha=-1)   # (n, c): K1 with range(U0) removed ...
            z = torch.addmm(z, U0, U0.T @ z, alpha=-1)     # ... and once more
        q, rr = torch.linalg.qr(z)                     # (n, c), (c, c)
        d = U0.T @ q                                   # (r, c) overlap left by the QR
        if float(torch.linalg.matrix_norm(d)) <= overlap_tolerance(U0.dtype):
            return q, d, rr
    # Slow path: Householder keeps all columns of Q orthonormal, whatever the rank of K1.
    q, rr = torch.linalg.qr(torch.cat([U0, K1], dim=1))  # (n, min(n, r + c)), (., r + c)
    return q[:, r:r + k], None, rr[r:r + k, r:]

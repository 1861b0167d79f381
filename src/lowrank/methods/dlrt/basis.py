"""Basis augmentation shared by the rank-adaptive KLS and the parallel integrator.

Given an orthonormal basis ``U0 (n, r)`` and a matrix ``K1 (n, c)`` (the K-step
result), find an orthonormal ``U~ (n, k)`` with ``U~^T U0 = 0`` such that
``[U0 | U~]`` spans ``[U0 | K1]``, and the coefficients ``R = U~^T K1 (k, c)``.
``k = min(c, n - r)``: never more directions than the space has.

``[U0 | U~]`` is what the KLS rank-adaptive step calls ``qr([K1 | U0])`` (same span;
keeping ``U0`` as the leading block makes ``[U0 | U~]^T U0 = [I; 0]`` exact, so
the core and the optimizer state embed without mixing) and what the parallel
integrator calls ``[U0 | orth((I - U0 U0^T) K1)]``.

A basis *turned* by a step (:func:`turned_basis`) is the other kind: the ``r`` columns of an
orthonormal basis of ``range(U0 + Z N)`` for the part ``Z`` of a move outside ``range(U0)``,
found without a QR. :func:`moved_qr` finds the QR basis of a moved matrix ``U0 S0 + D`` the same
way, from products of the move.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["augment_basis", "augment_parts", "augment_step_parts", "overlap_tolerance", "TurnedBasis", "turned_basis",
           "moved_qr", "MAX_TURN_SQ", "TURNED_MIN_RANK"]


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
    if K0 is not None:
        return augment_step_parts(U0, K1 - K0, K1)
    n, r = U0.shape
    c = K1.shape[1]
    k = min(c, n - r)
    if k == c > 0:
        z = torch.addmm(K1, U0, U0.T @ K1, alpha=-1)       # (n, c): K1 with range(U0) removed ...
        z = torch.addmm(z, U0, U0.T @ z, alpha=-1)         # ... and once more
        parts = _orthonormal_remainder(U0, z)
        if parts is not None:
            return parts
    return _augment_by_householder(U0, K1)


def augment_step_parts(U0: torch.Tensor, dK: torch.Tensor,
                       K1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """:func:`augment_parts` for ``K1 = K0 + dK`` with ``range(K0) ⊆ range(U0)``, from the move ``dK
    (n, c)`` alone: ``(I - U0 U0^T) K1 = (I - U0 U0^T) dK`` and ``U~^T K1 = U~^T dK``, projected
    once (no cancellation). ``K1``, when given, is what the slow path factors (else ``dK``:
    the same span together with ``U0``)."""
    n, r = U0.shape
    c = dK.shape[1]
    if min(c, n - r) == c > 0:
        parts = _orthonormal_remainder(U0, torch.addmm(dK, U0, U0.T @ dK, alpha=-1))
        if parts is not None:
            return parts
    return _augment_by_householder(U0, dK if K1 is None else K1)


def _orthonormal_remainder(U0: torch.Tensor, z: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``Q, D = U0^T Q, R`` from the Householder QR of ``z (n, c)`` (orthogonal to ``U0``), or None
    when the overlap ``D`` is too large to repair (a rank-deficient ``z``)."""
    q, rr = torch.linalg.qr(z)                         # (n, c), (c, c)
    d = U0.T @ q                                       # (r, c) overlap left by the QR
    if float(torch.linalg.matrix_norm(d)) <= overlap_tolerance(U0.dtype):
        return q, d, rr
    return None


def _augment_by_householder(U0: torch.Tensor, K1: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
    """The slow, always orthogonal path: Householder ``qr([U0 | K1])``, whatever the rank of ``K1``."""
    n, r = U0.shape
    c = K1.shape[1]
    k = min(c, n - r)
    if k <= 0:
        return U0.new_zeros(n, 0), None, K1.new_zeros(0, c)
    q, rr = torch.linalg.qr(torch.cat([U0, K1], dim=1))  # (n, min(n, r + c)), (., r + c)
    return q[:, r:r + k], None, rr[r:r + k, r:]


class TurnedBasis(NamedTuple):
    """An orthonormal basis turned from ``B0 (n, r)`` by a move ``D (n, r)`` (:func:`turned_basis`),
    kept as the combination ``Q = B0 X + D P`` of ``r x r`` coefficients ``X``, ``P``; ``R`` (r, r,
    upper) and ``R_inv = R^{-1} = B0^T Q``; ``size`` bounds the turn ``||D N||_F^2`` (inf if the
    factorization failed)."""

    B0: torch.Tensor
    D: torch.Tensor
    X: torch.Tensor
    P: torch.Tensor
    R: torch.Tensor
    R_inv: torch.Tensor
    size: torch.Tensor

    def form(self, rotation: torch.Tensor | None = None) -> torch.Tensor:
        """``Q (n, r)``, or ``Q rotation (n, r1)`` with the rotation ``(r, r1)`` folded into the
        coefficients: two ``(n, r)`` products either way."""
        X, P = (self.X, self.P) if rotation is None else (self.X @ rotation, self.P @ rotation)
        return torch.mm(self.B0, X).addmm_(self.D, P)


def turned_basis(B0: torch.Tensor, D: torch.Tensor, A: torch.Tensor, gram: torch.Tensor,
                 N: torch.Tensor) -> TurnedBasis:
    """``Q = (B0 + Z N) R^{-1}`` (n, r), an orthonormal basis of ``range(B0 + Z N)`` for the part
    ``Z = D - B0 A`` of a move ``D (n, r)`` outside ``range(B0)``, by the Cholesky factor ``R``
    (r, r, upper) of ``I + (Z N)^T (Z N)``, computed from ``r x r`` matrices: ``A = B0^T D``, ``gram =
    D^T D``. ``Z`` is never formed: ``Z^T Z = D^T D - A^T A``, ``Q = B0 (R^{-1} - A P) + D P`` with
    ``P = N R^{-1}``, formed only by :meth:`TurnedBasis.form` (two ``(n, r)`` products).

    ``B0 (n, r)`` orthonormal and ``B0^T Z = 0``: then ``(B0 + Z N)^T (B0 + Z N) = I + (Z N)^T
    (Z N)``, so ``Q^T Q = I`` for *any* ``N`` (it need not be accurate: it only decides the
    subspace), and ``B0^T Q = R^{-1}``. The matrix to factor is ``I`` plus the turn's Gram
    matrix, of condition ``1 + ||Z N||_2^2``: no QR, and no squared condition of ``B0 + Z N``'s
    scale. ``Q`` is the basis of that subspace closest to ``B0`` up to the triangular
    ``R^{-1} = I + O(||Z N||^2)``. Rounding costs orthonormality ``~eps (1 + ||D N||^2)`` (the
    Gram matrix of ``Z`` by a difference, the ``B0`` part of the move cancelling), plus ``B0``'s
    own error, which ``Q`` inherits; the caller bounds the turn (:data:`MAX_TURN_SQ`) by
    ``size``, an upper bound of ``||D N||_F^2 = ||Z N||_F^2 + ||A N||_F^2`` from what the
    basis computes anyway: ``||Z N||_F^2 = tr(turn)`` and ``A N = (A P) R`` with ``||R||_2^2 =
    1 + ||turn||_2``, so ``size = tr(turn) + ||A P||_F^2 (1 + t)`` with ``t >= ||turn||_2`` the
    smaller of the trace and the largest absolute row sum (tight for the small turns a step
    accepts). Cost: five ``r x r`` products, a Cholesky and a triangular inverse.
    """
    eye = torch.eye(N.shape[1], dtype=N.dtype, device=N.device)
    zz = torch.addmm(gram, A.T, A, alpha=-1)               # (r, r) = Z^T Z
    turn = N.T @ (zz @ N)                                  # (r, r) = (Z N)^T (Z N)
    low, info = torch.linalg.cholesky_ex(turn + eye)       # I + turn = low low^T
    R_inv = torch.linalg.solve_triangular(low.T, eye, upper=True)   # (r, r)
    P = N @ R_inv                                          # (r, r)
    AP = A @ P                                             # (r, r)
    t = torch.diagonal(turn).sum()                         # ||Z N||_F^2
    top = torch.minimum(t, turn.abs().sum(1).max())        # >= ||turn||_2 (trace, largest row sum)
    size = t + AP.square().sum() * (1 + top)               # >= ||D N||_F^2
    return TurnedBasis(B0, D, R_inv - AP, P, low.T, R_inv, size.masked_fill(info != 0, float("inf")))


def moved_qr(B0: torch.Tensor, S0: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``Q (n, r)`` of the QR ``K1 = Q R`` (``diag(R) > 0``) of a moved matrix ``K1 = B0 S0 + D``, and
    ``M = Q^T B0 (r, r)``, from products of the move ``D (n, r)``: no ``(n, r)`` factorization, and
    ``K1`` is never formed. ``B0 (n, r)`` orthonormal, ``S0 (r, r)``. None when the step cannot
    vouch for the result (the Gram matrix below is not positive definite, or the turn ``||D
    R^{-1}||_F^2`` exceeds :data:`MAX_TURN_SQ`): then factor ``K1`` itself.

    With ``A = B0^T D`` and ``P = S0 + A = B0^T K1`` (the part ``Z = D - B0 A`` of the move outside
    ``range(B0)`` is orthogonal to ``B0``):

        K1^T K1 = P^T P + Z^T Z = P^T P + D^T D - A^T A = R^T R        (Cholesky)
        Q = K1 R^{-1} = B0 (S0 R^{-1}) + D R^{-1},    M = R^{-T} K1^T B0 = R^{-T} P^T

    ``R`` is the unique positive triangular factor, so ``Q`` is the QR basis itself. The ``r x r``
    work is done in float64: ``P^T P`` has ``cond(S0)^2``, which float32 would not resolve (the
    reason CholeskyQR needs two passes), while the part from the big products, ``D^T D - A^T A``,
    only needs float32's accuracy relative to ``||D||^2``. ``Q`` is then orthonormal to ``~eps
    (1 + ||D R^{-1}||_F^2)``, plus ``B0``'s own error, which it inherits.
    Cost: four ``(n, r)`` products (``A``, ``D^T D`` and two for ``Q``), where factoring ``K1``
    costs its formation, a QR (by CholeskyQR2 four such products) and ``Q^T B0``.
    """
    A, G = B0.T @ D, D.T @ D                                # (r, r) each
    a64, s64 = A.double(), S0.double()
    P = s64 + a64                                           # (r, r) = B0^T K1
    gram = torch.addmm(torch.addmm(G.double(), a64.T, a64, alpha=-1), P.T, P)   # (r, r) = K1^T K1
    low, info = torch.linalg.cholesky_ex(gram)
    R_inv = torch.linalg.solve_triangular(low.T, torch.eye(P.shape[0], dtype=P.dtype, device=P.device), upper=True)
    turn = (R_inv * (G.double() @ R_inv)).sum().masked_fill(info != 0, float("inf"))   # ||D R^{-1}||_F^2
    if not float(turn) <= MAX_TURN_SQ:                      # also NaN
        return None
    Q = torch.mm(B0, (s64 @ R_inv).to(B0.dtype)).addmm_(D, R_inv.to(B0.dtype))   # (n, r)
    return Q, (R_inv.T @ P.T).to(B0.dtype)


#: Largest turn ``||D N||_F^2`` a power step accepts from :func:`turned_basis`, and ``||D R^{-1}||_F^2``
#: a KLS step from :func:`moved_qr` (beyond it the basis is found by QR): its orthonormality then
#: stays within ``~eps (1 + MAX_TURN_SQ)``.
MAX_TURN_SQ = 16.0

#: Smallest rank at which the power step takes turned bases rather than QRs. Below it the
#: QR path's fewer, smaller calls are faster on a CPU (one layer's power step, 2 threads, turned /
#: QR: 1.84x at (128, 256, r=20), 1.41x at (256, 784, 20), 0.82x at (1024, 1024, 32), 0.89x at
#: (500, 784, 50), 0.66x at (2048, 2048, 51), 0.57x at (2048, 2048, 102)).
TURNED_MIN_RANK = 32

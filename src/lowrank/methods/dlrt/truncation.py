"""Rank truncation of a DLRT core.

``P, sigma, Q = svd(S)``; the new rank ``r1`` is the smallest with
``||sigma[r1:]||_2 <= theta``, ``theta = tau ||sigma||_2`` (relative, the default) or
``theta = tau`` (absolute), clamped to ``[min_rank, max_rank]``. A fixed rank skips
the rule. The truncated factors are ``P[:, :r1]``, ``sigma[:r1]``, ``Q[:, :r1]``, so
``S ~= P_r diag(sigma_r) Q_r^T`` is the best rank-``r1`` approximation (Eckart-Young).
"""

from __future__ import annotations

import torch

from ...errors import TrainingDivergedError
from ...linalg import qr_positive, rank_for_tolerance

#: How a DLRT step reduces its augmented weights to the new rank: ``power`` (one block power
#: step from the current bases, then an ``r x r`` SVD; :mod:`.power`) or ``svd`` (the exact
#: SVD of the ``2r x 2r`` augmented core, the published algorithm).
TRUNCATIONS = ("power", "svd")

__all__ = ["TRUNCATIONS", "truncate", "select_rank", "tolerance_sq", "robust_svd"]


#: Cores up to this size are decomposed in float64 (see :func:`truncate`).
FLOAT64_SVD_UP_TO = 128


def tolerance_sq(tau: float, total_sq: float, absolute: bool = False) -> float:
    """``theta^2`` of the rule above for a matrix of energy ``total_sq = ||sigma||^2``."""
    return tau * tau * (1.0 if absolute else total_sq)


def select_rank(sigma: torch.Tensor, tau: float, *, absolute: bool = False, min_rank: int = 1,
                max_rank: int | None = None, outside_sq: float = 0.0) -> int:
    """The truncation rank of singular values ``sigma`` (descending) by the rule above.

    ``outside_sq``: energy of the matrix that ``sigma`` does not describe (a core reduced
    by :mod:`.power`); it counts towards both the discarded tail and ``||sigma||``.
    """
    if outside_sq:
        theta_sq = tolerance_sq(tau, float(sigma.double().square().sum()) + outside_sq, absolute)
        r1 = rank_for_tolerance(sigma, max(theta_sq - outside_sq, 0.0) ** 0.5)
    elif absolute:
        r1 = rank_for_tolerance(sigma, tau)
    else:
        # Compare sigma / ||sigma|| with tau: one host sync instead of two.
        norm = torch.linalg.vector_norm(sigma).clamp_min(torch.finfo(sigma.dtype).tiny)
        r1 = rank_for_tolerance(sigma / norm, tau)
    hi = sigma.numel() if max_rank is None else min(max_rank, sigma.numel())
    return max(min(r1, hi), min(min_rank, hi))


def truncate(S: torch.Tensor, *, rank: int | None = None, tau: float = 0.0, absolute: bool = False,
             min_rank: int = 1, max_rank: int | None = None,
             outside_sq: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``P_r (a, r1)``, ``sigma_r (r1,)``, ``Q_r (b, r1)`` of the core ``S (a, b)``.

    ``rank`` given: keep exactly ``min(rank, min(a, b))`` singular values (fixed-rank
    integrators). Otherwise choose ``r1`` by :func:`select_rank` (``outside_sq`` passed on).
    """
    # A float32 SVD returns singular vectors orthonormal only to ~k eps (2e-6 for k = 40);
    # the integrator rotates the bases by them every step, so that error would pile up
    # (~1e-5 after ten steps). Small cores are therefore decomposed in float64 (LAPACK
    # latency dominates there, so it costs about the same); large ones in float32, whose
    # kept singular vectors are then re-orthonormalized in float64 (a QR of (k, r1) is much
    # cheaper than a float64 SVD of (k, k)).
    small = S.dtype == torch.float64 or max(S.shape) <= FLOAT64_SVD_UP_TO
    p, sigma, qh = robust_svd(S.double() if small else S)     # (a, s), (s,), (s, b)
    if rank is None:
        r1 = select_rank(sigma, tau, absolute=absolute, min_rank=min_rank, max_rank=max_rank,
                         outside_sq=outside_sq)
    else:
        r1 = min(rank, sigma.numel())
    p, q = p[:, :r1], qh[:r1].T
    if not small:
        p, q = _orthonormal64(p), _orthonormal64(q)
    return p.to(S.dtype), sigma[:r1].to(S.dtype), q.to(S.dtype)


def robust_svd(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(S, full_matrices=False)``, falling back when LAPACK fails to converge.

    float32 ``gesdd`` occasionally reports non-convergence on cores with large blocks of
    (nearly) repeated singular values, which the augmented cores of DLRT have by
    construction. Fallbacks: the float64 SVD, then the eigendecomposition of ``S^T S``
    in float64 (always converges; ``P = orth(S Q)``). Non-finite input is a divergence.
    """
    try:
        return torch.linalg.svd(S, full_matrices=False)
    except torch.linalg.LinAlgError:
        if not bool(torch.isfinite(S).all()):
            raise TrainingDivergedError(f"the DLRT core S ({tuple(S.shape)}) became non-finite; "
                                        f"try a smaller learning rate or gradient clipping") from None
    s64 = S.double()
    try:
        p, sigma, qh = torch.linalg.svd(s64, full_matrices=False)
    except torch.linalg.LinAlgError:
        lam, q = torch.linalg.eigh(s64.T @ s64)                # ascending
        lam, q = lam.flip(0)[:min(S.shape)], q.flip(1)[:, :min(S.shape)]
        sigma = lam.clamp_min(0).sqrt()
        p = _orthonormal64(s64 @ q)                            # (a, s); S q_i = sigma_i p_i
        qh = q.T
    return p.to(S.dtype), sigma.to(S.dtype), qh.to(S.dtype)


def _orthonormal64(a: torch.Tensor) -> torch.Tensor:
    """``a``'s nearest-by-QR orthonormal columns, computed in float64, in ``a``'s dtype (diag(R) > 0, so ~= a)."""
    return qr_positive(a.double())[0].to(a.dtype)

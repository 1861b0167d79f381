"""Truncation by one warm-started block power step instead of the SVD of the augmented core.

The exact truncation of a DLRT step takes the SVD of a ``2r x 2r`` core (the parallel
integrator's ``S^``, the adaptive KLS step's ``S~``). Between two steps the weights move
little, so the top-``r`` right singular subspace of the augmented weights ``W^`` is close
to the current one, ``V0``: one step of block power iteration started there,

    Y = W^ V0 = Q_Y R_Y,     X = W^^T Q_Y = Q_X L_X,     so  Q_Y^T W^ Q_X = L_X^T,

gives orthonormal ``Q_Y (n, r)``, ``Q_X (m, r)`` and a small core ``L_X^T (r, r)`` (``R_Y``
upper, ``L_X`` lower triangular: see Coordinates below). A rank-adaptive step takes the
core's SVD (``r x r``, about 1/8 of the flops of the ``2r x 2r`` one) to choose the rank;
a fixed-rank step keeps the core as it is. The subspaces are off the optimal ones by a
factor ``(sigma_{r+1} / sigma_r)^2`` of the angle between ``V0`` and the optimum (the
standard subspace-iteration bound), small when a step's new directions are weak next to
the kept ones, as they are in training. The energy the step leaves out is known exactly,
``||W^||_F^2 - ||L_X||_F^2``: a rank-adaptive step whose tolerance that energy already
exceeds wants a higher rank and falls back to the exact SVD (:func:`needs_exact`).

For the parallel integrator ``W^`` is never formed, nor are the augmented bases: with
``A = U0^T K1``, ``B = V0^T L1`` and the projected steps ``Z_K = K1 - U0 A`` (n, r),
``Z_L = L1 - V0 B`` (m, r),

    W^ = U0 S1 V0^T + Z_K V0^T + U0 Z_L^T           (the three terms Frobenius-orthogonal)
    Y  = W^ V0   = K1 + U0 (S1 - A)                 = Q_Y R_Y
    X  = W^^T Q_Y = V0 Y^T Q_Y + Z_L C = V0 (R_Y^T - B C) + L1 C,   C = U0^T Q_Y
    ||W^||_F^2 = ||S1||^2 + ||K1||^2 - ||A||^2 + ||L1||^2 - ||B||^2

so a step costs two ``(n, r)`` / ``(m, r)`` QRs and six ``(n, r) x (r, r)`` products, or
five: ``U0^T Y = A + S1 - A = S1``, so ``C = S1 R_Y^{-1}``, an ``r x r`` triangular solve.
That is taken when ``R_Y`` is known to be well conditioned (CholeskyQR2 succeeded on ``Y``);
an error ``dC`` of the solve reaches ``X`` only as ``Z_L dC`` (the ``V0 B C`` and ``L1 C``
terms cancel but for ``Z_L C``), a rounding error times the step's own size.
For SGD, ``S1 = A`` and ``Q_Y = orth(K1)``: the left basis is the KLS one.

Coordinates. ``Y`` is factored as ``Q_Y R_Y`` (QR) and ``X`` as ``Q_X L_X`` (QL: ``L_X``
lower triangular), both with positive diagonals, so the core ``Q_Y^T W^ Q_X = L_X^T`` is
upper triangular. When ``S1`` is upper triangular, ``Y ~= U0 S1`` gives ``Q_Y ~= U0`` and
``X ~= V0 S1^T`` gives ``Q_X ~= V0``: the new bases differ from the old ones only by the
step's own motion, and the next step meets a triangular core again. A fixed-rank step
therefore needs no SVD for its weights: ``W1 = Q_Y L_X^T Q_X^T`` is the rank-``r``
truncation (the SVD of the core would only rotate inside the kept subspaces, giving the
same ``W1``). The SVD still matters to Adam, whose per-coordinate scaling works better
on singular directions: the stepper takes it every few steps (``diagonalize_every``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...linalg import cholesky_qr2, householder_qr_positive, ql_positive, takes_cholesky_qr
from .truncation import tolerance_sq

__all__ = ["PowerStep", "parallel_power_step", "core_power_step", "needs_exact"]


class PowerStep(NamedTuple):
    """``W^ ~= Q_left core Q_right^T`` from one block power step.

    ``left (a, r)``, ``right (b, r)`` orthonormal; ``core (r, r)``; ``total_sq = ||W^||_F^2``;
    ``outside_sq = total_sq - ||core||_F^2``, the energy not captured (>= 0, up to rounding);
    both 0.0 when not asked for (a fixed-rank step needs neither).
    ``left_overlap = U0^T left`` (r, r) and ``right_core = right @ core^T`` (b, r), the product the
    power step formed on its way (``X = W^^T Q_Y``), when the old bases are explicit (parallel
    step), else None.
    """

    left: torch.Tensor
    core: torch.Tensor
    right: torch.Tensor
    total_sq: float
    outside_sq: float
    left_overlap: torch.Tensor | None = None
    right_core: torch.Tensor | None = None


def _energies(total: torch.Tensor | None, core: torch.Tensor) -> tuple[float, float]:
    """``(total, max(total - ||core||^2, 0))`` as floats, computed in float64 with one host sync."""
    if total is None:
        return 0.0, 0.0
    pair = torch.stack([total.double(), core.double().square().sum()]).tolist()
    return pair[0], max(pair[0] - pair[1], 0.0)


def parallel_power_step(U0: torch.Tensor, V0: torch.Tensor, S1: torch.Tensor, K1: torch.Tensor,
                        L1: torch.Tensor, energies: bool = True) -> PowerStep:
    """The parallel integrator's augmented weights ``W^`` (see the module docstring) reduced by one
    block power step from ``V0``: ``U0 (n, r)``, ``V0 (m, r)`` orthonormal; ``S1 (r, r)``,
    ``K1 (n, r)``, ``L1 (m, r)`` the optimizer's results. The core is upper triangular
    (``L_X^T``). Also returns ``U0^T left`` and ``X = right @ core^T``.
    ``energies``: compute ``total_sq`` and ``outside_sq`` (one host sync).
    """
    A = U0.T @ K1                                          # (r, r)
    B = V0.T @ L1                                          # (r, r)
    Y = torch.addmm(K1, U0, S1 - A)                        # (n, r) = W^ V0
    qr = cholesky_qr2(Y) if takes_cholesky_qr(Y) else None
    if qr is not None:       # R_Y is well conditioned (Cholesky of Y^T Y succeeded): C = S1 R_Y^{-1}
        Qy, Ry = qr
        C = torch.linalg.solve_triangular(Ry, S1, upper=True, left=False)  # (r, r) = U0^T Q_Y
    else:
        Qy, Ry = householder_qr_positive(Y)
        C = U0.T @ Qy                                      # (r, r)
    X = torch.addmm(L1 @ C, V0, torch.addmm(Ry.T, B, C, alpha=-1))  # (m, r) = W^^T Q_Y
    Qx, Lx = ql_positive(X)
    total = None
    if energies:
        total = sum(sign * t.double().square().sum() for sign, t in ((1, S1), (1, K1), (-1, A), (1, L1), (-1, B)))
    total_sq, outside_sq = _energies(total, Lx)
    return PowerStep(Qy, Lx.T, Qx, total_sq, outside_sq, C, X)


def core_power_step(S: torch.Tensor, r0: int) -> PowerStep:
    """An explicit core ``S (a, b)`` whose leading ``r0`` columns belong to the old right basis,
    reduced by one block power step from those columns: ``left (a, r0)``, ``right (b, r0)``.

    Computed in float64: the caller rotates its bases by ``left``, ``right`` every step, and
    float32 rounding there would accumulate (the parallel step instead takes fresh QRs).
    """
    s64 = S.double()
    P, _ = torch.linalg.qr(s64[:, :r0])                    # (a, r0): range of S [I; 0]
    Q, R = torch.linalg.qr(s64.T @ P)                      # (b, r0), (r0, r0)
    total_sq, outside_sq = _energies(s64.square().sum(), R)
    return PowerStep(P.to(S.dtype), R.T.to(S.dtype), Q.to(S.dtype), total_sq, outside_sq)


def needs_exact(step: PowerStep, tau: float, absolute: bool, rank: int, max_rank: int) -> bool:
    """A rank-adaptive step that the power step cannot serve: the energy outside its ``rank``
    directions already exceeds the tolerance ``theta`` (``tau ||W^||_F``, or ``tau`` if
    ``absolute``), so the rule asks for a higher rank, and the cap allows one."""
    if rank >= max_rank:
        return False
    return step.outside_sq > tolerance_sq(tau, step.total_sq, absolute)

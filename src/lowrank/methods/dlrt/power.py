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

For the parallel integrator ``W^`` is never formed, nor are the augmented bases. The
optimizer gives the steps' moves ``dK = K1 - K0``, ``dL = L1 - L0`` (``K0 = U0 S0``,
``L0 = V0 S0^T``); only their parts outside the bases matter, ``Z_K = dK - U0 A`` (n, r),
``Z_L = dL - V0 B`` (m, r) with ``A = U0^T dK``, ``B = V0^T dL``:

    W^ = U0 S1 V0^T + Z_K V0^T + U0 Z_L^T           (the three terms Frobenius-orthogonal)
    Y  = W^ V0   = U0 S1 + Z_K = (U0 + Z_K N) S1,   N = S1^{-1}
    X  = W^^T Q_Y = V0 M^T + Z_L C,                 Y = Q_Y M,  C = U0^T Q_Y
    ||W^||_F^2 = ||S1||^2 + ||Z_K||^2 + ||Z_L||^2,  ||Z_K||^2 = ||dK||^2 - ||A||^2

No QR is needed for ``Q_Y``: ``U0 + Z_K N`` has the Gram matrix ``I + (Z_K N)^T (Z_K N)``
(``Z_K`` is orthogonal to ``U0``), and its Cholesky factor ``R_U`` gives ``Q_Y = (U0 + Z_K N)
R_U^{-1}`` (:func:`~.basis.turned_basis`), ``C = R_U^{-1}``, ``M = R_U S1``. The same for ``X =
(V0 + Z_L H) M^T`` with ``H = C M^{-T} = R_U^{-1} R_U^{-T} N^T = C P^T`` (``P = N R_U^{-1}``, which
the left basis has computed): ``Q_X = (V0 + Z_L H) R_V^{-1}``.
The core, the projection of ``W^`` onto the two bases, is ``r x r``: with ``G_K = Z_K^T Z_K``,
``G_L = Z_L^T Z_L`` (``G_K N = S1^T (R_U^T R_U - I)``, ``G_L H = H^{-T} (R_V^T R_V - I)``),

    Q_Y^T W^ Q_X = R_U^{-T} (S1 + N^T G_K + G_L H) R_V^{-1} = R_U S1 R_V^T

``Z_K`` and ``Z_L`` are never formed: a step costs eight ``(n, r) x (r, r)`` products (``A``,
``dK^T dK`` and two for ``Q_Y = U0 (I - A N) R_U^{-1} + dK N R_U^{-1}``; the same for the right
side) and ``r x r`` work (an inverse, two Choleskys and triangular inverses, thirteen
products), where a QR alone costs more than three such products. The bases are
orthonormal for any ``N`` (an inaccurate inverse moves the subspaces by a rounding-size
angle, as rounding ``Y`` would), to ``eps (1 + ||dK N||^2)``: a step whose turn ``||dK N||_F^2``
or ``||dL H||_F^2`` (bounded from above by :func:`~.basis.turned_basis`) exceeds
:data:`~.basis.MAX_TURN_SQ`, or whose ``S1`` is singular, factors
``Y`` and ``X`` by QR instead (``Q_Y R_Y = Y``, ``X = Q_X L_X``, the core ``L_X^T``;
:func:`qr_power_step`). For SGD, ``S1 = S0 + A`` and ``range(Y) = range(K1)``: the left basis
spans the KLS one.

Coordinates. ``C = U0^T Q_Y = R_U^{-1} = I + O(||Z_K N||^2)``: the new bases differ from the
old ones by the step's own motion, out of the old subspaces, and do not turn within them; the
next step starts from them. A fixed-rank step needs no SVD for its weights: ``W1 = Q_Y core
Q_X^T`` is the rank-``r`` truncation (the SVD of the core would only rotate inside the kept
subspaces, giving the same ``W1``). The SVD still matters to Adam, whose per-coordinate
scaling works better on singular directions: the stepper takes it every few steps
(``diagonalize_every``), and its rotations ``p``, ``q`` go into the bases' ``r x r`` coefficients
before the bases are formed (:meth:`PowerStep.rotated`: ``Q_Y p = U0 (X p) + dK (P p)``), so a
diagonalizing step costs no ``(n, r)`` product more than an aligned one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ...linalg import cholesky_qr2, householder_qr_positive, ql_positive, takes_cholesky_qr
from .basis import MAX_TURN_SQ, TURNED_MIN_RANK, TurnedBasis, turned_basis
from .truncation import tolerance_sq

__all__ = ["PowerStep", "parallel_power_step", "qr_power_step", "core_power_step", "needs_exact"]


@dataclass
class PowerStep:
    """``W^ ~= Q_left core Q_right^T`` from one block power step.

    ``left (a, r)``, ``right (b, r)`` orthonormal, formed on first use from ``left_basis``,
    ``right_basis`` (the bases, or :class:`~.basis.TurnedBasis` combinations); ``core (r, r)``;
    ``total_sq = ||W^||_F^2``; ``outside_sq = total_sq - ||core||_F^2``, the energy not captured
    (>= 0, up to rounding); both 0.0 when not asked for (a fixed-rank step needs neither).
    ``left_overlap = U0^T left`` and ``right_overlap = V0^T right`` (r, r) when the old bases
    are explicit (parallel step), else None.
    """

    left_basis: torch.Tensor | TurnedBasis
    core: torch.Tensor
    right_basis: torch.Tensor | TurnedBasis
    total_sq: float
    outside_sq: float
    left_overlap: torch.Tensor | None = None
    right_overlap: torch.Tensor | None = None

    @functools.cached_property
    def left(self) -> torch.Tensor:
        return _form(self.left_basis)

    @functools.cached_property
    def right(self) -> torch.Tensor:
        return _form(self.right_basis)

    def rotated(self, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``left p (a, r1)`` and ``right q (b, r1)``; a turned basis takes the rotation into its
        ``r x r`` coefficients: two ``(a, r)`` products, where forming ``left`` first takes three."""
        return _form(self.left_basis, p), _form(self.right_basis, q)


def _form(basis: torch.Tensor | TurnedBasis, rotation: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(basis, TurnedBasis):
        return basis.form(rotation)
    return basis if rotation is None else basis @ rotation


def _energies(total: torch.Tensor | None, core: torch.Tensor) -> tuple[float, float]:
    """``(total, max(total - ||core||^2, 0))`` as floats, computed in float64 with one host sync."""
    if total is None:
        return 0.0, 0.0
    pair = torch.stack([total.double(), core.double().square().sum()]).tolist()
    return pair[0], max(pair[0] - pair[1], 0.0)


def parallel_power_step(U0: torch.Tensor, V0: torch.Tensor, S1: torch.Tensor, dK: torch.Tensor,
                        dL: torch.Tensor, energies: bool = True) -> PowerStep:
    """The parallel integrator's augmented weights ``W^`` (see the module docstring) reduced by one
    block power step from ``V0``, by turned bases (no QR): ``U0 (n, r)``, ``V0 (m, r)``
    orthonormal; ``S1 (r, r)`` the S-step's result; ``dK (n, r)``, ``dL (m, r)`` the K- and
    L-steps' moves. Falls back to :func:`qr_power_step` when a turn is too large or ``S1`` is
    singular, and takes it below :data:`~.basis.TURNED_MIN_RANK`. ``energies``: compute ``total_sq``
    and ``outside_sq``. One host sync; the bases are formed when first read (or rotated,
    :meth:`PowerStep.rotated`).
    """
    A, B = U0.T @ dK, V0.T @ dL                            # (r, r) each
    if S1.shape[0] < TURNED_MIN_RANK:
        return qr_power_step(U0, V0, S1, dK, dL, energies, A, B)
    Gk, Gl = dK.T @ dK, dL.T @ dL                          # (r, r) each: Gram matrices of the moves
    N, info = torch.linalg.inv_ex(S1)                      # (r, r) = S1^{-1}
    left = turned_basis(U0, dK, A, Gk, N)                  # Q_Y, with C = U0^T Q_Y = R_U^{-1}
    H = left.R_inv @ left.P.T                              # (r, r) = C M^{-T} = R_U^{-1} R_U^{-T} N^T
    right = turned_basis(V0, dL, B, Gl, H)                 # Q_X, with V0^T Q_X = R_V^{-1}
    core = left.R @ S1 @ right.R.T                         # (r, r) = Q_Y^T W^ Q_X
    turn = torch.maximum(left.size, right.size).masked_fill(info != 0, float("inf"))
    checks = [turn.double()]
    if energies:       # ||core||^2, and ||W^||^2 by ||Z_K||^2 = ||dK||^2 - ||A||^2, the same for Z_L
        checks.append(core.double().square().sum())
        checks.append(sum(sign * t.double().square().sum() for sign, t in ((1, S1), (-1, A), (-1, B)))
                      + torch.diagonal(Gk).double().sum() + torch.diagonal(Gl).double().sum())
    values = torch.stack(checks).tolist()
    if not values[0] <= MAX_TURN_SQ:                       # also NaN
        return qr_power_step(U0, V0, S1, dK, dL, energies, A, B)
    if not energies:
        return PowerStep(left, core, right, 0.0, 0.0, left.R_inv, right.R_inv)
    return PowerStep(left, core, right, values[2], max(values[2] - values[1], 0.0), left.R_inv, right.R_inv)


def qr_power_step(U0: torch.Tensor, V0: torch.Tensor, S1: torch.Tensor, dK: torch.Tensor, dL: torch.Tensor,
                  energies: bool = True, A: torch.Tensor | None = None, B: torch.Tensor | None = None) -> PowerStep:
    """:func:`parallel_power_step` with the bases from QRs: ``Y = dK + U0 (S1 - A) = Q_Y R_Y``,
    ``X = V0 (R_Y^T - B C) + dL C = Q_X L_X`` (QL), core ``L_X^T`` (upper triangular), ``C =
    U0^T Q_Y``. ``A = U0^T dK``, ``B = V0^T dL`` if already formed.

    ``U0^T Y = S1``, so ``C = S1 R_Y^{-1}``, an ``r x r`` triangular solve, when ``R_Y`` is known
    to be well conditioned (CholeskyQR2 succeeded on ``Y``); an error ``dC`` of the solve reaches
    ``X`` only as ``Z_L dC``, a rounding error times the step's own size.
    """
    A = U0.T @ dK if A is None else A                      # (r, r)
    B = V0.T @ dL if B is None else B                      # (r, r)
    Y = torch.addmm(dK, U0, S1 - A)                        # (n, r) = W^ V0
    qr = cholesky_qr2(Y) if takes_cholesky_qr(Y) else None
    if qr is not None:       # R_Y is well conditioned (Cholesky of Y^T Y succeeded): C = S1 R_Y^{-1}
        Qy, Ry = qr
        C = torch.linalg.solve_triangular(Ry, S1, upper=True, left=False)  # (r, r) = U0^T Q_Y
    else:
        Qy, Ry = householder_qr_positive(Y)
        C = U0.T @ Qy                                      # (r, r)
    X = torch.addmm(dL @ C, V0, torch.addmm(Ry.T, B, C, alpha=-1))  # (m, r) = W^^T Q_Y
    Qx, Lx = ql_positive(X)
    total = None
    if energies:
        total = sum(sign * t.double().square().sum() for sign, t in ((1, S1), (1, dK), (-1, A), (1, dL), (-1, B)))
    total_sq, outside_sq = _energies(total, Lx)
    return PowerStep(Qy, Lx.T, Qx, total_sq, outside_sq, C, V0.T @ Qx)


def core_power_step(S: torch.Tensor, r0: int) -> PowerStep:
    """An explicit core ``S (a, b)`` whose leading ``r0`` columns belong to the old right basis,
    reduced by one block power step from those columns: ``left (a, r0)``, ``right (b, r0)``.

    Computed in float64: the caller rotates its bases by ``left``, ``right`` every step, and
    float32 rounding there would accumulate (the parallel step turns its explicit old bases).
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

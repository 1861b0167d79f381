"""Pure linear-algebra helpers shared by the layers and the integrators.

No modules, no state: tensors in, tensors out. Shapes follow the design notes:
``W`` is ``(n, m)``, ``U`` is ``(n, r)``, ``S`` is ``(r, r)``, ``V`` is ``(m, r)``.
"""

from __future__ import annotations

import torch

from .errors import RankError

__all__ = [
    "orthonormal",
    "orthonormalize",
    "qr_positive",
    "ql_positive",
    "cholesky_qr2",
    "truncated_svd",
    "householder_qr_positive",
    "takes_cholesky_qr",
    "rank_for_energy",
    "rank_for_param_ratio",
    "rank_for_tolerance",
    "break_even_rank",
    "check_rank",
    "orthonormality_error",
]


def orthonormal(rows: int, cols: int, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """A ``(rows, cols)`` matrix with orthonormal columns: Q of the QR of a Gaussian matrix."""
    g = torch.randn(rows, cols, generator=generator, dtype=dtype, device=device)
    return orthonormalize(g)


def orthonormalize(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of ``a``'s column space (reduced QR, signs fixed so diag(R) >= 0)."""
    return qr_positive(a)[0]


def _positive_diagonal(r: torch.Tensor) -> torch.Tensor:
    """Signs (+-1, never 0) that make the diagonal of the triangular factor ``r`` non-negative."""
    d = torch.diagonal(r)
    return torch.ones_like(d).copysign_(d)


def qr_positive(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced ``a = Q R`` with ``diag(R) >= 0``: a deterministic function of ``a``, and for
    ``a = B T`` with ``B`` orthonormal and ``T`` upper triangular with a positive diagonal
    it returns ``Q = B`` (the basis ``a``'s columns were built on keeps its coordinates).

    Matrices of moderate condition with at least :data:`CHOLESKY_QR_MIN_ROWS` rows and
    :data:`CHOLESKY_QR_MIN_COLS` columns are factored by CholeskyQR2 (:func:`cholesky_qr2`),
    matrix products; the rest by Householder. Both give the same (unique) factors to rounding.
    """
    if takes_cholesky_qr(a):
        qr = cholesky_qr2(a)
        if qr is not None:
            return qr
    return householder_qr_positive(a)


def householder_qr_positive(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`qr_positive` by Householder QR (LAPACK / cuSOLVER), whatever the shape."""
    q, r = torch.linalg.qr(a)
    sign = _positive_diagonal(r)
    return q * sign, r * sign[:, None]


def ql_positive(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced ``a = Q L`` with ``L`` lower triangular, ``diag(L) >= 0`` (the QR of ``a`` with
    its columns reversed): for ``a = B T`` with ``B`` orthonormal and ``T`` lower triangular
    with a positive diagonal it returns ``Q = B``. CholeskyQR2 where :func:`qr_positive`
    takes it (no reversed copy of ``a``), else Householder on the reversed columns."""
    if takes_cholesky_qr(a):
        ql = cholesky_qr2(a, lower=True)
        if ql is not None:
            return ql
    q, r = householder_qr_positive(a.flip(-1))
    return q.flip(-1), r.flip(-2, -1)


#: Smallest shape for which :func:`qr_positive` takes CholeskyQR2 (below, LAPACK's Householder
#: QR is faster on a CPU: the many small steps of CholeskyQR2 cost more than its flops save).
#: Measured on a CPU only; on a GPU, where cuSOLVER's QR is slow, lower bounds may pay.
CHOLESKY_QR_MIN_ROWS = 1024
CHOLESKY_QR_MIN_COLS = 32

#: Largest ``max diag(R) / min diag(R)`` of the first pass that :func:`cholesky_qr2` accepts,
#: per dtype (a lower bound on ``cond(a)``; the Gram matrix squares it).
CHOLESKY_QR_MAX_SPREAD = {torch.float32: 1e3, torch.float64: 1e6}


def takes_cholesky_qr(a: torch.Tensor) -> bool:
    """Does :func:`qr_positive` try CholeskyQR2 on ``a``? (its shape only)"""
    rows, cols = a.shape[-2:] if a.dim() == 2 else (0, 0)     # batched input: Householder
    return rows >= max(CHOLESKY_QR_MIN_ROWS, 2 * cols) and cols >= CHOLESKY_QR_MIN_COLS


def cholesky_qr2(a: torch.Tensor, lower: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``a = Q R`` (``a`` tall, ``diag(R) > 0``) by two passes of ``R_i = chol(Q_i^T Q_i)^T``,
    ``Q_{i+1} = Q_i R_i^{-1}``, ``R = R_2 R_1``; None when ``a`` is too ill-conditioned for it.
    ``lower``: ``a = Q L`` instead, ``L`` lower triangular (``Q_i^T Q_i = L_i^T L_i``: the
    Cholesky factor of the Gram matrix with rows and columns reversed, reversed back; only
    ``r x r`` matrices are reversed).

    One pass leaves ``||Q^T Q - I||`` ~ ``eps cond(a)^2``; the second, on a ``Q`` of condition
    ~1, brings it to ~``eps`` (Fukaya et al., "CholeskyQR2", 2014). Accepted when both
    Cholesky factorizations succeed and the first ``R``'s diagonal spread is at most
    :data:`CHOLESKY_QR_MAX_SPREAD` (one host sync); the caller then falls back to Householder.
    """
    spread = CHOLESKY_QR_MAX_SPREAD.get(a.dtype)
    if spread is None:
        return None
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    q, r, ok = a, None, None
    for _ in range(2):
        gram = q.T @ q                                         # (r, r)
        if lower:
            low, info = torch.linalg.cholesky_ex(gram.flip(-2, -1))
            tri = low.T.flip(-2, -1)                           # lower: gram = tri^T tri
        else:
            low, info = torch.linalg.cholesky_ex(gram)        # gram = low low^T
            tri = low.T                                        # upper: gram = tri^T tri
        q = q @ torch.linalg.solve_triangular(tri, eye, upper=not lower)   # (n, r)
        if r is None:
            d = torch.diagonal(tri)
            ok = (info == 0) & (d.min() * spread >= d.max())
            r = tri
        else:
            ok = ok & (info == 0)
            r = tri @ r
    return (q, r) if bool(ok) else None


def truncated_svd(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` approximation of ``w`` (n, m): ``U (n, r)``, ``s (r,)``, ``V (m, r)``."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank].T


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Fewest leading singular values whose squares hold at least ``energy`` of ``sum s^2``."""
    e = s.double().pow(2)
    total = e.sum()
    if total == 0:
        return 1
    cum = torch.cumsum(e, 0) / total
    # Small slack so energy=1.0 is reachable despite rounding.
    return int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12).item()) + 1


def rank_for_param_ratio(n: int, m: int, ratio: float) -> int:
    """Largest rank whose two factors ``r (m + n)`` hold at most ``ratio`` of the ``m n`` weights (>= 1)."""
    return max(1, min(min(n, m), int(ratio * n * m / (n + m))))


def rank_for_tolerance(sigma: torch.Tensor, theta: float) -> int:
    """Smallest ``r1`` with ``||sigma[r1:]||_2 <= theta`` (sigma sorted descending); at least 1."""
    tail = torch.sqrt(torch.flip(torch.cumsum(torch.flip(sigma.double().pow(2), [0]), 0), [0]))
    # tail[i] = ||sigma[i:]||; want the first i with tail[i] <= theta (tail[len] = 0).
    below = (tail <= theta).nonzero()
    r1 = int(below[0].item()) if below.numel() else sigma.numel()
    return max(1, r1)


def break_even_rank(n: int, m: int) -> float:
    """Rank ``m n / (m + n)`` above which two factors hold more weights than ``W``."""
    return n * m / (n + m)


def check_rank(rank: int, n: int, m: int, layer: str = "layer") -> int:
    """``rank`` if ``1 <= rank <= min(n, m)``, else a :class:`RankError` naming the layer and shape."""
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise RankError(f"{layer}: rank must be an integer, got {rank!r}")
    if rank <= 0 or rank > min(n, m):
        raise RankError(f"{layer}: rank {rank} is impossible for a {n}x{m} weight "
                        f"(out_features={n}, in_features={m}); choose 1..{min(n, m)}")
    return rank


def orthonormality_error(q: torch.Tensor) -> float:
    """``||Q^T Q - I||_F`` (0 for orthonormal columns)."""
    eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
    return float(torch.linalg.matrix_norm(q.T @ q - eye))

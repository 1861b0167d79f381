"""Vanilla low-rank linear layer.

``W = U S V^T`` with ``U: (n, r)``, ``S: (r, r)``, ``V: (m, r)``; all three and the
bias are ordinary ``nn.Parameter``s trained by any optimizer. Nothing keeps ``U``
and ``V`` orthonormal after initialization: that is the point of the baseline.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...linalg import check_rank, orthonormal, truncated_svd
from ...layer import LowRankLayer

__all__ = ["VanillaLinear", "decay_factors", "default_singular_value"]


def decay_factors(rank: int, decay: float, *, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``(rank,)`` tensor ``[1, 1/d, 1/d^2, ...]``: the ``init_decay`` profile of the singular values."""
    if decay <= 0:
        raise ValueError(f"init_decay must be positive, got {decay}")
    return torch.tensor(decay, dtype=dtype, device=device).pow(-torch.arange(rank, dtype=dtype, device=device))


def default_singular_value(out_features: int, rank: int) -> float:
    """Singular value ``sigma`` giving a random rank-``r`` layer nn.Linear's output scale.

    ``nn.Linear``'s default init has ``E ||W||_F^2 = n / 3``; with orthonormal ``U, V``
    and ``S = sigma I`` we get ``||W||_F^2 = r sigma^2``, so ``sigma = sqrt(n / (3 r))``.
    """
    return math.sqrt(out_features / (3.0 * rank))


class VanillaLinear(LowRankLayer):
    """``y = ((x V) S^T) U^T + b`` — ``W = U S V^T`` is never formed.

    Args:
        in_features: ``m``.
        out_features: ``n``.
        rank: ``r``, ``1 <= r <= min(m, n)``.
        bias: learn an additive bias ``b: (n,)``.
        init_decay: ``d``; the initial singular values are ``sigma / d^i``, ``i = 0..r-1``
            (``d = 1``: all equal). Used to test robustness to ill-conditioned starts.

    At construction ``U``, ``V`` have orthonormal columns (QR of a Gaussian) and
    ``S = diag(sigma / d^i)`` with ``sigma`` matching nn.Linear's output scale.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 init_decay: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        check_rank(rank, out_features, in_features, type(self).__name__)
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        self.init_decay = float(init_decay)
        sigma = default_singular_value(out_features, rank) * decay_factors(rank, init_decay, device=device)
        self.U = nn.Parameter(orthonormal(out_features, rank, dtype=dtype, device=device))  # (n, r)
        self.S = nn.Parameter(torch.diag(sigma).to(dtype))                                  # (r, r)
        self.V = nn.Parameter(orthonormal(in_features, rank, dtype=dtype, device=device))   # (m, r)
        self.init_bias(bias, dtype, device)

    @torch.no_grad()
    def factorize_(self, w: torch.Tensor) -> None:
        """Set ``U, S, V`` from the truncated SVD of the ``(n, m)`` matrix ``w`` (``S`` scaled by
        ``init_decay``): with ``init_decay = 1`` the best rank-``r`` approximation (Eckart-Young)."""
        u, s, v = truncated_svd(w, self.rank)
        s = s * decay_factors(self.rank, self.init_decay, dtype=s.dtype, device=s.device)
        self.U.copy_(u)
        self.S.copy_(torch.diag(s))
        self.V.copy_(v)

    @property
    def rank(self) -> int:
        return self.S.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.V             # (..., r)
        h = h @ self.S.T           # (..., r)
        return F.linear(h, self.U, self.bias)  # (..., n); h U^T + b, fused

    def dense_weight(self) -> torch.Tensor:
        return self.U @ self.S @ self.V.T  # (n, m)

    @classmethod
    def count_params(cls, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        return super().count_params(in_features, out_features, rank, bias) + rank ** 2

    def num_params(self) -> int:
        """``r (m + n) + r^2 (+ n)``: both bases, the core and the bias."""
        return super().num_params() + self.rank ** 2

    def flops_per_sample(self) -> int:
        """``r (m + n) + r^2 (+ n)`` multiply-adds: ``x V``, ``S^T``, ``U^T`` (and the bias)."""
        return super().flops_per_sample() + self.rank ** 2

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "init_decay": self.init_decay}

"""Two-factor layer of SVD-DNN.

``W ~ W1 W2`` with ``W1: (n, l)`` and ``W2: (l, m)``; no core, no orthogonality.
From a trained dense layer: ``W = U S V^T``, ``W1 = U_l S_l^(1/2)``, ``W2 = S_l^(1/2) V_l^T``
(the singular values are split evenly so both factors have the same scale).
The product saves weights and time only when ``l < m n / (m + n)``.
"""

from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from ...linalg import check_rank, orthonormal, truncated_svd
from ...layer import LowRankLayer
from ..vanilla.layer import default_singular_value

__all__ = ["TwoFactorLinear"]


class TwoFactorLinear(LowRankLayer):
    """``y = (x W2^T) W1^T + b`` with ``W1: (n, l)``, ``W2: (l, m)``, ``l = rank``.

    A fresh layer has ``W1 = U sigma^(1/2)``, ``W2 = sigma^(1/2) V^T`` for random
    orthonormal ``U, V`` and ``sigma`` matching nn.Linear's output scale.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        check_rank(rank, out_features, in_features, type(self).__name__)
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        root = default_singular_value(out_features, rank) ** 0.5
        self.W1 = nn.Parameter(orthonormal(out_features, rank, dtype=dtype, device=device) * root)   # (n, l)
        self.W2 = nn.Parameter(orthonormal(in_features, rank, dtype=dtype, device=device).T * root)  # (l, m)
        self.init_bias(bias, dtype, device)

    @torch.no_grad()
    def factorize_(self, w: torch.Tensor) -> None:
        """``W1 = U_l S_l^(1/2)``, ``W2 = S_l^(1/2) V_l^T`` from the truncated SVD of the ``(n, m)`` matrix ``w``."""
        u, s, v = truncated_svd(w, self.rank)
        root = s.sqrt()  # (l,)
        self.W1.copy_(u * root)               # U_l S_l^(1/2): scale columns
        self.W2.copy_(root[:, None] * v.T)    # S_l^(1/2) V_l^T: scale rows

    @property
    def rank(self) -> int:
        return self.W2.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.W2), self.W1, self.bias)  # (..., m) -> (..., l) -> (..., n)

    def dense_weight(self) -> torch.Tensor:
        return self.W1 @ self.W2  # (n, m)

"""SVD-parameterized linear layer.

``W = U diag(s) V^T`` with ``U: (n, r)``, ``s: (r,)``, ``V: (m, r)`` trained directly.
Orthogonality of ``U``, ``V`` is encouraged by a penalty, sparsity of ``s`` by the
Hoyer ratio; after training :meth:`SVDLinear.prune` keeps the fewest singular values
that hold a given fraction of the energy ``sum s^2``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...linalg import check_rank, orthonormal, rank_for_energy, truncated_svd
from ...layer import LowRankLayer
from ..vanilla.layer import default_singular_value

__all__ = ["SVDLinear"]


class SVDLinear(LowRankLayer):
    """``y = ((x V) * s) U^T + b``.

    Args:
        in_features, out_features, rank, bias: as :class:`~lowrank.VanillaLinear`.
        lambda_orth: weight of ``||U^T U - I||_F^2 + ||V^T V - I||_F^2``.
        lambda_sparse: weight of the Hoyer penalty ``||s||_1 / ||s||_2``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 lambda_orth: float = 0.0, lambda_sparse: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        check_rank(rank, out_features, in_features, type(self).__name__)
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        self.lambda_orth, self.lambda_sparse = float(lambda_orth), float(lambda_sparse)
        sigma = default_singular_value(out_features, rank)
        self.U = nn.Parameter(orthonormal(out_features, rank, dtype=dtype, device=device))  # (n, r)
        self.s = nn.Parameter(torch.full((rank,), sigma, dtype=dtype, device=device))       # (r,)
        self.V = nn.Parameter(orthonormal(in_features, rank, dtype=dtype, device=device))   # (m, r)
        self.init_bias(bias, dtype, device)

    @torch.no_grad()
    def factorize_(self, w: torch.Tensor) -> None:
        """Set ``U, s, V`` to the rank-``r`` truncated SVD of the ``(n, m)`` matrix ``w``."""
        u, s, v = truncated_svd(w, self.rank)
        self.U.copy_(u)
        self.s.copy_(s)
        self.V.copy_(v)

    @property
    def rank(self) -> int:
        return self.s.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x @ self.V) * self.s              # (..., r)
        return F.linear(h, self.U, self.bias)  # (..., n)

    def dense_weight(self) -> torch.Tensor:
        return (self.U * self.s) @ self.V.T  # (n, m)

    @classmethod
    def count_params(cls, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        return super().count_params(in_features, out_features, rank, bias) + rank

    def num_params(self) -> int:
        """``r (m + n) + r (+ n)``."""
        return super().num_params() + self.rank

    def flops_per_sample(self) -> int:
        """``r (m + n) + r (+ n)``: ``x V``, the scaling by ``s``, ``U^T`` (and the bias)."""
        return super().flops_per_sample() + self.rank

    def regularization(self) -> torch.Tensor | float:
        """``lambda_orth (||U^T U - I||_F^2 + ||V^T V - I||_F^2) + lambda_sparse ||s||_1 / ||s||_2``."""
        total: torch.Tensor | float = 0.0
        if self.lambda_orth:
            eye = torch.eye(self.rank, dtype=self.U.dtype, device=self.U.device)
            total = total + self.lambda_orth * ((self.U.T @ self.U - eye).pow(2).sum()
                                                + (self.V.T @ self.V - eye).pow(2).sum())
        if self.lambda_sparse:
            # clamp: the ratio is undefined at s = 0; its gradient there is irrelevant.
            total = total + self.lambda_sparse * self.s.abs().sum() / self.s.norm().clamp_min(1e-12)
        return total

    @torch.no_grad()
    def prune_indices(self, energy: float = 0.99) -> torch.Tensor:
        """Indices of the fewest entries of ``s`` (largest ``|s|`` first) whose squares hold
        ``energy`` of ``sum s^2``, in decreasing ``|s|``."""
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        order = torch.argsort(self.s.abs(), descending=True)
        return order[:rank_for_energy(self.s.abs()[order], energy)]

    @torch.no_grad()
    def keep(self, idx: torch.Tensor) -> None:
        """Replace ``U``, ``s``, ``V`` by new Parameters holding only the rank-1 terms ``idx``
        (``U[:, idx]``, ``s[idx]``, ``V[:, idx]``: always the last dimension)."""
        self.U = nn.Parameter(self.U[:, idx].clone(), requires_grad=self.U.requires_grad)
        self.s = nn.Parameter(self.s[idx].clone(), requires_grad=self.s.requires_grad)
        self.V = nn.Parameter(self.V[:, idx].clone(), requires_grad=self.V.requires_grad)

    @torch.no_grad()
    def rediagonalize(self) -> None:
        """Same ``W``, with orthonormal ``U``, ``V`` and ``s`` its true singular values:
        ``U = Q_u R_u``, ``V = Q_v R_v``, ``R_u diag(s) R_v^T = P sigma Q^T``, then
        ``U = Q_u P``, ``s = sigma``, ``V = Q_v Q``. Values change in place."""
        qu, ru = torch.linalg.qr(self.U)                      # (n, r), (r, r)
        qv, rv = torch.linalg.qr(self.V)                      # (m, r), (r, r)
        p, sigma, qh = torch.linalg.svd((ru * self.s) @ rv.T)  # core (r, r) = R_u diag(s) R_v^T
        self.U.copy_(qu @ p)
        self.s.copy_(sigma)
        self.V.copy_(qv @ qh.T)

    def prune(self, energy: float = 0.99, *, exact: bool = False) -> int:
        """Keep the fewest singular values (largest ``|s|`` first) whose squares hold ``energy`` of the total.

        Replaces ``U``, ``s``, ``V`` by new, smaller Parameters and returns the new rank.
        Factors are reordered by decreasing ``|s|``; signs stay in ``s``. An optimizer over
        the old Parameters must be rebuilt, or its state moved (``methods.svd`` does the latter
        with :meth:`prune_indices` and :meth:`keep`).

        ``s`` are the true singular values of ``W`` only while ``U``, ``V`` are orthonormal
        (which the penalty encourages but does not enforce); ``exact=True`` first calls
        :meth:`rediagonalize`, so the pruned layer is the best approximation of ``W`` at its rank.
        """
        if exact:
            self.rediagonalize()
        self.keep(self.prune_indices(energy))
        return self.rank

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "lambda_orth": self.lambda_orth, "lambda_sparse": self.lambda_sparse}

"""How a layer's rank is chosen: one small type shared by every low-rank method.

A :class:`RankChoice` holds at most one of three rules:

- ``rank = r``: every selected layer gets rank ``r``;
- ``energy = e``: each layer keeps the fewest singular values ``s_1 >= s_2 >= ...`` whose
  squares hold the fraction ``e`` of ``sum_i s_i^2`` (computed from its current weight);
- ``param_ratio = p``: each layer gets the largest ``r`` with ``r (m + n) <= p m n`` (two
  factors holding at most that fraction of the ``n x m`` weight's entries).

None of them given: the method's default (for example rank 20 for vanilla and DLRT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .linalg import rank_for_energy, rank_for_param_ratio

__all__ = ["RankChoice", "RANK_RULES"]

#: The rules, in the order they are documented.
RANK_RULES = ("rank", "energy", "param_ratio")


@dataclass
class RankChoice:
    """At most one of ``rank``, ``energy``, ``param_ratio``; validated on construction."""

    rank: int | None = None
    """Rank of every converted layer (give at most one of rank, energy, param_ratio)."""
    energy: float | None = None
    """Choose each layer's rank to keep this fraction of its squared singular values, in (0, 1]."""
    param_ratio: float | None = None
    """Choose each layer's rank to keep at most this fraction of its dense weights, in (0, 1]."""

    def __post_init__(self) -> None:
        given = [k for k in RANK_RULES if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give only one of rank, energy, param_ratio (got {', '.join(given)})")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank <= 0):
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")
        for name in ("energy", "param_ratio"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ConfigError(f"{name} must be in (0, 1], got {v!r}")

    @property
    def rule(self) -> str | None:
        """The rule given (``"rank"``, ``"energy"``, ``"param_ratio"``) or None."""
        return next((k for k in RANK_RULES if getattr(self, k) is not None), None)

    def rank_of(self, weight: torch.Tensor) -> int | None:
        """The rank this choice gives a layer with the ``(n, m)`` matrix ``weight``; None if no rule."""
        n, m = weight.shape
        if self.rank is not None:
            return self.rank
        if self.energy is not None:
            w = weight.detach()
            s = torch.linalg.svdvals(w if w.dtype in (torch.float32, torch.float64) else w.float())
            return rank_for_energy(s, self.energy)
        if self.param_ratio is not None:
            return rank_for_param_ratio(n, m, self.param_ratio)
        return None

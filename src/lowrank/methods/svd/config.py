"""Options of SVD-parameterized training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...method_config import FactorizedConfig

__all__ = ["SVDConfig"]


@dataclass
class SVDConfig(FactorizedConfig):
    lambda_orth: float = 1e-3
    """Weight of the orthogonality penalty ||U^T U - I||_F^2 + ||V^T V - I||_F^2."""
    lambda_sparse: float = 1e-4
    """Weight of the Hoyer sparsity penalty ||s||_1 / ||s||_2."""
    prune_energy: float = 0.99
    """After training keep the fewest singular values holding this fraction of sum s^2."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lambda_orth", "lambda_sparse"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"{name} must be >= 0, got {v!r}")
        if not isinstance(self.prune_energy, (int, float)) or not 0 < self.prune_energy <= 1:
            raise ConfigError(f"prune_energy must be in (0, 1], got {self.prune_energy!r}")

    def default_rank(self, out_features: int, in_features: int) -> int:
        """Full rank ``min(m, n)``: pruning picks the final rank."""
        return min(out_features, in_features)

    def layer_options(self) -> dict[str, Any]:
        return {"lambda_orth": self.lambda_orth, "lambda_sparse": self.lambda_sparse}

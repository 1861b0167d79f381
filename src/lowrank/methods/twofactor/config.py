"""Options of two-factor (SVD-DNN) training."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...method_config import FactorizedConfig

__all__ = ["TwoFactorConfig", "inner_dim"]


def inner_dim(out_features: int, in_features: int, inner_fraction: float) -> int:
    """Default inner dimension ``l = inner_fraction * min(m, n)`` (at least 1)."""
    return max(1, int(inner_fraction * min(out_features, in_features)))


@dataclass
class TwoFactorConfig(FactorizedConfig):
    inner_fraction: float = 0.5
    """Inner dimension l = inner_fraction * min(m, n) when no rank is given."""
    phi: float = 0.1
    """Fraction of the training steps spent dense before the SVD split."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.phi, (int, float)) or not 0 <= self.phi <= 1:
            raise ConfigError(f"phi must be in [0, 1], got {self.phi!r}")
        if not isinstance(self.inner_fraction, (int, float)) or not 0 < self.inner_fraction <= 1:
            raise ConfigError(f"inner_fraction must be in (0, 1], got {self.inner_fraction!r}")

    def default_rank(self, out_features: int, in_features: int) -> int:
        return inner_dim(out_features, in_features, self.inner_fraction)

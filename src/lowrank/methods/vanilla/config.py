"""Options of vanilla low-rank training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...method_config import FactorizedConfig

__all__ = ["VanillaConfig", "DEFAULT_RANK"]

#: Rank used when none of rank, energy, param_ratio is given (capped at min(m, n)).
DEFAULT_RANK = 20


@dataclass
class VanillaConfig(FactorizedConfig):
    init_decay: float = 1.0
    """Initial singular values scaled by 1/init_decay^i (ill-conditioning experiment)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.init_decay, (int, float)) or not self.init_decay > 0:
            raise ConfigError(f"init_decay must be positive, got {self.init_decay!r}")

    def default_rank(self, out_features: int, in_features: int) -> int:
        return min(DEFAULT_RANK, out_features, in_features)

    def layer_options(self) -> dict[str, Any]:
        return {"init_decay": self.init_decay}

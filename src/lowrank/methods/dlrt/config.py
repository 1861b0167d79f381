"""Options of dynamical low-rank training (DLRT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...method_config import FactorizedConfig
from .integrators import INTEGRATORS
from .truncation import TRUNCATIONS

__all__ = ["DLRTConfig", "DEFAULT_RANK"]

#: Rank used when none of rank, energy, param_ratio is given (capped at min(m, n)).
DEFAULT_RANK = 20


@dataclass
class DLRTConfig(FactorizedConfig):
    integrator: str = "parallel"
    """The integrator: kls (two passes per step) or parallel (one pass)."""
    adaptive: bool = False
    """Adapt ranks by truncating with tolerance tau."""
    tau: float = 0.1
    """Truncation tolerance, relative to ||S||_F unless tau_absolute."""
    tau_absolute: bool = False
    """Interpret tau as an absolute tolerance."""
    min_rank: int = 1
    """Lower cap on adaptive ranks."""
    max_rank: int | None = None
    """Upper cap on adaptive ranks (default: min(m, n) // 2)."""
    truncation: str = "power"
    """How a step truncates: power (one block power step from the current bases, then an r x r SVD; the exact SVD
    when an adaptive step must grow the rank) or svd (always the exact SVD of the 2r x 2r core)."""
    then_fixed: int = 0
    """The last N of the epochs run at the ranks the adaptive phase found (adaptive then fixed)."""
    init_decay: float = 1.0
    """Initial singular values scaled by 1/init_decay^i (ill-conditioning experiment)."""
    base_checkpoint: str | None = None
    """Dense checkpoint (a lowrank run folder or checkpoint, or a state_dict file) to start from."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.integrator not in INTEGRATORS:
            raise ConfigError(f"integrator {self.integrator!r} is not one of {', '.join(INTEGRATORS)}")
        if self.truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation {self.truncation!r} is not one of {', '.join(TRUNCATIONS)}")
        if not isinstance(self.tau, (int, float)) or not self.tau >= 0 or self.tau == float("inf"):
            raise ConfigError(f"tau must be a finite number >= 0, got {self.tau!r}")
        if not self.tau_absolute and self.tau >= 1:
            raise ConfigError(f"tau {self.tau!r} is relative to ||S||_F, so it must be below 1 (tau >= 1 truncates "
                              f"every layer to min_rank); use a smaller tau, or --tau-absolute for an absolute one")
        if not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ConfigError(f"min_rank must be an integer >= 1, got {self.min_rank!r}")
        if self.max_rank is not None and (not isinstance(self.max_rank, int) or self.max_rank < self.min_rank):
            raise ConfigError(f"max_rank must be an integer >= min_rank ({self.min_rank}), got {self.max_rank!r}")
        if not isinstance(self.then_fixed, int) or self.then_fixed < 0:
            raise ConfigError(f"then_fixed must be an integer >= 0, got {self.then_fixed!r}")
        if not isinstance(self.init_decay, (int, float)) or not self.init_decay > 0:
            raise ConfigError(f"init_decay must be positive, got {self.init_decay!r}")

    def default_rank(self, out_features: int, in_features: int) -> int:
        return min(DEFAULT_RANK, out_features, in_features)

    def layer_options(self) -> dict[str, Any]:
        return {"min_rank": self.min_rank, "max_rank": self.max_rank, "init_decay": self.init_decay}

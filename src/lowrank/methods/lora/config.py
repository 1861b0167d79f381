"""Options of LoRA fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ..dense import check_new_head
from ...method_config import FactorizedConfig

__all__ = ["LoRAConfig", "DEFAULT_RANK"]

#: Adapter rank when none of rank, energy, param_ratio is given (capped at min(m, n)).
DEFAULT_RANK = 8


@dataclass
class LoRAConfig(FactorizedConfig):
    lora_alpha: float = 16.0
    """Scaling numerator; the adapter's update B A is scaled by lora_alpha / rank."""
    base_checkpoint: str | None = None
    """Dense checkpoint (a lowrank run folder or checkpoint, or a state_dict file) to start from."""
    new_head: bool = False
    """Transfer: do not load base_checkpoint's output layer; train the model's freshly initialized one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_new_head(self.new_head, self.base_checkpoint)
        if not isinstance(self.lora_alpha, (int, float)) or not self.lora_alpha > 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha!r}")

    def default_rank(self, out_features: int, in_features: int) -> int:
        return min(DEFAULT_RANK, out_features, in_features)

    def layer_options(self) -> dict[str, Any]:
        return {"lora_alpha": self.lora_alpha}

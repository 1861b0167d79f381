"""LoRA fine-tuning (design §2.7): freeze a (trained) dense model, train rank-``r`` adapters."""

from __future__ import annotations

from torch import nn

from ..config import TrainConfig
from ..stepper import Stepper
from ._common import convert_by_config, load_base_weights

__all__ = ["prepare", "make_stepper", "DEFAULT_RANK"]

#: Adapter rank when the config gives none of rank, energy, param_ratio (capped at min(m, n)).
DEFAULT_RANK = 8


def prepare(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Optionally load ``base_checkpoint``, freeze every parameter, wrap the targeted Linears
    in :class:`~lowrank.layers.LoRALinear` (``alpha = lora_alpha``): only ``A``, ``B`` train."""
    if cfg.method.base_checkpoint:
        load_base_weights(model, cfg.method.base_checkpoint)
    model.requires_grad_(False)
    return convert_by_config(model, cfg, "lora", lambda n, m: min(DEFAULT_RANK, n, m),
                             alpha=cfg.method.lora_alpha)


def make_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    return Stepper(model, cfg.optim, total_steps)

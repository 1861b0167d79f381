"""Dense baseline: the model's own layers, trained by any torch optimizer (SGD, momentum, clipping, Adam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from torch import nn

from ...errors import ConfigError
from ...method_config import MethodConfig
from ...pretrained import start_from
from ...registry import Method, register_method
from ...stepper import Stepper

__all__ = ["DenseConfig", "check_new_head"]


def check_new_head(new_head: bool, base_checkpoint: str | None) -> None:
    """``new_head`` is a flag, and only means something when starting from ``base_checkpoint``."""
    if not isinstance(new_head, bool):
        raise ConfigError(f"new_head must be true or false, got {new_head!r}")
    if new_head and not base_checkpoint:
        raise ConfigError("new_head replaces the output layer of base_checkpoint's model: give --base-checkpoint")


@dataclass
class DenseConfig(MethodConfig):
    """Dense training; with ``base_checkpoint`` it is full fine-tuning (the optimizer's options are in OptimConfig)."""

    base_checkpoint: str | None = None
    """Dense checkpoint (a lowrank run folder or checkpoint, or a state_dict file) to start from."""
    new_head: bool = False
    """Transfer: do not load base_checkpoint's output layer; train the model's freshly initialized one."""

    def __post_init__(self) -> None:
        check_new_head(self.new_head, self.base_checkpoint)


def _prepare(model: nn.Module, cfg: DenseConfig) -> nn.Module:
    """The model itself, its weights loaded from ``base_checkpoint`` when one is given (every weight trains)."""
    if cfg.base_checkpoint:
        start_from(model, cfg.base_checkpoint, new_head=cfg.new_head)
    return model


def _label(cfg: dict[str, Any]) -> str:
    o = cfg["optim"]
    text = f"dense {o['optimizer']}"
    if o.get("momentum"):
        text += f" momentum {o['momentum']:g}"
    if o.get("clip"):
        text += f" clip {o['clip']:g}"
    return text


register_method(Method(
    name="dense", config=DenseConfig, summary="plain layers, any optimizer (the baseline)",
    prepare=_prepare,
    make_stepper=lambda model, cfg, total_steps: Stepper(model, cfg.optim, total_steps),
    label=_label,
))

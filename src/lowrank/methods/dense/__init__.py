"""Dense baseline: the model's own layers, trained by any torch optimizer (SGD, momentum, clipping, Adam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from ...method_config import MethodConfig
from ...registry import Method, register_method
from ...stepper import Stepper

__all__ = ["DenseConfig"]


@dataclass
class DenseConfig(MethodConfig):
    """Dense training has no options of its own (the optimizer's are in OptimConfig)."""


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
    prepare=lambda model, cfg: model,
    make_stepper=lambda model, cfg, total_steps: Stepper(model, cfg.optim, total_steps),
    label=_label,
))

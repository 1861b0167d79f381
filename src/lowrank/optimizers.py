"""The optimizers and learning-rate schedules a config can name: one table each, next to the code.

``OPTIMIZERS`` maps a name to its torch class; ``SCHEDULES`` maps a name to the factor on
the base learning rate as a function of the run's progress ``t`` = steps done / total steps:

- ``constant``: ``1``;
- ``cosine``: ``(1 + cos(pi t)) / 2``, from 1 at the start to 0 at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import OptimConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "lr_scale"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
}

SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0))),
}


def make_optimizer(params: Iterable[torch.Tensor] | Iterable[dict], cfg: "OptimConfig") -> torch.optim.Optimizer:
    """The torch optimizer named by ``cfg.optimizer`` over ``params`` (tensors or parameter groups)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer {cfg.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    # fused: one C++/CUDA kernel per parameter for the whole update (on CPU about 2.5x less
    # time than foreach, which there is a loop of per-tensor ops); foreach elsewhere.
    fast = ({"fused": True} if all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)
            else {"foreach": True})
    extra = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    return OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra, **fast)


def lr_scale(schedule: str, progress: float) -> float:
    """Factor on the base learning rate at ``progress`` = steps done / total steps, in [0, 1]."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule](progress)

"""Task losses a config can name, and the metrics reported for each kind of target.

Classification (integer class targets): ``cross_entropy``; metric: accuracy.
Regression (real targets, one output): ``mse`` = mean of ``(f(x) - y)^2``, ``mae`` = mean
of ``|f(x) - y|``; metrics: MAE, RMSE = ``sqrt(mean (f(x) - y)^2)`` and
``R^2 = 1 - sum (f(x) - y)^2 / sum (y - mean y)^2``.
``auto`` picks ``cross_entropy`` for class targets and ``mse`` for real ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError

__all__ = ["LOSSES", "LossFn", "loss_function", "resolve_loss", "is_regression"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, LossFn | None] = {
    "auto": None,
    "cross_entropy": F.cross_entropy,
    "mse": lambda out, y: F.mse_loss(out.squeeze(-1), y),
    "mae": lambda out, y: F.l1_loss(out.squeeze(-1), y),
}


def is_regression(loss: str) -> bool:
    """True for the losses of real-valued targets."""
    return loss in ("mse", "mae")


def resolve_loss(loss: str, num_classes: int) -> str:
    """``loss`` with ``auto`` decided by the targets (``num_classes == 0``: real-valued); a
    classification loss on real targets, or the reverse, is a ConfigError saying which to use."""
    if loss not in LOSSES:
        raise ConfigError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    if loss == "auto":
        return "mse" if num_classes == 0 else "cross_entropy"
    if num_classes == 0 and not is_regression(loss):
        raise ConfigError(f"loss {loss!r} needs class labels but the targets are real values: use --loss mse or mae")
    if num_classes > 0 and is_regression(loss):
        raise ConfigError(f"loss {loss!r} needs real-valued targets but the data has {num_classes} classes: "
                          f"use --loss cross_entropy (or --task regression when reading the data)")
    return loss


def loss_function(name: str) -> LossFn:
    """The loss called ``name`` (``auto`` must be resolved first, see :func:`resolve_loss`)."""
    fn = LOSSES.get(name)
    if fn is None:
        raise ConfigError(f"loss {name!r} is not one of {', '.join(k for k in LOSSES if k != 'auto')}")
    return fn

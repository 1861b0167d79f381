"""Retraining after truncation: the two factors by the run's optimizer, or DLRT at fixed rank.

``factors``: the truncated two-factor model (``W1``, ``W2``, biases and every layer left dense)
is trained by :class:`~lowrank.stepper.Stepper` with the run's :class:`~lowrank.config.OptimConfig`
(optimizer, schedule, clipping, penalties; ``lr`` replaced when given).

``dlrt``: the dense model's selected layers become :class:`~lowrank.methods.dlrt.DLRTLinear` /
``DLRTConv2d`` at the same ranks (``U, S, V`` of the same truncated SVD) and are trained by
:class:`lowrank.DLRT` with the parallel integrator at fixed rank (inner optimizer: the run's);
afterwards they are put back in two-factor form (``W1 = U S``, ``W2 = V^T``, exact).

Both run :func:`lowrank.train.fit` with the run's batch size, loss and seed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping

from torch import nn

from ..config import OptimConfig, TrainConfig
from ..convert import convert
from ..data import Splits
from ..stepper import Stepper
from ..train import fit
from .truncate import to_two_factor, truncate

__all__ = ["retrain"]


def retrain(dense: nn.Module, truncated: nn.Module | None, ranks: Mapping[str, int], data: Splits, cfg: TrainConfig, *,
            epochs: int, method: str = "factors", lr: float | None = None) -> tuple[nn.Module, float]:
    """``(retrained two-factor model, seconds)``: ``epochs`` epochs of ``method`` from the truncation of
    ``dense`` to ``ranks`` (``truncated``: that truncation if already made, left untouched). The seconds are the
    training steps' (each epoch's ``epoch_time``, without the loop's evaluations)."""
    optim: OptimConfig = dataclasses.replace(cfg.optim, lr=lr) if lr is not None else cfg.optim
    steps = math.ceil(len(data.train) / cfg.batch_size) * epochs
    if method == "dlrt":
        from ..methods.dlrt.integrators import make_dlrt_stepper

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # ranks past break-even: measured, not warned
            model = convert(dense, "dlrt", target=list(ranks), rank_overrides=dict(ranks))
        stepper: Stepper = make_dlrt_stepper(model, optim, steps, integrator="parallel", adaptive=False)
    else:
        model = truncate(dense, ranks) if truncated is None else copy.deepcopy(truncated)
        stepper = Stepper(model, optim, steps)
    model.train()
    history = fit(model, data, stepper, epochs=epochs, batch_size=cfg.batch_size, loss=cfg.loss, seed=cfg.seed,
                  schedule=optim.schedule, device="cpu")
    seconds = float(sum(row["epoch_time"] for row in history))
    model.eval()
    return to_two_factor(model), seconds

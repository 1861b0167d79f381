"""The CLI trainer's DLRT step: a thin :class:`~lowrank.stepper.Stepper` over :class:`~.optimizer.DLRT`.

``step(x, y, loss_fn)`` is what a user's own loop does with the optimizer: ``zero_grad``,
forward, task loss plus the L1/L2 penalties (:func:`~lowrank.stepper.penalty`),
``backward``, ``opt.step(closure)`` (the closure repeats the pass; fixed-rank KLS calls
it for its second pass). ``cfg.clip`` becomes the optimizer's ``clip`` (clipping inside
each inner optimizer call: ``K, L, S`` and the rest together for ``parallel``; ``K, L``
in pass 1 and ``S`` plus the rest in pass 2 for ``kls``), ``cfg.l1``/``cfg.l2`` its
``lift_penalties`` (their gradient reaches ``S`` by autograd and is lifted to ``K``,
``L`` as ``U0 dP/dS`` and ``V0 (dP/dS)^T``, the gradient of ``P(U^T W V)`` in ``W``).

``then_fixed = N``: the last ``N`` of ``epochs`` run at fixed rank; the switch happens
in :meth:`DLRTStepper.end_epoch` when ``epoch + 1 == epochs - N`` (it sets the
optimizer's ``adaptive`` to False; the integrator then takes its fixed-rank step).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ...config import OptimConfig
from ...errors import ConfigError
from ...losses import LossFn
from ...optimizers import make_optimizer
from ...stepper import GradientHook, Stepper, forward_autocast, penalty
from .layer import DLRTLayer
from .optimizer import DLRT

__all__ = ["DLRTStepper"]


class DLRTStepper(Stepper):
    """One DLRT training step per call, by a :class:`~.optimizer.DLRT` optimizer (``self.optimizer``).

    Args:
        model: a model with at least one DLRT layer.
        cfg: optimizer settings (rule, lr, momentum, weight decay, penalties, clipping); the
            inner optimizer is :func:`~lowrank.optimizers.make_optimizer`'s.
        total_steps: planned number of steps (informational).
        integrator: ``"parallel"`` or ``"kls"``.
        adaptive, tau, tau_absolute, truncation, reorth_every, diagonalize_every: the
            optimizer's (see :class:`~.optimizer.DLRT`).
        then_fixed: the last ``then_fixed`` epochs of ``epochs`` run at fixed rank.
        epochs: number of epochs of the run (needed by ``then_fixed``).
    """

    def __init__(self, model: nn.Module, cfg: OptimConfig, total_steps: int = 0, *, integrator: str = "parallel",
                 adaptive: bool = False, tau: float = 0.1, tau_absolute: bool = False, then_fixed: int = 0,
                 epochs: int | None = None, truncation: str = "power", reorth_every: int = 50,
                 diagonalize_every: int = 10):
        if then_fixed < 0:
            raise ConfigError(f"then_fixed must be >= 0, got {then_fixed}")
        if then_fixed and adaptive and (epochs is None or then_fixed >= epochs):
            raise ConfigError(f"then_fixed={then_fixed} needs more epochs than that (epochs={epochs}): "
                              f"the adaptive phase would be empty")
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.then_fixed, self.epochs = int(then_fixed), epochs
        self.optimizer: DLRT = DLRT(model, functools.partial(make_optimizer, cfg=cfg), integrator=integrator,
                                    adaptive=adaptive, tau=tau, tau_absolute=tau_absolute, truncation=truncation,
                                    reorth_every=reorth_every, diagonalize_every=diagonalize_every,
                                    clip=cfg.clip or None, lift_penalties=bool(cfg.l1 or cfg.l2))

    # ------------------------------------------------------------------ the optimizer's, by name

    @property
    def integrator(self) -> str:
        return self.optimizer.integrator

    @property
    def layers(self) -> list[DLRTLayer]:
        return self.optimizer.layers

    @property
    def names(self) -> list[str]:
        return self.optimizer.names

    @property
    def K(self) -> list[nn.Parameter]:
        return self.optimizer.K

    @property
    def L(self) -> list[nn.Parameter]:
        return self.optimizer.L

    @property
    def steps(self) -> int:  # type: ignore[override]
        return self.optimizer.steps

    @property
    def adaptive(self) -> bool:
        return self.optimizer.adaptive

    @property
    def tau(self) -> float:
        return self.optimizer.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self.optimizer.tau = float(value)

    @property
    def exact_fallbacks(self) -> int:
        return self.optimizer.exact_fallbacks

    @property
    def timings(self) -> dict[str, float]:  # type: ignore[override]
        return self.optimizer.timings

    # ------------------------------------------------------------------ steps

    def _pass(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """``zero_grad``, task loss at the current weights, ``loss + penalty`` backpropagated."""
        self.optimizer.zero_grad()
        with forward_autocast(self.cfg.autocast, self._device()):
            loss = loss_fn(self.model(x), y)
        extra = penalty(self.model, self.cfg)
        (loss + extra if torch.is_tensor(extra) else loss).backward()  # no add node without a penalty
        return loss.detach()

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """One training step; returns the batch task loss at the weights before the step (detached)."""
        opt = self.optimizer
        opt.clock.start()
        loss = self._pass(x, y, loss_fn)
        opt.clock.lap("fwd_bwd")
        opt.step(lambda: self._pass(x, y, loss_fn))
        return loss

    def set_gradient_averager(self, averager: GradientHook | None) -> None:
        """The optimizer averages every gradient a step reads, before its QR / SVD (see
        :attr:`~.optimizer.DLRT.gradient_averager`)."""
        self.optimizer.gradient_averager = averager

    @property
    def gradient_averager(self) -> GradientHook | None:  # type: ignore[override]
        return self.optimizer.gradient_averager

    def optimizer_is_stale(self) -> bool:
        """Never: the DLRT optimizer follows its layers' rank changes itself."""
        return False

    def rebuild_optimizer(self) -> None:
        raise ConfigError("a DLRT optimizer is not rebuilt; build a new DLRTStepper instead")

    # ------------------------------------------------------------------ epochs & state

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Per-epoch metrics: ranks (current, min, max per layer), orthonormality error, timings.

        Also performs the ``then_fixed`` switch to fixed-rank training.
        """
        out = self.optimizer.epoch_stats(reset=False)
        opt = self.optimizer
        if self.then_fixed and opt.adaptive and self.epochs is not None and epoch + 1 == self.epochs - self.then_fixed:
            opt.adaptive = False
        opt._reset_epoch_stats()
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

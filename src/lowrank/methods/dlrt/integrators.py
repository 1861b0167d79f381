"""The DLRT steppers by integrator name: :data:`INTEGRATORS` and :func:`make_dlrt_stepper`."""

from __future__ import annotations

from torch import nn

from ...config import OptimConfig
from ...errors import ConfigError
from .adaptive_kls_step import AdaptiveKLSStepper
from .base_step import DLRTStepper
from .kls_step import KLSStepper
from .parallel_step import ParallelStepper

__all__ = ["INTEGRATORS", "make_dlrt_stepper", "DLRTStepper", "ParallelStepper", "KLSStepper",
           "AdaptiveKLSStepper"]

#: Integrator name -> (fixed-rank stepper class, rank-adaptive stepper class):
#: ``kls`` (two passes per step; one when adaptive) and ``parallel`` (one pass per step).
INTEGRATORS: dict[str, tuple[type[DLRTStepper], type[DLRTStepper]]] = {
    "kls": (KLSStepper, AdaptiveKLSStepper),
    "parallel": (ParallelStepper, ParallelStepper),
}


def make_dlrt_stepper(model: nn.Module, cfg: OptimConfig, total_steps: int = 0, *, integrator: str = "parallel",
                      adaptive: bool = False, tau: float = 0.1, tau_absolute: bool = False, then_fixed: int = 0,
                      epochs: int | None = None, truncation: str = "power", reorth_every: int = 50,
                      diagonalize_every: int = 10) -> DLRTStepper:
    """The stepper of ``integrator`` (fixed-rank or rank-adaptive by ``adaptive``) for ``model``.

    The options are :class:`~.base_step.DLRTStepper`'s; ``diagonalize_every`` is
    :class:`~.parallel_step.ParallelStepper`'s (the KLS steppers have no such option).
    """
    if integrator not in INTEGRATORS:
        raise ConfigError(f"integrator {integrator!r} is not one of {', '.join(INTEGRATORS)}")
    cls = INTEGRATORS[integrator][bool(adaptive)]
    options = dict(adaptive=adaptive, tau=tau, tau_absolute=tau_absolute, then_fixed=then_fixed, epochs=epochs,
                   truncation=truncation, reorth_every=reorth_every)
    if issubclass(cls, ParallelStepper):
        options["diagonalize_every"] = diagonalize_every
    return cls(model, cfg, total_steps, **options)

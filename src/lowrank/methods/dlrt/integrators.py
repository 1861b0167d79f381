"""The DLRT integrators by name: :data:`INTEGRATORS` and :func:`make_dlrt_stepper`."""

from __future__ import annotations

from torch import nn

from ...config import OptimConfig
from ...errors import ConfigError
from .base_step import DLRTStepper
from .kls_step import KLSDLRT
from .optimizer import DLRT
from .parallel_step import ParallelDLRT

__all__ = ["INTEGRATORS", "make_dlrt_stepper", "DLRT", "DLRTStepper", "ParallelDLRT", "KLSDLRT"]

#: Integrator name -> the :class:`DLRT` subclass that runs it (fixed-rank and rank-adaptive):
#: ``kls`` (two passes per step at fixed rank; one when adaptive) and ``parallel`` (one pass).
INTEGRATORS: dict[str, type[DLRT]] = DLRT.INTEGRATORS     # filled by the subclasses imported above


def make_dlrt_stepper(model: nn.Module, cfg: OptimConfig, total_steps: int = 0, *, integrator: str = "parallel",
                      adaptive: bool = False, tau: float = 0.1, tau_absolute: bool = False, then_fixed: int = 0,
                      epochs: int | None = None, truncation: str = "power", reorth_every: int = 50,
                      diagonalize_every: int = 10) -> DLRTStepper:
    """The CLI stepper of ``integrator`` (fixed-rank or rank-adaptive by ``adaptive``) for ``model``.

    The options are :class:`~.optimizer.DLRT`'s; ``diagonalize_every`` only matters to the
    parallel integrator.
    """
    if integrator not in INTEGRATORS:
        raise ConfigError(f"integrator {integrator!r} is not one of {', '.join(INTEGRATORS)}")
    return DLRTStepper(model, cfg, total_steps, integrator=integrator, adaptive=adaptive, tau=tau,
                       tau_absolute=tau_absolute, then_fixed=then_fixed, epochs=epochs, truncation=truncation,
                       reorth_every=reorth_every, diagonalize_every=diagonalize_every)

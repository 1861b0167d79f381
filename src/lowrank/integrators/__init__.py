"""DLRT integrators: the update rules (pure tensor functions) and the optimizer glue.

- :mod:`.basis` — orthonormal augmentation ``[U0 | U~]`` of a basis by a K-step result;
- :mod:`.kls` — sequential KLS basis / coefficient updates (fixed rank and rank-adaptive);
- :mod:`.parallel` — the parallel integrator's augmented core ``S^``;
- :mod:`.truncation` — SVD truncation of a core by tolerance or to a fixed rank;
- :mod:`.optim_state` — carrying optimizer state across a change of basis;
- :mod:`.stepper` — :class:`DLRTStepper`, the :class:`~lowrank.stepper.Stepper` that runs them.
"""

from __future__ import annotations

from .basis import augment_basis, augment_parts
from .kls import kls_augmented_basis, kls_coefficients, kls_fixed_basis
from .optim_state import fill_augmented_state, transform_state
from .parallel import parallel_augment, parallel_core, rotate_basis
from .stepper import INTEGRATORS, DLRTStepper
from .truncation import select_rank, truncate

__all__ = [
    "augment_basis", "augment_parts", "kls_fixed_basis", "kls_augmented_basis", "kls_coefficients",
    "parallel_core", "parallel_augment", "rotate_basis", "truncate", "select_rank",
    "transform_state", "fill_augmented_state", "DLRTStepper", "INTEGRATORS",
]

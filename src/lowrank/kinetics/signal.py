"""The stopped-flow signal model: ``y = a t + b + c exp(-k t)`` (thesis eq. 3.3, with ``c`` as amplitude).

``t`` is the time since the trace's start time ``X_start`` (the end of the mixing
artefact), in seconds; ``k`` is the rate constant in s^-1, ``a`` the slope in V/s,
``b`` the intercept in V and ``c`` the amplitude in V. The generator
(:mod:`lowrank.kinetics.generate`) draws traces from it and the curve_fit
baseline (:mod:`lowrank.kinetics.curve_fit`) fits it, both with this convention.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exponential_signal", "MS_PER_S"]

MS_PER_S = 1000.0
"""The .bka time column is in milliseconds; the model's time is in seconds."""


def exponential_signal(t: np.ndarray, a: float, b: float, c: float, k: float) -> np.ndarray:
    """``a t + b + c exp(-k t)`` for times ``t`` (seconds, any shape); same shape as ``t``."""
    t = np.asarray(t, dtype=np.float64)
    return a * t + b + c * np.exp(-k * t)

"""The chemist's method: fit ``y = a t + b + c exp(-k t)`` to each trace with ``scipy.optimize.curve_fit``.

Per trace, after dropping the rows before ``X_start`` (``t`` in seconds since
``X_start``, every row, no down-sampling): the model is linear in ``a, b, c``
for a fixed ``k``, so a starting point is found by solving that linear least
squares problem on a log-spaced grid of ``k`` (``K_GRID``, 0.1 to 10^4 s^-1) and
keeping the best; ``curve_fit`` (Levenberg-Marquardt) then refines all four
parameters from there. A fit that fails to converge keeps the grid's best
point and is counted as failed.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from .signal import MS_PER_S, exponential_signal

__all__ = ["ExpFit", "fit_trace", "K_GRID"]

K_GRID = np.geomspace(0.1, 1e4, 81)
"""Rates (s^-1) tried for the starting point."""


@dataclass
class ExpFit:
    """The fitted parameters of one trace."""

    a: float
    b: float
    c: float
    k: float
    """The rate constant, s^-1 (the prediction compared with the label)."""
    converged: bool
    """False when ``curve_fit`` failed and the grid's starting point was kept."""
    seconds: float
    """Wall time of this fit."""


def _linear_fit(t: np.ndarray, y: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    design = np.stack([t, np.ones_like(t), np.exp(-k * t)], axis=1)    # (R, 3)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)                   # (3,) a, b, c
    r = design @ coef - y
    return coef, float(r @ r)


def fit_trace(time_ms: np.ndarray, volts: np.ndarray, x_start: float) -> ExpFit:
    """Fit one trace's rows at or after ``x_start`` (ms) to the exponential model (see the module docstring)."""
    from scipy.optimize import curve_fit

    t0 = time.perf_counter()
    keep = time_ms >= x_start
    t = (time_ms[keep] - x_start) / MS_PER_S                            # (R,) seconds
    y = volts[keep]
    if len(t) < 5:
        raise ValueError(f"{len(t)} rows after X_start; a 4-parameter fit needs at least 5")
    best = min(((k, *_linear_fit(t, y, k)) for k in K_GRID), key=lambda r: r[2])
    k0, coef, _ = best
    p0 = [float(coef[0]), float(coef[1]), float(coef[2]), float(k0)]
    converged = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(exponential_signal, t, y, p0=p0, maxfev=2000)
        if not np.all(np.isfinite(p)) or p[3] <= 0:
            raise RuntimeError("non-finite or negative rate")
    except (RuntimeError, ValueError):
        p, converged = np.array(p0), False
    return ExpFit(float(p[0]), float(p[1]), float(p[2]), float(p[3]), converged, time.perf_counter() - t0)

"""Stopped-flow kinetics: the signal model, a generator of .bka folders, and the curve_fit baseline.

The reader of the folders is :mod:`lowrank.data.stopped_flow` (``--dataset stopped-flow:PATH``).
"""

from __future__ import annotations

from .signal import MS_PER_S, exponential_signal

__all__ = ["exponential_signal", "MS_PER_S"]

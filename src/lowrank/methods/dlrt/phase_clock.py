"""Wall time per phase of a training step (forward/backward, optimizer, integrator linear algebra).

On a CPU a phase is the host time between two marks. On a GPU the host runs ahead of
the device, so host time says little; synchronizing at every mark would say more but
stall the launch queue three times a step (on small layers the DLRT step is bound by
kernel launches, and a stalled queue roughly adds the launch time to the device time).
There the marks are CUDA events instead, read back only when the totals are asked for
(or when many are pending), so timing costs no synchronization inside the step.
"""

from __future__ import annotations

import time

import torch

__all__ = ["PhaseClock"]


class PhaseClock:
    """Accumulates seconds per phase: ``start()``, then ``lap(phase)`` at the end of each phase.

    Args:
        phases: the phase names; :attr:`totals` has one entry each.
        cuda: time with CUDA events on the current device instead of the host clock.
    """

    #: Pending event pairs beyond this are read back (the oldest are long finished).
    MAX_PENDING = 512

    def __init__(self, phases: tuple[str, ...], cuda: bool = False):
        self.phases = phases
        self.cuda = cuda
        self._totals = dict.fromkeys(phases, 0.0)
        self._t = 0.0
        self._mark: torch.cuda.Event | None = None
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def _event(self) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def start(self) -> None:
        if self.cuda:
            self._mark = self._event()
        else:
            self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Add the time since the last mark to ``phase``; this becomes the new mark."""
        if self.cuda:
            ev = self._event()
            self._pending.append((phase, self._mark, ev))
            self._mark = ev
            if len(self._pending) > self.MAX_PENDING:
                self._resolve(len(self._pending) // 2)
        else:
            t = time.perf_counter()
            self._totals[phase] += t - self._t
            self._t = t

    def _resolve(self, count: int) -> None:
        for phase, a, b in self._pending[:count]:
            self._totals[phase] += a.elapsed_time(b) / 1e3          # ms -> s; waits for b if needed
        del self._pending[:count]

    @property
    def totals(self) -> dict[str, float]:
        """Seconds per phase since the last :meth:`reset` (waits for pending GPU events)."""
        self._resolve(len(self._pending))
        return dict(self._totals)

    def reset(self) -> None:
        self._totals = dict.fromkeys(self.phases, 0.0)
        self._pending = []

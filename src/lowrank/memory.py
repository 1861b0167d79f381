"""Peak memory of a block of work.

On CUDA, ``torch.cuda.max_memory_allocated`` is exact. On the CPU, torch's
allocations are invisible to ``tracemalloc``, so a background thread samples the
process' resident set size (``/proc/self/statm``) every few milliseconds; the
figure is the peak RSS above the RSS at the start of the block, in bytes.
"""

from __future__ import annotations

import os
import threading

import torch

__all__ = ["PeakMemory"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: no sampling, report 0
        return 0


class PeakMemory:
    """Context manager; ``peak`` holds bytes above the starting level after exit."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss()
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss())
        self.peak = self._max - self._base

"""The timing protocol of the step benchmarks (``bench_dlrt.py``, ``bench_transformer_step.py``,
``bench_finetune_step.py``): everything compared is timed in interleaved rounds (round-robin,
a block of calls each) and a low percentile of its blocks is kept, so a load change on a
shared machine hits every row alike. Compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["StepStream", "Timed", "interleaved", "parser", "sync"]


def parser(description: str, *, threads: int, rounds: int, steps: int, batch: int = 64) -> argparse.ArgumentParser:
    """The options every step benchmark takes, with its defaults."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=steps, help="steps per block")
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--json", default=None, help="also write the rows here")
    return ap


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """Something timed per call in the interleaved rounds: ``call()`` once per step."""

    def __init__(self, name: str, call: Callable[[], Any], device: torch.device = torch.device("cpu")):
        self.name, self.call, self.device = name, call, device
        self.blocks: list[float] = []

    def run(self, steps: int) -> float:
        """Seconds per call over ``steps`` calls."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.call()
        sync(self.device)
        return (time.perf_counter() - t0) / steps

    def after_warmup(self) -> None:
        """Called once between the warm-up and the timed rounds."""


class StepStream(Timed):
    """A stepper (``step(x, y, loss_fn)``, as the CLI's) stepping through fixed batches of
    ``x``, ``y``, from the start again at the end."""

    def __init__(self, name: str, stepper: Any, x: torch.Tensor, y: torch.Tensor, batch: int,
                 loss_fn: Callable[..., torch.Tensor], device: torch.device = torch.device("cpu"),
                 shuffle: bool = False):
        self.stepper, self.x, self.y, self.batch, self.loss_fn = stepper, x, y, batch, loss_fn
        self.order = torch.randperm(len(x), device=x.device) if shuffle else None
        self.pos = 0
        super().__init__(name, self._step, device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch > len(self.x):
            self.pos = 0
        idx: slice | torch.Tensor = slice(self.pos, self.pos + self.batch)
        if self.order is not None:
            idx = self.order[idx]
        self.pos += self.batch
        return self.x[idx], self.y[idx]

    def _step(self) -> None:
        self.stepper.step(*self.next_batch(), self.loss_fn)

    def after_warmup(self) -> None:
        if hasattr(self.stepper, "end_epoch"):
            self.stepper.end_epoch(0)  # e.g. reset the DLRT phase timers after warm-up


def interleaved(timed: list[Timed], rounds: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per call of each: the 25th percentile over ``rounds`` interleaved blocks of
    ``steps`` calls, after ``warmup`` calls each.

    A low percentile rather than the median: on a shared machine a block is only ever
    slowed down by other processes, never sped up.
    """
    for t in timed:
        t.run(warmup)
        t.after_warmup()
    for _ in range(rounds):
        for t in timed:
            t.blocks.append(t.run(steps))
    return {t.name: statistics.quantiles(t.blocks, n=4, method="inclusive")[0] if len(t.blocks) > 1
            else t.blocks[0] for t in timed}

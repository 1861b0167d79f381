"""Peak-memory measurement sees a real allocation and nothing when there is none."""

import torch

from lowrank.memory import PeakMemory


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as m:
        a = torch.ones(25_000_000)  # 100 MB, touched
        del a
    assert 80e6 <= m.peak <= 400e6


def test_peak_memory_of_nothing_is_small():
    with PeakMemory() as m:
        pass
    assert m.peak < 20e6

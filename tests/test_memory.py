"""Peak-memory measurement sees a real allocation and nothing when there is none.

The figure is the growth of the process' resident memory, so a block that reuses
memory freed earlier in the same process rightly reports little: the checks run in a
fresh interpreter, where a new 100 MB tensor must come from new pages.
"""

import subprocess
import sys

CODE = """
import torch
from lowrank.memory import PeakMemory
with PeakMemory() as big:
    a = torch.ones(25_000_000)  # 100 MB, touched
    del a
with PeakMemory() as nothing:
    pass
print(big.peak, nothing.peak)
"""


def test_peak_memory_sees_an_allocation_and_nothing_else():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=120)
    big, nothing = map(int, out.stdout.split())
    assert 80e6 <= big <= 400e6
    assert nothing < 20e6

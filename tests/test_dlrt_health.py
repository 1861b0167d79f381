"""Long-run DLRT health: 10,000 rank-adaptive Adam steps on Fashion-MNIST.

Not in the default suite (about a minute per integrator): run with
``LOWRANK_LONG=1 pytest tests/test_dlrt_health.py``. The script itself is
``benchmarks/dlrt_health.py``; it prints the rank traces.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dlrt_health.py"

pytestmark = pytest.mark.skipif(os.environ.get("LOWRANK_LONG") != "1",
                                reason="long run; set LOWRANK_LONG=1 to include it")


@pytest.mark.parametrize("integrator", ["parallel", "kls"])
def test_ten_thousand_adaptive_steps_stay_healthy(integrator: str, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("dlrt_health", SCRIPT)
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    # Start at rank 64 so the truncation has work to do; orthonormality, caps, NaN are checked inside.
    assert health.main(["--steps", "10000", "--integrator", integrator, "--rank", "64", "--max-rank", "128",
                        "--tau", "0.1", "--json", str(tmp_path / "h.json")]) == 0

"""Result rows for ``benchmarks/run_all.py``, which names a JSON-lines file in ``LOWRANK_BENCH_JSON``."""

from __future__ import annotations

import json
import os

__all__ = ["report_json"]


def report_json(rows: list[dict]) -> None:
    """Append ``rows`` (``{"benchmark", "metric", "value", "unit", "target", "ok"}``) to the file
    ``benchmarks/run_all.py`` set; nothing when a script runs alone."""
    path = os.environ.get("LOWRANK_BENCH_JSON")
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

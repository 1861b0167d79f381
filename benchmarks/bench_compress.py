"""Inference of a compressed 4096-wide MLP against its dense form, in PyTorch and onnxruntime, in one run.

The MLP 4096-4096-4096-10 (random init, seed 0) has its two hidden layers truncated by SVD to
two factors holding at most 10% of their weights (``param_ratio`` 0.1: rank 204, the two
factors ``204 (4096 + 4096)`` of ``4096^2`` weights); the output layer stays dense, as
``lowrank compress`` leaves it. Both models run forward at batch 1024 (no grad), in PyTorch
(eval, inference mode) and in onnxruntime (the files ``lowrank export`` writes, CPU provider,
as many intra-op threads as PyTorch). The four variants are timed in interleaved rounds after
warm-up; the speed-ups are medians of the per-round ratios dense / compressed, so every
ratio is measured under the same background load. Target (DESIGN.md section 5): >= 3x in both.

    python benchmarks/bench_compress.py [--budget 20] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import lowrank
from lowrank.accounting import count
from lowrank.compress import export_onnx, selected_layers, truncate
from lowrank.compress.measure import ort_session
from lowrank.linalg import rank_for_param_ratio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_rows import report_json  # noqa: E402

WIDTH, BATCH, RATIO, TARGET = 4096, 1024, 0.10, 3.0


def rounds(fns: dict[str, Callable[[], None]], budget: float, min_rounds: int = 5) -> list[dict[str, float]]:
    """Rounds of one timed call of each function (after two warm-up calls each), until ``budget`` seconds."""
    for fn in fns.values():
        fn()
        fn()
    out: list[dict[str, float]] = []
    start = time.perf_counter()
    while len(out) < min_rounds or (time.perf_counter() - start < budget and len(out) < 200):
        row = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            row[name] = time.perf_counter() - t0
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of interleaved rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ns = ap.parse_args()
    if ns.threads is not None:
        torch.set_num_threads(ns.threads)
    torch.manual_seed(0)
    dense = lowrank.mlp([WIDTH, WIDTH, WIDTH, 10]).eval()
    names = selected_layers(dense)
    ranks = {n: rank_for_param_ratio(WIDTH, WIDTH, RATIO) for n in names}
    small = truncate(dense, ranks).eval()
    x = torch.randn(BATCH, WIDTH)
    kept = count(small).hidden
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} "
          f"(a shared machine: other work runs meanwhile)")
    print(f"MLP {WIDTH}-{WIDTH}-{WIDTH}-10, hidden layers {', '.join(names)} at rank {ranks[names[0]]}: "
          f"{kept.count:,} of {WIDTH * WIDTH * len(names):,} hidden weights ({100 * kept.ratio:.1f}%), batch {BATCH}")
    with tempfile.TemporaryDirectory() as tmp:
        exports = {k: export_onnx(m, Path(tmp) / f"{k}.onnx", (WIDTH,), check_input=x[:16], strict=False)
                   for k, m in (("dense", dense), ("compressed", small))}
        sessions = {k: ort_session(e.path) for k, e in exports.items()}
        feed = {"input": x.numpy()}

        def torch_call(model: torch.nn.Module) -> Callable[[], None]:
            def fn() -> None:
                with torch.inference_mode():
                    model(x)
            return fn

        def ort_call(session) -> Callable[[], None]:
            return lambda: session.run(None, feed)

        fns = {"torch dense": torch_call(dense), "torch compressed": torch_call(small),
               "ort dense": ort_call(sessions["dense"]), "ort compressed": ort_call(sessions["compressed"])}
        rows = rounds(fns, ns.budget)
    times = {k: statistics.median(r[k] for r in rows) for k in fns}
    speedup = {e: statistics.median(r[f"{e} dense"] / r[f"{e} compressed"] for r in rows) for e in ("torch", "ort")}
    print(f"{len(rows)} interleaved rounds; median ms per batch of {BATCH}:")
    for engine, label in (("torch", "PyTorch"), ("ort", "onnxruntime")):
        ok = "met" if speedup[engine] >= TARGET else "NOT met"
        print(f"  {label:12s} dense {1e3 * times[f'{engine} dense']:8.1f}  compressed "
              f"{1e3 * times[f'{engine} compressed']:7.1f}  speed-up {speedup[engine]:.2f}x "
              f"(target >= {TARGET:g}x: {ok})")
    print(f"  ONNX vs PyTorch max abs difference: dense {exports['dense'].max_abs_diff:.2g}, "
          f"compressed {exports['compressed'].max_abs_diff:.2g}")
    report_json([{"benchmark": "compressed 4096-wide MLP inference", "metric": f"{label} dense / compressed at "
                  f"batch {BATCH} (median of per-round ratios)", "value": round(speedup[e], 3), "unit": "x",
                  "target": f">= {TARGET:g}", "ok": speedup[e] >= TARGET}
                 for e, label in (("torch", "PyTorch"), ("ort", "onnxruntime"))])


if __name__ == "__main__":
    main()

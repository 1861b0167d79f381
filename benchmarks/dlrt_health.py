"""Long-run numerical health of DLRT: 10,000 Adam steps on Fashion-MNIST (rank-adaptive or fixed).

Checks, for every DLRT layer: ``||U^T U - I||_F`` and ``||V^T V - I||_F`` <= 1e-5 (float32,
measured every ``--every`` steps and at the end), no NaN/inf in the loss or the factors,
ranks within ``[min_rank, max_rank]`` at every step, and rank stability: the thesis saw
ranks alternate between r and 2r step after step; here every rank change is counted and
"flips" (a change undone within 3 steps, the oscillation signature) must be zero. Prints
the rank trace as runs ``rank x count`` and exits non-zero when a check fails.

    python benchmarks/dlrt_health.py [--steps 10000] [--integrator parallel|kls] [--tau 0.05] [--fixed]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from torch.nn import functional as F

from lowrank.run import apply_method, build_stepper
from lowrank.registry import method_config
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.data import load_dataset
from lowrank.models import mlp


def runs(trace: list[int]) -> list[tuple[int, int]]:
    """Run-length encoding ``[(value, count), ...]``."""
    out: list[tuple[int, int]] = []
    for v in trace:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


def flips(trace: list[int], window: int = 3) -> int:
    """Rank changes undone within ``window`` steps (r -> r' -> r): the oscillation signature."""
    changes = [i for i in range(1, len(trace)) if trace[i] != trace[i - 1]]
    n = 0
    for i in changes:
        before = trace[i - 1]
        if any(trace[j] == before for j in range(i + 1, min(len(trace), i + 1 + window))):
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--integrator", choices=["parallel", "kls"], default="parallel")
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--fixed", action="store_true", help="fixed rank --rank instead of rank-adaptive")
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--max-rank", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", default="784,256,128,10")
    ap.add_argument("--every", type=int, default=100, help="measure orthonormality every N steps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(method=method_config("dlrt", rank=args.rank, integrator=args.integrator,
                                          adaptive=not args.fixed,
                                          tau=args.tau, max_rank=args.max_rank),
                      optim=OptimConfig(optimizer="adam", lr=args.lr),
                      layers=[int(s) for s in args.layers.split(",")], batch_size=64)
    data = load_dataset(DataConfig(dataset="fashion-mnist"), seed=0)
    torch.manual_seed(0)
    model = apply_method(mlp(cfg.layers), cfg)
    stepper = build_stepper(model, cfg, args.steps)
    names, layers = stepper.names, stepper.layers
    traces: dict[str, list[int]] = {n: [] for n in names}
    worst_orth, worst_at, cap_violations, nonfinite = 0.0, 0, 0, 0
    x, y = data.train.x, data.train.y
    g = torch.Generator().manual_seed(0)
    perm, pos = torch.randperm(len(x), generator=g), 0
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        if pos + 64 > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos:pos + 64]
        pos += 64
        loss = float(stepper.step(x[idx], y[idx], F.cross_entropy))
        losses.append(loss)
        if not math.isfinite(loss):
            nonfinite += 1
        for name, layer in zip(names, layers):
            traces[name].append(layer.rank)
            if not layer.min_rank <= layer.rank <= layer.max_rank:
                cap_violations += 1
        if step % args.every == 0 or step == args.steps:
            for layer in layers:
                e = layer.orthonormality_error()
                if e > worst_orth:
                    worst_orth, worst_at = e, step
                if not all(bool(torch.isfinite(t).all()) for t in (layer.U, layer.S, layer.V)):
                    nonfinite += 1
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((model(data.test.x).argmax(1) == data.test.y).float().mean())
    report = {
        "steps": args.steps, "integrator": args.integrator, "adaptive": not args.fixed, "tau": args.tau,
        "seconds": elapsed,
        "worst_orth_error": worst_orth, "worst_orth_at_step": worst_at, "cap_violations": cap_violations,
        "nonfinite": nonfinite, "test_acc": acc,
        "final_loss_mean_last_500": sum(losses[-500:]) / len(losses[-500:]),
        "layers": {n: {"caps": [l.min_rank, l.max_rank], "final": traces[n][-1], "min": min(traces[n]),
                       "max": max(traces[n]), "changes": sum(a != b for a, b in zip(traces[n], traces[n][1:])),
                       "flips": flips(traces[n]), "trace": runs(traces[n])}
                   for n, l in zip(names, layers)},
    }
    oscillating = sum(rec["flips"] for rec in report["layers"].values())
    ok = worst_orth <= 1e-5 and cap_violations == 0 and nonfinite == 0 and oscillating == 0
    kind = f"fixed-rank (rank {args.rank})" if args.fixed else f"adaptive (tau {args.tau})"
    print(f"{args.steps} steps of {args.integrator} {kind} DLRT (Adam lr {args.lr}) "
          f"in {elapsed:.0f} s; test accuracy {acc:.4f}")
    print(f"worst orthonormality error {worst_orth:.2e} (step {worst_at}); cap violations {cap_violations}; "
          f"non-finite {nonfinite}")
    for n, rec in report["layers"].items():
        trace = " ".join(f"{v}x{c}" for v, c in rec["trace"])
        print(f"  {n}: caps {rec['caps']}, final {rec['final']}, range [{rec['min']}, {rec['max']}], "
              f"{rec['changes']} changes, {rec['flips']} flips; trace {trace}")
    print("OK" if ok else "FAILED")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

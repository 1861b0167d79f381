"""DLRT speed, measured in one run.

Table 1 — per-epoch training time of the DLRT integrators relative to vanilla low-rank
training (``U S V^T`` all trained by Adam) at the same rank, on Fashion-MNIST, for two
networks: 784-256-128-10 at batch 64, rank 20 (the issue's MLP), and the paper's
784-500-500-500-500-10 at batch 256, rank 50. Targets: parallel <= 1.3x, KLS fixed
<= 2.3x, KLS adaptive <= 2.5x. The parallel integrator is timed with both truncations
(``power``, the default, and the exact ``svd``).

Table 2 — per-step training time against dense on a wide MLP (width 2048, 4 hidden
layers, batch 256) at ranks 1, 2, 5, 10, 15, 25 % of the width. Target: faster than
dense up to at least 10 %.

Below each Table 1 the floor of the parallel step: the two Householder QRs per layer that
any implementation of the integrator must take (its new bases, ``(n, r)`` and ``(m, r)``),
and our whole power step (:func:`lowrank.integrators.power.parallel_power_step`), timed
alone (best of 5 blocks), as a multiple of the vanilla step timed the same way. Everything
DLRT adds to a vanilla step (those QRs among it) must fit in the target's margin over 1.0x.

Timing protocol: methods are timed in interleaved rounds (round-robin, a block of
steps each) and the 25th-percentile block is kept, so a load change on a shared machine hits
all methods alike. Ratios are what to compare on a CPU; on a GPU (``--device cuda``)
absolute times are meaningful too.

    python benchmarks/bench_dlrt.py [--device cpu] [--threads N] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from lowrank.run import apply_method, build_stepper
from lowrank.registry import method_config
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.models import mlp
from lowrank.stepper import Stepper


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_dlrt(cfg: TrainConfig) -> torch.nn.Module:
    """The MLP of ``cfg`` with every hidden Linear a freshly initialized DLRTLinear of rank
    ``cfg.method.rank`` (no SVD of the dense weights: a 2048^2 SVD costs seconds and does not
    change a step's cost)."""
    from lowrank.methods.dlrt.layer import DLRTLinear

    model = mlp(cfg.layers, cfg.activation)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:-1]
    for name in names:
        lin = getattr(model, name)
        setattr(model, name, DLRTLinear(lin.in_features, lin.out_features, cfg.method.rank,
                                        max_rank=cfg.method.max_rank))
    return model


class Runner:
    """One model + stepper, stepping through a fixed data stream."""

    def __init__(self, name: str, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                 fresh_init: bool = False):
        torch.manual_seed(cfg.seed)
        self.name, self.x, self.y, self.bs = name, x, y, cfg.batch_size
        if fresh_init and cfg.method.method == "dlrt":
            self.model = random_dlrt(cfg).to(device)
        else:
            self.model = apply_method(mlp(cfg.layers, cfg.activation), cfg).to(device)
        self.stepper: Stepper = build_stepper(self.model, cfg, 0)
        self.perm = torch.randperm(len(x), device=device)
        self.pos = 0
        self.device = device
        self.blocks: list[float] = []

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            if self.pos + self.bs > len(self.x):
                self.pos = 0
            idx = self.perm[self.pos:self.pos + self.bs]
            self.pos += self.bs
            self.stepper.step(self.x[idx], self.y[idx], F.cross_entropy)
        sync(self.device)
        return (time.perf_counter() - t0) / steps

    def ranks(self) -> list[int]:
        return [l.rank for l in getattr(self.stepper, "layers", [])]


def interleaved(runners: list[Runner], rounds: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per step of each runner: the 25th percentile over ``rounds`` interleaved blocks.

    A low percentile rather than the median: on a shared machine a block is only ever
    slowed down by other processes, never sped up.
    """
    for r in runners:
        r.run(warmup)
        if hasattr(r.stepper, "end_epoch"):
            r.stepper.end_epoch(0)  # reset the DLRT timers after warm-up
    for _ in range(rounds):
        for r in runners:
            r.blocks.append(r.run(steps))
    return {r.name: statistics.quantiles(r.blocks, n=4, method="inclusive")[0] if len(r.blocks) > 1
            else r.blocks[0] for r in runners}


def best_seconds(fn: Callable[[], Any], device: torch.device, calls: int = 200, blocks: int = 5) -> float:
    """Seconds per call of ``fn``: the best of ``blocks`` blocks of ``calls`` calls (after warm-up)."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(blocks):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def parallel_floor(layers: list[int], rank: int, device: torch.device) -> dict[str, float]:
    """Seconds per step, summed over the DLRT (hidden) layers of ``layers`` at ``rank``: the two
    Householder QRs of a parallel step's new bases, and the whole power step, each timed alone."""
    from lowrank.methods.dlrt.power import parallel_power_step

    g = torch.Generator().manual_seed(0)
    qr = power = 0.0
    for m, n in zip(layers[:-2], layers[1:-1]):       # hidden layer (n, m): U (n, r), V (m, r)
        U0 = torch.linalg.qr(torch.randn(n, rank, generator=g))[0].to(device)
        V0 = torch.linalg.qr(torch.randn(m, rank, generator=g))[0].to(device)
        S1 = torch.triu(torch.randn(rank, rank, generator=g)).to(device)
        K1 = U0 @ S1 + 1e-3 * torch.randn(n, rank, generator=g).to(device)      # one step away from U0 S1
        L1 = V0 @ S1.T + 1e-3 * torch.randn(m, rank, generator=g).to(device)
        qr += sum(best_seconds(lambda b=b: torch.linalg.qr(b), device) for b in (K1, L1))
        power += best_seconds(lambda a=(U0, V0, S1, K1, L1): parallel_power_step(*a, energies=False), device)
    return {"qr": qr, "power_step": power}


def cfg_for(method: str, layers: list[int], batch: int, rank: int | None, device: str, **kw: Any) -> TrainConfig:
    return TrainConfig(method=method_config(method, rank=rank, **kw),
                       optim=OptimConfig(optimizer="adam", lr=1e-3),
                       layers=layers, batch_size=batch, device=device)


#: Table 1's target for the parallel step, in vanilla steps.
PARALLEL_TARGET = 1.3

#: (layers, batch, rank) of Table 1's networks.
SMALL_NETWORKS = [([784, 256, 128, 10], 64, 20), ([784, 500, 500, 500, 500, 10], 256, 50)]


def table_small(device: torch.device, quick: bool, layers: list[int], batch: int, rank: int) -> dict[str, Any]:
    from lowrank.data import load_dataset

    data = load_dataset(DataConfig(dataset="fashion-mnist"), seed=0)
    x, y = data.train.x.to(device), data.train.y.to(device)
    adaptive = {"adaptive": True, "tau": 0.05, "max_rank": 3 * rank}
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("vanilla", "vanilla", {}),
        ("parallel fixed", "dlrt", {"integrator": "parallel"}),
        ("parallel fixed, svd", "dlrt", {"integrator": "parallel", "truncation": "svd"}),
        ("parallel adaptive", "dlrt", {"integrator": "parallel", **adaptive}),
        ("KLS fixed", "dlrt", {"integrator": "kls"}),
        ("KLS adaptive", "dlrt", {"integrator": "kls", **adaptive}),
    ]
    runners = [Runner(name, cfg_for(m, layers, batch, rank, device.type, **kw), x, y, device)
               for name, m, kw in variants]
    per_step = interleaved(runners, rounds=6 if quick else 20, steps=25 if quick else 50, warmup=20)
    steps_per_epoch = -(-len(x) // batch)
    base = per_step["vanilla"]
    rows = []
    for r in runners:
        t = r.stepper.timings
        total = sum(t.values()) or float("nan")
        rows.append({"method": r.name, "ms_per_step": 1e3 * per_step[r.name],
                     "s_per_epoch": per_step[r.name] * steps_per_epoch, "ratio": per_step[r.name] / base,
                     "ranks": r.ranks(),
                     "share_linalg": t.get("linalg", 0.0) / total if t else None,
                     "share_fwd_bwd": t.get("fwd_bwd", 0.0) / total if t else None})
    # The floor against a vanilla step timed the same way (best block), right before it.
    vanilla_best = best_seconds(lambda: runners[0].run(1), device, calls=50)
    floor = {k: v / vanilla_best for k, v in parallel_floor(layers, rank, device).items()}
    return {"layers": layers, "batch": batch, "rank": rank, "steps_per_epoch": steps_per_epoch, "rows": rows,
            "floor": floor}


def table_wide(device: torch.device, quick: bool) -> dict[str, Any]:
    width, batch = 2048, 256
    layers = [width] * 5 + [10]                       # 4 hidden layers of width 2048 (+ dense output)
    g = torch.Generator().manual_seed(0)
    n = batch * 8
    x = torch.randn(n, width, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    percents = [1, 2, 5, 10, 15, 25]
    # 5 x 4 steps: a fixed-rank parallel step takes its core's SVD every 10th step, so the
    # full run times that periodic cost at its share.
    steps, rounds = (1, 3) if quick else (5, 4)
    dense = Runner("dense", cfg_for("dense", layers, batch, None, device.type), x, y, device)
    rows = []
    for pct in percents:
        r = max(1, round(width * pct / 100))
        runners = [dense] + [Runner(f"{integ} r={r}", cfg_for("dlrt", layers, batch, r, device.type, integrator=integ,
                                                              max_rank=width), x, y, device, fresh_init=True)
                             for integ in ("parallel", "kls")]
        dense.blocks = []
        per_step = interleaved(runners, rounds=rounds, steps=steps, warmup=1)
        for run in runners[1:]:
            rows.append({"percent": pct, "rank": r, "integrator": run.name.split()[0],
                         "ms_per_step": 1e3 * per_step[run.name], "dense_ms_per_step": 1e3 * per_step["dense"],
                         "speedup_vs_dense": per_step["dense"] / per_step[run.name]})
    return {"layers": layers, "batch": batch, "rows": rows}


def print_tables(smalls: list[dict[str, Any]], wide: dict[str, Any] | None, absolute: bool,
                 out: Callable[[str], None] = print) -> None:
    for small in smalls:
        out(f"\nTable 1: {'-'.join(map(str, small['layers']))}, batch {small['batch']}, rank {small['rank']} "
            f"(Fashion-MNIST, {small['steps_per_epoch']} steps/epoch); time relative to vanilla low-rank")
        out(f"{'method':<20}{'ratio':>7}{'ms/step':>10}{'s/epoch':>10}{'linalg':>8}{'fwd+bwd':>9}  ranks")
        for r in small["rows"]:
            la = "" if r["share_linalg"] is None else f"{100 * r['share_linalg']:.0f}%"
            fb = "" if r["share_fwd_bwd"] is None else f"{100 * r['share_fwd_bwd']:.0f}%"
            out(f"{r['method']:<20}{r['ratio']:>6.2f}x{r['ms_per_step']:>10.3f}{r['s_per_epoch']:>10.2f}"
                f"{la:>8}{fb:>9}  {r['ranks']}")
        f = small["floor"]
        out(f"floor of the parallel step, kernels timed alone (x vanilla step): its 2 QRs per layer "
            f"{f['qr']:.2f}x, its whole power step {f['power_step']:.2f}x; the {PARALLEL_TARGET}x target "
            f"leaves {PARALLEL_TARGET - 1:.2f}x for all DLRT adds")
    if wide:
        out(f"\nTable 2: {'-'.join(map(str, wide['layers']))}, batch {wide['batch']}; DLRT step vs dense step")
        out(f"{'rank %':>7}{'rank':>6}{'integrator':>11}{'ms/step':>10}{'dense ms':>10}{'speed-up':>10}")
        for r in wide["rows"]:
            out(f"{r['percent']:>6}%{r['rank']:>6}{r['integrator']:>11}{r['ms_per_step']:>10.1f}"
                f"{r['dense_ms_per_step']:>10.1f}{r['speedup_vs_dense']:>9.2f}x")
    if not absolute:
        out("\n(CPU: compare ratios; absolute times depend on the machine and its load.)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    ap.add_argument("--only", choices=["small", "wide"], default=None)
    ap.add_argument("--json", default=None, help="also write the tables here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    small = [table_small(device, args.quick, *net) for net in SMALL_NETWORKS] if args.only in (None, "small") else []
    wide = table_wide(device, args.quick) if args.only in (None, "wide") else None
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print_tables(small, wide, device.type == "cuda")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "small": small, "wide": wide},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forward+backward (training) and forward-only (inference) time: dense vs low-rank layers.

All cases are measured in one run, after warm-up, with torch's default thread count.
The variants of a case are timed in interleaved rounds; times are medians over rounds and
ratios (``d/lr`` = dense / VanillaLinear, ``d/2f`` = dense / TwoFactorLinear) are medians
of the per-round ratios. On a CPU shared with other work only the ratios are meaningful;
with ``--device cuda`` the absolute times are too.

    python benchmarks/bench_layers.py [--device cuda] [--budget 1.5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lowrank import VanillaLinear, TwoFactorLinear

CASES = [(784, 256, 20), (4096, 4096, 64)]  # (in m, out n, rank r)
BATCHES = [64, 1024]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable[[], None]], device: torch.device, budget: float,
                      min_rounds: int = 5) -> list[dict[str, float]]:
    """Rounds of one timed call of each ``fn``, after warm-up.

    Interleaving puts every variant under the same background load, so the per-round
    ratios stay meaningful on a busy machine. At least ``min_rounds`` rounds, then more
    until ``budget`` seconds have passed (at most 200).
    """
    for fn in fns.values():
        for _ in range(2):
            fn()
    _sync(device)
    rounds: list[dict[str, float]] = []
    start = time.perf_counter()
    while len(rounds) < min_rounds or (time.perf_counter() - start < budget and len(rounds) < 200):
        row = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            row[name] = time.perf_counter() - t0
        rounds.append(row)
    return rounds


def summarize(rounds: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Median time of each variant, and the median over rounds of ``dense / variant``."""
    times = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratios = {k: statistics.median(r["dense"] / r[k] for r in rounds) for k in rounds[0] if k != "dense"}
    return times, ratios


def train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    params = list(layer.parameters())

    def fn() -> None:
        for p in params:
            p.grad = None
        layer(x).backward(grad)
    return fn


def inference(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    @torch.no_grad()
    def fn() -> None:
        layer(x)
    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of repeats per measurement")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own default); 1 is steadier on a busy CPU")
    ns = ap.parse_args()
    if ns.threads is not None:
        torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    torch.manual_seed(0)
    unit, scale = ("ms", 1e3)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"interleaved rounds ({ns.budget:.1f} s per measurement) after warm-up")
    header = (f"{'layer m->n':>12} {'r':>4} {'batch':>5} | {'dense':>8} {'lowrank':>8} {'2factor':>8} "
              f"{'d/lr':>6} {'d/2f':>6} | {'dense':>8} {'lowrank':>8} {'2factor':>8} {'d/lr':>6} {'d/2f':>6}")
    print(f"{'':24} | {'forward+backward (' + unit + ')':^46} | {'forward only, no_grad (' + unit + ')':^46}")
    print(header)
    print("-" * len(header))
    for m, n, r in CASES:
        layers = {"dense": nn.Linear(m, n, device=device),
                  "lowrank": VanillaLinear(m, n, r, device=device),
                  "twofactor": TwoFactorLinear(m, n, r, device=device)}
        for b in BATCHES:
            x = torch.randn(b, m, device=device)
            g = torch.randn(b, n, device=device)
            tr = summarize(interleaved_times({k: train_step(v, x, g) for k, v in layers.items()},
                                             device, ns.budget))
            inf = summarize(interleaved_times({k: inference(v, x) for k, v in layers.items()},
                                              device, ns.budget))
            row = f"{f'{m}->{n}':>12} {r:>4} {b:>5} |"
            for t, q in (tr, inf):
                row += (f" {t['dense'] * scale:>8.3f} {t['lowrank'] * scale:>8.3f} {t['twofactor'] * scale:>8.3f}"
                        f" {q['lowrank']:>6.2f} {q['twofactor']:>6.2f} |")
            print(row.rstrip(" |"))


if __name__ == "__main__":
    main()

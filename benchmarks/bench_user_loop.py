"""lowrank.DLRT in a plain PyTorch loop against the CLI's trainer, in one run.

Fashion-MNIST, 784-256-128-10, DLRT parallel integrator, rank-adaptive (rank 64, cap 64,
tau 0.12: the default comparison's settings), Adam at lr 1e-3 with a cosine schedule to 0,
batch 64, seed 0:

1. accuracy: the CLI's run (``lowrank.run.train_run``, the code ``lowrank train`` runs)
   against the 20-line loop of :func:`user_loop` (its own shuffles, the same model seed);
2. time per step: the CLI's step (``Stepper.step``: forward, backward, integrator) against
   the user loop's body (``zero_grad``, forward, backward, ``opt.step()``, ``sched.step()``)
   on the same batches, interleaved blocks, best block of each.

    python benchmarks/bench_user_loop.py [--epochs 10] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lowrank
from lowrank.config import OptimConfig, TrainConfig
from lowrank.data import DataConfig, Splits, load_dataset
from lowrank.optimizers import lr_scale
from lowrank.registry import method_config
from lowrank.run import build_model, build_stepper, train_run
from lowrank.store import Store
from report_rows import report_json

METHOD = {"rank": 64, "max_rank": 64, "integrator": "parallel", "adaptive": True, "tau": 0.12}


def config(epochs: int, train_size: int | None) -> TrainConfig:
    return TrainConfig(data=DataConfig(dataset="fashion-mnist", train_size=train_size),
                       optim=OptimConfig(optimizer="adam", lr=1e-3, schedule="cosine"),
                       method=method_config("dlrt", **METHOD), layers=[784, 256, 128, 10],
                       batch_size=64, epochs=epochs, seed=0)


def user_loop(data: Splits, epochs: int) -> float:
    """What a user writes (20 lines): DLRT as a torch optimizer in a plain loop; test accuracy."""
    torch.manual_seed(0)
    model = lowrank.convert(lowrank.mlp([784, 256, 128, 10]), "dlrt", rank=64, max_rank=64)
    opt = lowrank.DLRT(model, torch.optim.Adam, lr=1e-3, integrator="parallel", adaptive=True, tau=0.12)
    steps = epochs * -(-len(data.train) // 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_scale("cosine", s / steps))
    for epoch in range(epochs):
        for idx in torch.randperm(len(data.train)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return (model(data.test.x).argmax(1) == data.test.y).float().mean().item()


def step_times(cfg: TrainConfig, data: Splits, block: int, rounds: int) -> tuple[float, float]:
    """Best-block milliseconds per step: (CLI stepper, user loop body), interleaved."""
    batches = [torch.randperm(len(data.train))[:cfg.batch_size] for _ in range(block)]
    cli_model = build_model(cfg, data)
    cli = build_stepper(cli_model, cfg, 10 ** 6)
    torch.manual_seed(0)
    model = lowrank.convert(lowrank.mlp([784, 256, 128, 10]), "dlrt", rank=64, max_rank=64)
    opt = lowrank.DLRT(model, torch.optim.Adam, lr=1e-3, integrator="parallel", adaptive=True, tau=0.12)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_scale("cosine", s / 10 ** 6))

    def run_cli() -> None:
        for i, idx in enumerate(batches):
            cli.set_lr_scale(lr_scale("cosine", i / 10 ** 6))
            cli.step(data.train.x[idx], data.train.y[idx], F.cross_entropy)

    def run_user() -> None:
        for idx in batches:
            opt.zero_grad()
            F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
            opt.step()
            sched.step()

    best = {"cli": float("inf"), "user": float("inf")}
    run_cli(), run_user()  # warm-up
    for _ in range(rounds):
        for name, fn in (("cli", run_cli), ("user", run_user)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / block * 1e3)
    return best["cli"], best["user"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="6,000 training images, 2 epochs, fewer timing rounds")
    args = ap.parse_args()
    epochs = 2 if args.quick else args.epochs
    cfg = config(epochs, 6000 if args.quick else None)
    data = load_dataset(cfg.data, seed=cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "db.sqlite")
        t0 = time.perf_counter()
        cli_acc = train_run(cfg, store=store, runs_dir=Path(tmp) / "runs", data=data).summary["test_acc"]
        cli_s = time.perf_counter() - t0
        store.close()
    t0 = time.perf_counter()
    user_acc = user_loop(data, epochs)
    user_s = time.perf_counter() - t0
    cli_ms, user_ms = step_times(cfg, data, block=50, rounds=5 if args.quick else 15)
    print(f"Fashion-MNIST 784-256-128-10, DLRT parallel adaptive, {epochs} epochs, {len(data.train)} images")
    print(f"  test accuracy: CLI {100 * cli_acc:.2f}%  user loop {100 * user_acc:.2f}%  "
          f"difference {100 * (user_acc - cli_acc):+.2f} points (target: within 0.3)")
    print(f"  whole run: CLI {cli_s:.1f} s (with evaluation and checkpoints)  user loop {user_s:.1f} s")
    print(f"  time per step (best block of 50): CLI {cli_ms:.3f} ms  user loop {user_ms:.3f} ms  "
          f"ratio {user_ms / cli_ms:.3f}x (target: <= 1.05x)")
    report_json([
        {"benchmark": "DLRT user loop", "metric": "test accuracy difference (user - CLI)",
         "value": 100 * (user_acc - cli_acc), "unit": "points", "target": "|x| <= 0.3",
         "ok": abs(user_acc - cli_acc) <= 0.003},
        {"benchmark": "DLRT user loop", "metric": "time per step, user loop / CLI", "value": user_ms / cli_ms,
         "unit": "x", "target": "<= 1.05", "ok": user_ms / cli_ms <= 1.05},
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel training on Fashion-MNIST (784-256-128-10): 2 processes against 1, same global batch.

Each configuration is one ``lowrank train`` run (``--nproc 2`` for the data-parallel one),
in its own temporary folder and database, on the whole training set (60,000 images) and
test set, with the same seed and global batch; the rows: one process with 1 math thread,
one process with 2 threads (the whole 2-core machine), two processes with 1 thread each.
Reported: test accuracy after the last epoch, the median epoch time over the epochs (the
first epoch of a 2-process run includes the other process's start-up skew, so it is
shown separately), and the speed-up against 1 process x 1 thread.

    python benchmarks/bench_ddp.py [--epochs 3] [--batch 64] [--methods dense,dlrt] [--json out.json]
    python benchmarks/bench_ddp.py --allreduce     # gloo all_reduce time alone, 2 processes, by size

``--allreduce`` times what data-parallel training adds to each step: one gloo ``all_reduce``
of the flat gradient (235,146 floats for dense 784-256-128-10; 30,954 for DLRT rank 20:
K, L, S and the biases) and one of the loss, between 2 processes on this machine
(median of 300 calls after 30 warm-up calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

METHODS = {
    "dense": ["--method", "dense", "--optimizer", "adam", "--lr", "1e-3"],
    "dlrt": ["--method", "dlrt", "--integrator", "parallel", "--rank", "20", "--adaptive", "--tau", "0.1",
             "--max-rank", "64", "--optimizer", "adam", "--lr", "1e-3"],
}
SETUPS = [("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread", 2, 1)]


def run(method: str, nproc: int, threads: int, epochs: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "lowrank", "train", "--dataset", "fashion-mnist", "--layers", "784,256,128,10",
               "--epochs", str(epochs), "--batch-size", str(batch), "--seed", "0", "--db", f"{tmp}/r.db",
               "--runs-dir", f"{tmp}/runs", "--json", "--quiet", *METHODS[method]]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()[-500:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
    times = [h["epoch_time"] for h in out["history"]]
    return {"method": method, "nproc": nproc, "threads": threads, "test_acc": out["final"]["test_acc"],
            "epoch_times": times, "median_epoch": statistics.median(times[1:] if len(times) > 1 else times)}


def _allreduce_worker(rank: int, init: str, sizes: list[int], out: str) -> None:
    import time

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    res = {}
    for n in sizes:
        t = torch.ones(n)
        for _ in range(30):
            dist.all_reduce(t)
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        res[n] = statistics.median(times)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()


def allreduce_table() -> None:
    import torch.multiprocessing as mp

    sizes = [1, 30_954, 235_146, 1_000_000]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_allreduce_worker, args=(f"{tmp}/rv", sizes, f"{tmp}/out.json"), nprocs=2)
        with open(f"{tmp}/out.json") as f:
            res = json.load(f)
    for n in sizes:
        print(f"| {n:,} floats | {1e3 * res[str(n)]:.3f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--methods", default="dense,dlrt")
    ap.add_argument("--json", default=None)
    ap.add_argument("--allreduce", action="store_true", help="time gloo all_reduce alone")
    a = ap.parse_args()
    if a.allreduce:
        allreduce_table()
        return
    rows = []
    for method in a.methods.split(","):
        base = None
        for label, nproc, threads in SETUPS:
            r = run(method, nproc, threads, a.epochs, a.batch)
            base = base or r["median_epoch"]
            r["label"], r["speedup"] = label, base / r["median_epoch"]
            rows.append(r)
            print(f"| {method} | {label} | {100 * r['test_acc']:.2f} | "
                  f"{' / '.join(f'{t:.2f}' for t in r['epoch_times'])} | {r['median_epoch']:.2f} | "
                  f"{r['speedup']:.2f}x |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

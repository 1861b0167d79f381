"""DLRT speed against each integrator's floor, measured in one run.

For each network every integrator is timed per step next to a dense and a vanilla
(``U S V^T``, all factors trained by Adam) step at the same rank, and against its *floor*:
a vanilla step plus the factorizations that integrator cannot avoid, timed alone at the
same shapes in the same interleaved rounds:

    parallel, fixed rank   vanilla step + per layer QR (n, r) + QR (m, r)        (its new bases)
    parallel, adaptive     the same + the r x r singular values (the rank rule)
    KLS, fixed rank        vanilla step + one more forward/backward pass + the QRs (two passes)
    KLS, adaptive          vanilla step + the QRs + the r x r singular values (one pass)

From rank 32 the fixed-rank steps need no QR of an ``(n, r)`` matrix at all: the parallel
step's new bases are *turned* from the old ones (:func:`lowrank.methods.dlrt.basis.turned_basis`),
and KLS finds the QR bases ``qr(K1)``, ``qr(L1)`` from the K-, L-moves
(:func:`lowrank.methods.dlrt.basis.moved_qr`), both proved orthonormal and equal to the float64
formulas in ``tests/test_dlrt_integrators.py``. Their floors are lowered to

    lowered floor          vanilla step (+ one more pass for KLS) + per layer the eight products
                           such a step cannot avoid: U0^T dK, V0^T dL, dK^T dK, dL^T dL and two
                           (n, r) x (r, r) products per new basis

and both ratios are printed.

A QR in a floor is timed as the faster of Householder (``torch.linalg.qr`` + sign fix) and
the project's :func:`lowrank.linalg.qr_positive` (CholeskyQR2 at large shapes), so a floor
is never inflated by the project's own choice. Networks: 784-256-128-10 at batch 64, rank
20 and the paper's 784-500x4-10 at batch 256, rank 50 (Fashion-MNIST); a 2048-wide MLP
(4 hidden layers, batch 256, random data) at 5 % and 10 % of the width, fixed rank.

Timing protocol: ``timing.py`` (everything of one network in interleaved rounds, the
25th-percentile block kept, so a load change hits all rows alike). The DLRT rows run the
:class:`lowrank.DLRT` optimizer through the CLI's stepper, what ``lowrank train`` runs.
Ratios are what to compare on a CPU; on a GPU (``--device cuda``) absolute times are
meaningful too.

    python benchmarks/bench_dlrt.py [--device cpu] [--threads N] [--quick] [--only NAME] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.linalg import householder_qr_positive, qr_positive
from lowrank.models import mlp
from lowrank.registry import method_config
from lowrank.run import apply_method, build_stepper
from lowrank.stepper import Stepper
from timing import StepStream, Timed, interleaved, sync


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


class Runner(StepStream):
    """One model + stepper, stepping through a fixed data stream (``pass_only``: forward and
    backward without the optimizer step, for the KLS floor's second pass)."""

    def __init__(self, name: str, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                 fresh_init: bool = False, pass_only: bool = False):
        torch.manual_seed(cfg.seed)
        if fresh_init and cfg.method.method == "dlrt":
            self.model = random_dlrt(cfg).to(device)
        else:
            self.model = apply_method(mlp(cfg.layers, cfg.activation), cfg).to(device)
        stepper: Stepper = build_stepper(self.model, cfg, 0)
        super().__init__(name, stepper, x, y, cfg.batch_size, F.cross_entropy, device, shuffle=True)
        if pass_only:
            self.call = self._pass

    def _pass(self) -> None:
        x, y = self.next_batch()
        self.model.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()

    def ranks(self) -> list[int]:
        return [l.rank for l in getattr(self.stepper, "layers", [])]


def faster_qr(a: torch.Tensor, device: torch.device) -> Callable[[], Any]:
    """Of Householder and :func:`qr_positive`, the one faster on ``a`` (a few calls each)."""
    best, best_t = householder_qr_positive, float("inf")
    for fn in (householder_qr_positive, qr_positive):
        for _ in range(3):
            fn(a)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            fn(a)
        sync(device)
        if time.perf_counter() - t0 < best_t:
            best, best_t = fn, time.perf_counter() - t0
    return lambda: best(a)


def turn_products(B0: torch.Tensor, D: torch.Tensor, small: torch.Tensor) -> None:
    """The products one turned basis cannot avoid: ``B0^T D``, ``D^T D`` (r, r) and the new
    basis ``B0 X + D Y`` (n, r), into fresh outputs as a step computes them."""
    B0.T @ D, D.T @ D
    torch.mm(B0, small).addmm_(D, small)


def floor_kernels(layers: list[int], rank: int, device: torch.device) -> tuple[Timed, Timed, Timed]:
    """The QRs of every hidden layer's new bases, ``(n, r)`` and ``(m, r)``, the ``r x r``
    singular values of every layer (float64, as the rank rule takes them) and the products of
    the turned bases (:func:`turn_products`), each as one call."""
    g = torch.Generator().manual_seed(0)
    qrs, svds, turns = [], [], []
    for m, n in zip(layers[:-2], layers[1:-1]):       # hidden layer (n, m): U (n, r), V (m, r)
        small = torch.randn(rank, rank, generator=g).to(device)
        for rows in (n, m):
            qrs.append(faster_qr(torch.randn(rows, rank, generator=g).to(device), device))
            B0, D = (torch.randn(rows, rank, generator=g).to(device) for _ in range(2))
            turns.append(lambda B0=B0, D=D: turn_products(B0, D, small))
        svds.append(lambda c=small: torch.linalg.svdvals(c.double()))
    return (Timed("QRs", lambda: [f() for f in qrs], device),
            Timed("SVDs", lambda: [f() for f in svds], device),
            Timed("turns", lambda: [f() for f in turns], device))


def cfg_for(method: str, layers: list[int], batch: int, rank: int | None, device: str, **kw: Any) -> TrainConfig:
    if rank is not None:
        kw["rank"] = rank
    return TrainConfig(method=method_config(method, **kw),
                       optim=OptimConfig(optimizer="adam", lr=1e-3),
                       layers=layers, batch_size=batch, device=device)


@dataclass(frozen=True)
class Network:
    name: str
    layers: list[int]
    batch: int
    rank: int
    real_data: bool       # Fashion-MNIST (else random inputs of the right width)
    adaptive: bool        # also time the rank-adaptive integrators


NETWORKS = [
    Network("784-256-128-10", [784, 256, 128, 10], 64, 20, True, True),
    Network("784-500x4-10", [784, 500, 500, 500, 500, 10], 256, 50, True, True),
    Network("2048x4, 5%", [2048] * 5 + [10], 256, 102, False, False),
    Network("2048x4, 10%", [2048] * 5 + [10], 256, 205, False, False),
]

try:  # the ranks from which the fixed-rank steps take no QR: turned bases, moved QRs
    from lowrank.methods.dlrt.basis import TURNED_MIN_RANK
except ImportError:  # a checkout from before turned bases (a "before" run): the same shapes
    TURNED_MIN_RANK = 32
try:
    from lowrank.methods.dlrt.kls import MOVED_QR_MIN_RANK
except ImportError:  # a checkout from before moved QRs: KLS always factors K1, L1
    MOVED_QR_MIN_RANK = None

#: The integrators timed: name -> (method options, floor terms besides the vanilla step, the
#: lowered floor's terms and the rank from which they apply, or None).
INTEGRATORS: dict[str, tuple[dict[str, Any], tuple[str, ...], tuple[tuple[str, ...], int] | None]] = {
    "parallel": ({"integrator": "parallel"}, ("QRs",), (("turns",), TURNED_MIN_RANK)),
    "KLS": ({"integrator": "kls"}, ("pass", "QRs"),
            None if MOVED_QR_MIN_RANK is None else (("pass", "turns"), MOVED_QR_MIN_RANK)),
    "parallel adaptive": ({"integrator": "parallel", "adaptive": True}, ("QRs", "SVDs"), None),
    "KLS adaptive": ({"integrator": "kls", "adaptive": True}, ("QRs", "SVDs"), None),
}

#: Target: a step within this factor of its floor.
FLOOR_TARGET = 1.15


def table(net: Network, device: torch.device, quick: bool) -> dict[str, Any]:
    if net.real_data:
        from lowrank.data import load_dataset

        data = load_dataset(DataConfig(dataset="fashion-mnist", train_size=8192), seed=0)
        x, y = data.train.x.to(device), data.train.y.to(device)
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(net.batch * 8, net.layers[0], generator=g).to(device)
        y = torch.randint(0, net.layers[-1], (net.batch * 8,), generator=g).to(device)
    dev = device.type
    vanilla_cfg = cfg_for("vanilla", net.layers, net.batch, net.rank, dev)
    timed: list[Timed] = [Runner("dense", cfg_for("dense", net.layers, net.batch, None, dev), x, y, device),
                          Runner("vanilla", vanilla_cfg, x, y, device),
                          Runner("pass", vanilla_cfg, x, y, device, pass_only=True)]
    adaptive = {"tau": 0.05, "max_rank": 2 * net.rank}
    for name, (options, _, _) in INTEGRATORS.items():
        if options.get("adaptive") and not net.adaptive:
            continue
        kw = {**options, **(adaptive if options.get("adaptive") else {"max_rank": max(net.layers)})}
        timed.append(Runner(name, cfg_for("dlrt", net.layers, net.batch, net.rank, dev, **kw), x, y, device,
                            fresh_init=not net.real_data))
    timed += list(floor_kernels(net.layers, net.rank, device))
    # A fixed-rank parallel step takes its core's SVD every diagonalize_every-th step: the
    # blocks are long enough to time that periodic cost at its share.
    wide = not net.real_data
    rounds, steps = ((4, 5) if wide else (6, 20)) if quick else ((8, 10) if wide else (16, 40))
    per = interleaved(timed, rounds=rounds, steps=steps, warmup=3 if wide else 20)
    rows = []
    for t in timed:
        if t.name not in INTEGRATORS:
            continue
        _, terms, lowered = INTEGRATORS[t.name]
        floor = per["vanilla"] + sum(per[term] for term in terms)
        low = (per["vanilla"] + sum(per[term] for term in lowered[0])
               if lowered and net.rank >= lowered[1] else None)
        rows.append({"integrator": t.name, "ms_per_step": 1e3 * per[t.name], "floor_ms": 1e3 * floor,
                     "ratio_to_floor": per[t.name] / floor,
                     "lowered_floor_ms": None if low is None else 1e3 * low,
                     "ratio_to_lowered_floor": None if low is None else per[t.name] / low,
                     "x_vanilla": per[t.name] / per["vanilla"],
                     "speedup_vs_dense": per["dense"] / per[t.name], "ranks": t.ranks()})
    return {"network": net.name, "layers": net.layers, "batch": net.batch, "rank": net.rank,
            "ms": {k: 1e3 * v for k, v in per.items()}, "rows": rows}


def print_table(t: dict[str, Any], out: Callable[[str], None] = print) -> None:
    ms = t["ms"]
    out(f"\n{t['network']} ({'-'.join(map(str, t['layers']))}), batch {t['batch']}, rank {t['rank']}: "
        f"dense {ms['dense']:.2f} ms, vanilla {ms['vanilla']:.2f} ms, one more pass {ms['pass']:.2f} ms, "
        f"QRs {ms['QRs']:.2f} ms, r x r SVDs {ms['SVDs']:.2f} ms, turned bases' products "
        f"{ms['turns']:.2f} ms per step")
    out(f"{'integrator':<19}{'ms/step':>9}{'floor ms':>10}{'/floor':>8}{'lowered':>9}{'/lowered':>9}"
        f"{'x vanilla':>10}{'vs dense':>10}  ranks")
    for r in t["rows"]:
        low = r["ratio_to_lowered_floor"]
        met = "" if min(r["ratio_to_floor"], low or float("inf")) <= FLOOR_TARGET else " *"
        lowered = (f"{r['lowered_floor_ms']:>9.2f}{low:>8.2f}x" if low is not None else f"{'-':>9}{'-':>9}")
        out(f"{r['integrator']:<19}{r['ms_per_step']:>9.2f}{r['floor_ms']:>10.2f}{r['ratio_to_floor']:>7.2f}x"
            f"{lowered}{r['x_vanilla']:>9.2f}x{r['speedup_vs_dense']:>9.2f}x  {r['ranks']}{met}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    ap.add_argument("--only", choices=[n.name for n in NETWORKS], default=None)
    ap.add_argument("--json", default=None, help="also write the tables here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"* = more than {FLOOR_TARGET}x its floor")
    tables = []
    for net in NETWORKS:
        if args.only in (None, net.name):
            tables.append(table(net, device, args.quick))
            print_table(tables[-1])
    if device.type != "cuda":
        print("\n(CPU: compare ratios; absolute times depend on the machine and its load.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "tables": tables}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

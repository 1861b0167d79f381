"""Fault injection: a run killed (``SIGKILL``) or interrupted (``SIGINT``) anywhere, resumed
as often as it takes, ends bit-identical to the run nobody touched, and loses no epoch.

Each run and each resume is a fresh process (forked from a server that imported torch
once, see ``tests/fault_child.py``) that dies at a random point: before any step, between
an epoch's database commit and its checkpoint, halfway through the checkpoint's write,
after it, or just before the run is marked finished. ``LOWRANK_FAULT_TRIALS`` (default 2)
sets the runs per method; each suffers up to four faults in a row.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from pathlib import Path

import pytest
import torch

import fault_child
from lowrank.checkpoint import read_checkpoint
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.registry import method_config
from lowrank.store import Store

EPOCHS, BATCH, TRAIN = 3, 50, 300
STEPS = EPOCHS * TRAIN // BATCH
TRIALS = int(os.environ.get("LOWRANK_FAULT_TRIALS", "2"))
METHODS = {
    "dense": {},
    "dlrt-kls-adaptive": {"integrator": "kls", "adaptive": True, "rank": 8, "tau": 0.05},
    "dlrt-parallel-adaptive": {"integrator": "parallel", "adaptive": True, "rank": 8, "tau": 0.05},
}
COUNTS: dict[str, int] = {"runs": 0, "faults fired": 0, "SIGKILL": 0, "SIGINT": 0, "identical": 0,
                          "lost epochs": 0}


def _cfg(name: str) -> TrainConfig:
    method = "dense" if name == "dense" else "dlrt"
    return TrainConfig(data=DataConfig(dataset="mnist", train_size=TRAIN, test_size=200),
                       optim=OptimConfig(optimizer="adam", lr=2e-3), method=method_config(method, **METHODS[name]),
                       layers=[784, 32, 10], epochs=EPOCHS, batch_size=BATCH, seed=3)


@pytest.fixture(scope="module")
def ctx():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fault_child", "lowrank.run", "lowrank.store"])
    return ctx


@pytest.fixture(scope="module")
def data():
    from lowrank.data import load_dataset
    return load_dataset(_cfg("dense").data, seed=3)


def _run_child(ctx, db: Path, runs: Path, cfg: TrainConfig | None, run_id: int | None, data, fault) -> int:
    p = ctx.Process(target=fault_child.child,
                    args=(str(db), str(runs), cfg.to_dict() if cfg else None, run_id, data, fault))
    p.start()
    p.join(120)
    assert p.exitcode is not None, f"child with fault {fault} hangs"
    return p.exitcode


def _fault(rng: random.Random) -> tuple[str, int, int]:
    point = rng.choice(fault_child.POINTS)
    n = {"step": rng.randint(1, STEPS), "before_finished": 1}.get(point) or rng.randint(1, EPOCHS)
    sig = signal.SIGINT if rng.random() < 0.4 else signal.SIGKILL  # SIGINT: stops at the next step boundary
    return point, n, int(sig)


def _outcome(store: Store, run_id: int) -> dict:
    run = store.run(run_id)
    run_dir = Path(run["run_dir"])
    cols = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"status": run["status"], "test_acc": (run["summary"] or {}).get("test_acc"),
            "epochs": [tuple(r[c] for c in cols) for r in store.epochs(run_id)],
            "ranks": [(r["epoch"], r["layer"], r["rank"]) for r in store.ranks(run_id)],
            "lines": [tuple(l[c] for c in cols) for l in lines],
            "model": read_checkpoint(run_dir)["model"],
            "leftovers": sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))}


@pytest.mark.parametrize("name", list(METHODS))
def test_killed_and_interrupted_runs_resume_bit_identical(name, ctx, data, tmp_path):
    cfg = _cfg(name)
    db, runs = tmp_path / "results.db", tmp_path / "runs"
    assert _run_child(ctx, db, runs, cfg, None, data, None) == 0
    store = Store(db)
    reference = _outcome(store, 1)
    assert reference["status"] == "finished" and len(reference["epochs"]) == EPOCHS
    rng = random.Random(f"{name}-{TRIALS}")
    for trial in range(TRIALS):
        run_id = trial + 2
        faults = [_fault(rng) for _ in range(4)]
        code = _run_child(ctx, db, runs, cfg, None, data, faults[0])
        for fault in faults[1:] + [None]:
            if code == 0:
                break
            assert code in (-signal.SIGKILL, 130), f"fault {fault}: child exited {code}"
            COUNTS["faults fired"] += 1
            COUNTS["SIGKILL" if code == -signal.SIGKILL else "SIGINT"] += 1
            assert store.run(run_id)["status"] in ("running", "interrupted")
            code = _run_child(ctx, db, runs, None, run_id, data, fault)
        assert code == 0, f"run {run_id} (faults {faults}) did not finish"
        got = _outcome(store, run_id)
        COUNTS["runs"] += 1
        COUNTS["lost epochs"] += EPOCHS - len(got["epochs"])
        assert got["status"] == "finished"
        assert got["epochs"] == reference["epochs"], faults
        assert got["lines"] == reference["lines"] == reference["epochs"], faults
        assert got["ranks"] == reference["ranks"], faults
        assert got["test_acc"] == reference["test_acc"]
        assert got["leftovers"] == [], faults
        assert reference["model"].keys() == got["model"].keys()
        for k, v in reference["model"].items():
            assert torch.equal(v, got["model"][k]), (k, faults)
        COUNTS["identical"] += 1
    store.close()


def test_fault_counts_are_reported(capsys):
    """Prints the totals of the runs above (the note quotes them); fails if none fired."""
    with capsys.disabled():
        print(f"\nfault injection: {COUNTS}")
    if COUNTS["runs"]:
        assert COUNTS["faults fired"] > 0 and COUNTS["identical"] == COUNTS["runs"] and COUNTS["lost epochs"] == 0

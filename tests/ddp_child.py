"""The worker side of tests/test_distributed.py: one of several gloo processes training one config.

``worker(rank, size, init_file, cfg_dicts, out_dir)`` joins a process group by a
rendezvous file, trains each config of ``cfg_dicts`` in turn data-parallel with a
replica check after every step, and saves its model, ranks and history to
``out_dir/<config index>-<rank>.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def worker(rank: int, size: int, init_file: str, cfg_dicts: list[dict[str, Any]], out_dir: str,
           backend: str = "gloo") -> None:
    import torch
    import torch.distributed as dist

    from lowrank.config import TrainConfig
    from lowrank.data import load_dataset
    from lowrank.distributed import DataParallelStepper, world
    from lowrank.run import fit_options, prepare
    from lowrank.train import fit

    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        for i, cfg_dict in enumerate(cfg_dicts):
            cfg = TrainConfig.from_dict(cfg_dict)
            data = load_dataset(cfg.data, seed=cfg.seed)
            model, stepper, _ = prepare(cfg, data, None,
                                        lambda c, k, s: DataParallelStepper(s, world(), check_every=1))
            history = fit(model, data, stepper, **fit_options(cfg))
            ranks = stepper.optimizer.ranks() if hasattr(stepper.optimizer, "ranks") else {}
            torch.save({"state": model.state_dict(), "ranks": ranks, "history": history,
                        "checks": stepper.replica_checks, "reduces": stepper.averager.calls},
                       Path(out_dir) / f"{i}-{rank}.pt")
        # The replica check finds one value changed in one process (and says so on every process).
        from lowrank.distributed import check_replicas
        from lowrank.errors import ReplicaMismatchError

        with torch.no_grad():
            if rank == 1:
                next(model.parameters()).view(-1)[0] += 1e-6
        try:
            check_replicas(model, "after a nudge")
            caught = ""
        except ReplicaMismatchError as e:
            caught = str(e)
        (Path(out_dir) / f"mismatch-{rank}.txt").write_text(caught)
        dist.barrier()   # no process tears its connections down while the other still reads them
    finally:
        dist.destroy_process_group()


class StopAfterEpoch:
    """A callback that stops training (as Ctrl-C would) once ``epoch`` epochs are done."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __getattr__(self, name: str):          # every other hook: nothing
        if name.startswith("on_"):
            return lambda *a: None
        raise AttributeError(name)

    def on_epoch_end(self, loop, row) -> None:
        if loop.state.epoch == self.epoch:
            raise KeyboardInterrupt


def run_worker(rank: int, size: int, init_file: str, jobs: list[tuple[dict[str, Any] | None, int | None, int | None]],
               db: str, runs_dir: str) -> None:
    """``lowrank.distributed_run.train_distributed`` in one of ``size`` processes, for each job
    ``(cfg_dict, resume, stop_after)``: a stored run, started (``cfg_dict``) or resumed
    (``resume``, a run id), stopped after epoch ``stop_after`` (None: trained to the end)."""
    import torch
    import torch.distributed as dist

    from lowrank.config import TrainConfig
    from lowrank.distributed_run import train_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        for cfg_dict, resume, stop_after in jobs:
            cfg = TrainConfig.from_dict(cfg_dict) if cfg_dict is not None and rank == 0 else None
            stop = [StopAfterEpoch(stop_after)] if stop_after else []
            try:
                train_distributed(cfg, resume=resume, db=db, runs_dir=runs_dir, check_every=1,
                                  replica_callbacks=stop)
            except KeyboardInterrupt:
                pass
        dist.barrier()
    finally:
        dist.destroy_process_group()

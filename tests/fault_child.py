"""The child side of tests/test_fault_injection.py: train or resume one run in a fresh
process and die at a chosen point (``SIGKILL``: nothing runs after; ``SIGINT``: Ctrl-C).

A fault is ``(point, n, signal)``: the ``n``-th time (1-based) this process reaches
``point`` it sends itself ``signal``. The points:

- ``step``: before a training step;
- ``after_rows``: after an epoch's database rows are committed, before ``metrics.jsonl``
  and the checkpoint;
- ``before_checkpoint``: rows and ``metrics.jsonl`` written, checkpoint not yet;
- ``mid_checkpoint``: the checkpoint's temporary file written and synced, not yet renamed;
- ``after_checkpoint``: the checkpoint renamed into place;
- ``before_finished``: the run's last checkpoint and ``summary.json`` written, its status
  not yet ``finished``.

Only the child is patched; it never returns to the test process (``os._exit``).
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

POINTS = ("step", "after_rows", "before_checkpoint", "mid_checkpoint", "after_checkpoint", "before_finished")


def _arm(fault: tuple[str, int, int] | None) -> None:
    import lowrank.checkpoint as checkpoint_mod
    import lowrank.recorder as recorder_mod
    from lowrank import run as run_mod
    from lowrank.store import Store

    if fault is None:
        return
    point, n, sig = fault
    seen = {"count": 0}

    def reached(here: str) -> None:
        if here == point:
            seen["count"] += 1
            if seen["count"] == n:
                os.kill(os.getpid(), sig)

    real_build = run_mod.build_stepper

    def build_stepper(model, cfg, total):
        stepper = real_build(model, cfg, total)
        step = stepper.step

        def stepping(*a, **k):
            reached("step")
            return step(*a, **k)
        stepper.step = stepping
        return stepper
    run_mod.build_stepper = build_stepper

    real_log = Store.log_epoch

    def log_epoch(self, *a, **k):
        real_log(self, *a, **k)
        reached("after_rows")
    Store.log_epoch = log_epoch

    real_status = Store.set_status

    def set_status(self, run_id, status, summary=None):
        if status == "finished":
            reached("before_finished")
        real_status(self, run_id, status, summary)
    Store.set_status = set_status

    real_write = recorder_mod.write_checkpoint

    def write_checkpoint(path, payload):
        reached("before_checkpoint")
        real_write(path, payload)
        reached("after_checkpoint")
    recorder_mod.write_checkpoint = write_checkpoint

    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == "checkpoint.pt":
            reached("mid_checkpoint")
        return real_replace(src, dst, *a, **k)
    checkpoint_mod.os = _OsWith(replace)


class _OsWith:
    """The ``os`` module with ``replace`` swapped (only lowrank.checkpoint sees it)."""

    def __init__(self, replace: Any):
        self.replace = replace

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def child(db: str, runs_dir: str, cfg_dict: dict[str, Any] | None, run_id: int | None, data: Any,
          fault: tuple[str, int, int] | None) -> None:
    """Train ``cfg_dict`` anew (``run_id`` None) or resume ``run_id``, with ``fault`` armed."""
    code = 0
    try:
        import torch

        torch.set_num_threads(1)
        from lowrank.config import TrainConfig
        from lowrank.run import resume_run, train_run
        from lowrank.store import Store

        _arm(fault)
        store = Store(db)
        if run_id is None:
            train_run(TrainConfig.from_dict(cfg_dict), store=store, runs_dir=runs_dir, data=data)
        else:
            resume_run(run_id, store=store, data=data)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


"""A stored run trained by several processes (``torchrun``): process 0 records, the others only train.

Every process runs the same command. Process 0 does what one process does
(:func:`~lowrank.run.train_run` / :func:`~lowrank.run.resume_run`: database row, run
folder, lock, checkpoints, report, progress output); once it has built and restored the
model it sends the config and the checkpoint it started from to the others
(:func:`~lowrank.distributed.broadcast_object`), which build the same model from them
and run the same :func:`~lowrank.train.fit` with no callbacks, writing nothing. So the
others need neither the database nor the run folder (on several machines, only the
data), and a checkpoint is the same whatever the number of processes that wrote it or
will read it: a run written by N processes resumes in M.

:func:`launch` is ``lowrank train --nproc N``: ``torchrun --standalone --nproc-per-node N
-m lowrank ARGS`` with ``--nproc`` removed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .data import load_dataset
from .distributed import DataParallelStepper, World, broadcast_object, init_from_env
from .errors import ConfigError
from .run import TOKENIZER_NAME, RunResult, fit_options, prepare, resume_run, train_run
from .store import Store
from .train import Callback, LoopState, fit

__all__ = ["train_distributed", "launch", "strip_nproc", "LaunchResult"]


def train_distributed(cfg: TrainConfig | None, *, resume: int | None = None, db: str | Path | None = None,
                      runs_dir: str | Path = "runs", check_every: int = 0,
                      replica_callbacks: Sequence[Callback] = (), **recording: Any) -> tuple[World, RunResult | None]:
    """Train (``cfg``) or resume (``resume``, a run id) one run with the processes torchrun started.

    Process 0 opens ``db`` and records as :func:`~lowrank.run.train_run` does
    (``recording``: its ``progress``, ``on_epoch``, ``tensorboard``, ``callbacks``); the
    others write nothing and return ``(world, None)``. ``check_every``: every this many
    steps verify that the processes' models are identical (see
    :class:`~lowrank.distributed.DataParallelStepper`). ``replica_callbacks``: callbacks every
    process runs (after process 0's recording ones; they must act alike everywhere, e.g. a
    stop after an epoch). ``cfg`` may be None on processes other than 0 (they take process 0's).
    """
    device = cfg.device if cfg is not None else os.environ.get("LOWRANK_DIST_DEVICE", "cpu")
    world = init_from_env(device)

    tokenizer: list[str | None] = [None]   # a text run's tokenizer JSON: every process must use process 0's

    def wrap(c: TrainConfig, ckpt: dict[str, Any] | None, stepper: Any) -> DataParallelStepper:
        broadcast_object((c.to_dict(), ckpt, tokenizer[0]))
        return DataParallelStepper(stepper, world, check_every)

    if world.is_main:
        if db is None:
            raise ConfigError("process 0 of a data-parallel run needs the results database (--db)")
        store = Store(db)
        if resume is not None:
            row = store.run(resume)
            path = Path(row["run_dir"]) / TOKENIZER_NAME if row is not None and row["run_dir"] else None
            tokenizer[0] = path.read_text(encoding="utf-8") if path is not None and path.is_file() else None
            recording["callbacks"] = [*recording.get("callbacks", ()), *replica_callbacks]
            return world, resume_run(resume, store=store, wrap_stepper=wrap, **recording)
        assert cfg is not None
        recording["callbacks"] = [*recording.get("callbacks", ()), *replica_callbacks]
        cfg.validate()
        data = load_dataset(cfg.data, seed=cfg.seed)
        tokenizer[0] = data.tokenizer
        return world, train_run(cfg, store=store, runs_dir=runs_dir, data=data, wrap_stepper=wrap, **recording)
    sent, ckpt, tokenizer_json = broadcast_object()
    run_cfg = TrainConfig.from_dict(sent)
    with tempfile.TemporaryDirectory() as tmp:
        data_cfg = run_cfg.data
        if tokenizer_json is not None:    # trained by process 0 (training it again may give other ids)
            (Path(tmp) / TOKENIZER_NAME).write_text(tokenizer_json, encoding="utf-8")
            data_cfg = dataclasses.replace(data_cfg, tokenizer=str(Path(tmp) / TOKENIZER_NAME))
        data = load_dataset(data_cfg, seed=run_cfg.seed)
    model, stepper, _ = prepare(run_cfg, data, ckpt,
                                lambda c, k, s: DataParallelStepper(s, world, check_every))
    state = LoopState.from_state_dict(ckpt.get("loop")) if ckpt is not None else None
    fit(model, data, stepper, state=state, callbacks=list(replica_callbacks), **fit_options(run_cfg))
    return world, None


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


#: torchrun's own log lines (``W1201 23:40:00.123000 1234 torch/distributed/...``).
_TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
#: Lines of a traceback torch prints for a process other than 0 (``[rank1]: ...``): they follow a failure of
#: process 0 (the peer closed the connection) or repeat it; process 0's own lines are kept.
_OTHER_RANK = re.compile(r"^\[rank[1-9]\d*\]:")


@dataclass(frozen=True)
class LaunchResult:
    """How a launch ended."""

    returncode: int
    """torchrun's exit status."""
    error: str | None
    """The first ``lowrank: error:`` line a process printed, or None."""


def launch(nproc: int, argv: list[str], *, env: dict[str, str] | None = None,
           echo: Callable[[str], None] | None = None) -> LaunchResult:
    """Run ``python -m lowrank ARGV`` in ``nproc`` local processes under torchrun and wait.

    The processes' output passes through (``echo`` gets each stderr line; None drops
    them); torchrun's own log lines and its failure report are left out, and a
    ``lowrank: error:`` line is returned (once) rather than echoed. Each process
    gets one math thread unless ``OMP_NUM_THREADS`` is set.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be an integer >= 1, got {nproc!r}")
    e = dict(os.environ if env is None else env)
    e.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lowrank", *strip_nproc(argv)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=e)
    try:
        error = _relay(proc, echo)
    except KeyboardInterrupt:
        # Ctrl-C reached every process: each stops after its step (process 0 saves the checkpoint);
        # wait for them, so that the command ends only when the run folder is settled.
        proc.wait()
        raise
    return LaunchResult(proc.wait(), error)


def _relay(proc: subprocess.Popen, echo: Callable[[str], None] | None) -> str | None:
    """Pass ``proc``'s stderr lines to ``echo`` until it closes; the first ``lowrank: error:`` line."""
    error: str | None = None
    report = False
    assert proc.stderr is not None
    for line in proc.stderr:
        if _OTHER_RANK.match(line):
            continue
        if _TORCHRUN_LOG.match(line):
            report = report or line.startswith("E")
            continue
        if report:                        # torchrun's failure report (a traceback of its own) follows
            continue
        if line.startswith("lowrank: error:"):   # every process may print it: kept once, for the caller
            error = error or line.rstrip("\n")
            continue
        if echo is not None:
            echo(line)
    return error

"""Callbacks around :func:`lowrank.train.fit`: where a run's results go.

- :class:`Recorder`: the run folder (``config.json``, ``checkpoint.pt`` after every epoch
  and on Ctrl-C, ``metrics.jsonl``, ``summary.json``) and the SQLite rows of one run;
- :class:`RunLock`: ``run_dir/.lock``, held (``flock``) by the one process training the run;
- :class:`ProgressBar`: a tqdm bar over the run's steps;
- :class:`OnEpoch`: calls a function with each epoch's row (the CLI prints it);
- :class:`TensorBoardWriter`: scalars per epoch for TensorBoard.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import TEMP_SUFFIX, check_optimizer_state, model_payload, write_checkpoint
from .config import TrainConfig
from .data import Splits
from .errors import LowRankError, RunLockedError, TrainingDivergedError
from .store import EPOCH_COLUMNS, Store
from .train import Callback, Loop, evaluate

__all__ = ["Recorder", "RunLock", "RunLockedError", "lock_holder", "LOCK_NAME", "ProgressBar", "OnEpoch",
           "TensorBoardWriter", "summarize"]

#: The lock file in a run folder: held with ``flock`` while a process trains (or deletes) the run.
LOCK_NAME = ".lock"
SCATTER_POINTS = 5000
"""Regression runs keep the first this many test targets and predictions in their summary (``scatter``)."""


class RunLock:
    """``run_dir/.lock`` held with ``flock(LOCK_EX | LOCK_NB)``; the file holds the holder's pid.

    The operating system drops a ``flock`` when its process dies, however it dies, so a
    lock file left by a killed process is simply taken over. The file itself stays in the
    folder (removing it would let two processes lock two different files of one name).
    ``release`` is idempotent.
    """

    def __init__(self, run_dir: str | os.PathLike, fd: int):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, run_id: int, *, write_pid: bool = True,
                attempts: int = 5) -> "RunLock":
        """Lock ``run_dir`` or raise :class:`RunLockedError` naming the run and the holder's pid.

        A few quick retries ride over a listing that probes the lock for a moment."""
        path = Path(run_dir) / LOCK_NAME
        for attempt in range(attempts):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                raise LowRankError(f"run {run_id}'s folder {Path(run_dir)} is gone (deleted meanwhile?); "
                                   f"`lowrank runs show {run_id}` says what is left") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                if attempt + 1 < attempts:
                    time.sleep(0.05)
                    continue
                pid = _read_pid(path)
                who = f"process {pid}" if pid is not None else "another process"
                raise RunLockedError(f"run {run_id} is being trained by {who} (it holds {path}); wait for it "
                                     f"to end or stop it" + (f" (kill {pid})" if pid is not None else "")
                                     + " first") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the file was removed (its run deleted) between open and flock: look again
                os.close(fd)
                continue
            if write_pid:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return cls(run_dir, fd)
        raise RunLockedError(f"run {run_id}'s lock {path} keeps being replaced; is it being deleted?")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def lock_holder(run_dir: str | os.PathLike | None) -> int | str | None:
    """Who holds the run folder's lock: its pid, ``"unknown"`` (held, no pid written yet) or
    None (no live process: no lock file, or one left by a dead process). Never creates a file."""
    if not run_dir:
        return None
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pid = _read_pid(path)
        return pid if pid is not None else "unknown"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Recorder(Callback):
    """Persists one run: its checkpoint after every epoch, its rows, its files.

    The checkpoint holds the config, the model (weights and low-rank structure), the
    stepper's state and the loop's position, so :func:`lowrank.run.resume_run` continues
    the run exactly. ``summary`` (after the run) is what :func:`summarize` returned.

    ``lock`` (the run's :class:`RunLock`) is released in :meth:`on_close`, after the run's
    final status is written. ``checkpoint`` is ``(epoch, batch)`` of the run's checkpoint on
    disk (None while there is none): ``epoch`` epochs finished, ``batch`` batches of the next.
    A loop that ends without a status of its own (a second Ctrl-C stops it mid-step) is
    marked ``interrupted``: its last checkpoint is kept and resumes.
    """

    def __init__(self, store: Store, run_id: int, run_dir: Path, cfg: TrainConfig, lock: RunLock | None = None):
        self.store, self.run_id, self.run_dir, self.cfg = store, run_id, Path(run_dir), cfg
        self.lock = lock
        self.summary: dict[str, Any] | None = None
        self.checkpoint: tuple[int, int] | None = None
        self._status_written = False

    def save(self, loop: Loop) -> None:
        """Write the checkpoint of the loop's current position (atomically)."""
        check_optimizer_state(loop.stepper.optimizer, f"checkpoint of run {self.run_id} (not written)")
        data = loop.data
        payload = {"config": self.cfg.to_dict(), **model_payload(loop.model),
                   "data_shape": {"sample_shape": list(data.sample_shape), "num_outputs": data.num_classes or 1},
                   "stepper": loop.stepper.state_dict(), "loop": loop.state.state_dict()}
        write_checkpoint(self.run_dir / "checkpoint.pt", payload)
        self.checkpoint = (loop.state.epoch, loop.state.batch)

    def on_fit_start(self, loop: Loop) -> None:
        # The checkpoint is the commit point: rows and lines of epochs after it (written just
        # before a death that came ahead of the checkpoint) are dropped and trained again.
        done = loop.state.epoch
        if (self.run_dir / "checkpoint.pt").exists():  # resumed: the loop starts at its position
            self.checkpoint = (loop.state.epoch, loop.state.batch)
        for tmp in self.run_dir.glob(f".checkpoint.pt.*{TEMP_SUFFIX}"):  # a write a death cut short (we hold the lock)
            tmp.unlink(missing_ok=True)
        self.store.delete_epochs_from(self.run_id, done)
        lines = self.run_dir / "metrics.jsonl"
        if lines.exists():
            kept = lines.read_text().splitlines(keepends=True)[:done]
            lines.write_text("".join(kept))

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        metrics = {k: v for k, v in row.items() if k not in ("epoch", "extra", "ranks")}
        extra = {**row["extra"], **{k: v for k, v in metrics.items() if k not in EPOCH_COLUMNS}}
        self.store.log_epoch(self.run_id, row["epoch"], metrics, extra, row["ranks"])
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        self.save(loop)

    def on_interrupt(self, loop: Loop) -> None:
        self.save(loop)
        self._set_status("interrupted")

    def on_fail(self, loop: Loop, error: BaseException) -> None:
        self._set_status("diverged" if isinstance(error, TrainingDivergedError) else "failed")

    def on_fit_end(self, loop: Loop) -> None:
        self.summary = summarize(loop.model, loop.stepper, loop.data, loop.loss, loop.state.history)
        if loop.selected_epoch is not None:
            self.summary["selected_epoch"] = loop.selected_epoch
        self.save(loop)
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2, default=float))
        self._set_status("finished", self.summary)

    def on_close(self, loop: Loop) -> None:
        try:
            if not self._status_written:  # stopped at once, mid-step (ForcedInterrupt): not 'running'
                self._set_status("interrupted")
        finally:
            if self.lock is not None:
                self.lock.release()

    def _set_status(self, status: str, summary: dict[str, Any] | None = None) -> None:
        self.store.set_status(self.run_id, status, summary)
        self._status_written = True


class ProgressBar(Callback):
    """A tqdm progress bar over the run's steps, with the last epoch's loss and accuracy."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_fit_start(self, loop: Loop) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=loop.total_steps, initial=loop.steps_done, unit="step", leave=False,
                        dynamic_ncols=True)

    def on_step_end(self, loop: Loop) -> None:
        self.bar.update(1)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        acc = row.get("test_acc")
        self.bar.set_postfix_str(f"loss {row['train_loss']:.4f}" + (f" test acc {acc:.4f}" if acc is not None else ""))

    def on_close(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class OnEpoch(Callback):
    """Calls ``fn(epoch, row)`` after every epoch."""

    def __init__(self, fn: Callable[[int, dict[str, Any]], None]):
        self.fn = fn

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        self.fn(row["epoch"], row)


class TensorBoardWriter(Callback):
    """Writes every numeric epoch metric (``test_acc``, ``train_loss``, ...), the ranks of
    low-rank layers (``rank/<layer>``) and the learning rate to a TensorBoard log folder
    through :class:`torch.utils.tensorboard.SummaryWriter`; the x axis is the epoch."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        step = row["epoch"] + 1
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        for layer, r in (row.get("ranks") or {}).items():
            self.writer.add_scalar(f"rank/{layer}", r["rank"] if isinstance(r, dict) else r, step)
        groups = getattr(loop.stepper.optimizer, "param_groups", [])
        if groups:
            self.writer.add_scalar("lr", groups[0]["lr"], step)
        self.writer.flush()

    def on_close(self, loop: Loop) -> None:
        self.writer.close()


def summarize(model: nn.Module, stepper: Any, data: Splits, loss: str,
              history: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a finished run: final test metrics, times, accounting, ranks, confusion."""
    from .accounting import count, hidden_weights, layer_params

    classification = data.num_classes > 0
    test = evaluate(model, data.test, loss, return_predictions=True)
    device = next(model.parameters()).device
    acct = count(model, optimizer=getattr(stepper, "optimizer", None), sample=data.test.x[:1].to(device))
    summary: dict[str, Any] = {
        "test_loss": test["loss"], "test_acc": test["acc"],
        **{f"test_{k}": test[k] for k in ("mae", "rmse", "r2") if k in test},
        "epochs": len(history),
        "train_time": sum(h["epoch_time"] for h in history),
        "epoch_time": sum(h["epoch_time"] for h in history) / max(1, len(history)),
        "peak_mem": max((h["peak_mem"] for h in history), default=0.0),
        "accounting": acct.to_dict() if hasattr(acct, "to_dict") else dict(vars(acct)),
        "hidden_weights": hidden_weights(model),
        "ranks": {name: getattr(m, "rank") for name, m in model.named_modules()
                  if hasattr(m, "rank") and not isinstance(m, nn.Linear)},
        "layer_params": layer_params(model),
    }
    if not classification:
        n = min(len(data.test), SCATTER_POINTS)
        summary["scatter"] = {"true": data.test.y[:n].tolist(), "predicted": test["predictions"][:n].tolist()}
        if data.target_scaled:
            summary["target_scale"] = {"mean": data.target_mean, "std": data.target_std}
    if classification:
        k = data.num_classes
        m = (data.test.y.cpu() * k + test["predictions"].cpu()).bincount(minlength=k * k).reshape(k, k)
        summary["confusion"] = m.tolist()
    return summary

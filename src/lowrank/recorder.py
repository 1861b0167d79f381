"""Callbacks around :func:`lowrank.train.fit`: where a run's results go.

- :class:`Recorder`: the run folder (``config.json``, ``checkpoint.pt`` after every epoch
  and on Ctrl-C, ``metrics.jsonl``, ``summary.json``) and the SQLite rows of one run;
- :class:`ProgressBar`: a tqdm bar over the run's steps;
- :class:`OnEpoch`: calls a function with each epoch's row (the CLI prints it);
- :class:`TensorBoardWriter`: scalars per epoch for TensorBoard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import model_payload, write_checkpoint
from .config import TrainConfig
from .data import Splits
from .errors import TrainingDivergedError
from .store import EPOCH_COLUMNS, Store
from .train import Callback, Loop, evaluate

__all__ = ["Recorder", "ProgressBar", "OnEpoch", "TensorBoardWriter", "summarize"]


class Recorder(Callback):
    """Persists one run: its checkpoint after every epoch, its rows, its files.

    The checkpoint holds the config, the model (weights and low-rank structure), the
    stepper's state and the loop's position, so :func:`lowrank.run.resume_run` continues
    the run exactly. ``summary`` (after the run) is what :func:`summarize` returned.
    """

    def __init__(self, store: Store, run_id: int, run_dir: Path, cfg: TrainConfig):
        self.store, self.run_id, self.run_dir, self.cfg = store, run_id, Path(run_dir), cfg
        self.summary: dict[str, Any] | None = None

    def save(self, loop: Loop) -> None:
        """Write the checkpoint of the loop's current position (atomically)."""
        data = loop.data
        payload = {"config": self.cfg.to_dict(), **model_payload(loop.model),
                   "data_shape": {"sample_shape": list(data.sample_shape), "num_outputs": data.num_classes or 1},
                   "stepper": loop.stepper.state_dict(), "loop": loop.state.state_dict()}
        write_checkpoint(self.run_dir / "checkpoint.pt", payload)

    def on_fit_start(self, loop: Loop) -> None:
        # The checkpoint is the commit point: rows and lines of epochs after it (written just
        # before a death that came ahead of the checkpoint) are dropped and trained again.
        done = loop.state.epoch
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
        self.store.set_status(self.run_id, "interrupted")

    def on_fail(self, loop: Loop, error: BaseException) -> None:
        self.store.set_status(self.run_id, "diverged" if isinstance(error, TrainingDivergedError) else "failed")

    def on_fit_end(self, loop: Loop) -> None:
        self.summary = summarize(loop.model, loop.stepper, loop.data, loop.loss, loop.state.history)
        self.save(loop)
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2, default=float))
        self.store.set_status(self.run_id, "finished", self.summary)


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
    from .accounting import count, hidden_weights

    classification = data.num_classes > 0
    test = evaluate(model, data.test, loss, return_predictions=classification)
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
    }
    if classification:
        k = data.num_classes
        m = (data.test.y.cpu() * k + test["predictions"].cpu()).bincount(minlength=k * k).reshape(k, k)
        summary["confusion"] = m.tolist()
    return summary

"""Model selection on the validation split: end a run with its best epoch's weights.

:class:`BestValidation` (a :class:`~lowrank.train.Callback`, used by
:func:`lowrank.run.train_run` when ``TrainConfig.select_best`` is set) watches each
epoch's validation accuracy (validation loss for regression). Whenever it improves
strictly, the model is written to ``run_dir/best.pt`` (a checkpoint holding the config,
the weights and the epoch). At the end of training the best weights are loaded back
into the model, so the run's summary, its final ``checkpoint.pt`` and everything that
loads the run (``lowrank finetune``, ``inspect``) see the selected model; the test set
plays no part in the choice. ``Loop.selected_epoch`` says which epoch it was.

Resuming: ``best.pt`` records its epoch; one written for an epoch at or after the
checkpoint the run resumes from (that epoch is trained again) is ignored and replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load_model, model_payload, read_checkpoint, write_checkpoint
from .config import TrainConfig
from .train import Callback, Loop

__all__ = ["BestValidation", "BEST_NAME", "validation_score"]

#: The best epoch's weights in a run folder.
BEST_NAME = "best.pt"


def validation_score(row: dict[str, Any]) -> float | None:
    """Higher is better: the epoch's validation accuracy, else minus its validation loss (None without one)."""
    if row.get("val_acc") is not None:
        return float(row["val_acc"])
    if row.get("val_loss") is not None:
        return -float(row["val_loss"])
    return None


class BestValidation(Callback):
    """Keeps ``run_dir/best.pt`` at the epoch of best validation score; restores it at the end."""

    def __init__(self, run_dir: str | Path, cfg: TrainConfig):
        self.path = Path(run_dir) / BEST_NAME
        self.cfg = cfg
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_fit_start(self, loop: Loop) -> None:
        if loop.state.epoch == 0 or not self.path.exists():
            return
        ckpt = read_checkpoint(self.path)
        if int(ckpt["epoch"]) < loop.state.epoch:  # else from an epoch trained again now
            self.best, self.best_epoch = float(ckpt["score"]), int(ckpt["epoch"])

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        score = validation_score(row)
        if score is None or (self.best is not None and score <= self.best):
            return
        self.best, self.best_epoch = score, int(row["epoch"])
        data = loop.data
        write_checkpoint(self.path, {
            "config": self.cfg.to_dict(), **model_payload(loop.model), "epoch": self.best_epoch, "score": score,
            "data_shape": {"sample_shape": list(data.sample_shape), "num_outputs": data.num_classes or 1}})

    def on_fit_end(self, loop: Loop) -> None:
        if self.best_epoch is None:
            return
        load_model(loop.model, read_checkpoint(self.path))
        loop.selected_epoch = self.best_epoch

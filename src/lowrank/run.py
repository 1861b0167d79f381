"""One stored run from a config: build data, model, method and callbacks, then :func:`~lowrank.train.fit`.

:func:`train_run` starts a run (a database row and a folder ``runs_dir/<id>-<method>-<dataset>``);
:func:`resume_run` continues one from its checkpoint. The CLI, ``compare`` and ``sweep``
call these; the loop itself is :func:`lowrank.train.fit`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_model, read_checkpoint
from .config import TrainConfig
from .data import Splits, load_dataset
from .errors import CheckpointError, ConfigError
from .losses import resolve_loss
from .models import MODELS
from .models import build_model as build_base_model
from .recorder import OnEpoch, ProgressBar, Recorder, TensorBoardWriter
from .registry import get_method
from .stepper import Stepper
from .store import Store
from .train import Callback, LoopState, fit

__all__ = ["train_run", "resume_run", "build_model", "build_dense_model", "apply_method", "build_stepper", "RunResult", "EpochFn"]

EpochFn = Any  # Callable[[int, dict], None]


@dataclass
class RunResult:
    """What a finished (or resumed-to-the-end) run returns."""

    run_id: int
    run_dir: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module = field(repr=False)


def build_dense_model(cfg: TrainConfig, sample_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The dense model ``cfg`` describes (``model``, ``model_args``; the built-ins also read
    ``layers`` and ``activation``) for inputs of ``sample_shape``, seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    args = dict(cfg.model_args)
    if cfg.model == "mlp":
        args.setdefault("layers", list(cfg.layers))
    if cfg.model in MODELS:
        args.setdefault("activation", cfg.activation)
    return build_base_model(cfg.model, args, sample_shape=tuple(sample_shape), num_outputs=num_outputs)


def build_model(cfg: TrainConfig, data: Splits) -> nn.Module:
    """The dense model of ``cfg`` for ``data``, turned into the method's form."""
    return apply_method(build_dense_model(cfg, tuple(data.sample_shape), data.num_classes or 1), cfg)


def apply_method(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The dense ``model`` in ``cfg.method``'s form (converted, frozen, loaded ...; in place)."""
    return get_method(cfg.method.method).prepare(model, cfg.method)


def build_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    """The method's stepper for ``model``."""
    return get_method(cfg.method.method).make_stepper(model, cfg, total_steps)


def train_run(cfg: TrainConfig, *, store: Store, runs_dir: str | Path = "runs", data: Splits | None = None,
              progress: bool = False, on_epoch: EpochFn | None = None, tensorboard: str | Path | None = None,
              callbacks: list[Callback] | tuple[Callback, ...] = (), sweep: str | None = None,
              sweep_key: str | None = None) -> RunResult:
    """Train a new run of ``cfg``; rows go to ``store``, files to ``runs_dir/<id>-<method>-<dataset>``.

    Everything that can be checked before training is (data, model, method, ranks): a
    rejected config leaves no row and no folder behind.
    """
    cfg.validate()
    if data is None:
        data = load_dataset(cfg.data, seed=cfg.seed)
    model, stepper, steps = _prepare(cfg, data, None)
    run_id = store.create_run(cfg.to_dict(), "", name=cfg.name, sweep=sweep, sweep_key=sweep_key)
    run_dir = Path(runs_dir) / f"{run_id:04d}-{cfg.method.method}-{_slug(data.name)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    store.set_run_dir(run_id, str(run_dir.resolve()))
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return _train(cfg, run_id, run_dir, store, data, model, stepper, None, progress, on_epoch, tensorboard, callbacks)


def resume_run(run_id: int, *, store: Store, data: Splits | None = None, progress: bool = False,
               on_epoch: EpochFn | None = None, tensorboard: str | Path | None = None,
               callbacks: list[Callback] | tuple[Callback, ...] = ()) -> RunResult:
    """Continue run ``run_id`` from its last checkpoint to the end."""
    row = store.run(run_id)
    if row is None:
        raise CheckpointError(f"no run {run_id} in {store.path}; `lowrank runs` lists the runs")
    run_dir = Path(row["run_dir"])
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = read_checkpoint(ckpt_path) if ckpt_path.exists() else None  # killed before epoch 1: restart
    try:
        cfg = TrainConfig.from_dict(row["config"])
    except ConfigError as e:
        raise CheckpointError(f"run {run_id}'s stored config does not fit this version of lowrank ({e}); "
                              f"a run written by an older lowrank resumes with that version") from None
    if row["status"] == "finished":
        raise CheckpointError(f"run {run_id} has already finished ({cfg.epochs} of {cfg.epochs} epochs): "
                              f"nothing to resume (a run's length is part of its config; start a new run "
                              f"to train longer)")
    if data is None:
        data = load_dataset(cfg.data, seed=cfg.seed)
    model, stepper, _ = _prepare(cfg, data, ckpt)
    store.set_status(run_id, "running")
    state = LoopState.from_state_dict(ckpt["loop"]) if ckpt is not None else None
    return _train(cfg, run_id, run_dir, store, data, model, stepper, state, progress, on_epoch, tensorboard,
                  callbacks)


def _prepare(cfg: TrainConfig, data: Splits, ckpt: dict[str, Any] | None) -> tuple[nn.Module, Stepper, int]:
    resolve_loss(cfg.loss, data.num_classes)  # a loss that does not fit the targets: refused before any write
    model = build_model(cfg, data)
    if ckpt is not None:
        load_model(model, ckpt)
    model.to(torch.device(cfg.device))
    total_steps = math.ceil(len(data.train) / cfg.batch_size) * cfg.epochs
    stepper = build_stepper(model, cfg, total_steps)
    if ckpt is not None:
        stepper.load_state_dict(ckpt["stepper"])
    return model, stepper, total_steps


def _train(cfg: TrainConfig, run_id: int, run_dir: Path, store: Store, data: Splits, model: nn.Module,
           stepper: Stepper, state: LoopState | None, progress: bool, on_epoch: EpochFn | None,
           tensorboard: str | Path | None, extra: list[Callback] | tuple[Callback, ...]) -> RunResult:
    recorder = Recorder(store, run_id, run_dir, cfg)
    callbacks: list[Callback] = [recorder]
    if progress:
        callbacks.append(ProgressBar())
    if on_epoch is not None:
        callbacks.append(OnEpoch(on_epoch))
    if tensorboard is not None:
        callbacks.append(TensorBoardWriter(Path(tensorboard) / f"{run_id:04d}-{cfg.method.method}"))
    callbacks += list(extra)
    history = fit(model, data, stepper, epochs=cfg.epochs, batch_size=cfg.batch_size, loss=cfg.loss,
                  seed=cfg.seed, noise=cfg.data.noise, schedule=cfg.optim.schedule, callbacks=callbacks,
                  state=state, device=cfg.device)
    assert recorder.summary is not None
    return RunResult(run_id, run_dir, cfg, history, recorder.summary, model)


def _slug(name: str) -> str:
    """A dataset name or path as a folder-name part: its last component, safe characters only."""
    base = Path(name).name or "data"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:40]

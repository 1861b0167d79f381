"""One stored run from a config: build data, model, method and callbacks, then :func:`~lowrank.train.fit`.

:func:`train_run` starts a run (a database row and a folder ``runs_dir/<id>-<method>-<dataset>``);
:func:`resume_run` continues one from its checkpoint. The CLI, ``compare`` and ``sweep``
call these; the loop itself is :func:`lowrank.train.fit`. While a run trains, its process
holds the folder's lock (:class:`~lowrank.recorder.RunLock`): a second process cannot train
the same run. :func:`delete_run` removes a run (rows and, when it holds only lowrank's own
files, its folder), never one that a live process holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .checkpoint import check_optimizer_state, damaged, load_model, read_checkpoint
from .config import TrainConfig
from .data import Augmentation, DataConfig, Splits, load_dataset
from .data.registry import is_text_dataset
from .errors import CheckpointError, ConfigError, RunLockedError, TrainingDivergedError
from .losses import resolve_loss
from .models import MODELS
from .models import build_model as build_base_model
from .recorder import LOCK_NAME, OnEpoch, ProgressBar, Recorder, RunLock, TensorBoardWriter
from .registry import get_method
from .selection import BEST_NAME, BestValidation
from .stepper import Stepper
from .store import Store
from .train import Callback, LoopState, fit

__all__ = ["train_run", "resume_run", "delete_run", "RUN_FILES", "build_model", "build_dense_model", "apply_method",
           "build_stepper", "prepare", "fit_options", "RunResult", "EpochFn", "StepperWrap", "TOKENIZER_NAME",
           "with_run_tokenizer"]

EpochFn = Any  # Callable[[int, dict], None]
#: Called with the config, the checkpoint (or None) and the method's stepper once they are built and
#: restored; returns the stepper to train with (data-parallel training wraps it there).
StepperWrap = Callable[[TrainConfig, "dict[str, Any] | None", Stepper], Any]

#: A text run's tokenizer (``tokenizers`` JSON) in its folder.
TOKENIZER_NAME = "tokenizer.json"


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
    if cfg.model == "transformer" and is_text_dataset(cfg.data.dataset):
        args.setdefault("vocab_size", cfg.data.vocab_size)   # the tokenizer's ids are all below it
    return build_base_model(cfg.model, args, sample_shape=tuple(sample_shape), num_outputs=num_outputs)


def build_model(cfg: TrainConfig, data: Splits) -> nn.Module:
    """The dense model of ``cfg`` for ``data``, turned into the method's form (and, for standardized
    regression targets, followed by their :class:`~lowrank.target_scale.TargetScale`)."""
    model = apply_method(build_dense_model(cfg, tuple(data.sample_shape), data.num_classes or 1), cfg)
    if data.target_scaled:
        from .target_scale import with_target_scale

        model = with_target_scale(model, data.target_mean, data.target_std)
    return model


def apply_method(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The dense ``model`` in ``cfg.method``'s form (converted, frozen, loaded ...; in place)."""
    return get_method(cfg.method.method).prepare(model, cfg.method)


def build_stepper(model: nn.Module, cfg: TrainConfig, total_steps: int) -> Stepper:
    """The method's stepper for ``model``."""
    return get_method(cfg.method.method).make_stepper(model, cfg, total_steps)


def train_run(cfg: TrainConfig, *, store: Store, runs_dir: str | Path = "runs", data: Splits | None = None,
              progress: bool = False, on_epoch: EpochFn | None = None, tensorboard: str | Path | None = None,
              callbacks: list[Callback] | tuple[Callback, ...] = (), sweep: str | None = None,
              sweep_key: str | None = None, wrap_stepper: StepperWrap | None = None) -> RunResult:
    """Train a new run of ``cfg``; rows go to ``store``, files to ``runs_dir/<id>-<method>-<dataset>``.

    Everything that can be checked before training is (data, model, method, ranks): a
    rejected config leaves no row and no folder behind. ``wrap_stepper``: see :data:`StepperWrap`.
    """
    cfg.validate()
    if data is None:
        data = load_dataset(cfg.data, seed=cfg.seed)
    model, stepper, steps = prepare(cfg, data, None, wrap_stepper)
    run_id = store.create_run(cfg.to_dict(), "", name=cfg.name, sweep=sweep, sweep_key=sweep_key)
    run_dir = _new_run_dir(Path(runs_dir), f"{run_id:04d}-{cfg.method.method}-{_slug(data.name)}")
    lock = RunLock.acquire(run_dir, run_id)  # a fresh folder: free (the folder's row points here only after)
    try:
        store.set_run_dir(run_id, str(run_dir.resolve()))
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if data.tokenizer is not None:   # text: the ids' tokenizer, reused on resume
            (run_dir / TOKENIZER_NAME).write_text(data.tokenizer, encoding="utf-8")
        return _train(cfg, run_id, run_dir, store, data, model, stepper, None, progress, on_epoch, tensorboard,
                      callbacks, lock)
    finally:
        lock.release()


def resume_run(run_id: int, *, store: Store, data: Splits | None = None, progress: bool = False,
               on_epoch: EpochFn | None = None, tensorboard: str | Path | None = None,
               callbacks: list[Callback] | tuple[Callback, ...] = (),
               wrap_stepper: StepperWrap | None = None) -> RunResult:
    """Continue run ``run_id`` from its last checkpoint to the end (``wrap_stepper``: see :data:`StepperWrap`).

    The run folder's lock is taken before anything is written: while another live process
    trains the run this raises :class:`~lowrank.errors.RunLockedError` (naming its pid)
    and changes nothing. A lock left by a dead process is taken over.
    """
    row = _resumable(store, run_id)
    run_dir = Path(row["run_dir"])
    if not row["run_dir"] or not run_dir.is_dir():
        where = f"its folder {row['run_dir']} is missing" if row["run_dir"] else "it never got a run folder"
        raise CheckpointError(f"run {run_id} cannot be resumed: {where}, so there is no checkpoint to continue "
                              f"(`lowrank runs rm {run_id}` deletes its rows; start it anew with `lowrank train`)")
    lock = RunLock.acquire(run_dir, run_id)
    try:
        row = _resumable(store, run_id)  # read again under the lock: it may have ended, or been deleted, meanwhile
        cfg = TrainConfig.from_dict(row["config"])
        ckpt_path = run_dir / "checkpoint.pt"
        ckpt = read_checkpoint(ckpt_path) if ckpt_path.exists() else None  # killed before epoch 1: restart
        if data is None:
            data = load_dataset(with_run_tokenizer(cfg.data, run_dir), seed=cfg.seed)
        model, stepper, _ = prepare(cfg, data, ckpt, wrap_stepper)
        store.set_status(run_id, "running")
        state = LoopState.from_state_dict(ckpt.get("loop")) if ckpt is not None else None
        return _train(cfg, run_id, run_dir, store, data, model, stepper, state, progress, on_epoch, tensorboard,
                      callbacks, lock)
    finally:
        lock.release()


def with_run_tokenizer(data: DataConfig, run_dir: Path) -> DataConfig:
    """``data`` reading the run's own ``tokenizer.json`` when it has one (text datasets)."""
    path = run_dir / TOKENIZER_NAME
    return dataclasses.replace(data, tokenizer=str(path)) if path.is_file() and data.tokenizer is None else data


def _resumable(store: Store, run_id: int) -> dict[str, Any]:
    """The row of run ``run_id`` if it can be resumed; else a CheckpointError saying why."""
    row = store.run(run_id)
    if row is None:
        raise CheckpointError(f"no run {run_id} in {store.path}; `lowrank runs` lists the runs")
    try:
        cfg = TrainConfig.from_dict(row["config"])
    except ConfigError as e:
        raise CheckpointError(f"run {run_id}'s stored config does not fit this version of lowrank ({e}); "
                              f"a run written by an older lowrank resumes with that version") from None
    if row["status"] == "finished":
        raise CheckpointError(f"run {run_id} has already finished ({cfg.epochs} of {cfg.epochs} epochs): "
                              f"nothing to resume (a run's length is part of its config; start a new run "
                              f"to train longer)")
    return row


def _augmentation(cfg: TrainConfig) -> Augmentation:
    return Augmentation(cfg.data.augment_shift, cfg.data.augment_rotate)


def prepare(cfg: TrainConfig, data: Splits, ckpt: dict[str, Any] | None,
            wrap_stepper: StepperWrap | None = None) -> tuple[nn.Module, Stepper, int]:
    """The model and stepper of ``cfg`` (restored from ``ckpt`` when given) and the planned steps."""
    resolve_loss(cfg.loss, data.num_classes)  # a loss that does not fit the targets: refused before any write
    _augmentation(cfg).check(tuple(data.sample_shape), data.name)
    if cfg.select_best and data.val is None:
        raise ConfigError("select_best keeps the epoch of best validation accuracy: give --val-fraction > 0")
    model = build_model(cfg, data)
    if ckpt is not None:
        load_model(model, ckpt)
    model.to(torch.device(cfg.device))
    total_steps = math.ceil(len(data.train) / cfg.batch_size) * cfg.epochs
    stepper = build_stepper(model, cfg, total_steps)
    if ckpt is not None:
        with damaged("the checkpoint's optimizer state"):
            stepper.load_state_dict(ckpt["stepper"])
        check_optimizer_state(stepper.optimizer, "checkpoint")
    if wrap_stepper is not None:
        stepper = wrap_stepper(cfg, ckpt, stepper)
    return model, stepper, total_steps


def fit_options(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`~lowrank.train.fit` that ``cfg`` sets."""
    return dict(epochs=cfg.epochs, batch_size=cfg.batch_size, loss=cfg.loss, seed=cfg.seed, noise=cfg.data.noise,
                augment=_augmentation(cfg), schedule=cfg.optim.schedule, device=cfg.device)


def _train(cfg: TrainConfig, run_id: int, run_dir: Path, store: Store, data: Splits, model: nn.Module,
           stepper: Stepper, state: LoopState | None, progress: bool, on_epoch: EpochFn | None,
           tensorboard: str | Path | None, extra: list[Callback] | tuple[Callback, ...],
           lock: RunLock | None = None) -> RunResult:
    recorder = Recorder(store, run_id, run_dir, cfg, lock)
    # Model selection first: at the end it puts the best epoch's weights back before the
    # recorder summarizes and writes the final checkpoint.
    callbacks: list[Callback] = [BestValidation(run_dir, cfg)] if cfg.select_best else []
    callbacks.append(recorder)
    if progress:
        callbacks.append(ProgressBar())
    if on_epoch is not None:
        callbacks.append(OnEpoch(on_epoch))
    if tensorboard is not None:
        callbacks.append(TensorBoardWriter(Path(tensorboard) / f"{run_id:04d}-{cfg.method.method}"))
    callbacks += list(extra)
    try:
        history = fit(model, data, stepper, callbacks=callbacks, state=state, **fit_options(cfg))
    except TrainingDivergedError as e:
        # The loop does not know where its checkpoints go; say here which one is left.
        raise TrainingDivergedError(f"{e}; {_checkpoint_note(recorder.checkpoint, run_dir)}") from e
    assert recorder.summary is not None
    return RunResult(run_id, run_dir, cfg, history, recorder.summary, model)


def _checkpoint_note(checkpoint: tuple[int, int] | None, run_dir: Path) -> str:
    """Which checkpoint a diverged run keeps (``checkpoint``: its (epochs done, batches of the next))."""
    where = run_dir.resolve()
    if checkpoint is None:
        return "no checkpoint was written (it diverged in the first epoch)"
    epoch, batch = checkpoint
    if batch:
        return (f"the checkpoint at epoch {epoch + 1}, batch {batch} (where it was interrupted) is kept in {where}")
    return f"the checkpoint of epoch {epoch} is kept in {where}"


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    """Make the folder of a new run. A folder of that name left by another database (ids
    restart with each database) is never reused: the new run gets ``name-2``, ``name-3`` ..."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"runs folder {runs_dir} is a file; pass a folder to --runs-dir") from None
    except OSError as e:
        raise ConfigError(f"cannot create runs folder {runs_dir}: {e.strerror}; pass another --runs-dir") from None
    for n in range(1, 1000):
        path = runs_dir / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot create run folder {path}: {e.strerror}; pass another --runs-dir") from None
    raise ConfigError(f"{runs_dir} already holds folders {name} to {name}-999; pass another --runs-dir")


#: The files lowrank writes in a run folder (``.checkpoint.pt.*.tmp``: a checkpoint write cut short).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", BEST_NAME, LOCK_NAME, TOKENIZER_NAME)


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith(".checkpoint.pt.") and name.endswith(".tmp"))


def delete_run(store: Store, run_id: int, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete run ``run_id``: its rows in every table and its folder, unless a live process holds it.

    The folder goes only when it holds ``config.json`` and nothing but lowrank's own run
    files (each removed by name, then the empty folder); otherwise it is kept, and the
    result says why. With ``dry_run`` nothing changes; the result says what would be done.

    Returns ``{"id", "status", "method", "dataset", "run_dir", "deleted": bool,
    "held_by": pid or None, "epochs": rows, "ranks": rows, "folder": "removed" | "kept" |
    "missing" | "none", "kept_because": str or None}``.
    """
    row = store.run(run_id)
    if row is None:
        raise CheckpointError(f"no run {run_id} in {store.path}; `lowrank runs` lists the runs")
    run_dir = Path(row["run_dir"]) if row["run_dir"] else None
    out: dict[str, Any] = {"id": run_id, "status": row["status"], "method": row["method"],
                           "dataset": row["dataset"], "run_dir": row["run_dir"] or None, "deleted": False,
                           "held_by": None, "epochs": len(store.epochs(run_id)), "ranks": len(store.ranks(run_id)),
                           "folder": "none", "kept_because": None}
    lock: RunLock | None = None
    made_lock = False
    cannot_lock: str | None = None
    if run_dir is not None and run_dir.is_dir():
        made_lock = not (run_dir / LOCK_NAME).exists()
        try:
            lock = RunLock.acquire(run_dir, run_id, write_pid=False)
        except RunLockedError:
            from .recorder import lock_holder

            out["held_by"] = lock_holder(run_dir) or "unknown"
            return out
        except OSError as e:  # a folder this user may not write: nothing of it can be removed either
            made_lock, cannot_lock = False, f"its lock file cannot be made ({e.strerror})"
    try:
        out["folder"], out["kept_because"] = ("kept", cannot_lock) if cannot_lock else _folder_verdict(run_dir)
        if dry_run:
            if made_lock:
                os.unlink(run_dir / LOCK_NAME)  # type: ignore[operator]
            return out
        store.delete_run(run_id)
        out["deleted"] = True
        if out["folder"] == "removed":
            assert run_dir is not None
            for entry in os.scandir(run_dir):
                if entry.name != LOCK_NAME:
                    os.unlink(entry.path)
            os.unlink(run_dir / LOCK_NAME)  # last, while held: a resume waiting on it finds the row gone
            run_dir.rmdir()
        elif made_lock:
            os.unlink(run_dir / LOCK_NAME)  # type: ignore[operator]  # a kept folder stays as it was
        return out
    finally:
        if lock is not None:
            lock.release()


def _folder_verdict(run_dir: Path | None) -> tuple[str, str | None]:
    """``("removed" | "kept" | "missing" | "none", why kept)`` for a run folder to be deleted."""
    if run_dir is None:
        return "none", None
    if run_dir.is_symlink():
        return "kept", "it is a symbolic link"
    if not run_dir.exists():
        return "missing", None
    if not run_dir.is_dir():
        return "kept", "it is not a folder"
    foreign = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in os.scandir(run_dir)
                     if not (_is_run_file(e.name) and e.is_file(follow_symlinks=False)))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return "kept", f"it holds files lowrank did not write ({shown})"
    if not (run_dir / "config.json").is_file():
        return "kept", "it has no config.json, so it may not be a lowrank run folder"
    return "removed", None


def _slug(name: str) -> str:
    """A dataset name or path as a folder-name part: its last component, safe characters only."""
    base = Path(name).name or "data"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:40]

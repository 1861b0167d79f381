"""The training loop: fit, evaluate, checkpoint, resume.

Plain and method-agnostic: a method contributes ``prepare`` and a
:class:`~lowrank.stepper.Stepper` (see :mod:`lowrank.methods`); this file only
slices preloaded tensors into batches, calls ``stepper.step`` and records.

Resumability: the checkpoint written after every epoch (and on Ctrl-C, mid-epoch)
holds the model, its low-rank structure, the stepper's (optimizer or integrator)
state, torch's global RNG state, the position in the epoch and the history; data
order and input noise are re-seeded from (seed, epoch, batch). So a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import methods
from .checkpoint import load_model, model_payload, read_checkpoint, write_checkpoint
from .config import TrainConfig
from .data import ArrayDataset, Splits, load_dataset
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .memory import PeakMemory
from .models import mlp
from .stepper import lr_scale
from .store import Store

__all__ = ["fit", "resume", "evaluate", "loss_function", "build_model", "RunResult"]

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunResult:
    """What a finished (or resumed-to-the-end) run returns."""

    run_id: int
    run_dir: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module = field(repr=False)


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task loss named in the config."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mse":
        return lambda out, y: F.mse_loss(out.squeeze(-1), y)
    if name == "mae":
        return lambda out, y: F.l1_loss(out.squeeze(-1), y)
    raise ConfigError(f"loss {name!r} is not one of cross_entropy, mse, mae")


@torch.no_grad()
def evaluate(model: nn.Module, ds: ArrayDataset, loss_name: str = "cross_entropy",
             batch_size: int = 4096, return_predictions: bool = False) -> dict[str, Any]:
    """Mean loss and (for classification) accuracy of ``model`` on ``ds``, in eval mode."""
    loss_fn = loss_function(loss_name)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, correct, preds = 0.0, 0, []
    for i in range(0, len(ds), batch_size):
        x = ds.x[i:i + batch_size].to(device)
        y = ds.y[i:i + batch_size].to(device)
        out = model(x)
        total += float(loss_fn(out, y)) * len(x)
        if loss_name == "cross_entropy":
            p = out.argmax(1)
            correct += int((p == y).sum())
            if return_predictions:
                preds.append(p.cpu())
    model.train(was_training)
    n = max(1, len(ds))
    res: dict[str, Any] = {"loss": total / n, "acc": correct / n if loss_name == "cross_entropy" else None}
    if return_predictions:
        res["predictions"] = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    return res


def build_model(cfg: TrainConfig, data: Splits | None = None) -> nn.Module:
    """The dense MLP of ``cfg`` (seeded), turned into the method's form."""
    if data is not None:
        if cfg.layers[0] != data.input_dim:
            raise ConfigError(f"layers start with {cfg.layers[0]} inputs but dataset {data.name!r} "
                              f"has {data.input_dim} features: use --layers {data.input_dim},...")
        if cfg.loss == "cross_entropy" and cfg.layers[-1] != data.num_classes:
            raise ConfigError(f"layers end with {cfg.layers[-1]} outputs but dataset {data.name!r} "
                              f"has {data.num_classes} classes: use --layers ...,{data.num_classes}")
    torch.manual_seed(cfg.seed)
    return methods.prepare(mlp(cfg.layers, cfg.activation), cfg)


def fit(cfg: TrainConfig, *, store: Store, runs_dir: str | Path = "runs", data: Splits | None = None,
        progress: bool = False, on_epoch: EpochCallback | None = None,
        sweep: str | None = None, sweep_key: str | None = None) -> RunResult:
    """Train a new run of ``cfg``; rows go to ``store``, files to ``runs_dir/<id>-<method>-<dataset>``."""
    cfg.validate()
    if data is None:
        data = load_dataset(cfg.data, seed=cfg.seed)
    run_id = store.create_run(cfg.to_dict(), "", name=cfg.name, sweep=sweep, sweep_key=sweep_key)
    run_dir = Path(runs_dir) / f"{run_id:04d}-{cfg.method.method}-{cfg.data.dataset}"
    run_dir.mkdir(parents=True, exist_ok=True)
    store.set_run_dir(run_id, str(run_dir.resolve()))
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return _run(cfg, run_id, run_dir, store, data, None, progress, on_epoch)


def resume(run_id: int, *, store: Store, data: Splits | None = None, progress: bool = False,
           on_epoch: EpochCallback | None = None) -> RunResult:
    """Continue run ``run_id`` from its last checkpoint to the end."""
    row = store.run(run_id)
    if row is None:
        raise CheckpointError(f"no run {run_id} in {store.path}; `lowrank runs` lists the runs")
    cfg = TrainConfig.from_dict(row["config"])
    if row["status"] == "finished":
        raise CheckpointError(f"run {run_id} has already finished ({cfg.epochs} of {cfg.epochs} epochs): "
                              f"nothing to resume (a run's length is part of its config; start a new run "
                              f"to train longer)")
    run_dir = Path(row["run_dir"])
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = read_checkpoint(ckpt_path) if ckpt_path.exists() else None  # killed before epoch 1: restart
    if data is None:
        data = load_dataset(cfg.data, seed=cfg.seed)
    store.set_status(run_id, "running")
    return _run(cfg, run_id, run_dir, store, data, ckpt, progress, on_epoch)


def _run(cfg: TrainConfig, run_id: int, run_dir: Path, store: Store, data: Splits,
         ckpt: dict[str, Any] | None, progress: bool, on_epoch: EpochCallback | None) -> RunResult:
    device = torch.device(cfg.device)
    model = build_model(cfg, data)
    n_train = len(data.train)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    # Data order and input noise come from generators re-seeded from (seed, epoch, batch),
    # so any point of the run can be replayed without saving generator state.
    gen = torch.Generator()
    epoch, batch, history = 0, 0, []
    perm: torch.Tensor | None = None
    partial = {"loss_sum": 0.0, "time": 0.0}
    if ckpt is not None:
        load_model(model, ckpt)
    model.to(device)
    total_steps = steps_per_epoch * cfg.epochs
    stepper = methods.make_stepper(model, cfg, total_steps)
    if ckpt is not None:
        stepper.load_state_dict(ckpt["stepper"])
        torch.set_rng_state(ckpt["torch_rng"])
        epoch, batch, history = int(ckpt["epoch"]), int(ckpt["batch"]), list(ckpt["history"])
        perm = ckpt.get("perm")
        partial = dict(ckpt.get("partial", partial))
        store.delete_epochs_from(run_id, epoch)
    loss_fn = loss_function(cfg.loss)
    x_train, y_train = data.train.x.to(device), data.train.y.to(device)

    def save(status_epoch: int, status_batch: int, cur_perm: torch.Tensor | None) -> None:
        payload = {"config": cfg.to_dict(), **model_payload(model), "stepper": stepper.state_dict(),
                   "torch_rng": torch.get_rng_state(),
                   "epoch": status_epoch, "batch": status_batch, "history": history, "partial": partial}
        if cur_perm is not None:
            payload["perm"] = cur_perm
        write_checkpoint(run_dir / "checkpoint.pt", payload)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps_per_epoch * cfg.epochs, initial=epoch * steps_per_epoch + batch,
                   unit="step", leave=False, dynamic_ncols=True)
    try:
        while epoch < cfg.epochs:
            if perm is None:  # a checkpoint taken mid-epoch carries the epoch's order
                perm = torch.randperm(n_train, generator=gen.manual_seed(_seed(cfg.seed, epoch))).to(device)
                partial = {"loss_sum": 0.0, "time": 0.0}
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                try:
                    for b in range(batch, steps_per_epoch):
                        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                        xb, yb = x_train[idx], y_train[idx]
                        if cfg.data.noise:
                            noise = torch.randn(xb.shape, generator=gen.manual_seed(_seed(cfg.seed, epoch, b + 1)))
                            noise = noise.to(device)
                            xb = xb + cfg.data.noise * noise
                        if cfg.optim.schedule != "constant":
                            stepper.set_lr_scale(lr_scale(cfg.optim.schedule,
                                                          (epoch * steps_per_epoch + b) / total_steps))
                        loss = stepper.step(xb, yb, loss_fn)
                        loss_sum += loss * len(idx)
                        if not torch.isfinite(loss):
                            raise TrainingDivergedError(
                                f"loss became {float(loss)} at epoch {epoch + 1}, batch {b + 1}; the last good "
                                f"checkpoint is kept in {run_dir} (try a smaller --lr or --clip 4)")
                        batch = b + 1
                        if bar is not None:
                            bar.update(1)
                except KeyboardInterrupt:
                    partial["loss_sum"] += float(loss_sum)
                    partial["time"] += time.perf_counter() - t0
                    save(epoch, batch, perm)
                    store.set_status(run_id, "interrupted")
                    raise
                epoch_time = time.perf_counter() - t0 + partial["time"]
            train_loss = (float(loss_sum) + partial["loss_sum"]) / n_train
            metrics = _epoch_metrics(model, data, cfg, train_loss, epoch_time, n_train, mem.peak)
            extra = stepper.end_epoch(epoch)
            ranks = extra.pop("ranks", None)
            row = {"epoch": epoch, **metrics, "extra": extra, "ranks": ranks}
            history.append(row)
            epoch, batch, perm = epoch + 1, 0, None
            partial = {"loss_sum": 0.0, "time": 0.0}
            save(epoch, 0, None)
            store.log_epoch(run_id, epoch - 1, metrics, extra, ranks)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            if bar is not None:
                bar.set_postfix_str(_postfix(metrics))
            if on_epoch is not None:
                on_epoch(epoch - 1, row)
    except TrainingDivergedError:
        store.set_status(run_id, "diverged")
        raise
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted")
        raise
    except Exception:
        store.set_status(run_id, "failed")
        raise
    finally:
        if bar is not None:
            bar.close()
    summary = _finish(model, stepper, data, cfg, history)
    save(epoch, 0, None)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    store.set_status(run_id, "finished", summary)
    return RunResult(run_id, run_dir, cfg, history, summary, model)


def _seed(*parts: int) -> int:
    """A 63-bit seed from small integers (distinct tuples give distinct streams)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B9)) * 1099511628211) % (1 << 63)
    return h


def _epoch_metrics(model: nn.Module, data: Splits, cfg: TrainConfig, train_loss: float,
                   epoch_time: float, n_train: int, peak_mem: int) -> dict[str, Any]:
    # Train accuracy is measured at the end of the epoch on (up to) 10,000 training
    # samples in eval mode, so it is comparable with test accuracy; train_loss is the
    # running mean over the epoch's steps.
    sub = ArrayDataset(data.train.x[:10000], data.train.y[:10000])
    metrics = {"train_loss": train_loss, "train_acc": evaluate(model, sub, cfg.loss)["acc"],
               "epoch_time": epoch_time, "samples_per_s": n_train / max(epoch_time, 1e-9),
               "peak_mem": float(peak_mem)}
    test = evaluate(model, data.test, cfg.loss)
    metrics.update(test_loss=test["loss"], test_acc=test["acc"])
    if data.val is not None:
        val = evaluate(model, data.val, cfg.loss)
        metrics.update(val_loss=val["loss"], val_acc=val["acc"])
    return metrics


def _finish(model: nn.Module, stepper: Any, data: Splits, cfg: TrainConfig,
            history: list[dict[str, Any]]) -> dict[str, Any]:
    from .accounting import count, hidden_weights

    stepper.end_training()  # e.g. energy pruning; evaluate again afterwards
    test = evaluate(model, data.test, cfg.loss, return_predictions=cfg.loss == "cross_entropy")
    acct = count(model, optimizer=getattr(stepper, "optimizer", None))
    summary: dict[str, Any] = {
        "test_loss": test["loss"], "test_acc": test["acc"],
        "epochs": len(history),
        "train_time": sum(h["epoch_time"] for h in history),
        "epoch_time": sum(h["epoch_time"] for h in history) / max(1, len(history)),
        "peak_mem": max((h["peak_mem"] for h in history), default=0.0),
        "accounting": acct.to_dict() if hasattr(acct, "to_dict") else dict(vars(acct)),
        "hidden_weights": hidden_weights(model),
        "ranks": {name: getattr(m, "rank") for name, m in model.named_modules()
                  if hasattr(m, "rank") and not isinstance(m, nn.Linear)},
    }
    if "predictions" in test:
        summary["confusion"] = _confusion(test["predictions"], data.test.y, data.num_classes)
    return summary


def _confusion(pred: torch.Tensor, y: torch.Tensor, k: int) -> list[list[int]]:
    m = torch.bincount(y.cpu() * k + pred.cpu(), minlength=k * k).reshape(k, k)
    return m.tolist()


def _postfix(m: dict[str, Any]) -> str:
    acc = m.get("test_acc")
    return f"loss {m['train_loss']:.4f}" + (f" test acc {acc:.4f}" if acc is not None else "")

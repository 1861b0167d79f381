"""The training loop: plain, and knowing nothing of any method or of where results go.

``fit(model, data, stepper, epochs=..., callbacks=[...])`` slices preloaded tensors into
shuffled mini-batches, calls ``stepper.step`` once per batch, evaluates after every
epoch and returns the history (one dict of metrics per epoch). A method contributes
its :class:`~lowrank.stepper.Stepper`; persistence, logging and progress are
:class:`Callback` objects around the loop (see :mod:`lowrank.recorder`).

Resumability: the loop's position is a :class:`LoopState` (epoch, batch, the epoch's
data order, partial sums, history, torch's RNG state). Data order and input noise are
re-seeded from ``(seed, epoch, batch)``, so a run resumed from a state saved by a
callback, with the stepper's state restored, ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import nn

from .checkpoint import damaged
from .data import ArrayDataset, Augmentation, Splits, as_splits
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .losses import is_regression, loss_function, resolve_loss
from .memory import PeakMemory
from .optimizers import lr_scale
from .stepper import Stepper

__all__ = ["fit", "evaluate", "Callback", "Loop", "LoopState", "ForcedInterrupt", "TRAIN_METRIC_SAMPLES"]

#: Train-set metrics are measured after each epoch, in eval mode, on this many training samples.
TRAIN_METRIC_SAMPLES = 10_000


class ForcedInterrupt(KeyboardInterrupt):
    """A second Ctrl-C (or SIGTERM) while the first waits for the step to end: stop at once,
    mid-step, writing nothing."""


class _StepBoundaryInterrupts:
    """While active (main thread only), SIGINT and SIGTERM only set :attr:`requested`; the loop
    reads it after each step and stops there, so a checkpoint never holds half a step. A
    second signal raises :class:`ForcedInterrupt` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise ForcedInterrupt
        self.requested = signum

    def __enter__(self) -> "_StepBoundaryInterrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class LoopState:
    """Where a run stands: enough to continue it exactly."""

    epoch: int = 0
    """Epochs finished."""
    batch: int = 0
    """Batches of the current epoch finished."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row of metrics per finished epoch."""
    perm: torch.Tensor | None = None
    """The current epoch's data order (None between epochs)."""
    partial: dict[str, float] = field(default_factory=lambda: {"loss_sum": 0.0, "time": 0.0})
    """Loss sum and seconds of the current epoch's finished batches before an interruption."""
    torch_rng: torch.Tensor | None = None
    """torch's global RNG state when the state was taken (restored on resume)."""

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "history": list(self.history), "perm": self.perm,
                "partial": dict(self.partial), "torch_rng": torch.get_rng_state()}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "LoopState":
        """The state :meth:`state_dict` wrote; anything else is a :class:`CheckpointError`."""
        with damaged("the checkpoint's loop state"):
            state = cls(epoch=_count(d["epoch"]), batch=_count(d["batch"]), history=list(d["history"]),
                        perm=d.get("perm"), partial={k: float(v) for k, v in dict(d.get("partial") or
                                                                                   {"loss_sum": 0.0, "time": 0.0}).items()},
                        torch_rng=d.get("torch_rng"))
            if len(state.history) != state.epoch:
                raise ValueError(f"{len(state.history)} history rows for {state.epoch} epochs")
            for i, row in enumerate(state.history):
                _check_history_row(i, row)
            if state.perm is not None and (not torch.is_tensor(state.perm) or state.perm.dim() != 1
                                           or state.perm.dtype != torch.int64):
                raise ValueError("the data order is not a 1-D int64 tensor")
            if not {"loss_sum", "time"} <= state.partial.keys():
                raise ValueError("the partial sums lack loss_sum or time")
            if state.torch_rng is not None:
                torch.Generator().set_state(state.torch_rng)  # raises for anything but a valid RNG state
        return state


#: The numbers every history row holds (``fit`` writes them; summaries add them up).
HISTORY_NUMBERS = ("train_loss", "epoch_time", "samples_per_s", "peak_mem")


def _check_history_row(i: int, row: Any) -> None:
    """Row ``i`` of a loop history as :func:`fit` writes it: its epoch, numbers (or None for
    optional metrics), an ``extra`` dict and ``ranks`` (a dict or None); else ValueError."""
    if not isinstance(row, dict) or row.get("epoch") != i:
        raise ValueError(f"history row {i} is not the record of epoch {i}")
    for key, v in row.items():
        if key == "extra" or key == "ranks":
            if not isinstance(v, dict) and not (key == "ranks" and v is None):
                raise ValueError(f"history row {i}: {key} is {type(v).__name__}, not a dict")
        elif key != "epoch" and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"history row {i}: {key} is {type(v).__name__}, not a number")
    missing = [k for k in HISTORY_NUMBERS if row.get(k) is None]
    if missing:
        raise ValueError(f"history row {i} lacks {', '.join(missing)}")


def _count(v: Any) -> int:
    if isinstance(v, bool) or int(v) != v or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return int(v)


@dataclass
class Loop:
    """What callbacks see of a running loop."""

    model: nn.Module
    stepper: Stepper
    data: Splits
    state: LoopState
    epochs: int
    steps_per_epoch: int
    loss: str
    """The resolved loss name."""
    selected_epoch: int | None = None
    """Set by model selection when the model ends with an earlier epoch's weights (None: the last epoch's)."""

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def steps_done(self) -> int:
        return self.state.epoch * self.steps_per_epoch + self.state.batch


class Callback:
    """Hooks around :func:`fit`; every method is optional. Callbacks run in list order."""

    def on_fit_start(self, loop: Loop) -> None:
        """Before the first step (also when resuming)."""

    def on_step_end(self, loop: Loop) -> None:
        """After every step."""

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        """After each epoch's evaluation; ``row`` is the history entry just added."""

    def on_interrupt(self, loop: Loop) -> None:
        """On Ctrl-C or SIGTERM during an epoch, at the end of the step it came in (``loop.state``
        is the position reached); not after a :class:`ForcedInterrupt`."""

    def on_fit_end(self, loop: Loop) -> None:
        """After the last epoch and the stepper's ``end_training`` (e.g. pruning)."""

    def on_fail(self, loop: Loop, error: BaseException) -> None:
        """When training stops by an exception other than an interrupt (divergence included)."""

    def on_close(self, loop: Loop) -> None:
        """Last, however the loop ended (finished, interrupted or failed): release files, bars."""


def fit(model: nn.Module, data: Splits | Any, stepper: Stepper, *, epochs: int, batch_size: int = 64,
        loss: str = "auto", seed: int = 0, noise: float = 0.0, augment: Augmentation | None = None,
        schedule: str = "constant", callbacks: list[Callback] | tuple[Callback, ...] = (),
        state: LoopState | None = None, device: str | torch.device | None = None) -> list[dict[str, Any]]:
    """Train ``model`` with ``stepper`` on ``data`` for ``epochs`` epochs; returns the history.

    Args:
        model: the model ``stepper`` trains (already on ``device``).
        data: the splits, or your own ``(x, y)`` tensors or ``torch.utils.data.Dataset`` (split by
            :func:`lowrank.data.as_splits` with its defaults: a seeded 20% test split).
        stepper: one training step per call (a method's :class:`~lowrank.stepper.Stepper`).
        epochs, batch_size: the run's length and mini-batch size.
        loss: ``cross_entropy``, ``mse``, ``mae`` or ``auto`` (by the targets).
        seed: seeds each epoch's data order and the input noise.
        noise: std of Gaussian noise added to every training batch's inputs.
        augment: random shifts / rotations of every training batch's images (before the noise).
        schedule: learning-rate schedule over the run (``constant``, ``cosine``).
        callbacks: hooks around the loop (recording, progress, TensorBoard ...).
        state: a position to continue from (a callback saved it); None starts afresh.
        device: where batches go (default: the model's parameters' device).
    """
    if epochs <= 0 or batch_size <= 0:
        raise ConfigError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if not isinstance(data, Splits):
        data = as_splits(data, seed=seed)
    loss = resolve_loss(loss, data.num_classes)
    loss_fn = loss_function(loss)
    if augment is not None and augment.active:
        augment.check(tuple(data.sample_shape), data.name)
    else:
        augment = None
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    n_train = len(data.train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    state = state or LoopState()
    if state.perm is not None and (len(state.perm) != n_train or state.batch > steps_per_epoch):
        raise CheckpointError(f"the loop state was taken on {len(state.perm)} training samples at batch "
                              f"{state.batch}, this training set has {n_train} ({steps_per_epoch} batches)")
    if state.epoch > epochs:
        raise CheckpointError(f"the loop state has {state.epoch} epochs done, more than the run's {epochs}")
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    loop = Loop(model, stepper, data, state, epochs, steps_per_epoch, loss)
    gen = torch.Generator()  # re-seeded from (seed, epoch, batch): any point can be replayed
    x_train, y_train = data.train.x.to(device), data.train.y.to(device)
    for cb in callbacks:
        cb.on_fit_start(loop)
    interrupts = _StepBoundaryInterrupts()
    try:
        with interrupts:
            while state.epoch < epochs:
                if state.perm is None:  # a state taken mid-epoch carries the epoch's order
                    state.perm = torch.randperm(n_train, generator=gen.manual_seed(_seed(seed, state.epoch))).to(device)
                    state.partial = {"loss_sum": 0.0, "time": 0.0}
                perm = state.perm
                # The epoch's running loss sum goes on from where an interrupt left it: the same
                # float64 additions in the same order, so a resumed epoch's loss is bit-identical.
                loss_sum = torch.full((), state.partial["loss_sum"], device=device, dtype=torch.float64)
                with PeakMemory(device) as mem:
                    t0 = time.perf_counter()
                    try:
                        for b in range(state.batch, steps_per_epoch):
                            idx = perm[b * batch_size:(b + 1) * batch_size]
                            xb, yb = x_train[idx], y_train[idx]
                            if augment is not None:
                                xb = augment(xb, tuple(data.sample_shape),
                                             gen.manual_seed(_seed(seed, state.epoch, b + 1, 1)))
                            if noise:
                                z = torch.randn(xb.shape, generator=gen.manual_seed(_seed(seed, state.epoch, b + 1)))
                                xb = xb + noise * z.to(device)
                            if schedule != "constant":
                                stepper.set_lr_scale(lr_scale(schedule, (state.epoch * steps_per_epoch + b)
                                                              / loop.total_steps))
                            batch_loss = stepper.step(xb, yb, loss_fn)
                            loss_sum += batch_loss * len(idx)
                            if not torch.isfinite(batch_loss):
                                raise TrainingDivergedError(
                                    f"loss became {float(batch_loss)} at epoch {state.epoch + 1}, batch {b + 1} "
                                    f"(try a smaller --lr or --clip 4)")
                            state.batch = b + 1
                            for cb in callbacks:
                                cb.on_step_end(loop)
                            if interrupts.requested is not None:
                                raise KeyboardInterrupt
                    except ForcedInterrupt:
                        raise
                    except KeyboardInterrupt:
                        state.partial["loss_sum"] = float(loss_sum)
                        state.partial["time"] += time.perf_counter() - t0
                        for cb in callbacks:
                            cb.on_interrupt(loop)
                        raise
                    epoch_time = time.perf_counter() - t0 + state.partial["time"]
                train_loss = float(loss_sum) / n_train
                metrics = _epoch_metrics(model, data, loss, train_loss, epoch_time, n_train, mem.peak)
                for key in ("val_loss", "test_loss"):  # a checkpoint is good only when its losses are finite
                    if metrics.get(key) is not None and not math.isfinite(metrics[key]):
                        raise TrainingDivergedError(f"{key.replace('_', ' ')} became {metrics[key]} at the end of "
                                                    f"epoch {state.epoch + 1} (try a smaller --lr or --clip 4)")
                extra = stepper.end_epoch(state.epoch)
                ranks = extra.pop("ranks", None)
                row = {"epoch": state.epoch, **metrics, "extra": extra, "ranks": ranks}
                state.history.append(row)
                state.epoch, state.batch, state.perm = state.epoch + 1, 0, None
                state.partial = {"loss_sum": 0.0, "time": 0.0}
                for cb in callbacks:
                    cb.on_epoch_end(loop, row)
            stepper.end_training()  # e.g. energy pruning
            for cb in callbacks:
                cb.on_fit_end(loop)
    except Exception as e:
        for cb in callbacks:
            cb.on_fail(loop, e)
        raise
    finally:
        for cb in callbacks:
            cb.on_close(loop)
    return state.history


@torch.no_grad()
def evaluate(model: nn.Module, ds: ArrayDataset, loss: str = "cross_entropy", batch_size: int = 4096,
             return_predictions: bool = False) -> dict[str, Any]:
    """Metrics of ``model`` on ``ds`` in eval mode.

    Always ``loss`` (mean task loss); classification: ``acc``; regression: ``acc`` None and
    ``mae``, ``rmse``, ``r2`` (``1 - SS_res / SS_tot``; None for constant targets).
    ``return_predictions`` adds ``predictions`` (class indices or values, on the CPU). A model
    with an ``eval_batch_size`` attribute caps ``batch_size`` (the transformer: its attention
    scores grow with the square of the sequence length).
    """
    batch_size = min(batch_size, int(getattr(model, "eval_batch_size", batch_size)))
    loss_fn = loss_function(loss)
    regression = is_regression(loss)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, correct, abs_sum, sq_sum, preds = 0.0, 0, 0.0, 0.0, []
    for i in range(0, len(ds), batch_size):
        x = ds.x[i:i + batch_size].to(device)
        y = ds.y[i:i + batch_size].to(device)
        out = model(x)
        total += float(loss_fn(out, y)) * len(x)
        if regression:
            p = out.reshape(len(x), -1)[:, 0]
            err = (p - y).double()
            abs_sum += float(err.abs().sum())
            sq_sum += float(err.pow(2).sum())
        else:
            p = out.argmax(1)
            correct += int((p == y).sum())
        if return_predictions:
            preds.append(p.cpu())
    model.train(was_training)
    n = max(1, len(ds))
    res: dict[str, Any] = {"loss": total / n, "acc": None if regression else correct / n}
    if regression:
        ss_tot = float((ds.y.double() - ds.y.double().mean()).pow(2).sum()) if len(ds) else 0.0
        res.update(mae=abs_sum / n, rmse=math.sqrt(sq_sum / n), r2=1.0 - sq_sum / ss_tot if ss_tot > 0 else None)
    if return_predictions:
        res["predictions"] = torch.cat(preds) if preds else torch.empty(0)
    return res


def _seed(*parts: int) -> int:
    """A 63-bit seed from small integers (distinct tuples give distinct streams)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B9)) * 1099511628211) % (1 << 63)
    return h


def _epoch_metrics(model: nn.Module, data: Splits, loss: str, train_loss: float, epoch_time: float,
                   n_train: int, peak_mem: int) -> dict[str, Any]:
    # Train metrics are measured at the end of the epoch on (up to) TRAIN_METRIC_SAMPLES
    # training samples in eval mode, so they compare with the test metrics; train_loss is
    # the running mean over the epoch's steps.
    sub = ArrayDataset(data.train.x[:TRAIN_METRIC_SAMPLES], data.train.y[:TRAIN_METRIC_SAMPLES])
    metrics: dict[str, Any] = {"train_loss": train_loss, "train_acc": evaluate(model, sub, loss)["acc"],
                               "epoch_time": epoch_time, "samples_per_s": n_train / max(epoch_time, 1e-9),
                               "peak_mem": float(peak_mem)}
    for split, ds in (("test", data.test), ("val", data.val)):
        if ds is None:
            continue
        res = evaluate(model, ds, loss)
        metrics.update({f"{split}_{k}": v for k, v in res.items()})
    return metrics

"""Transfer a pretrained dense model to another dataset: LoRA at several ranks, full fine-tuning, scratch.

``lowrank finetune CHECKPOINT --dataset fashion-mnist --method lora,full,scratch --ranks 1,2,4``
trains one stored run per row, every row on the same data, epochs, batch size, optimizer
and seed:

- ``lora`` (one run per rank ``r``): the checkpoint's weights loaded and frozen, a rank-``r``
  adapter ``(lora_alpha / r) B A`` on every hidden layer (all Linear-like layers but the
  output layer), and a new output layer (freshly initialized for the new dataset's
  classes, trained): the ``lora`` method with ``base_checkpoint`` and ``new_head``;
- ``full``: full fine-tuning, every weight trained from the checkpoint's, new output layer
  (the ``dense`` method with ``base_checkpoint`` and ``new_head``);
- ``scratch``: the same architecture trained from a random initialization (``dense``).

Each row is a run in the results database (``lowrank runs``, ``lowrank report``): its
``sweep`` column is the group (default ``finetune/<checkpoint run folder>/<dataset>``),
its ``sweep_key`` the row (``lora-r4``, ``full``, ``scratch``), and its summary gains a
``finetune`` entry: kind, rank, source checkpoint, the pretrained model's own test
accuracy, trainable parameters, training time and memory (:mod:`lowrank.train_memory`).
The rank rule of :mod:`lowrank.lora_rank` then picks a rank from the validation
accuracies.

Everything is checked before the first row is written (:func:`plan_finetune`): the
config, the checkpoint (exists, a dense model), the dataset (found, same input size as
the checkpoint's model), and every row's model is built once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import OptimConfig, TrainConfig
from .data import DataConfig, Splits, load_dataset
from .errors import ConfigError
from .lora_rank import DEFAULT_TOLERANCE, LoRARankChoice, choose_lora_rank
from .pretrained import Pretrained, read_pretrained
from .store import Store
from .train import Callback, Loop

__all__ = ["FinetuneConfig", "FinetuneRow", "FinetunePlan", "FinetuneResult", "FINETUNE_KINDS", "plan_finetune",
           "run_finetune", "choose_from_rows", "group_rows"]

FINETUNE_KINDS = ("lora", "full", "scratch")
"""The kinds of row: LoRA adapters on the frozen base, full fine-tuning, training from scratch."""


@dataclass
class FinetuneConfig:
    checkpoint: str
    """Pretrained dense model: a run folder (runs/0001-dense-hoda) or its checkpoint.pt."""
    dataset: str = "fashion-mnist"
    """Dataset to fine-tune on (a registered name or a path, as for `lowrank train`)."""
    method: str = "lora"
    """Comma-separated rows to train: lora (one run per rank), full (full fine-tuning), scratch (random init)."""
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """LoRA ranks, one run each."""
    epochs: int = 5
    """Epochs of every row."""
    batch_size: int = 64
    """Mini-batch size of every row."""
    lr: float = 1e-3
    """Adam learning rate of every row (cosine schedule to 0)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the update B A is scaled by lora_alpha / rank."""
    val_fraction: float = 0.1
    """Fraction of the training set held out for validation (the rank rule reads its accuracy)."""
    train_size: int | None = None
    """Use only N training samples (seeded subset; for quick runs)."""
    test_size: int | None = None
    """Use only the first N test samples (for quick runs)."""
    tolerance: float = DEFAULT_TOLERANCE
    """Rank rule: the smallest rank within this many accuracy points of full fine-tuning (else of the best rank)."""
    group: str | None = None
    """Name of this set of rows in the results database (default: finetune/<checkpoint run folder>/<dataset>)."""
    seed: int = 0
    """Seed of every row (data order, subsets, new layers' initialization)."""
    device: str = "cpu"
    """Torch device (cpu, cuda)."""

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"checkpoint must name a run folder or checkpoint file, got {self.checkpoint!r}")
        kinds = self.kinds
        if not kinds:
            raise ConfigError(f"method {self.method!r} names no row: use lora, full, scratch or a comma list")
        unknown = [k for k in kinds if k not in FINETUNE_KINDS]
        if unknown:
            raise ConfigError(f"method {', '.join(unknown)} is not one of {', '.join(FINETUNE_KINDS)} "
                              f"(e.g. --method lora,full,scratch)")
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"method {self.method!r} names a row twice")
        if not isinstance(self.ranks, list) or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0
                                                   for r in self.ranks):
            raise ConfigError(f"ranks must be positive integers like 1,2,4,8, got {self.ranks!r}")
        if "lora" in kinds and not self.ranks:
            raise ConfigError("method lora needs at least one rank: give --ranks 1,2,4,...")
        if len(set(self.ranks)) != len(self.ranks):
            raise ConfigError(f"ranks {self.ranks} name a rank twice")
        if not isinstance(self.lora_alpha, (int, float)) or isinstance(self.lora_alpha, bool) or \
                not 0 < self.lora_alpha < math.inf:
            raise ConfigError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.tolerance, (int, float)) or isinstance(self.tolerance, bool) or \
                not 0 <= self.tolerance < math.inf:
            raise ConfigError(f"tolerance must be a number of accuracy points >= 0, got {self.tolerance!r}")
        if self.group is not None and (not isinstance(self.group, str) or not self.group.strip()):
            raise ConfigError(f"group must be a non-empty name, got {self.group!r}")
        self.row_config("scratch", None)  # the shared fields (epochs, lr, batch size, data, device) are valid

    @property
    def kinds(self) -> list[str]:
        """The rows' kinds, in the order given."""
        return [k.strip() for k in str(self.method).split(",") if k.strip()]

    def row_config(self, kind: str, rank: int | None, pretrained: Pretrained | None = None,
                   num_classes: int | None = None) -> TrainConfig:
        """The :class:`TrainConfig` of one row (``pretrained`` gives the architecture; without it,
        the defaults, to check the shared fields)."""
        from .registry import method_config

        base = pretrained.config if pretrained is not None else TrainConfig()
        data = DataConfig(dataset=self.dataset, val_fraction=self.val_fraction, train_size=self.train_size,
                          test_size=self.test_size)
        if kind == "lora":
            method = method_config("lora", rank=rank, lora_alpha=float(self.lora_alpha),
                                   base_checkpoint=str(pretrained.path) if pretrained else None,
                                   new_head=pretrained is not None)
        elif kind == "full":
            method = method_config("dense", base_checkpoint=str(pretrained.path) if pretrained else None,
                                   new_head=pretrained is not None)
        else:
            method = method_config("dense")
        layers = list(base.layers)
        if num_classes is not None:
            layers[-1] = num_classes
        return TrainConfig(data=data, optim=OptimConfig(optimizer="adam", lr=self.lr, schedule="cosine"),
                           method=method, model=base.model, model_args=dict(base.model_args), layers=layers,
                           activation=base.activation, batch_size=self.batch_size, epochs=self.epochs,
                           seed=self.seed, device=self.device, name=row_label(kind, rank))


def row_label(kind: str, rank: int | None) -> str:
    """``lora r4``, ``full fine-tuning`` or ``scratch``."""
    return {"lora": f"lora r{rank}", "full": "full fine-tuning", "scratch": "scratch"}[kind]


def row_key(kind: str, rank: int | None) -> str:
    """The row's ``sweep_key``: ``lora-r4``, ``full``, ``scratch``."""
    return f"lora-r{rank}" if kind == "lora" else kind


@dataclass(frozen=True)
class PlannedRow:
    kind: str
    rank: int | None
    config: TrainConfig


@dataclass
class FinetunePlan:
    """A validated fine-tuning: the checkpoint, the data, the group and every row's config."""

    config: FinetuneConfig
    pretrained: Pretrained
    data: Splits
    group: str
    rows: list[PlannedRow]


def _default_group(pre: Pretrained, dataset: str) -> str:
    source = pre.path.parent.name if pre.path.name == "checkpoint.pt" else pre.path.stem
    return f"finetune/{source}/{Path(dataset).name or dataset}"


def plan_finetune(cfg: FinetuneConfig) -> FinetunePlan:
    """Check everything a fine-tuning needs and build every row's config; writes nothing."""
    from .run import build_model

    pre = read_pretrained(cfg.checkpoint)
    row0 = cfg.row_config("scratch", None, pre)
    data = load_dataset(row0.data, seed=cfg.seed)
    if data.num_classes <= 0:
        raise ConfigError(f"{cfg.dataset} is a regression dataset; fine-tuning here replaces a classifier's "
                          f"output layer, so it needs classes")
    same = data.input_dim == pre.input_size if pre.config.model == "mlp" else \
        tuple(data.sample_shape) == pre.sample_shape
    if not same:
        raise ConfigError(f"checkpoint {cfg.checkpoint} takes inputs of shape {'x'.join(map(str, pre.sample_shape))} "
                          f"({pre.input_size} values) but {data.name} has samples of shape "
                          f"{'x'.join(map(str, data.sample_shape))} ({data.input_dim}): fine-tune on data of the "
                          f"model's input size")
    rows: list[PlannedRow] = []
    for kind in cfg.kinds:
        for rank in (cfg.ranks if kind == "lora" else [None]):
            rc = cfg.row_config(kind, rank, pre, data.num_classes)
            build_model(rc, data)  # ranks that do not fit a layer, a checkpoint that does not load: refused now
            rows.append(PlannedRow(kind, rank, rc))
    return FinetunePlan(cfg, pre, data, cfg.group or _default_group(pre, cfg.dataset), rows)


class TrainingCpuTime(Callback):
    """CPU seconds this process spent in the training steps (evaluation after each epoch left out):
    unlike wall time, other processes on a shared machine hardly change it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = self._last = 0.0

    def on_fit_start(self, loop: Loop) -> None:
        self._start = self._last = time.process_time()

    def on_step_end(self, loop: Loop) -> None:
        self._last = time.process_time()

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        self.seconds += self._last - self._start
        self._start = self._last = time.process_time()


@dataclass(frozen=True)
class FinetuneRow:
    """The measured figures of one row (also stored as its run's ``summary["finetune"]``)."""

    run_id: int
    kind: str
    rank: int | None
    test_acc: float
    val_acc: float | None
    trainable: int
    """Trainable parameters (elements updated by the optimizer)."""
    train_time: float
    """Seconds of training (sum of the epochs' step loops; evaluation not included)."""
    epoch_time: float
    fastest_epoch: float
    """Wall seconds of the fastest epoch (the least disturbed by other work on the machine)."""
    cpu_time: float
    """CPU seconds of this process in the training steps (see :class:`TrainingCpuTime`)."""
    memory: dict[str, int]
    """Exact training-state bytes (:class:`~lowrank.train_memory.TrainingMemory`)."""
    peak_rss: float
    """Growth of the process' peak resident memory during training, bytes (CPU; allocated bytes on CUDA)."""

    @property
    def label(self) -> str:
        return row_label(self.kind, self.rank)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "kind": self.kind, "rank": self.rank, "test_acc": self.test_acc,
                "val_acc": self.val_acc, "trainable": self.trainable, "train_time": self.train_time,
                "epoch_time": self.epoch_time, "fastest_epoch": self.fastest_epoch, "cpu_time": self.cpu_time,
                "memory": dict(self.memory), "peak_rss": self.peak_rss}

    @classmethod
    def from_dict(cls, run_id: int, d: dict[str, Any]) -> "FinetuneRow":
        return cls(run_id, d["kind"], d.get("rank"), d["test_acc"], d.get("val_acc"), int(d["trainable"]),
                   float(d["train_time"]), float(d["epoch_time"]), float(d.get("fastest_epoch") or d["epoch_time"]),
                   float(d.get("cpu_time") or 0.0), dict(d["memory"]), float(d.get("peak_rss") or 0))


@dataclass
class FinetuneResult:
    """Every row of a fine-tuning, the pretrained model's accuracy, and the rank the rule chose."""

    group: str
    pretrained_test_acc: float | None
    rows: list[FinetuneRow]
    choice: LoRARankChoice | None


def choose_from_rows(rows: list[FinetuneRow], tolerance: float = DEFAULT_TOLERANCE) -> LoRARankChoice | None:
    """The rank rule applied to ``rows`` (validation accuracy; the test accuracy of a row without one);
    None without LoRA rows."""
    def acc(r: FinetuneRow) -> float:
        return r.val_acc if r.val_acc is not None else r.test_acc

    lora = {int(r.rank): acc(r) for r in rows if r.kind == "lora" and r.rank is not None}
    if not lora:
        return None
    full = [acc(r) for r in rows if r.kind == "full"]
    return choose_lora_rank(lora, full[-1] if full else None, tolerance)


def run_finetune(plan: FinetunePlan, *, store: Store, runs_dir: str | Path = "runs",
                 on_row: Callable[[FinetuneRow], None] | None = None,
                 on_start: Callable[[PlannedRow], None] | None = None) -> FinetuneResult:
    """Train every row of ``plan`` (one stored run each) and apply the rank rule."""
    from .losses import loss_function, resolve_loss
    from .run import train_run
    from .train_memory import training_memory

    pre_acc = (plan.pretrained.summary or {}).get("test_acc")
    rows: list[FinetuneRow] = []
    for planned in plan.rows:
        if on_start is not None:
            on_start(planned)
        rc = planned.config
        cpu = TrainingCpuTime()
        result = train_run(rc, store=store, runs_dir=runs_dir, data=plan.data, sweep=plan.group,
                           sweep_key=row_key(planned.kind, planned.rank), callbacks=[cpu])
        s = result.summary
        acct = s.get("accounting") or {}
        x = plan.data.train.x[:rc.batch_size].clone().to(rc.device)
        y = plan.data.train.y[:rc.batch_size].to(rc.device)
        loss_fn = loss_function(resolve_loss(rc.loss, plan.data.num_classes))
        result.model.train()
        mem = training_memory(result.model, x, y, loss_fn,
                              optimizer_state_bytes=(acct.get("optimizer_state") or {}).get("bytes", 0))
        last = result.history[-1] if result.history else {}
        row = FinetuneRow(result.run_id, planned.kind, planned.rank, float(s["test_acc"]), last.get("val_acc"),
                          int(acct["trainable"]["count"]), float(s["train_time"]), float(s["epoch_time"]),
                          min(float(h["epoch_time"]) for h in result.history), cpu.seconds, mem.to_dict(),
                          float(s.get("peak_mem") or 0.0))
        s["finetune"] = {**row.to_dict(), "group": plan.group, "source_checkpoint": str(plan.pretrained.path),
                         "source_dataset": plan.pretrained.config.data.dataset,
                         "pretrained_test_acc": pre_acc, "tolerance": plan.config.tolerance}
        store.set_status(result.run_id, "finished", s)
        (result.run_dir / "summary.json").write_text(json.dumps(s, indent=2, default=float))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return FinetuneResult(plan.group, pre_acc, rows, choose_from_rows(rows, plan.config.tolerance))


def group_rows(summaries: list[tuple[int, dict[str, Any] | None]]) -> dict[str, list[FinetuneRow]]:
    """``{group: rows}`` of the fine-tuning rows among ``(run id, summary)`` pairs (the report reads
    this); a row trained twice in one group keeps its latest run."""
    out: dict[str, dict[str, FinetuneRow]] = {}
    for run_id, s in summaries:
        ft = (s or {}).get("finetune")
        if not isinstance(ft, dict) or "group" not in ft:
            continue
        row = FinetuneRow.from_dict(run_id, ft)
        key = row_key(row.kind, row.rank)
        rows = out.setdefault(ft["group"], {})
        if key not in rows or rows[key].run_id < run_id:
            rows[key] = row
    return {g: sorted(rows.values(), key=lambda r: (FINETUNE_KINDS.index(r.kind), r.rank or 0))
            for g, rows in out.items()}

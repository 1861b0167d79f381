"""Run configuration as dataclasses, one docstring per field, validated on construction.

A run is fully described by a :class:`TrainConfig`; it is stored as JSON in the run
folder and in the database, and rebuilt from there on ``--resume``. The CLI flags of
``lowrank train`` are generated from these fields and from every registered method's
config (:mod:`lowrank.registry`), so an option is added in exactly one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .data.config import DataConfig
from .errors import ConfigError
from .field_types import check_field_types
from .losses import LOSSES
from .method_config import MethodConfig
from .models import ACTIVATIONS, MODELS, check_model_args
from .optimizers import OPTIMIZERS, SCHEDULES

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "MethodConfig", "AUTOCAST_MODES"]

#: ``OptimConfig.autocast`` values: no autocast, or bfloat16 forward passes.
AUTOCAST_MODES = ("off", "bf16")


@dataclass
class OptimConfig:
    optimizer: str = "adam"
    """One of sgd, adam, adamw (sgd with --momentum > 0 is heavy-ball momentum)."""
    lr: float = 1e-3
    """Learning rate."""
    momentum: float = 0.0
    """SGD momentum (the thesis uses 0.9)."""
    weight_decay: float = 0.0
    """Decoupled (adamw) or L2-in-gradient (sgd, adam) weight decay."""
    l1: float = 0.0
    """Weight of the L1 penalty sum |w| over all trainable weights, added to the loss."""
    l2: float = 0.0
    """Weight of the L2 penalty sum w^2 over all trainable weights, added to the loss."""
    clip: float | None = None
    """Clip the global gradient norm to this value (the thesis uses 4; 0 or unset: no clipping)."""
    schedule: str = "cosine"
    """Learning-rate schedule over the run: constant, or cosine (decays to 0 at the last step)."""
    autocast: str = "off"
    """Training forward passes under torch.autocast: off, or bf16 (bfloat16; gradients, optimizer and the DLRT integrator's linear algebra stay float32)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.autocast not in AUTOCAST_MODES:
            raise ConfigError(f"autocast {self.autocast!r} is not one of {', '.join(AUTOCAST_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("momentum", "weight_decay", "l1", "l2"):
            v = getattr(self, name)
            if not _finite(v) or v < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {v!r}")
        if self.clip is not None and (not _finite(self.clip) or self.clip < 0):
            raise ConfigError(f"clip must be a number >= 0 (0 or unset: no clipping), got {self.clip!r}")


def _default_method() -> MethodConfig:
    from .registry import method_config
    return method_config("dense")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    """What to train on."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """How to step."""
    method: MethodConfig = field(default_factory=_default_method)
    """Which layer parameterization, with that method's options."""
    model: str = "mlp"
    """Model: mlp, lenet5, or package.module:factory for your own nn.Module factory."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the model factory, as JSON (e.g. '{"channels": 8}')."""
    layers: list[int] = field(default_factory=lambda: [784, 256, 128, 10])
    """mlp: layer sizes, input first, output last."""
    activation: str = "relu"
    """Hidden activation of the built-in models: relu, tanh, gelu, sigmoid."""
    loss: str = "auto"
    """cross_entropy (classification), mse or mae (regression); auto picks by the targets."""
    batch_size: int = 64
    """Mini-batch size."""
    epochs: int = 10
    """Number of passes over the training set."""
    seed: int = 0
    """Seeds torch, numpy and the data shuffle."""
    device: str = "cpu"
    """Torch device (cpu, cuda, cuda:1)."""
    select_best: bool = False
    """Model selection: end with the weights of the epoch of best validation accuracy (needs --val-fraction > 0)."""
    name: str | None = None
    """Optional human label for the run."""

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("optim", OptimConfig), ("method", MethodConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"TrainConfig.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        check_field_types(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.layers, list) or len(self.layers) < 2 or any(
                not isinstance(s, int) or s <= 0 for s in self.layers):
            raise ConfigError(f"layers must be at least two positive sizes, got {self.layers}")
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args must be a JSON object (a dict), got {self.model_args!r}")
        check_model_args(self.model_args)
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in 0..{2**32 - 1} (numpy's range), got {self.seed}")
        if not isinstance(self.model, str) or (self.model not in MODELS and ":" not in self.model):
            raise ConfigError(f"model {self.model!r} is not one of {', '.join(MODELS)} or package.module:factory")
        _check_device(self.device)
        if not isinstance(self.select_best, bool):
            raise ConfigError(f"select_best must be true or false, got {self.select_best!r}")
        if self.select_best and self.data.val_fraction <= 0:
            raise ConfigError("select_best picks the epoch of best validation accuracy, so it needs a validation "
                              "split: give --val-fraction (e.g. 0.1)")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["data"] = dataclasses.asdict(self.data)
        d["optim"] = dataclasses.asdict(self.optim)
        d["method"] = self.method.to_dict()
        d["model_args"] = json.loads(json.dumps(self.model_args))
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config of a dict in :meth:`to_dict`'s form; unknown keys are errors naming them."""
        from .registry import method_config

        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a table of fields, got {type(d).__name__}")
        d = dict(d)
        sections: dict[str, Any] = {}
        for key, sec_cls in (("data", DataConfig), ("optim", OptimConfig)):
            sec = d.pop(key, {})
            if not isinstance(sec, dict):
                raise ConfigError(f"config section {key!r} must be a table, got {sec!r}")
            sections[key] = _build(sec_cls, sec, key)
        m = d.pop("method", {})
        if isinstance(m, str):
            m = {"method": m}
        if not isinstance(m, dict):
            raise ConfigError(f"config section 'method' must be a table, got {m!r}")
        m = dict(m)
        sections["method"] = method_config(str(m.pop("method", "dense")), **m)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ConfigError(f"unknown config field {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})")
        try:
            return cls(**sections, **d)
        except TypeError as e:
            raise ConfigError(f"bad config: {e}") from None

    def validate(self) -> None:
        """Re-run every section's checks (after fields were assigned one by one)."""
        for obj in (self.data, self.optim, self.method, self):
            check = getattr(obj, "__post_init__", None)
            if check is not None:
                check()


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(f"unknown {where} field {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    return cls(**values)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")

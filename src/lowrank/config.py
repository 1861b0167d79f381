"""Run configuration as dataclasses, one docstring per field.

A run is fully described by a :class:`TrainConfig`; it is stored as JSON in the
run folder and in the database, and rebuilt from there on ``--resume``. The CLI
flags of ``lowrank train`` are generated from these fields, so a new option is
added in exactly one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["DataConfig", "OptimConfig", "MethodConfig", "TrainConfig", "METHODS", "INTEGRATORS",
           "TRUNCATIONS"]

METHODS = ("dense", "vanilla", "twofactor", "svd", "lora", "dlrt")
#: DLRT integrators and truncations (see :mod:`lowrank.integrators`).
INTEGRATORS = ("kls", "parallel")
TRUNCATIONS = ("power", "svd")


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    """Registered dataset name (``lowrank datasets`` lists them)."""
    data_dir: str | None = None
    """Folder searched first for the dataset's files."""
    val_fraction: float = 0.0
    """Fraction of the training set held out for validation (0 = none)."""
    train_size: int | None = None
    """Use only the first N training samples (stratification-free, seeded shuffle first)."""
    test_size: int | None = None
    """Use only the first N test samples (for quick runs)."""
    noise: float = 0.0
    """Std of Gaussian noise added to normalised training inputs at every batch."""
    normalize: bool = True
    """Standardise inputs with the training set's mean and std."""


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
    """Clip the global gradient norm to this value (the thesis uses 4)."""
    schedule: str = "cosine"
    """Learning-rate schedule over the run: constant, or cosine (decays to 0 at the last step)."""


@dataclass
class MethodConfig:
    method: str = "dense"
    """Layer parameterisation: dense, vanilla, twofactor, svd, lora or dlrt."""
    rank: int | None = None
    """Rank of every converted layer (exactly one of rank, energy, param_ratio)."""
    energy: float | None = None
    """Choose each layer's rank to keep this fraction of its squared singular values."""
    param_ratio: float | None = None
    """Choose each layer's rank to keep this fraction of its dense weights."""
    target: str | None = None
    """Regex (full match) of the Linear layers to convert; default: all but the output layer."""
    alpha: float = 0.5
    """twofactor: inner dimension l = alpha * min(m, n) when no rank is given."""
    phi: float = 0.1
    """twofactor: fraction of the training steps spent dense before the SVD split."""
    lambda_orth: float = 1e-3
    """svd: weight of ||U^T U - I||_F^2 + ||V^T V - I||_F^2."""
    lambda_sparse: float = 1e-4
    """svd: weight of the Hoyer penalty ||s||_1 / ||s||_2."""
    prune_energy: float = 0.99
    """svd: after training keep the fewest singular values holding this energy fraction."""
    lora_alpha: float = 16.0
    """lora: scaling numerator, the adapter is scaled by lora_alpha / rank."""
    base_checkpoint: str | None = None
    """lora / dlrt 'train from pruned': dense checkpoint to start from."""
    integrator: str = "parallel"
    """dlrt: kls (two passes per step) or parallel (one pass)."""
    adaptive: bool = False
    """dlrt: adapt ranks by truncating with tolerance tau."""
    tau: float = 0.1
    """dlrt: truncation tolerance, relative to ||S||_F unless tau_absolute."""
    tau_absolute: bool = False
    """dlrt: interpret tau as an absolute tolerance."""
    min_rank: int = 1
    """dlrt: lower cap on adaptive ranks."""
    max_rank: int | None = None
    """dlrt: upper cap on adaptive ranks (default: min(m, n) // 2)."""
    truncation: str = "power"
    """dlrt: power (one block power step from the current bases, then an r x r SVD; the exact SVD
    when an adaptive step must grow the rank) or svd (always the exact SVD of the 2r x 2r core)."""
    then_fixed: int = 0
    """dlrt: the last N of the epochs run at the ranks the adaptive phase found (adaptive then fixed)."""
    init_decay: float = 1.0
    """Initial singular values scaled by 1/init_decay^i (ill-conditioning experiment)."""


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    """What to train on."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """How to step."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Which layer parameterisation."""
    layers: list[int] = field(default_factory=lambda: [784, 256, 128, 10])
    """MLP layer sizes, input first, output last."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, gelu, sigmoid."""
    loss: str = "cross_entropy"
    """cross_entropy (classification), mse or mae (regression)."""
    batch_size: int = 64
    """Mini-batch size."""
    epochs: int = 10
    """Number of passes over the training set."""
    seed: int = 0
    """Seeds torch, numpy and the data shuffle."""
    device: str = "cpu"
    """Torch device (cpu, cuda, cuda:1)."""
    name: str | None = None
    """Optional human label for the run."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        try:
            data = DataConfig(**d.pop("data", {}))
            optim = OptimConfig(**d.pop("optim", {}))
            method = MethodConfig(**d.pop("method", {}))
            cfg = cls(data=data, optim=optim, method=method, **d)
        except TypeError as e:
            raise ConfigError(f"unknown or missing config field: {e}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        m = self.method
        if m.method not in METHODS:
            raise ConfigError(f"method {m.method!r} is not one of {', '.join(METHODS)}")
        if self.optim.optimizer not in ("sgd", "adam", "adamw"):
            raise ConfigError(f"optimizer {self.optim.optimizer!r} is not one of sgd, adam, adamw")
        given = [k for k in ("rank", "energy", "param_ratio") if getattr(m, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give only one of rank, energy, param_ratio (got {', '.join(given)})")
        if m.rank is not None and m.rank <= 0:
            raise ConfigError(f"rank must be positive, got {m.rank}")
        if m.energy is not None and not 0 < m.energy <= 1:
            raise ConfigError(f"energy must be in (0, 1], got {m.energy}")
        if m.param_ratio is not None and not 0 < m.param_ratio <= 1:
            raise ConfigError(f"param_ratio must be in (0, 1], got {m.param_ratio}")
        if m.integrator not in INTEGRATORS:
            raise ConfigError(f"integrator {m.integrator!r} is not one of {', '.join(INTEGRATORS)}")
        if m.truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation {m.truncation!r} is not one of {', '.join(TRUNCATIONS)}")
        if len(self.layers) < 2 or any(s <= 0 for s in self.layers):
            raise ConfigError(f"layers must be at least two positive sizes, got {self.layers}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise ConfigError(f"batch_size and epochs must be positive, got {self.batch_size}, {self.epochs}")
        if self.optim.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule {self.optim.schedule!r} is not one of constant, cosine")
        if self.optim.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.optim.lr}")
        if self.loss not in ("cross_entropy", "mse", "mae"):
            raise ConfigError(f"loss {self.loss!r} is not one of cross_entropy, mse, mae")
        if self.activation not in ("relu", "tanh", "gelu", "sigmoid"):
            raise ConfigError(f"activation {self.activation!r} is not one of relu, tanh, gelu, sigmoid")

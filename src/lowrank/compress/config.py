"""Options of a compression job (``lowrank compress``), validated on construction."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .truncate import ENERGY_SCOPES

__all__ = ["CompressConfig", "RETRAIN_METHODS", "check_out_dir"]

#: ``factors``: train the two factors (and every other parameter) with the run's optimizer;
#: ``dlrt``: DLRT at fixed rank (:class:`lowrank.DLRT`, parallel integrator) from the truncated SVD.
RETRAIN_METHODS = ("factors", "dlrt")


def _positive_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v > 0


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def check_out_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` if it does not exist or is an empty folder; else a ConfigError (nothing is overwritten)."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise ConfigError(f"{what} {p} already exists and is not empty: pass a new --out folder "
                          f"(nothing is overwritten)")
    return p


@dataclass
class CompressConfig:
    """What to truncate, to which ranks, how to retrain and measure, and where the results go."""

    checkpoint: str
    """The trained run: its folder (runs/0007-dense-fashion-mnist) or its checkpoint.pt."""
    out: str
    """Folder for the results (must not exist yet, or be empty): one saved model per point, the chosen one."""
    ranks: list[int] | None = None
    """Ranks k to sweep, one k for every selected layer (capped at each layer's full rank)."""
    energies: list[float] | None = None
    """Energy thresholds in (0, 1] to sweep instead of ranks (per-layer ranks by the energy rule)."""
    energy_scope: str = "layer"
    """layer: each layer keeps its own energy fraction; global: one threshold over all selected layers'
    singular values pooled."""
    target: str | None = None
    """Regex (full match) of the layers to truncate (default: every Linear and Conv2d but the output layer)."""
    exclude: str | None = None
    """Regex (full match) of layers to leave dense."""
    include_output: bool = False
    """Truncate the output layer too."""
    retrain_epochs: int = 0
    """Epochs of retraining after truncation, for every point (0: no retraining)."""
    retrain_method: str = "factors"
    """factors: train the two factors with the run's optimizer; dlrt: fixed-rank DLRT (lowrank.DLRT, parallel)."""
    retrain_lr: float | None = None
    """Learning rate of retraining (default: the run's)."""
    tolerance: float = 1.0
    """Choose the smallest k whose accuracy is within this many percentage points of the dense model's."""
    merge: bool = False
    """Also save the chosen model as plain dense layers (merged)."""
    onnx: bool = True
    """Export every point to ONNX and measure it in onnxruntime too."""
    batch: int = 1024
    """Batch size of the throughput measurement."""
    min_run_time: float = 0.2
    """Seconds each timing runs for (its median call is reported)."""
    train_size: int | None = None
    """Retrain on only the first N training samples of the run's data (default: all)."""
    test_size: int | None = None
    """Evaluate on only the first N test samples (default: all)."""

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"checkpoint must be a run folder or checkpoint file, got {self.checkpoint!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"out must be a folder path, got {self.out!r}")
        if bool(self.ranks) == bool(self.energies):
            raise ConfigError("give exactly one of --ranks (e.g. 1,2,4,8) and --energies (e.g. 0.9,0.99)")
        if self.ranks:
            bad = [k for k in self.ranks if not _positive_int(k)]
            if bad:
                raise ConfigError(f"--ranks must be positive integers, got {bad[0]!r} in {self.ranks}")
            self.ranks = sorted(set(self.ranks))
        if self.energies:
            bad_e = [e for e in self.energies if not _number(e) or not 0 < e <= 1]
            if bad_e:
                raise ConfigError(f"--energies must lie in (0, 1], got {bad_e[0]!r} in {self.energies}")
            self.energies = sorted(set(float(e) for e in self.energies))
        if self.energy_scope not in ENERGY_SCOPES:
            raise ConfigError(f"energy_scope {self.energy_scope!r} is not one of {', '.join(ENERGY_SCOPES)}")
        if isinstance(self.retrain_epochs, bool) or not isinstance(self.retrain_epochs, int) or self.retrain_epochs < 0:
            raise ConfigError(f"--retrain-epochs must be an integer >= 0, got {self.retrain_epochs!r}")
        if self.retrain_method not in RETRAIN_METHODS:
            raise ConfigError(f"--retrain-method {self.retrain_method!r} is not one of {', '.join(RETRAIN_METHODS)}")
        if self.retrain_lr is not None and (not _number(self.retrain_lr) or self.retrain_lr <= 0):
            raise ConfigError(f"--retrain-lr must be a positive number, got {self.retrain_lr!r}")
        if not _number(self.tolerance) or self.tolerance < 0:
            raise ConfigError(f"--tolerance must be a number of percentage points >= 0, got {self.tolerance!r}")
        if not _positive_int(self.batch):
            raise ConfigError(f"--batch must be a positive integer, got {self.batch!r}")
        if not _number(self.min_run_time) or self.min_run_time <= 0:
            raise ConfigError(f"--min-run-time must be a positive number of seconds, got {self.min_run_time!r}")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and not _positive_int(v):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")

    @property
    def points(self) -> list[tuple[str, int | float]]:
        """``[("k", 1), ("k", 2), ...]`` or ``[("energy", 0.9), ...]``, in sweep order."""
        if self.ranks:
            return [("k", k) for k in self.ranks]
        return [("energy", e) for e in self.energies or []]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

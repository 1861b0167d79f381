"""lowrank: train and compress neural networks whose weight matrices are kept low-rank."""

from __future__ import annotations

from .config import DataConfig, MethodConfig, OptimConfig, TrainConfig
from .errors import (CheckpointError, ConfigError, CorruptFileError, DatasetNotFoundError,
                     LowRankError, RankError, TrainingDivergedError)
from .layers import LowRankLayer, is_lowrank
from .models import mlp
from .convert import convert, inspect, merge

__version__ = "0.1.0"

__all__ = [
    "DataConfig", "MethodConfig", "OptimConfig", "TrainConfig",
    "LowRankError", "DatasetNotFoundError", "CorruptFileError", "RankError", "ConfigError",
    "TrainingDivergedError", "CheckpointError",
    "LowRankLayer", "is_lowrank", "mlp",
    "convert", "merge", "inspect",
]

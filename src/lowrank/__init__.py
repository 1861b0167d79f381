"""lowrank: train and compress neural networks whose weight matrices are kept low-rank."""

from __future__ import annotations

from .config import DataConfig, OptimConfig, TrainConfig
from .convert import convert, merge, plan
from .errors import (CheckpointError, ConfigError, CorruptFileError, DatasetNotFoundError,
                     LowRankError, RankError, TrainingDivergedError)
from .layer import LowRankLayer, is_lowrank
from .method_config import FactorizedConfig, MethodConfig
from .methods.dense import DenseConfig
from .methods.dlrt import DLRTConfig, DLRTLinear
from .methods.lora import LoRAConfig, LoRALinear
from .methods.svd import SVDConfig, SVDLinear
from .methods.twofactor import TwoFactorConfig, TwoFactorLinear
from .methods.vanilla import VanillaConfig, VanillaLinear
from .models import mlp
from .rank import RankChoice
from .registry import Method, get_method, method_names, register_method

__version__ = "0.2.0"

__all__ = [
    "TrainConfig", "DataConfig", "OptimConfig", "MethodConfig", "FactorizedConfig", "RankChoice",
    "DenseConfig", "VanillaConfig", "TwoFactorConfig", "SVDConfig", "LoRAConfig", "DLRTConfig",
    "LowRankLayer", "is_lowrank", "VanillaLinear", "TwoFactorLinear", "SVDLinear", "LoRALinear", "DLRTLinear",
    "Method", "register_method", "get_method", "method_names",
    "convert", "merge", "plan", "mlp",
    "LowRankError", "DatasetNotFoundError", "CorruptFileError", "RankError", "ConfigError",
    "TrainingDivergedError", "CheckpointError",
]

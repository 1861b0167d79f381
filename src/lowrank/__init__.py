"""lowrank: train and compress neural networks whose weight matrices are kept low-rank."""

from __future__ import annotations

from .config import DataConfig, OptimConfig, TrainConfig
from .convert import convert, merge, plan
from .errors import (CheckpointError, ConfigError, CorruptFileError, DatasetNotFoundError,
                     LowRankError, RankError, TrainingDivergedError)
from .layer import LowRankLayer, is_lowrank, regularization
from .method_config import FactorizedConfig, MethodConfig
from .attention import LowRankMultiheadAttention
from .methods.dense import DenseConfig
from .methods.dlrt import DLRT, DLRTConfig, DLRTConv2d, DLRTLinear
from .methods.lora import LoRAConfig, LoRAConv2d, LoRALinear, freeze_base
from .methods.svd import SVDConfig, SVDConv2d, SVDLinear, prune
from .methods.twofactor import TwoFactorConfig, TwoFactorConv2d, TwoFactorLinear
from .methods.vanilla import VanillaConfig, VanillaConv2d, VanillaLinear
from .models import lenet5, mlp
from .rank import RankChoice
from .registry import Method, get_method, method_names, register_method
from .saving import load, save

__version__ = "0.2.0"

__all__ = [
    "TrainConfig", "DataConfig", "OptimConfig", "MethodConfig", "FactorizedConfig", "RankChoice",
    "DenseConfig", "VanillaConfig", "TwoFactorConfig", "SVDConfig", "LoRAConfig", "DLRTConfig",
    "LowRankLayer", "is_lowrank", "VanillaLinear", "TwoFactorLinear", "SVDLinear", "LoRALinear", "DLRTLinear",
    "VanillaConv2d", "TwoFactorConv2d", "SVDConv2d", "LoRAConv2d", "DLRTConv2d", "LowRankMultiheadAttention",
    "DLRT", "Method", "register_method", "get_method", "method_names",
    "convert", "merge", "plan", "save", "load", "regularization", "prune", "freeze_base", "mlp", "lenet5",
    "LowRankError", "DatasetNotFoundError", "CorruptFileError", "RankError", "ConfigError",
    "TrainingDivergedError", "CheckpointError",
]

"""SVD-parameterized training: train ``U, s, V`` with orthogonality and Hoyer penalties, then prune by energy."""

from __future__ import annotations

from ...convert import convert
from ...registry import Method, register_method
from .config import SVDConfig
from .layer import SVDLinear
from .conv_layer import SVDConv2d
from .step import SVDStepper, prune

__all__ = ["SVDConfig", "SVDLinear", "SVDStepper", "prune", "SVDConv2d"]

register_method(Method(
    name="svd", config=SVDConfig, summary="U diag(s) V^T with orthogonality + Hoyer penalties, energy pruning",
    prepare=lambda model, cfg: convert(model, cfg, inplace=True),
    make_stepper=SVDStepper,
    layers=(SVDLinear, SVDConv2d),
))

"""Two-factor / SVD-DNN: dense warm-up for a fraction ``phi`` of the steps, then ``W ~ W1 W2``
(``W1 = U_l S_l^(1/2)``, ``W2 = S_l^(1/2) V_l^T`` from the truncated SVD), both factors trained."""

from __future__ import annotations

from ...registry import Method, register_method
from .config import TwoFactorConfig, inner_dim
from .layer import TwoFactorLinear
from .conv_layer import TwoFactorConv2d
from .step import TwoFactorStepper, factorize, switch_step

__all__ = ["TwoFactorConfig", "TwoFactorLinear", "TwoFactorStepper", "inner_dim", "factorize", "switch_step", "TwoFactorConv2d"]

register_method(Method(
    name="twofactor", config=TwoFactorConfig, summary="dense warm-up, then W ~ W1 W2 by truncated SVD (SVD-DNN)",
    prepare=lambda model, cfg: model,   # starts dense; the stepper factorizes at its switch step
    make_stepper=TwoFactorStepper,
    layers=(TwoFactorLinear, TwoFactorConv2d),
))

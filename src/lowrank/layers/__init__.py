"""Low-rank layers. Every class here implements :class:`~lowrank.layers.base.LowRankLayer`.

``LAYER_CLASSES`` maps class names to classes so a checkpoint can rebuild a model
whose layers changed shape or type during training.
"""

from __future__ import annotations

from .base import LowRankLayer, is_lowrank

__all__ = ["LowRankLayer", "is_lowrank", "LAYER_CLASSES", "register_layer"]

LAYER_CLASSES: dict[str, type[LowRankLayer]] = {}


def register_layer(cls: type[LowRankLayer]) -> type[LowRankLayer]:
    """Class decorator: make ``cls`` rebuildable from a checkpoint's structure record."""
    LAYER_CLASSES[cls.__name__] = cls
    return cls


# Import the concrete layers last (they use ``register_layer`` above) so that
# ``LAYER_CLASSES`` knows them as soon as ``lowrank.layers`` is imported.
from .lora import LoRALinear  # noqa: E402
from .lowrank_linear import LowRankLinear  # noqa: E402
from .svd_linear import SVDLinear  # noqa: E402
from .two_factor import TwoFactorLinear  # noqa: E402

__all__ += ["LowRankLinear", "TwoFactorLinear", "SVDLinear", "LoRALinear"]

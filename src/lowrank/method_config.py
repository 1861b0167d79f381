"""The base of every method's options.

Each method's config is a dataclass deriving from :class:`MethodConfig` (or, for methods
that factorize layers, :class:`FactorizedConfig`): that method's fields only, one
docstring under each field (it becomes the ``lowrank train`` flag's help), validated
in ``__post_init__``. Serialized as ``{"method": <name>, <field>: <value>, ...}``, the
form experiment files use (``method = { method = "dlrt", rank = 20 }``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError
from .field_types import check_field_types
from .rank import RankChoice

__all__ = ["MethodConfig", "FactorizedConfig"]


@dataclass
class MethodConfig:
    """Options of one method. Subclasses set the class attribute ``method`` to its registered name."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_field_types(self)
        parent = getattr(super(), "__post_init__", None)  # RankChoice's, for FactorizedConfig
        if parent is not None:
            parent()

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, **fields}``."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def options(cls) -> list[str]:
        """The field names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class FactorizedConfig(MethodConfig, RankChoice):
    """Options shared by methods that replace ``nn.Linear`` layers: the rank rule and the selection."""

    target: str | None = None
    """Regex (full match) of the layers to convert (Linear, Conv2d, attention projections such as
    layers.0.self_attn.q_proj); default: all of them but the last Linear (the output layer)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target is not None:
            try:
                re.compile(self.target)
            except re.error as e:
                raise ConfigError(f"target {self.target!r} is not a valid regular expression: {e}") from None

    def default_rank(self, out_features: int, in_features: int) -> int:
        """Rank of an ``(out_features, in_features)`` layer when no rank rule is given."""
        return min(20, out_features, in_features)

    def layer_options(self) -> dict[str, Any]:
        """Keyword arguments of the method's ``from_linear`` taken from this config."""
        return {}

"""The fully connected network of the thesis, and the activations every built-in model shares."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError

__all__ = ["mlp", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
"""Hidden activations of the built-in models, by the name a config gives."""


def _activation(name: object) -> nn.Module:
    """A fresh activation module for ``name``; ConfigError naming the choices if unknown."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) -> act -> ... -> Linear(sizes[-2], sizes[-1])``.

    Maps (N, sizes[0]) to (N, sizes[-1]). Layers are named ``fc0, act0, fc1, ...``
    so conversion patterns read well (``fc0``, ``fc1`` are hidden; the last ``fc``
    is the output layer).
    """
    _activation(activation)  # validate even for a single-layer net (which has no activation)
    if len(sizes) < 2:
        raise ConfigError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    mods: list[tuple[str, nn.Module]] = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append((f"fc{i}", nn.Linear(m, n)))
        if i < len(sizes) - 2:
            mods.append((f"act{i}", _activation(activation)))
    return nn.Sequential(OrderedDict(mods))  # Sequential takes an OrderedDict, not a dict

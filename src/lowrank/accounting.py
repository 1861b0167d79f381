"""Parameter, memory and FLOP accounting: one definition for every method.

Definitions (``m`` inputs, ``n`` outputs, ``r`` rank of a layer):

- **dense model**: the same module tree with every low-rank layer replaced by an
  ``nn.Linear(m, n)`` with the same bias setting (or ``dense_reference`` if given).
  Every ``ratio`` below is ``count / (the dense model's count of the same thing)``,
  except ``optimizer_state``, whose ratio is per dense *parameter* (so a dense
  model trained by Adam reads about 2.0).
- **inference weights**: what is stored to serve the model: for a low-rank layer its
  ``num_params()`` (factors + core + bias; LoRA counts as merged, i.e. dense), for any
  other module its own parameters. Buffers (e.g. BatchNorm statistics) are not counted.
- **trainable parameters**: elements updated by training: a low-rank layer's
  ``training_params()`` (by default its parameters that require grad; DLRT also counts
  its ``K``, ``L`` and augmented bases), plus every other parameter that requires grad.
- **optimizer state**: the sum of ``numel`` of every tensor in ``optimizer.state``.
- **FLOPs per sample**: multiply-adds of the Linear-like layers only: a low-rank layer's
  ``flops_per_sample()``, ``m n (+ n)`` for an ``nn.Linear``. Activations, attention
  products, convolutions are not counted.
- **hidden weights**: weights without biases of every Linear-like layer except the last
  one in module order (the output layer); for a low-rank layer ``num_params()`` minus its
  bias. This is the headline "hidden-layer weights kept" figure.

Bytes use each tensor's (or layer's) own dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .layer import is_lowrank

__all__ = ["Quantity", "Accounting", "count", "hidden_weights", "linear_like"]


class Quantity(dict):
    """``{"count", "bytes", "ratio"}``: elements, their size in bytes, and ``count`` over the
    dense model's count. A plain dict for JSON and ``torch.save`` (it pickles as ``dict``),
    with attribute access for code."""

    def __init__(self, count: int, bytes: int, ratio: float):  # noqa: A002 - the field's name
        super().__init__(count=int(count), bytes=int(bytes), ratio=float(ratio))

    count = property(lambda self: self["count"], doc="Number of elements.")
    bytes = property(lambda self: self["bytes"], doc="Their size in bytes (each tensor's own dtype).")
    ratio = property(lambda self: self["ratio"], doc="``count`` / the dense model's count.")

    def __reduce__(self):  # pickle as a plain dict: loadable with torch.load(weights_only=True)
        return (dict, (dict(self),))


@dataclass(frozen=True)
class Accounting:
    """The figures of :func:`count` (see the module docstring for the definitions)."""

    inference: Quantity
    trainable: Quantity
    optimizer_state: Quantity | None
    flops_per_sample: int
    flops_ratio: float
    hidden: Quantity
    dense_params: int
    dense_flops: int

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready): ``{"inference": {"count", "bytes", "ratio"}, ...}``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = dict(v) if isinstance(v, Quantity) else v
        return out


def _units(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` in module order, not descending into low-rank layers."""
    inside: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if is_lowrank(mod):
            inside.append(name)
        yield name, mod


def linear_like(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Low-rank layers and ``nn.Linear`` modules not inside one, in module order."""
    return [(n, m) for n, m in _units(model) if is_lowrank(m) or isinstance(m, nn.Linear)]


def _dtype_size(mod: nn.Module) -> int:
    p = next(mod.parameters(), None)
    return p.element_size() if p is not None else torch.tensor([], dtype=torch.get_default_dtype()).element_size()


def _bias(mod: nn.Module) -> bool:
    return (mod.bias_tensor if is_lowrank(mod) else mod.bias) is not None


def _weights(mod: nn.Module) -> int:
    """Inference weights of a Linear-like layer without its bias."""
    if is_lowrank(mod):
        return mod.num_params() - (mod.out_features if _bias(mod) else 0)
    return mod.in_features * mod.out_features


def _dense_layer_params(mod: nn.Module) -> int:
    return mod.in_features * mod.out_features + (mod.out_features if _bias(mod) else 0)


def _dense_totals(model: nn.Module) -> tuple[int, int, int]:
    """(parameters, FLOPs per sample, hidden weights) of ``model``'s dense equivalent."""
    params = 0
    for _, mod in _units(model):
        if is_lowrank(mod):
            params += _dense_layer_params(mod)
        else:
            params += sum(p.numel() for p in mod.parameters(recurse=False))
    layers = linear_like(model)
    flops = sum(_dense_layer_params(m) for _, m in layers)
    hidden = sum(m.in_features * m.out_features for _, m in layers[:-1])
    return params, flops, hidden


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def hidden_weights(model: nn.Module, dense_reference: nn.Module | None = None) -> Quantity:
    """Weights (no biases) of every Linear-like layer but the last, with the ratio to dense."""
    layers = linear_like(model)[:-1]
    n = sum(_weights(m) for _, m in layers)
    nbytes = sum(_weights(m) * _dtype_size(m) for _, m in layers)
    dense = _dense_totals(dense_reference if dense_reference is not None else model)[2]
    return Quantity(n, nbytes, _ratio(n, dense))


def count(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
          dense_reference: nn.Module | None = None) -> Accounting:
    """Inference weights, trainable parameters, optimizer state, FLOPs and hidden weights of ``model``."""
    dense_params, dense_flops, _ = _dense_totals(dense_reference if dense_reference is not None else model)
    inf_n = inf_b = tr_n = tr_b = 0
    for _, mod in _units(model):
        if is_lowrank(mod):
            size = _dtype_size(mod)
            k = mod.num_params()
            t = mod.training_params() if hasattr(mod, "training_params") else \
                sum(p.numel() for p in mod.parameters() if p.requires_grad)
            inf_n, inf_b, tr_n, tr_b = inf_n + k, inf_b + k * size, tr_n + t, tr_b + t * size
        else:
            for p in mod.parameters(recurse=False):
                inf_n, inf_b = inf_n + p.numel(), inf_b + p.numel() * p.element_size()
                if p.requires_grad:
                    tr_n, tr_b = tr_n + p.numel(), tr_b + p.numel() * p.element_size()
    opt = None
    if optimizer is not None:
        tensors = [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        on = sum(v.numel() for v in tensors)
        opt = Quantity(on, sum(v.numel() * v.element_size() for v in tensors), _ratio(on, dense_params))
    flops = sum(m.flops_per_sample() if is_lowrank(m) else _dense_layer_params(m) for _, m in linear_like(model))
    return Accounting(
        inference=Quantity(inf_n, inf_b, _ratio(inf_n, dense_params)),
        trainable=Quantity(tr_n, tr_b, _ratio(tr_n, dense_params)),
        optimizer_state=opt,
        flops_per_sample=flops,
        flops_ratio=_ratio(flops, dense_flops),
        hidden=hidden_weights(model, dense_reference),
        dense_params=dense_params,
        dense_flops=dense_flops,
    )

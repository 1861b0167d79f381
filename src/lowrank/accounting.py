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
- **Linear-like layers**: ``nn.Linear``, ``nn.Conv2d``, every low-rank layer (linear or
  conv), and the three in-projections packed in an ``nn.MultiheadAttention`` (``A.q_proj``,
  ``A.k_proj``, ``A.v_proj``, named as :func:`lowrank.convert.convert` names them; its
  ``out_proj`` is an ``nn.Linear``), in module order. A
  :class:`~lowrank.attention.LowRankMultiheadAttention` holds its four as submodules.
- **FLOPs per sample**: multiply-adds of the Linear-like layers only: a low-rank layer's
  ``flops_per_sample()``, ``m n (+ n)`` for an ``nn.Linear`` or a projection (per sample
  row: per token of a sequence), and for a convolution its multiply-adds per output
  position times ``H_out W_out`` (an ``nn.Conv2d``: ``out (in / groups) kh kw (+ out)`` per
  position; a low-rank conv: its ``position_flops()``). Activations, attention products
  (``Q K^T``, softmax, ``A V``), pooling are not counted.
- **convolutions' spatial size**: a convolution's FLOPs need its input's ``H x W``.
  ``count(..., sample=x)`` measures it: one forward pass of ``x`` (a batch of one sample
  suffices) under ``torch.no_grad`` in eval mode (modes restored) with forward pre-hooks on
  every convolution, which also stores it on each as ``input_hw``
  (:func:`record_input_sizes`). Without ``sample`` the size stored earlier is used: a
  low-rank conv stores its last input's size at every forward pass, an ``nn.Conv2d`` only
  by :func:`record_input_sizes`. A convolution whose size is unknown adds no FLOPs and is
  listed in ``Accounting.uncounted`` (both in the figure and in the dense one).
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

from .layer import ConvLayer, is_conv_layer, is_lowrank

__all__ = ["Quantity", "Accounting", "count", "hidden_weights", "layer_params", "linear_like", "record_input_sizes"]


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
    uncounted: tuple[str, ...] = ()
    """Convolutions whose input size is unknown: their FLOPs are in neither figure."""

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


@dataclass(frozen=True)
class _Layer:
    """One Linear-like layer: its inference and dense weights (no bias), bias, per-position FLOPs."""

    name: str
    module: nn.Module          # for a packed in-projection: its nn.MultiheadAttention
    weights: int
    dense_weights: int
    bias: int                  # bias elements (0 if none)
    flops: int                 # multiply-adds per sample row / output position
    dense_flops: int
    conv: bool


def _join(prefix: str, child: str) -> str:
    return f"{prefix}.{child}" if prefix else child


def _layers(model: nn.Module) -> list[_Layer]:
    out: list[_Layer] = []
    for name, mod in _units(model):
        if is_lowrank(mod):
            b = mod.out_features if mod.bias_tensor is not None else 0
            dense = mod.in_features * mod.out_features
            per = mod.position_flops() if is_conv_layer(mod) else mod.flops_per_sample()
            out.append(_Layer(name, mod, mod.num_params() - b, dense, b, per, dense + b, is_conv_layer(mod)))
        elif isinstance(mod, nn.MultiheadAttention):
            e = mod.embed_dim
            b = e if mod.in_proj_bias is not None else 0
            for p, m in (("q", e), ("k", mod.kdim), ("v", mod.vdim)):
                out.append(_Layer(_join(name, f"{p}_proj"), mod, m * e, m * e, b, m * e + b, m * e + b, False))
        elif isinstance(mod, nn.Linear):
            b = mod.out_features if mod.bias is not None else 0
            w = mod.in_features * mod.out_features
            out.append(_Layer(name, mod, w, w, b, w + b, w + b, False))
        elif isinstance(mod, nn.Conv2d):
            b = mod.out_channels if mod.bias is not None else 0
            w = mod.weight.numel()
            out.append(_Layer(name, mod, w, w, b, w + b, w + b, True))
    return out


def linear_like(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear-like layers in module order (see the module docstring): low-rank layers and
    ``nn.Linear`` / ``nn.Conv2d`` modules not inside one, and the in-projections of an
    ``nn.MultiheadAttention`` (as ``(name.q_proj, the attention module)`` ...)."""
    return [(layer.name, layer.module) for layer in _layers(model)]


def _dtype_size(mod: nn.Module) -> int:
    p = next(mod.parameters(), None)
    return p.element_size() if p is not None else torch.tensor([], dtype=torch.get_default_dtype()).element_size()


def _convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, ConvLayer))]


@torch.no_grad()
def record_input_sizes(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Run ``model(sample)`` once (``torch.no_grad``, eval mode, modes restored afterwards) and
    return ``{name: (H, W)}``, the spatial size of the input of every convolution (``nn.Conv2d``
    or low-rank conv); also stores it on each as ``input_hw``. One sample suffices."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in _convs(model):
        def pre(m: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0]
            sizes.setdefault(name, (int(x.shape[-2]), int(x.shape[-1])))
        hooks.append(mod.register_forward_pre_hook(pre))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        model(sample)
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes:
            m.training = t
    for name, mod in _convs(model):
        if name in sizes:
            mod.input_hw = sizes[name]
    return sizes


def _positions(layer: _Layer, sizes: dict[str, tuple[int, int]]) -> int | None:
    """``H_out W_out`` of a convolution (None if its input size is unknown); 1 for other layers."""
    if not layer.conv:
        return 1
    mod = layer.module
    hw = sizes.get(layer.name) or getattr(mod, "input_hw", None)
    if hw is None:
        return None
    from .layer import conv_output_hw
    ho, wo = conv_output_hw(hw, tuple(mod.kernel_size), tuple(mod.stride), mod.padding, tuple(mod.dilation))
    return ho * wo


def _flops(model: nn.Module, sizes: dict[str, tuple[int, int]],
           fallback: dict[str, tuple[int, int]] | None = None) -> tuple[int, int, list[str]]:
    """(FLOPs per sample, the dense equivalent's, convolutions of unknown size)."""
    flops = dense = 0
    unknown: list[str] = []
    for layer in _layers(model):
        p = _positions(layer, {**(fallback or {}), **sizes})
        if p is None:
            unknown.append(layer.name)
            continue
        flops += layer.flops * p
        dense += layer.dense_flops * p
    return flops, dense, unknown


def _dense_totals(model: nn.Module) -> tuple[int, int]:
    """(parameters, hidden weights) of ``model``'s dense equivalent."""
    params = 0
    for _, mod in _units(model):
        if is_lowrank(mod):
            params += mod.in_features * mod.out_features + (mod.out_features if mod.bias_tensor is not None else 0)
        else:
            params += sum(p.numel() for p in mod.parameters(recurse=False))
    hidden = sum(layer.dense_weights for layer in _layers(model)[:-1])
    return params, hidden


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def hidden_weights(model: nn.Module, dense_reference: nn.Module | None = None) -> Quantity:
    """Weights (no biases) of every Linear-like layer but the last, with the ratio to dense."""
    layers = _layers(model)[:-1]
    n = sum(layer.weights for layer in layers)
    nbytes = sum(layer.weights * _dtype_size(layer.module) for layer in layers)
    dense = _dense_totals(dense_reference if dense_reference is not None else model)[1]
    return Quantity(n, nbytes, _ratio(n, dense))


def layer_params(model: nn.Module) -> dict[str, int]:
    """``{qualified module name: inference parameters}`` of every module holding parameters of its own
    (a low-rank layer counted as one, by its ``num_params``), in module order; ``""`` is the model itself."""
    out: dict[str, int] = {}
    for name, mod in _units(model):
        n = mod.num_params() if is_lowrank(mod) else sum(p.numel() for p in mod.parameters(recurse=False))
        if n:
            out[name] = int(n)
    return out


def count(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
          dense_reference: nn.Module | None = None, *, sample: torch.Tensor | None = None) -> Accounting:
    """Inference weights, trainable parameters, optimizer state, FLOPs and hidden weights of ``model``.

    ``sample``: an input batch (one sample suffices) run once to measure the convolutions'
    spatial sizes (see the module docstring); not needed for models without convolutions.
    """
    sizes = record_input_sizes(model, sample) if sample is not None else {}
    ref = dense_reference if dense_reference is not None else model
    dense_params, _ = _dense_totals(ref)
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
    flops, dense_flops, unknown = _flops(model, sizes)
    if dense_reference is not None:
        ref_sizes = record_input_sizes(dense_reference, sample) if sample is not None else {}
        known = {n: getattr(m, "input_hw") for n, m in _convs(model) if getattr(m, "input_hw", None) is not None}
        _, dense_flops, ref_unknown = _flops(dense_reference, ref_sizes, fallback={**known, **sizes})
        unknown = list(dict.fromkeys(unknown + ref_unknown))
    return Accounting(
        inference=Quantity(inf_n, inf_b, _ratio(inf_n, dense_params)),
        trainable=Quantity(tr_n, tr_b, _ratio(tr_n, dense_params)),
        optimizer_state=opt,
        flops_per_sample=flops,
        flops_ratio=_ratio(flops, dense_flops),
        hidden=hidden_weights(model, dense_reference),
        dense_params=dense_params,
        dense_flops=dense_flops,
        uncounted=tuple(unknown),
    )

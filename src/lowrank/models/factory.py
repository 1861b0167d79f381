"""The model table and :func:`build_model`: a model by name, or a user's ``module:factory``.

A run's config records ``model`` (a key of :data:`MODELS` or a
``package.module:factory`` string) and ``model_args`` (a JSON object);
``build_model(model, model_args, sample_shape=..., num_outputs=...)`` rebuilds the
same architecture from them when a checkpoint is loaded.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from .lenet5 import lenet5
from .mlp import mlp
from .transformer import build_transformer

__all__ = ["ModelSpec", "ModelBuilder", "MODELS", "build_model", "check_model_args"]

ModelBuilder = Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]
"""``builder(args, sample_shape, num_outputs) -> nn.Module`` of one built-in model."""

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ModelSpec:
    """One built-in model: how to build it and what it is."""

    builder: ModelBuilder
    """``builder(args, sample_shape, num_outputs)``: validates ``args`` against the data and builds."""
    description: str
    """One line for listings and help texts."""


def _is_positive_int(value: object) -> bool:
    """True for a positive int (numpy integers too), False for bools and the rest."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and int(value) > 0


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_keys(model: str, args: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ConfigError(f"model {model!r} does not take model_args {', '.join(map(repr, unknown))}; "
                          f"it takes {', '.join(allowed) or 'none'}")


def _build_mlp(args: dict[str, Any], sample_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """``mlp(layers, activation)`` mapping (N, prod(sample_shape)) -> (N, num_outputs); sizes checked."""
    _check_keys("mlp", args, ("layers", "activation"))
    features = math.prod(sample_shape)
    layers = args.get("layers")
    if layers is None:
        raise ConfigError(f"model 'mlp' needs layers (input size first, output size last): "
                          f"use --layers {features},256,{num_outputs}")
    if (not isinstance(layers, (list, tuple)) or len(layers) < 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in layers)):
        raise ConfigError(f"model 'mlp' layers must be at least two positive integers, got {layers!r}: "
                          f"use --layers {features},256,{num_outputs}")
    layers = list(layers)
    fixed = ",".join(map(str, [features, *layers[1:-1], num_outputs]))
    if layers[0] != features:
        raise ConfigError(f"layers start with {layers[0]} inputs but the data has {features} features: "
                          f"use --layers {fixed}")
    if layers[-1] != num_outputs:
        raise ConfigError(f"layers end with {layers[-1]} outputs but the data needs {num_outputs} "
                          f"(classes, or 1 for regression): use --layers {fixed}")
    return mlp(layers, args.get("activation", "relu"))


def _build_lenet5(args: dict[str, Any], sample_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """``lenet5`` for (C, H, H) samples: (N, C*H*H) -> (N, num_outputs); ``args`` may set activation."""
    _check_keys("lenet5", args, ("activation",))
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise ConfigError(f"model 'lenet5' needs square images of shape (C, H, H), but the data's samples "
                          f"have shape {sample_shape}: use --model mlp, or a package.module:factory model")
    channels, size, _ = sample_shape
    return lenet5(channels, size, num_outputs, args.get("activation", "relu"))


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(_build_mlp, "fully connected net: Linear layers of sizes --layers with --activation between"),
    "lenet5": ModelSpec(_build_lenet5, "LeNet-5 of the DLRT paper: conv 20 and 50 filters 5x5, Linear 500, "
                                       "for (C, H, H) images"),
    "transformer": ModelSpec(build_transformer, "small transformer encoder (nn.TransformerEncoderLayer): token "
                                                "ids of a text dataset, or images as rows; model_args d_model, "
                                                "num_heads, num_layers, dim_feedforward, dropout, per_head"),
}
"""Built-in models by name. Any other model is given as ``package.module:factory``."""


def check_model_args(args: object) -> None:
    """Raise ConfigError unless ``args`` is a dict of str keys whose values ``json.dumps`` accepts.

    Only such args can be stored in a run's config and rebuild the model from a checkpoint.
    """
    if not isinstance(args, Mapping):
        raise ConfigError(f"model_args must be a JSON object (a dict of keyword arguments), "
                          f"got {type(args).__name__} {args!r}")
    for key, value in args.items():
        if not isinstance(key, str):
            raise ConfigError(f"model_args keys must be strings (keyword argument names), got {key!r}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model_args[{key!r}] = {_one_line(repr(value))[:80]} is not JSON-serialisable "
                              f"({_one_line(exc)}): use numbers, strings, booleans, lists and dicts") from None


def _public_callables(module: Any) -> list[str]:
    """Public callables of ``module`` (exception classes left out): those it defines, else all it holds."""
    found = {k: v for k, v in vars(module).items()
             if not k.startswith("_") and callable(v) and not inspect.ismodule(v)
             and not (inspect.isclass(v) and issubclass(v, BaseException))}
    own = sorted(k for k, v in found.items() if getattr(v, "__module__", None) == module.__name__)
    return own or sorted(found)


def _import_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``spec`` (``package.module:factory``); ConfigError on every user mistake."""
    form = "package.module:factory (a dotted module name, one colon, a function or class name)"
    module_name, colon, attr = spec.partition(":")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        stem = re.split(r"[/\\]", module_name)[-1].removesuffix(".py")
        raise ConfigError(f"model {spec!r} names a file, not a module: use {stem}:{attr or '<factory>'} "
                          f"with the file's folder on PYTHONPATH")
    if not colon and _DOTTED.fullmatch(spec):
        head, _, last = spec.rpartition(".")
        raise ConfigError(f"model {spec!r} has no ':factory' part: write it as {form}, "
                          f"e.g. {spec}:<factory> or {head}:{last}")
    if not colon or not _DOTTED.fullmatch(module_name) or not _IDENT.fullmatch(attr):
        raise ConfigError(f"model {spec!r} is not of the form {form}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        # As `python -m` does (and uvicorn's "module:app"): the current folder's modules are importable.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and (
                module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(f"model {spec!r}: cannot import module {module_name!r} ({_one_line(exc)}): "
                              f"put the folder holding it on PYTHONPATH (PYTHONPATH=. for the current "
                              f"folder) or install it") from exc
        raise ConfigError(f"model {spec!r}: importing module {module_name!r} failed ({_one_line(exc)}): "
                          f"install what it imports, or put it on PYTHONPATH") from exc
    if not hasattr(module, attr):
        names = _public_callables(module)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ConfigError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                          + (f"its public callables are: {shown}" if names else "it has no public callables"))
    factory = getattr(module, attr)
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: {module_name}.{attr} = {_one_line(repr(factory))[:60]} "
                          f"({type(factory).__name__}) is not callable: name a function or class returning "
                          f"an nn.Module")
    return factory


def _build_from_factory(spec: str, args: dict[str, Any]) -> nn.Module:
    factory = _import_factory(spec)
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C extensions have none; just call
        signature = None
    if signature is not None:
        try:
            signature.bind(**args)
        except TypeError as exc:
            name = getattr(factory, "__name__", spec.partition(":")[2])
            raise ConfigError(f"model {spec!r}: model_args {json.dumps(args)} do not fit "
                              f"{name}{signature} ({_one_line(exc)}): fix --model-args") from None
    # No try here: whatever the factory itself raises is the user's code failing, shown as itself.
    model = factory(**args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r} returned a {type(model).__name__}, not an nn.Module: "
                          f"make the factory return the model")
    return model


def build_model(name: str, args: Mapping[str, Any], *, sample_shape: Sequence[int],
                num_outputs: int) -> nn.Module:
    """The model ``name`` built with keyword arguments ``args`` for the given data.

    ``name`` is a key of :data:`MODELS` or ``package.module:factory`` (imported and
    called as ``factory(**args)``; it must return an ``nn.Module``). ``sample_shape``
    is one sample's shape before flattening (e.g. (1, 28, 28)); the model takes flat
    input (N, prod(sample_shape)). ``num_outputs`` is the number of classes, or 1 for
    regression; built-in models produce (N, num_outputs). ``args`` must pass
    :func:`check_model_args`, so the same call can rebuild the model from a checkpoint.

    Every user mistake (unknown name, bad spec, unimportable module, missing or
    non-callable factory, arguments the factory does not take, a non-Module result,
    sizes that do not fit the data) raises a one-line ConfigError; an exception
    raised inside a user's factory propagates unchanged.
    """
    check_model_args(args)
    shape = tuple(sample_shape)
    if not shape or not all(_is_positive_int(s) for s in shape):
        raise ConfigError(f"sample_shape must be a non-empty tuple of positive integers, got {sample_shape!r}")
    if not _is_positive_int(num_outputs):
        raise ConfigError(f"num_outputs must be a positive integer, got {num_outputs!r}")
    shape, num_outputs = tuple(int(s) for s in shape), int(num_outputs)
    if not isinstance(name, str):
        raise ConfigError(f"model must be a string (a built-in name or package.module:factory), got {name!r}")
    if name in MODELS:
        return MODELS[name].builder(dict(args), shape, num_outputs)
    if any(c in name for c in ":./\\"):
        return _build_from_factory(name, dict(args))
    close = difflib.get_close_matches(name, list(MODELS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"unknown model {name!r}: {hint}built-in models are {', '.join(MODELS)}; "
                      f"or give your own as package.module:factory (a function returning an nn.Module)")

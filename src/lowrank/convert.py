"""Swap ``nn.Linear`` modules for low-rank layers by name, merge them back, inspect, rebuild.

Selection rules (shared by :func:`convert` and :func:`inspect`), over the qualified
names of the model's convertible ``nn.Linear`` modules (those not already inside a
low-rank layer and not the ``out_proj`` of an ``nn.MultiheadAttention``, which
calls its weight directly and cannot be swapped):

- ``target=None``: every convertible Linear except the last in module order (the output layer);
- ``target`` a ``str``: a regex that must match the whole name (``re.fullmatch``);
- ``target`` a list: each entry matches a name exactly or as a dotted suffix
  (``"q"`` matches ``blocks.0.attn.q``);
- ``exclude``: the same rules, removed from the selection;
- a pattern (or list entry) that matches no Linear is a :class:`ConfigError`
  listing the names available.

The rank of each selected layer comes from exactly one of ``rank``, ``energy``
(fewest singular values holding that fraction of ``sum s^2``) or ``param_ratio``
(two factors holding at most that fraction of the ``m n`` weights), unless
``rank_overrides`` (name or suffix -> rank) covers every selected layer.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .layers import LAYER_CLASSES, LowRankLayer, is_lowrank
from .linalg import break_even_rank, check_rank, rank_for_energy, rank_for_param_ratio

__all__ = ["convert", "merge", "inspect", "structure", "restore_structure", "select",
           "layer_class", "register_method", "METHOD_LAYERS"]

Pattern = str | Sequence[str] | None

#: method name -> "module:Class" of its layer (or the class itself); paths are resolved
#: lazily so optional layers (DLRT) are imported only when used. Extend with :func:`register_method`.
METHOD_LAYERS: dict[str, str | type[LowRankLayer]] = {
    "vanilla": "lowrank.layers.lowrank_linear:LowRankLinear",
    "twofactor": "lowrank.layers.two_factor:TwoFactorLinear",
    "svd": "lowrank.layers.svd_linear:SVDLinear",
    "lora": "lowrank.layers.lora:LoRALinear",
    "dlrt": "lowrank.layers.dlrt:DLRTLinear",
}


def register_method(method: str, layer: str | type[LowRankLayer]) -> None:
    """Map ``method`` to a layer class or a lazy ``"module:Class"`` path.

    The class needs ``from_linear(linear, rank, **options)`` and the
    :class:`~lowrank.layers.LowRankLayer` interface.
    """
    METHOD_LAYERS[method] = layer


def layer_class(method: str) -> type[LowRankLayer]:
    """The layer class of ``method`` (importing its module on first use)."""
    if method not in METHOD_LAYERS:
        raise ConfigError(f"method {method!r} has no layer; known: {', '.join(METHOD_LAYERS)}")
    entry = METHOD_LAYERS[method]
    if isinstance(entry, type):
        return entry
    module, _, name = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"method {method!r}: cannot load layer {METHOD_LAYERS[method]} ({e})") from e


# ---------------------------------------------------------------------------- selection

def _convertible_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Qualified name -> Linear, in module order, skipping Linears owned by low-rank layers or MHA."""
    found: dict[str, nn.Linear] = {}
    owned: list[str] = []  # prefixes whose submodules are not convertible
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in owned):
            continue
        if is_lowrank(mod) or isinstance(mod, nn.MultiheadAttention):
            owned.append(name)
        elif isinstance(mod, nn.Linear):
            found[name] = mod
    return found


def _matches(name: str, pattern: str | Sequence[str]) -> bool:
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def _check_pattern(pattern: str | Sequence[str], names: Sequence[str], what: str) -> None:
    """Every regex / list entry must match at least one available name."""
    if isinstance(pattern, str):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{what} {pattern!r} is not a valid regular expression: {e}") from None
    entries = [pattern] if isinstance(pattern, str) else list(pattern)
    for entry in entries:
        if not any(_matches(n, entry if isinstance(pattern, str) else [entry]) for n in names):
            raise ConfigError(f"{what} {entry!r} matches no Linear layer; available: {', '.join(names) or '(none)'}")


def select(model: nn.Module, target: Pattern = None, exclude: Pattern = None) -> list[str]:
    """Qualified names of the Linear modules :func:`convert` would replace, in module order."""
    if target is not None and not isinstance(target, (str, Sequence)):
        raise ConfigError(f"target must be a regex string or a list of names, got {target!r}")
    names = list(_convertible_linears(model))
    if target is None:
        chosen = names[:-1]
    else:
        _check_pattern(target, names, "target")
        chosen = [n for n in names if _matches(n, target)]
    if exclude is not None:
        _check_pattern(exclude, names, "exclude")
        chosen = [n for n in chosen if not _matches(n, exclude)]
    return chosen


# ---------------------------------------------------------------------------- ranks

def _rank_rule(rank: int | None, energy: float | None, param_ratio: float | None) -> str | None:
    given = [k for k, v in (("rank", rank), ("energy", energy), ("param_ratio", param_ratio)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give exactly one of rank, energy, param_ratio (got {', '.join(given)})")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1], got {energy}")
    if param_ratio is not None and not 0 < param_ratio <= 1:
        raise ConfigError(f"param_ratio must be in (0, 1], got {param_ratio}")
    return given[0] if given else None


def _override_for(name: str, overrides: Mapping[str, int]) -> int | None:
    """The override for ``name``: an exact key wins over the longest matching suffix."""
    if name in overrides:
        return overrides[name]
    keys = sorted((k for k in overrides if name.endswith("." + k)), key=len, reverse=True)
    return overrides[keys[0]] if keys else None


def _choose_ranks(linears: Mapping[str, nn.Linear], chosen: Sequence[str], *, rank: int | None,
                  energy: float | None, param_ratio: float | None,
                  rank_overrides: Mapping[str, int] | None, required: bool = True) -> dict[str, int | None]:
    """Name -> validated rank for every chosen layer (``None`` only when ``required`` is False)."""
    rule = _rank_rule(rank, energy, param_ratio)
    overrides = dict(rank_overrides or {})
    for key in overrides:
        if not any(_matches(n, [key]) for n in chosen):
            raise ConfigError(f"rank_overrides key {key!r} matches no selected layer; selected: "
                              f"{', '.join(chosen) or '(none)'}")
    ranks: dict[str, int | None] = {}
    for name in chosen:
        lin = linears[name]
        n, m = lin.out_features, lin.in_features
        r = _override_for(name, overrides)
        if r is None:
            if rule == "rank":
                r = rank
            elif rule == "energy":
                w = lin.weight.detach()
                s = torch.linalg.svdvals(w if w.dtype in (torch.float32, torch.float64) else w.float())
                r = rank_for_energy(s, energy)
            elif rule == "param_ratio":
                r = rank_for_param_ratio(n, m, param_ratio)
            elif required:
                raise ConfigError(f"layer {name!r} ({n}x{m}) has no rank: give exactly one of "
                                  f"rank, energy, param_ratio, or a rank_overrides entry")
        ranks[name] = None if r is None else check_rank(r, n, m, f"layer {name!r}")
    return ranks


# ---------------------------------------------------------------------------- module surgery

def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (works for Sequential / ModuleList / ModuleDict too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert(model: nn.Module, method: str = "vanilla", *, rank: int | None = None,
            energy: float | None = None, param_ratio: float | None = None, target: Pattern = None,
            exclude: Pattern = None, rank_overrides: Mapping[str, int] | None = None,
            inplace: bool = False, **options: Any) -> nn.Module:
    """Replace the selected ``nn.Linear`` modules by ``method``'s layer, built with ``from_linear``.

    Every rank is validated before anything is replaced, so a :class:`RankError`
    (naming the layer and its shape) leaves ``model`` untouched. ``options`` go to
    the layer's ``from_linear`` (``init_decay``, ``lambda_orth``, ``alpha`` ...).
    Returns the converted model: ``model`` itself when ``inplace``, else a deep copy.
    """
    cls = layer_class(method)
    linears = _convertible_linears(model)
    chosen = select(model, target, exclude)
    ranks = _choose_ranks(linears, chosen, rank=rank, energy=energy, param_ratio=param_ratio,
                          rank_overrides=rank_overrides)
    if not inplace:
        model = copy.deepcopy(model)
        linears = _convertible_linears(model)
    for name in chosen:
        _set_module(model, name, cls.from_linear(linears[name], ranks[name], **options))
    return model


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every low-rank layer by the equivalent ``nn.Linear`` (its ``to_dense``).

    The result has the dense model's state_dict keys and shapes (``fc0.weight``,
    never ``fc0.base.weight``).
    """
    if is_lowrank(model):
        return model.to_dense()
    if not inplace:
        model = copy.deepcopy(model)
    for name in [n for n, m in model.named_modules() if is_lowrank(m)]:
        # Outer layers first; a layer inside a replaced one is gone with it.
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if is_lowrank(mod):
            _set_module(model, name, mod.to_dense())
    return model


# ---------------------------------------------------------------------------- inspection

def _dense_count(m: int, n: int, bias: bool) -> int:
    return m * n + (n if bias else 0)


def _factored_count(cls: type, m: int, n: int, r: int, bias: bool) -> int:
    """Inference weights of ``cls`` at rank ``r``, from its class-level formula when it has one."""
    formula = getattr(cls, "count_params", None)
    if formula is not None:
        return int(formula(m, n, r, bias))
    return r * (m + n) + (n if bias else 0)


def inspect(model: nn.Module, method: str = "vanilla", *, rank: int | None = None,
            energy: float | None = None, param_ratio: float | None = None, target: Pattern = None,
            exclude: Pattern = None, rank_overrides: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per Linear-like layer: what :func:`convert` with the same arguments would do.

    Row keys: ``name``, ``type`` (class name), ``in_features``, ``out_features``, ``rank``
    (chosen rank for a selected Linear, current rank for a low-rank layer, ``None`` for a
    Linear kept dense or when no rank rule was given), ``params_before`` (dense ``m n + n``),
    ``params_after`` (inference weights after conversion by ``method``; unchanged when the
    layer is kept or no rank rule was given), ``break_even_rank`` (``m n / (m + n)``) and
    ``convert`` (selected). Nothing is modified.
    """
    linears = _convertible_linears(model)
    chosen = set(select(model, target, exclude))
    ranks = _choose_ranks(linears, [n for n in linears if n in chosen], rank=rank, energy=energy,
                          param_ratio=param_ratio, rank_overrides=rank_overrides, required=False)
    cls = layer_class(method)
    rows: list[dict[str, Any]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name in linears:
            m, n, bias = mod.in_features, mod.out_features, mod.bias is not None
            r = ranks.get(name)
            after = _factored_count(cls, m, n, r, bias) if r is not None else _dense_count(m, n, bias)
        elif is_lowrank(mod):
            m, n, bias = mod.in_features, mod.out_features, mod.bias_tensor is not None
            r, after = mod.rank, mod.num_params()
        else:
            continue
        rows.append({"name": name, "type": type(mod).__name__, "in_features": m, "out_features": n,
                     "rank": r, "params_before": _dense_count(m, n, bias), "params_after": after,
                     "break_even_rank": break_even_rank(n, m), "convert": name in chosen})
    return rows


# ---------------------------------------------------------------------------- checkpoints

def structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{qualified name: {"cls": class name, "spec": spec()}}`` for every (outermost) low-rank layer.

    JSON-serialisable; with :func:`restore_structure` it rebuilds the module tree a
    state_dict of ``model`` needs.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        if is_lowrank(mod) and not any(name.startswith(p + ".") for p in out):
            out[name] = {"cls": type(mod).__name__, "spec": dict(mod.spec())}
    return out


def _layer_class_by_name(cls_name: str) -> type[LowRankLayer]:
    if cls_name not in LAYER_CLASSES:
        # Optional layers register themselves on import (e.g. DLRTLinear): try the known ones.
        for path in [p for p in METHOD_LAYERS.values() if isinstance(p, str)]:
            try:
                importlib.import_module(path.partition(":")[0])
            except ImportError:
                pass
    if cls_name not in LAYER_CLASSES:
        raise CheckpointError(f"layer class {cls_name!r} is not registered; known: {', '.join(LAYER_CLASSES)}")
    return LAYER_CLASSES[cls_name]


def restore_structure(model: nn.Module, struct: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """In place: replace each named module by ``LAYER_CLASSES[cls](**spec)`` (fresh values).

    Afterwards ``model.load_state_dict`` of the model :func:`structure` was taken from
    succeeds. Each new layer takes the device and floating dtype of the module it replaces.
    Returns ``model``.
    """
    for name, rec in struct.items():
        cls = _layer_class_by_name(rec["cls"])
        try:
            old = model.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise CheckpointError(f"structure names module {name!r} which the model lacks; "
                                  f"modules: {', '.join(names)}") from None
        ref = next(old.parameters(), None)
        new = cls(**rec["spec"])
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        _set_module(model, name, new)
    return model

"""Swap ``nn.Linear`` modules for low-rank layers by name, merge them back, plan, rebuild.

Selection rules (shared by :func:`convert` and :func:`plan`), over the qualified
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

The rank of each selected layer comes from ``rank_overrides`` (name or suffix -> rank),
else the method config's :class:`~lowrank.rank.RankChoice` (``rank``, ``energy`` or
``param_ratio``), else the method's default rank.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .errors import CheckpointError, ConfigError
from .layer import LowRankLayer, is_lowrank
from .linalg import break_even_rank, check_rank
from .method_config import FactorizedConfig, MethodConfig
from .registry import get_method, layer_class, method_config

__all__ = ["convert", "merge", "plan", "structure", "restore_structure", "select", "method_options"]

Pattern = str | Sequence[str] | None


def method_options(method: str | MethodConfig, options: Mapping[str, Any]) -> FactorizedConfig:
    """The config of ``method`` (a name or a config) with ``options`` (its field names) applied;
    an option the method lacks, or a method that converts no layer, is a ConfigError."""
    if isinstance(method, MethodConfig):
        try:
            cfg = dataclasses.replace(method, **options) if options else method
        except TypeError:
            cfg = method_config(method.method, **{**dataclasses.asdict(method), **options})
    else:
        cfg = method_config(method, **options)
    if not isinstance(cfg, FactorizedConfig) or not get_method(cfg.method).layers:
        raise ConfigError(f"method {cfg.method!r} converts no layer; methods that do: "
                          f"{', '.join(_converting_methods())}")
    return cfg


def _converting_methods() -> list[str]:
    from .registry import method_names
    return [n for n in method_names() if get_method(n).layers]


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

def _override_for(name: str, overrides: Mapping[str, int]) -> int | None:
    """The override for ``name``: an exact key wins over the longest matching suffix."""
    if name in overrides:
        return overrides[name]
    keys = sorted((k for k in overrides if name.endswith("." + k)), key=len, reverse=True)
    return overrides[keys[0]] if keys else None


def _choose_ranks(linears: Mapping[str, nn.Linear], chosen: Sequence[str], cfg: FactorizedConfig,
                  rank_overrides: Mapping[str, int] | None) -> dict[str, int]:
    """Name -> validated rank for every chosen layer: its override, else ``cfg``'s rank rule,
    else the method's default rank for its shape."""
    overrides = dict(rank_overrides or {})
    for key in overrides:
        if not any(_matches(n, [key]) for n in chosen):
            raise ConfigError(f"rank_overrides key {key!r} matches no selected layer; selected: "
                              f"{', '.join(chosen) or '(none)'}")
    ranks: dict[str, int] = {}
    for name in chosen:
        lin = linears[name]
        n, m = lin.out_features, lin.in_features
        r = _override_for(name, overrides)
        if r is None:
            r = cfg.rank_of(lin.weight)
        if r is None:
            r = cfg.default_rank(n, m)
        ranks[name] = check_rank(r, n, m, f"layer {name!r}")
    return ranks


# ---------------------------------------------------------------------------- module surgery

def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (works for Sequential / ModuleList / ModuleDict too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert(model: nn.Module, method: str | MethodConfig = "vanilla", *, target: Pattern = None,
            exclude: Pattern = None, rank_overrides: Mapping[str, int] | None = None,
            inplace: bool = False, **options: Any) -> nn.Module:
    """Replace the selected ``nn.Linear`` modules of ``model`` by ``method``'s low-rank layer.

    ``method`` is a registered name (``vanilla``, ``twofactor``, ``svd``, ``lora``, ``dlrt``,
    ...) or that method's config object; ``options`` are its config's fields, with the same
    names and defaults as the CLI flags (``rank``, ``energy``, ``param_ratio``,
    ``lora_alpha``, ``lambda_orth``, ``max_rank``, ...).

    Selection (over the qualified names of the convertible Linears):

    - ``target=None`` (and no ``target`` in the config): every Linear but the last in
      module order (the output layer);
    - ``target`` a ``str``: a regex that must match the whole name;
    - ``target`` a list: each entry matches a name exactly or as a dotted suffix;
    - ``exclude``: the same rules, removed from the selection; a pattern that matches no
      Linear is a :class:`ConfigError` listing the names available.

    Rank of each selected layer: its ``rank_overrides`` entry (name or dotted suffix),
    else the rule given (``rank``; ``energy``: fewest singular values holding that fraction
    of ``sum s^2``; ``param_ratio``: two factors holding at most that fraction of the
    ``m n`` weights), else the method's default. Every rank is validated before anything
    is replaced, so a :class:`RankError` (naming the layer and its shape) leaves ``model``
    untouched. Returns the converted model: ``model`` itself when ``inplace``, else a deep
    copy. :func:`merge` is the inverse.
    """
    cfg = method_options(method, options)
    cls = get_method(cfg.method).layers[0]
    target = cfg.target if target is None else target
    linears = _convertible_linears(model)
    chosen = select(model, target, exclude)
    ranks = _choose_ranks(linears, chosen, cfg, rank_overrides)
    if not inplace:
        model = copy.deepcopy(model)
        linears = _convertible_linears(model)
    layer_options = cfg.layer_options()
    for name in chosen:
        _set_module(model, name, cls.from_linear(linears[name], ranks[name], **layer_options))
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


def plan(model: nn.Module, method: str | MethodConfig = "vanilla", *, target: Pattern = None,
         exclude: Pattern = None, rank_overrides: Mapping[str, int] | None = None,
         **options: Any) -> list[dict[str, Any]]:
    """One row per Linear-like layer: what :func:`convert` with the same arguments would do.

    Row keys: ``name``, ``type`` (class name), ``in_features``, ``out_features``, ``rank``
    (chosen rank for a selected Linear, current rank for a low-rank layer, ``None`` for a
    Linear kept dense), ``params_before`` (dense ``m n + n``), ``params_after`` (inference
    weights after conversion by ``method``; unchanged when the layer is kept),
    ``break_even_rank`` (``m n / (m + n)``) and ``convert`` (selected). Nothing is modified.
    """
    cfg = method_options(method, options)
    cls = get_method(cfg.method).layers[0]
    target = cfg.target if target is None else target
    linears = _convertible_linears(model)
    chosen = set(select(model, target, exclude))
    ranks = _choose_ranks(linears, [n for n in linears if n in chosen], cfg, rank_overrides)
    rows: list[dict[str, Any]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name in linears:
            m, n, bias = mod.in_features, mod.out_features, mod.bias is not None
            r = ranks.get(name)
            after = cls.count_params(m, n, r, bias) if r is not None else _dense_count(m, n, bias)
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


def restore_structure(model: nn.Module, struct: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """In place: replace each named module by ``layer_class(cls)(**spec)`` (the registry's class of that name) (fresh values).

    Afterwards ``model.load_state_dict`` of the model :func:`structure` was taken from
    succeeds. Each new layer takes the device and floating dtype of the module it replaces.
    Returns ``model``.
    """
    for name, rec in struct.items():
        cls = layer_class(rec["cls"])
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

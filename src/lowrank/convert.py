"""Swap ``nn.Linear``, ``nn.Conv2d`` and attention projections for low-rank layers by name,
merge them back, plan, rebuild.

The convertible layers of a model, by qualified name in module order:

- every ``nn.Linear`` not inside a low-rank layer;
- every ``nn.Conv2d`` with ``groups=1`` (the kernel reshaped to ``out x (in kh kw)`` is
  factorized), when the method has a conv layer class; a grouped convolution is kept
  dense (:func:`plan` says why);
- the four projections of every ``nn.MultiheadAttention`` ``A``: ``A.q_proj``, ``A.k_proj``,
  ``A.v_proj`` (the slices of its packed ``in_proj_weight``, or its ``q_proj_weight`` ...
  when ``kdim``/``vdim`` differ) and ``A.out_proj``. Converting any of them replaces ``A`` by
  a :class:`~lowrank.attention.LowRankMultiheadAttention` holding the four as submodules
  (the unselected ones as ``nn.Linear``), same function and forward signature.

Selection rules (shared by :func:`convert` and :func:`plan`), over those names:

- ``target=None``: every convertible layer except the last Linear in module order (the
  output layer; attention projections count as Linears, convolutions are all included);
- ``target`` a ``str``: a regex that must match the whole name (``re.fullmatch``);
- ``target`` a list: each entry matches a name exactly or as a dotted suffix
  (``"q"`` matches ``blocks.0.attn.q``);
- ``exclude``: the same rules, removed from the selection;
- a pattern (or list entry) that matches no layer is a :class:`ConfigError`
  listing the names available.

The rank of each selected layer comes from ``rank_overrides`` (name or suffix -> rank),
else the method config's :class:`~lowrank.rank.RankChoice` (``rank``, ``energy`` or
``param_ratio``, applied to the ``(n, m)`` matrix: a conv's reshaped kernel), else the
method's default rank.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import PROJECTIONS, LowRankMultiheadAttention
from .conv1d import conv1d_as_linear, is_conv1d, linear_as_conv1d
from .errors import CheckpointError, ConfigError
from .layer import LowRankLayer, is_conv_layer, is_lowrank
from .linalg import break_even_rank, check_rank
from .method_config import FactorizedConfig, MethodConfig
from .registry import get_method, layer_class, method_config

__all__ = ["convert", "merge", "plan", "structure", "restore_structure", "structure_class", "select",
           "method_options", "layer_classes_of", "ATTENTION_CLS"]

Pattern = str | Sequence[str] | None

#: The structure record of an attention module (not a registered layer class).
ATTENTION_CLS = "LowRankMultiheadAttention"


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


def layer_classes_of(method: str) -> tuple[type[LowRankLayer], type[LowRankLayer] | None]:
    """``(linear class, conv class or None)`` of a registered method: the first of its
    ``Method.layers`` without / with ``from_conv``."""
    layers = get_method(method).layers
    convs = [c for c in layers if hasattr(c, "from_conv")]
    linears = [c for c in layers if not hasattr(c, "from_conv")]
    if not linears:
        raise ConfigError(f"method {method!r} registers no linear layer class")
    return linears[0], (convs[0] if convs else None)


# ---------------------------------------------------------------------------- sites

@dataclass
class _Site:
    """One Linear-like layer of a model: a module, or an in-projection of an nn.MultiheadAttention."""

    name: str
    kind: str                 # "linear" | "conv" | "attention"
    module: nn.Module         # the layer; for q/k/v of an nn.MultiheadAttention, that attention module
    in_features: int          # m (a conv: in_channels kh kw)
    out_features: int         # n
    bias: bool
    attention: str | None = None    # qualified name of the attention module it belongs to
    projection: str | None = None   # "q", "k", "v" or "out"
    reason: str | None = None       # why it is never converted (a grouped conv)

    @property
    def lowrank(self) -> bool:
        return is_lowrank(self.module)

    @property
    def packed(self) -> bool:
        """An in-projection living inside an ``nn.MultiheadAttention``'s packed weights."""
        return isinstance(self.module, nn.MultiheadAttention)

    def weight(self) -> torch.Tensor:
        """The ``(n, m)`` matrix (a conv's kernel reshaped); detached."""
        mod = self.module
        if self.packed:
            e = mod.embed_dim
            if mod._qkv_same_embed_dim:
                i = "qkv".index(self.projection)  # type: ignore[arg-type]
                return mod.in_proj_weight.detach()[i * e:(i + 1) * e]
            return getattr(mod, f"{self.projection}_proj_weight").detach()
        if is_lowrank(mod):
            return mod.dense_weight().detach()
        if is_conv1d(mod):
            return mod.weight.detach().T          # Conv1D stores (in, out)
        return mod.weight.detach().reshape(mod.weight.shape[0], -1)


def _inside(name: str, prefix: str) -> bool:
    return name != prefix and (prefix == "" or name.startswith(prefix + "."))


def _join(prefix: str, child: str) -> str:
    return f"{prefix}.{child}" if prefix else child


def _sites(model: nn.Module) -> list[_Site]:
    """Every Linear-like layer of ``model`` in module order (low-rank ones included, their
    insides not)."""
    out: list[_Site] = []
    owned: list[str] = []
    attention: set[str] = set()
    for name, mod in model.named_modules():
        if any(_inside(name, p) for p in owned):
            continue
        parent, _, leaf = name.rpartition(".")
        proj = leaf[:-len("_proj")] if parent in attention and leaf in PROJECTIONS and name else None
        where = {"attention": parent, "projection": proj} if proj else {}
        if is_lowrank(mod):
            owned.append(name)
            kind = "conv" if is_conv_layer(mod) else ("attention" if proj else "linear")
            out.append(_Site(name, kind, mod, mod.in_features, mod.out_features, mod.bias_tensor is not None, **where))
        elif isinstance(mod, nn.MultiheadAttention):
            attention.add(name)
            dims = {"q": mod.embed_dim, "k": mod.kdim, "v": mod.vdim}
            for p, m in dims.items():
                out.append(_Site(_join(name, f"{p}_proj"), "attention", mod, m, mod.embed_dim,
                                 mod.in_proj_bias is not None, attention=name, projection=p))
        elif isinstance(mod, LowRankMultiheadAttention):
            attention.add(name)
        elif isinstance(mod, nn.Linear):
            out.append(_Site(name, "attention" if proj else "linear", mod, mod.in_features, mod.out_features,
                             mod.bias is not None, **where))
        elif is_conv1d(mod):
            nx, nf = mod.weight.shape
            out.append(_Site(name, "linear", mod, nx, nf, getattr(mod, "bias", None) is not None, **where))
        elif isinstance(mod, nn.Conv2d):
            reason = None if mod.groups == 1 else \
                f"groups={mod.groups}: kept dense (only groups=1 convolutions are factorized)"
            out.append(_Site(name, "conv", mod, mod.weight[0].numel(), mod.out_channels, mod.bias is not None,
                             reason=reason))
    return out


def _blocked(site: _Site, method: str | None, has_conv: bool) -> str | None:
    """Why ``site`` cannot be converted (by ``method``), or None."""
    if site.lowrank:
        return "already low-rank"
    if site.reason:
        return site.reason
    if site.kind == "conv" and not has_conv:
        return f"method {method!r} has no Conv2d layer: kept dense"
    return None


def _convertible(model: nn.Module, method: str | None = None) -> tuple[dict[str, _Site], dict[str, str]]:
    """``(name -> site of every layer ``method`` can convert, name -> why not for the others)``."""
    has_conv = method is None or layer_classes_of(method)[1] is not None
    ok: dict[str, _Site] = {}
    blocked: dict[str, str] = {}
    for site in _sites(model):
        why = _blocked(site, method, has_conv)
        if why is None:
            ok[site.name] = site
        elif not site.lowrank:
            blocked[site.name] = why
    return ok, blocked


def _matches(name: str, pattern: str | Sequence[str]) -> bool:
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def _check_pattern(pattern: str | Sequence[str], sites: Mapping[str, _Site], what: str,
                   blocked: Mapping[str, str] | None = None) -> None:
    """Every regex / list entry must match at least one available name."""
    if isinstance(pattern, str):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{what} {pattern!r} is not a valid regular expression: {e}") from None
    names = list(sites)
    kinds = "Linear layer" + (" or convolution" if any(s.kind == "conv" for s in sites.values()) else "")
    entries = [pattern] if isinstance(pattern, str) else list(pattern)
    for entry in entries:
        single = entry if isinstance(pattern, str) else [entry]
        if not any(_matches(n, single) for n in names):
            why = [f"{n}: {r}" for n, r in (blocked or {}).items() if _matches(n, single)]
            extra = f" ({'; '.join(why)})" if why else ""
            raise ConfigError(f"{what} {entry!r} matches no {kinds}{extra}; available: {', '.join(names) or '(none)'}")


def _select(sites: Mapping[str, _Site], blocked: Mapping[str, str], target: Pattern, exclude: Pattern) -> list[str]:
    if target is not None and not isinstance(target, (str, Sequence)):
        raise ConfigError(f"target must be a regex string or a list of names, got {target!r}")
    names = list(sites)
    if target is None:
        linears = [n for n, s in sites.items() if s.kind != "conv"]
        chosen = [n for n in names if not linears or n != linears[-1]]
    else:
        _check_pattern(target, sites, "target", blocked)
        chosen = [n for n in names if _matches(n, target)]
    if exclude is not None:
        _check_pattern(exclude, sites, "exclude", blocked)
        chosen = [n for n in chosen if not _matches(n, exclude)]
    return chosen


def select(model: nn.Module, target: Pattern = None, exclude: Pattern = None, *,
           method: str | MethodConfig | None = None) -> list[str]:
    """Qualified names of the layers :func:`convert` would replace, in module order.

    ``method`` (a name or config): only the layer kinds it has classes for (a method without
    a conv layer class leaves convolutions out); None: Linears, convolutions and attention
    projections.
    """
    name = method.method if isinstance(method, MethodConfig) else method
    sites, blocked = _convertible(model, name)
    return _select(sites, blocked, target, exclude)


# ---------------------------------------------------------------------------- ranks

def _override_for(name: str, overrides: Mapping[str, int]) -> int | None:
    """The override for ``name``: an exact key wins over the longest matching suffix."""
    if name in overrides:
        return overrides[name]
    keys = sorted((k for k in overrides if name.endswith("." + k)), key=len, reverse=True)
    return overrides[keys[0]] if keys else None


def _choose_ranks(sites: Mapping[str, _Site], chosen: Sequence[str], cfg: FactorizedConfig,
                  rank_overrides: Mapping[str, int] | None) -> dict[str, int]:
    """Name -> validated rank for every chosen layer: its override, else ``cfg``'s rank rule
    (on the layer's ``(n, m)`` matrix), else the method's default rank for its shape."""
    overrides = dict(rank_overrides or {})
    for key in overrides:
        if not any(_matches(n, [key]) for n in chosen):
            raise ConfigError(f"rank_overrides key {key!r} matches no selected layer; selected: "
                              f"{', '.join(chosen) or '(none)'}")
    ranks: dict[str, int] = {}
    for name in chosen:
        site = sites[name]
        n, m = site.out_features, site.in_features
        r = _override_for(name, overrides)
        if r is None:
            r = cfg.rank_of(site.weight())
        if r is None:
            r = cfg.default_rank(n, m)
        ranks[name] = check_rank(r, n, m, f"layer {name!r}")
    return ranks


def _resolve(model: nn.Module, cfg: FactorizedConfig, target: Pattern, exclude: Pattern,
             rank_overrides: Mapping[str, int] | None
             ) -> tuple[dict[str, _Site], dict[str, str], list[str], dict[str, int]]:
    """Sites, blocked layers, chosen names and their ranks: every check before any change."""
    target = cfg.target if target is None else target
    sites, blocked = _convertible(model, cfg.method)
    chosen = _select(sites, blocked, target, exclude)
    return sites, blocked, chosen, _choose_ranks(sites, chosen, cfg, rank_overrides)


# ---------------------------------------------------------------------------- module surgery

def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (works for Sequential / ModuleList / ModuleDict too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _sync_transformer_encoders(model: nn.Module) -> None:
    """``nn.TransformerEncoder`` decides in ``__init__`` whether its inference path may turn a
    padded batch into a nested tensor (``use_nested_tensor``): only with packed attention.
    Off while any of its layers holds a :class:`LowRankMultiheadAttention` (what ``__init__``
    would have decided for it), restored when none does any more."""
    for mod in model.modules():
        if not isinstance(mod, nn.TransformerEncoder) or not hasattr(mod, "use_nested_tensor"):
            continue
        has = any(isinstance(m, LowRankMultiheadAttention) for m in mod.modules())
        if has and not hasattr(mod, "_lowrank_use_nested_tensor"):
            mod._lowrank_use_nested_tensor = mod.use_nested_tensor
            mod.use_nested_tensor = False
        elif not has and hasattr(mod, "_lowrank_use_nested_tensor"):
            mod.use_nested_tensor = mod._lowrank_use_nested_tensor
            del mod._lowrank_use_nested_tensor


def convert(model: nn.Module, method: str | MethodConfig = "vanilla", *, target: Pattern = None,
            exclude: Pattern = None, rank_overrides: Mapping[str, int] | None = None,
            inplace: bool = False, **options: Any) -> nn.Module:
    """Replace the selected layers of ``model`` by ``method``'s low-rank layers.

    ``method`` is a registered name (``vanilla``, ``twofactor``, ``svd``, ``lora``, ``dlrt``,
    ...) or that method's config object; ``options`` are its config's fields, with the same
    names and defaults as the CLI flags (``rank``, ``energy``, ``param_ratio``,
    ``lora_alpha``, ``lambda_orth``, ``max_rank``, ...).

    Layers: ``nn.Linear`` -> the method's linear class (``from_linear``); ``nn.Conv2d``
    (``groups=1``) -> its conv class (``from_conv``; a method without one keeps
    convolutions dense); a projection of an ``nn.MultiheadAttention`` (``A.q_proj``,
    ``A.k_proj``, ``A.v_proj``, ``A.out_proj``) -> the linear class, inside a
    :class:`~lowrank.attention.LowRankMultiheadAttention` that replaces ``A``.

    Selection (over the qualified names of the convertible layers, see the module docstring):

    - ``target=None`` (and no ``target`` in the config): every layer but the last Linear in
      module order (the output layer); convolutions are all included;
    - ``target`` a ``str``: a regex that must match the whole name;
    - ``target`` a list: each entry matches a name exactly or as a dotted suffix;
    - ``exclude``: the same rules, removed from the selection; a pattern that matches no
      layer is a :class:`ConfigError` listing the names available.

    Rank of each selected layer: its ``rank_overrides`` entry (name or dotted suffix),
    else the rule given (``rank``; ``energy``: fewest singular values holding that fraction
    of ``sum s^2``; ``param_ratio``: two factors holding at most that fraction of the
    ``m n`` weights), else the method's default; for a convolution, of its kernel reshaped
    to ``out x (in kh kw)``. Every rank is validated before anything is replaced, so a
    :class:`RankError` (naming the layer and its shape) leaves ``model`` untouched. Returns
    the converted model: ``model`` itself when ``inplace``, else a deep copy. :func:`merge`
    is the inverse.
    """
    cfg = method_options(method, options)
    linear_cls, conv_cls = layer_classes_of(cfg.method)
    sites, _, chosen, ranks = _resolve(model, cfg, target, exclude, rank_overrides)
    if cfg.rule is not None or rank_overrides:
        _warn_past_break_even(sites, chosen, ranks, linear_cls, conv_cls)
    if not inplace:
        model = copy.deepcopy(model)
    for attn in dict.fromkeys(sites[n].attention for n in chosen if sites[n].attention is not None):
        mha = model.get_submodule(attn)  # type: ignore[arg-type]
        if isinstance(mha, nn.MultiheadAttention):
            model = _replace(model, attn, LowRankMultiheadAttention.from_mha(mha))  # type: ignore[arg-type]
    layer_options = cfg.layer_options()
    for name in chosen:
        mod = model.get_submodule(name)
        if isinstance(mod, nn.Conv2d):
            new = conv_cls.from_conv(mod, ranks[name], **layer_options)  # type: ignore[union-attr]
        elif is_conv1d(mod):
            new = linear_cls.from_linear(conv1d_as_linear(mod), ranks[name], **layer_options)
            new._lowrank_conv1d = type(mod)   # merge puts a Conv1D back
        else:
            new = linear_cls.from_linear(mod, ranks[name], **layer_options)
        new.train(mod.training)
        model = _replace(model, name, new)
    _sync_transformer_encoders(model)
    return model


def _warn_past_break_even(sites: Mapping[str, _Site], chosen: Sequence[str], ranks: Mapping[str, int],
                          linear_cls: type, conv_cls: type | None) -> None:
    """A ``UserWarning`` for every layer whose given rank keeps more weights than its dense form
    (ranks at or above ``m n / (m + n)``, e.g. ``energy=0.99`` on a small model), naming its
    break-even rank."""
    for name in chosen:
        site = sites[name]
        cls = conv_cls if site.kind == "conv" and conv_cls is not None else linear_cls
        m, n, r = site.in_features, site.out_features, ranks[name]
        after, dense = cls.count_params(m, n, r, site.bias), _dense_count(m, n, site.bias)
        if after > dense:
            warnings.warn(f"layer {name!r} ({n}x{m}) at rank {r} keeps {after} weights, more than its dense "
                          f"{dense}: below its break-even rank {break_even_rank(n, m):.1f} a factorization saves "
                          f"weights", stacklevel=3)


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """``model`` with the module at ``name`` replaced by ``new``; ``name == ""`` (the model itself
    is the layer) returns ``new``."""
    if not name:
        return new
    _set_module(model, name, new)
    return model


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every low-rank layer by the equivalent ``nn.Linear`` / ``nn.Conv2d`` (its
    ``to_dense``) and every :class:`~lowrank.attention.LowRankMultiheadAttention` by the
    equivalent ``nn.MultiheadAttention`` (its ``to_mha``).

    The result has the dense model's state_dict keys and shapes (``fc0.weight``,
    never ``fc0.base.weight``; ``attn.in_proj_weight``, never ``attn.q_proj.U``).
    """
    if is_lowrank(model) or isinstance(model, LowRankMultiheadAttention):
        return _merged(model)
    if not inplace:
        model = copy.deepcopy(model)
    for name in [n for n, m in model.named_modules() if is_lowrank(m) or isinstance(m, LowRankMultiheadAttention)]:
        # Outer modules first; a module inside a replaced one is gone with it.
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if not (is_lowrank(mod) or isinstance(mod, LowRankMultiheadAttention)):
            continue   # e.g. the out_proj of an attention module merged just before
        dense = _merged(mod)
        dense.train(mod.training)
        _set_module(model, name, dense)
    _sync_transformer_encoders(model)
    return model


def _merged(mod: nn.Module) -> nn.Module:
    """The dense module of a low-rank layer (a GPT-2 ``Conv1D`` again if it was one) or of a
    :class:`LowRankMultiheadAttention` (``to_mha`` reads each projection's dense weight)."""
    if isinstance(mod, LowRankMultiheadAttention):
        return mod.to_mha()
    dense = mod.to_dense()
    cls = getattr(mod, "_lowrank_conv1d", None)
    return dense if cls is None else linear_as_conv1d(dense, cls)


# ---------------------------------------------------------------------------- inspection

def _dense_count(m: int, n: int, bias: bool) -> int:
    return m * n + (n if bias else 0)


def plan(model: nn.Module, method: str | MethodConfig = "vanilla", *, target: Pattern = None,
         exclude: Pattern = None, rank_overrides: Mapping[str, int] | None = None,
         **options: Any) -> list[dict[str, Any]]:
    """One row per Linear-like layer: what :func:`convert` with the same arguments would do.

    Row keys: ``name``; ``kind`` (``"linear"``, ``"conv"``, ``"attention"``: a projection of
    an attention module); ``type`` (class name; ``"MultiheadAttention"`` for an in-projection
    packed in one); ``in_features``, ``out_features`` (the ``(n, m)`` matrix: a conv's kernel
    reshaped to ``out x (in kh kw)``); ``rank`` (chosen rank for a selected layer, current
    rank for a low-rank layer, ``None`` for a layer kept dense); ``params_before`` (dense
    ``m n + n``); ``params_after`` (inference weights after conversion by ``method``;
    unchanged when the layer is kept); ``break_even_rank`` (``m n / (m + n)``); ``convert``
    (selected); ``becomes`` (the class it is replaced by, or its own); ``note`` (why a layer
    is kept, where a projection lives; ``""`` if nothing to say). Conv rows add
    ``in_channels``, ``out_channels``, ``kernel_size``, ``groups``; attention rows add
    ``attention`` (the module's name) and ``projection`` (``q``, ``k``, ``v``, ``out``).
    Nothing is modified.
    """
    cfg = method_options(method, options)
    linear_cls, conv_cls = layer_classes_of(cfg.method)
    _, blocked, chosen, ranks = _resolve(model, cfg, target, exclude, rank_overrides)
    selected = set(chosen)
    rows: list[dict[str, Any]] = []
    for site in _sites(model):
        mod = site.module
        m, n, bias = site.in_features, site.out_features, site.bias
        r = ranks.get(site.name)
        cls = conv_cls if site.kind == "conv" else linear_cls
        if site.lowrank:
            r, after, becomes = mod.rank, mod.num_params(), type(mod).__name__
        elif r is not None:
            after, becomes = cls.count_params(m, n, r, bias), cls.__name__  # type: ignore[union-attr]
        else:
            after = _dense_count(m, n, bias) if site.kind != "conv" else _conv_params(mod)
            becomes = type(mod).__name__ if not site.packed else "Linear"
        note = blocked.get(site.name, "") if r is None or site.lowrank else ""
        row: dict[str, Any] = {
            "name": site.name, "kind": site.kind, "type": type(mod).__name__, "in_features": m, "out_features": n,
            "rank": r, "params_before": _dense_count(m, n, bias) if site.kind != "conv" else _conv_params(mod),
            "params_after": after, "break_even_rank": break_even_rank(n, m), "convert": site.name in selected,
            "becomes": becomes, "note": note}
        if site.kind == "conv":
            conv = mod
            row.update(in_channels=conv.in_channels, out_channels=conv.out_channels,
                       kernel_size=list(conv.kernel_size), groups=getattr(conv, "groups", 1))
        if site.attention is not None:
            row.update(attention=site.attention, projection=site.projection)
            where = _projection_source(site)
            if not row["note"]:
                row["note"] = where
        rows.append(row)
    return rows


def _conv_params(conv: nn.Module) -> int:
    """Dense weights + bias of a convolution (``groups`` included) or of a low-rank conv's dense form."""
    if is_lowrank(conv):
        return conv.in_features * conv.out_features + (conv.out_features if conv.bias_tensor is not None else 0)
    return conv.weight.numel() + (conv.bias.numel() if conv.bias is not None else 0)


def _projection_source(site: _Site) -> str:
    """Where an attention projection lives, for plan's note."""
    if not site.packed:
        return f"{site.projection} projection of {site.attention or '(model)'}"
    mha = site.module
    if site.projection and mha._qkv_same_embed_dim:
        i, e = "qkv".index(site.projection), mha.embed_dim
        return f"in_proj_weight[{i * e}:{(i + 1) * e}] of {site.attention or '(model)'}"
    return f"{site.projection}_proj_weight of {site.attention or '(model)'}"


# ---------------------------------------------------------------------------- checkpoints

def structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{qualified name: {"cls": class name, "spec": spec()}}`` for every (outermost) low-rank layer
    and every :class:`~lowrank.attention.LowRankMultiheadAttention` (``"cls":
    "LowRankMultiheadAttention"``, listed before its projections), in module order.

    JSON-serialisable; with :func:`restore_structure` it rebuilds the module tree a
    state_dict of ``model`` needs.
    """
    out: dict[str, dict[str, Any]] = {}
    owned: list[str] = []
    for name, mod in model.named_modules():
        if any(_inside(name, p) for p in owned):
            continue
        if is_lowrank(mod):
            owned.append(name)
            out[name] = {"cls": type(mod).__name__, "spec": dict(mod.spec())}
        elif isinstance(mod, LowRankMultiheadAttention):
            out[name] = {"cls": ATTENTION_CLS, "spec": mod.spec()}
    return out


def structure_class(name: str) -> type[nn.Module]:
    """The class a structure record's ``"cls"`` names: a registered layer class, or
    :class:`~lowrank.attention.LowRankMultiheadAttention` for ``"LowRankMultiheadAttention"``;
    a CheckpointError for any other name."""
    return LowRankMultiheadAttention if name == ATTENTION_CLS else layer_class(name)


def restore_structure(model: nn.Module, struct: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """In place: replace each named module by ``layer_class(cls)(**spec)`` (the registry's class
    of that name; ``LowRankMultiheadAttention`` for an attention record) (fresh values).

    Afterwards ``model.load_state_dict`` of the model :func:`structure` was taken from
    succeeds. Each new module takes the device and floating dtype of the module it replaces.
    Parents are rebuilt before the modules inside them (an attention module before its
    projections). Returns ``model``.
    """
    order = sorted(struct, key=lambda n: 0 if n == "" else n.count(".") + 1)
    for name in order:
        rec = struct[name]
        cls = structure_class(rec["cls"])
        if name == "":
            raise CheckpointError(f"structure records the model itself as a {rec['cls']}; build it with "
                                  f"{rec['cls']}(**spec) instead of restoring it in place")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise CheckpointError(f"structure names module {name!r} which the model lacks; "
                                  f"modules: {', '.join(names)}") from None
        ref = next(old.parameters(), None)
        spec = rec.get("spec")
        if not isinstance(spec, Mapping):
            raise CheckpointError(f"structure record of {name!r} has no spec table; the checkpoint is damaged")
        _check_shape_fields(name, old, spec)
        if cls is LowRankMultiheadAttention and isinstance(old, LowRankMultiheadAttention):
            continue   # built so already (per-head projections): its projections have records of their own
        try:
            new = cls(**spec)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"structure record of {name!r} ({rec['cls']}) does not build: {e}; "
                                  f"the checkpoint is damaged or from another version") from None
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        if is_conv1d(old):
            new._lowrank_conv1d = type(old)
        new.train(old.training)
        _set_module(model, name, new)
    _sync_transformer_encoders(model)
    return model


#: Spec fields that fix a layer's size: a structure record must agree with the module it
#: replaces, so a damaged record can never ask for an absurd allocation.
_SHAPE_FIELDS = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride",
                 "padding", "dilation", "groups", "embed_dim", "num_heads")


def _check_shape_fields(name: str, old: nn.Module, spec: Mapping[str, Any]) -> None:
    def norm(v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple)) else v

    for key in _SHAPE_FIELDS:
        if key in spec and hasattr(old, key) and norm(spec[key]) != norm(getattr(old, key)):
            raise CheckpointError(f"structure record of {name!r} has {key}={spec[key]!r}, the model's module has "
                                  f"{getattr(old, key)!r}: the checkpoint is of another model (or damaged)")


"""Post-training truncation: which layers, which ranks, and the two-factor form every point is kept in.

A compressed layer is :class:`~lowrank.methods.twofactor.TwoFactorLinear` (or its conv):
``W (n, m) ~ W1 W2`` with ``W1 = U_k S_k^(1/2) (n, k)``, ``W2 = S_k^(1/2) V_k^T (k, m)`` from the
truncated SVD, computed as two small products ``(x W2^T) W1^T``; a convolution's kernel is
reshaped to ``(out, in kh kw)`` (a ``kh x kw`` convolution to ``k`` channels, then a ``1 x 1``).

Rank rules (per selected layer, ``s`` its singular values, descending):

- ``rank = k``: ``min(k, min(n, m))`` (a ``k`` above a layer's full rank is capped there);
- ``energy = e``, ``scope="layer"``: the fewest ``s_i`` whose squares hold ``e`` of ``sum s^2``;
- ``energy = e``, ``scope="global"``: pool the squared singular values of all selected layers,
  keep the fewest largest ones holding ``e`` of the pooled sum; each layer's rank is how many
  of its own values were kept (at least 1). Layers with larger weights keep more.

Selection: every Linear and Conv2d but the output layer (the last Linear), as
:func:`lowrank.convert.select`; ``include_output`` adds it; ``target`` / ``exclude`` as there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..convert import convert, select
from ..errors import ConfigError
from ..layer import ConvLayer, is_lowrank
from ..linalg import rank_for_energy
from ..methods.twofactor import TwoFactorConv2d, TwoFactorLinear

__all__ = ["selected_layers", "layer_matrix", "uniform_ranks", "energy_ranks", "global_energy_ranks",
           "truncate", "to_two_factor", "ENERGY_SCOPES"]

#: How an energy threshold is applied: to each layer alone, or to all selected layers' values pooled.
ENERGY_SCOPES = ("layer", "global")


def selected_layers(model: nn.Module, *, target: str | Sequence[str] | None = None,
                    exclude: str | Sequence[str] | None = None, include_output: bool = False) -> list[str]:
    """Names of the dense Linear / Conv2d layers to truncate, in module order. The projections of an
    ``nn.MultiheadAttention`` are left out of the default selection (they are no layers of their own);
    naming one in ``target`` is a ConfigError."""
    if target is None and include_output:
        target = ".*"
    names = select(model, target, exclude, method="twofactor")
    packed = [n for n in names if _in_attention(model, n)]
    if packed and target is None:   # not nn.Linear layers of their own: the default leaves them out
        names = [n for n in names if n not in packed]
    elif packed:
        raise ConfigError(f"layer {packed[0]!r} is a projection of an nn.MultiheadAttention: compress truncates "
                          f"nn.Linear and nn.Conv2d layers (for low-rank attention train with --method vanilla "
                          f"--target ...); leave it out with --exclude '{packed[0]}'")
    for name in names:
        if not isinstance(model.get_submodule(name), (nn.Linear, nn.Conv2d)):
            raise ConfigError(f"layer {name!r} is a {type(model.get_submodule(name)).__name__}: compress truncates "
                              f"nn.Linear and nn.Conv2d layers; leave it out with --exclude {name}")
    if not names:
        raise ConfigError("no layer to compress: the model has no Linear or Conv2d layer besides the output layer "
                          "(add --include-output, or name layers with --target)")
    return names


def _in_attention(model: nn.Module, name: str) -> bool:
    """True for a projection of an ``nn.MultiheadAttention`` (packed, or its ``out_proj``)."""
    parent = name.rpartition(".")[0]
    try:
        return isinstance(model.get_submodule(parent) if parent else model, nn.MultiheadAttention)
    except AttributeError:
        return False


def layer_matrix(model: nn.Module, name: str) -> torch.Tensor:
    """The ``(n, m)`` weight matrix of layer ``name`` (a convolution's kernel reshaped), detached."""
    w = model.get_submodule(name).weight.detach()
    return w.reshape(w.shape[0], -1)


def _spectrum(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w if w.dtype in (torch.float32, torch.float64) else w.float())


def uniform_ranks(model: nn.Module, names: Sequence[str], k: int) -> dict[str, int]:
    """``{name: min(k, min(n, m))}``: one ``k`` for every layer, capped at each layer's full rank."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"rank k must be a positive integer, got {k!r}")
    return {n: min(k, min(layer_matrix(model, n).shape)) for n in names}


def energy_ranks(model: nn.Module, names: Sequence[str], energy: float, scope: str = "layer") -> dict[str, int]:
    """Per-layer ranks keeping ``energy`` of the squared singular values, per layer or pooled (module docstring)."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1], got {energy!r}")
    if scope not in ENERGY_SCOPES:
        raise ConfigError(f"energy scope {scope!r} is not one of {', '.join(ENERGY_SCOPES)}")
    spectra = {n: _spectrum(layer_matrix(model, n)) for n in names}
    if scope == "layer":
        return {n: rank_for_energy(s, energy) for n, s in spectra.items()}
    return global_energy_ranks(spectra, energy)


def global_energy_ranks(spectra: Mapping[str, torch.Tensor], energy: float) -> dict[str, int]:
    """Pooled energy rule: ``spectra`` maps each layer to its singular values ``(r_i,)``; keep the fewest
    largest values of all layers together whose squares hold ``energy`` of the pooled ``sum s^2``;
    return how many each layer keeps (at least 1)."""
    names = list(spectra)
    values = torch.cat([spectra[n].double() for n in names])                       # (sum r_i,)
    owner = torch.cat([torch.full((len(spectra[n]),), i) for i, n in enumerate(names)])
    order = torch.argsort(values, descending=True)
    kept = rank_for_energy(values[order], energy)
    counts = torch.bincount(owner[order[:kept]], minlength=len(names))
    return {n: max(1, int(c)) for n, c in zip(names, counts)}


def truncate(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """A copy of the dense ``model`` with each layer of ``ranks`` replaced by its rank-``k`` two-factor SVD
    truncation (the rest untouched). Ranks past a layer's break-even (more weights than dense) are allowed
    without a warning: a sweep measures them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return convert(model, "twofactor", target=list(ranks), rank_overrides=dict(ranks))


@torch.no_grad()
def to_two_factor(model: nn.Module) -> nn.Module:
    """In place: every low-rank layer with factors ``U (n, r), S (r, r), V (m, r)`` (DLRT, vanilla)
    becomes the two-factor layer computing the same map, ``W1 = U S``, ``W2 = V^T``; two-factor
    layers and other kinds (LoRA ...) are kept. Returns ``model``."""
    for name, mod in list(model.named_modules()):
        if not is_lowrank(mod) or isinstance(mod, TwoFactorLinear) or not all(hasattr(mod, a) for a in "USV"):
            continue
        U, S, V = mod.U.detach(), mod.S.detach(), mod.V.detach()
        bias = mod.bias_tensor is not None
        ref = dict(device=U.device, dtype=U.dtype)
        if isinstance(mod, ConvLayer):
            new: nn.Module = TwoFactorConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.rank, bias,
                                             stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                                             padding_mode=mod.padding_mode, **ref)
        else:
            new = TwoFactorLinear(mod.in_features, mod.out_features, mod.rank, bias, **ref)
        new.W1.copy_(U @ S)          # (n, r)
        new.W2.copy_(V.T)            # (r, m)
        if bias:
            new.bias.copy_(mod.bias_tensor.detach())
        new.train(mod.training)
        if name:
            model.set_submodule(name, new)
        else:
            return new
    return model

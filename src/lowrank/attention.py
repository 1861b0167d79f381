"""Multi-head attention whose four projections are ordinary modules.

``nn.MultiheadAttention`` keeps its query/key/value projections in one packed
``in_proj_weight`` (or ``q_proj_weight`` ... when ``kdim``/``vdim`` differ) and calls
``out_proj.weight`` directly, so none of them can be swapped for a low-rank layer.
:class:`LowRankMultiheadAttention` holds ``q_proj``, ``k_proj``, ``v_proj`` and
``out_proj`` as submodules (``nn.Linear`` or any low-rank layer) and has the same
constructor, forward signature and semantics as ``nn.MultiheadAttention``: query / key /
value (batched or not, ``batch_first``), ``key_padding_mask``, ``need_weights``,
``attn_mask`` (bool or float, 2-D or 3-D), ``average_attn_weights``, ``is_causal``,
``dropout``, ``add_bias_kv``, ``add_zero_attn``. Without ``need_weights`` it calls
``F.scaled_dot_product_attention``.

:func:`lowrank.convert.convert` replaces an ``nn.MultiheadAttention`` by one of these
(:meth:`LowRankMultiheadAttention.from_mha`, exact) when any of its projections is
selected; :func:`lowrank.convert.merge` turns it back into an ``nn.MultiheadAttention``
(:meth:`LowRankMultiheadAttention.to_mha`) with the original state_dict keys.

PyTorch's fused ``TransformerEncoderLayer`` / ``TransformerEncoder`` inference paths read
``self_attn.in_proj_weight`` and friends and call a fused kernel; this module sets
``_qkv_same_embed_dim = False`` (its projections are separate), which sends those
layers down their regular path, which calls this module's ``forward``.
``in_proj_weight`` / ``in_proj_bias`` / ``q_proj_weight`` ... exist as read-only
properties (dense, formed when read) for code that inspects them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LowRankMultiheadAttention", "is_attention"]

#: The projection submodules, in module order, and the input they read.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def is_attention(module: nn.Module) -> bool:
    """True for a :class:`LowRankMultiheadAttention`."""
    return isinstance(module, LowRankMultiheadAttention)


def _float_mask(mask: torch.Tensor | None, name: str, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask (True = not allowed) as an additive float mask (``-inf``); a float mask as is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")
    return mask


class LowRankMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` as submodules.

    Args: those of ``nn.MultiheadAttention``. A fresh module has ``nn.Linear`` projections
    (``q``: ``E -> E``, ``k``: ``kdim -> E``, ``v``: ``vdim -> E``, ``out``: ``E -> E``),
    Xavier-uniform weights and zero biases (as ``nn.MultiheadAttention``);
    :func:`lowrank.convert.convert` swaps them for low-rank layers.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} "
                             f"and num_heads={num_heads} instead")
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.embed_dim = int(embed_dim)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        # Separate projections: PyTorch's fused transformer paths check this and take their
        # regular path (which calls forward), never the packed in_proj_weight kernel.
        self._qkv_same_embed_dim = False
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise AssertionError("embed_dim must be divisible by num_heads")
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, self.embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, self.embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, self.embed_dim), **kw))
            self.bias_v = nn.Parameter(torch.empty((1, 1, self.embed_dim), **kw))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = bool(add_zero_attn)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj"):
                proj = getattr(self, name)
                nn.init.xavier_uniform_(proj.weight)
                if proj.bias is not None:
                    proj.bias.zero_()
            if self.out_proj.bias is not None:
                self.out_proj.bias.zero_()
            if self.bias_k is not None:
                nn.init.xavier_normal_(self.bias_k)
                nn.init.xavier_normal_(self.bias_v)

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "LowRankMultiheadAttention":
        """The same function as ``mha`` (exact: the projections hold copies of its slices), with
        ``nn.Linear`` projections; ``requires_grad`` of each tensor is carried over."""
        ref = mha.out_proj.weight
        new = cls(**cls.spec_of(mha), device=ref.device, dtype=ref.dtype)
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            w = mha.in_proj_weight
            weights = [w[:e], w[e:2 * e], w[2 * e:]]
            flags = [w.requires_grad] * 3
        else:
            weights = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
            flags = [p.requires_grad for p in weights]
        b = mha.in_proj_bias
        biases = [None] * 3 if b is None else [b[:e], b[e:2 * e], b[2 * e:]]
        with torch.no_grad():
            for name, w, bias, flag in zip(PROJECTIONS[:3], weights, biases, flags):
                proj = getattr(new, name)
                proj.weight.copy_(w.detach())
                proj.weight.requires_grad_(flag)
                if bias is not None:
                    proj.bias.copy_(bias.detach())
                    proj.bias.requires_grad_(b.requires_grad)
            new.out_proj.weight.copy_(mha.out_proj.weight.detach())
            new.out_proj.weight.requires_grad_(mha.out_proj.weight.requires_grad)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias.detach())
                new.out_proj.bias.requires_grad_(mha.out_proj.bias.requires_grad)
            if mha.bias_k is not None:
                new.bias_k.copy_(mha.bias_k.detach())
                new.bias_v.copy_(mha.bias_v.detach())
                new.bias_k.requires_grad_(mha.bias_k.requires_grad)
                new.bias_v.requires_grad_(mha.bias_v.requires_grad)
        new.train(mha.training)
        return new

    def to_mha(self) -> nn.MultiheadAttention:
        """A plain ``nn.MultiheadAttention`` computing the same function: the projections' dense
        weights packed into ``in_proj_weight`` (or ``q/k/v_proj_weight``), ``in_proj_bias``, ``out_proj``."""
        ref = self.out_proj.weight
        mha = nn.MultiheadAttention(**self.spec(), device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            ws = [getattr(self, name).weight.detach() for name in PROJECTIONS[:3]]
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(torch.cat(ws))
            else:
                mha.q_proj_weight.copy_(ws[0])
                mha.k_proj_weight.copy_(ws[1])
                mha.v_proj_weight.copy_(ws[2])
            if mha.in_proj_bias is not None:
                mha.in_proj_bias.copy_(self.in_proj_bias.detach())
            mha.out_proj.weight.copy_(self.out_proj.weight.detach())
            if mha.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.out_proj.bias.detach())
            if mha.bias_k is not None:
                mha.bias_k.copy_(self.bias_k.detach())
                mha.bias_v.copy_(self.bias_v.detach())
        mha.train(self.training)
        return mha

    @staticmethod
    def spec_of(mha: nn.Module) -> dict[str, Any]:
        """Constructor arguments (JSON-ready) of an ``nn.MultiheadAttention`` or of this class."""
        return {"embed_dim": mha.embed_dim, "num_heads": mha.num_heads, "dropout": float(mha.dropout),
                "bias": mha.out_proj.bias is not None, "add_bias_kv": mha.bias_k is not None,
                "add_zero_attn": bool(mha.add_zero_attn), "kdim": mha.kdim, "vdim": mha.vdim,
                "batch_first": bool(mha.batch_first)}

    def spec(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module (its projections as ``nn.Linear``)."""
        return self.spec_of(self)

    # ------------------------------------------------------------------ nn.MultiheadAttention's attributes

    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        """``[W_q; W_k; W_v]`` (dense, formed when read) when ``kdim == vdim == embed_dim``, else None."""
        if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
            return None
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        """``[b_q; b_k; b_v]`` or None (``bias=False``)."""
        bs = [getattr(self, name).bias for name in PROJECTIONS[:3]]
        return None if any(b is None for b in bs) else torch.cat(bs)

    @property
    def q_proj_weight(self) -> torch.Tensor:
        return self.q_proj.weight

    @property
    def k_proj_weight(self) -> torch.Tensor:
        return self.k_proj.weight

    @property
    def v_proj_weight(self) -> torch.Tensor:
        return self.v_proj.weight

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, vdim={self.vdim}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")

    # ------------------------------------------------------------------ forward

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(attn_output, attn_weights or None)``."""
        if query.dim() not in (2, 3):
            raise AssertionError(f"query should be unbatched 2D or batched 3D tensor but received "
                                 f"{query.dim()}-D query tensor")
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise AssertionError(f"key and value should have the query's {query.dim()} dimensions, got "
                                 f"{key.dim()}-D key and {value.dim()}-D value")
        batched = query.dim() == 3
        if batched and not self.batch_first:   # work batch-first: (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        elif not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        bsz, tgt_len, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got {embed_dim}")
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"key's sequence and batch dims {tuple(key.shape[:2])} do not match "
                                 f"value's {tuple(value.shape[:2])}")
        src_len = key.shape[1]
        heads, hd = self.num_heads, self.head_dim

        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                               "module method `generate_square_subsequent_mask` to create this mask.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None        # SDPA's is_causal does it
        else:
            attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)
            if key_padding_mask is not None:
                is_causal = False   # the merged mask is no longer causal

        q = self.q_proj(query)       # (N, L, E)
        k = self.k_proj(key)         # (N, S, E)
        v = self.v_proj(value)       # (N, S, E)

        if attn_mask is not None:    # -> (1, 1, L, S) or (N, H, L, S)
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(tgt_len, src_len)}.")
                attn_mask = attn_mask.view(1, 1, tgt_len, src_len)
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (bsz * heads, tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(bsz * heads, tgt_len, src_len)}.")
                attn_mask = attn_mask.view(bsz, heads, tgt_len, src_len)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if self.bias_k is not None:  # one more key / value position
            k = torch.cat([k, self.bias_k.expand(bsz, 1, embed_dim)], dim=1)
            v = torch.cat([v, self.bias_v.expand(bsz, 1, embed_dim)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))

        q = q.view(bsz, tgt_len, heads, hd).transpose(1, 2)           # (N, H, L, D)
        k = k.view(bsz, k.shape[1], heads, hd).transpose(1, 2)        # (N, H, S', D)
        v = v.view(bsz, v.shape[1], heads, hd).transpose(1, 2)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz, heads, 1, hd), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[2]
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise AssertionError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                                     f"{tuple(key_padding_mask.shape)}")
            kpm = key_padding_mask.view(bsz, 1, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout_p = self.dropout if self.training else 0.0

        weights: torch.Tensor | None = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(-2, -1)  # (N, H, L, S')
            if attn_mask is not None:
                scores = scores + attn_mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = weights @ v                                          # (N, H, L, D)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, tgt_len, embed_dim))  # (N, L, E)

        if not batched:
            out = out.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

"""A small transformer classifier: token ids (text) or image rows in, class logits out.

Modules, in order: ``embed`` (``nn.Embedding(vocab_size, d_model)``, padding id 0, for
token ids) or ``rows`` (``nn.Linear(C W, d_model)``, for images read as a sequence of
``H`` rows of ``C W`` values); fixed sinusoidal positions (:func:`sinusoidal_positions`,
a buffer, not trained); ``encoder`` (``nn.TransformerEncoder`` of ``num_layers``
``nn.TransformerEncoderLayer`` s, post-norm, batch first); masked mean pooling over the
non-padding positions; ``classifier`` (``nn.Linear(d_model, num_classes)``, the last Linear,
which conversion keeps dense by default).

Because the encoder is PyTorch's own ``nn.TransformerEncoderLayer``, every projection
converts by name with :func:`lowrank.convert.convert` (as it would in a user's
transformer): ``encoder.layers.{i}.self_attn.{q,k,v,out}_proj`` (inside a
:class:`~lowrank.attention.LowRankMultiheadAttention`) and the feed-forward
``encoder.layers.{i}.linear1`` / ``linear2``. With ``per_head`` the query, key and value
projections are split per head (:class:`~lowrank.head_split.HeadSplitLinear`:
``...self_attn.q_proj.heads.{h}``), so each head gets its own rank.

Input is flat (N, D) float32 like every model here: token ids (exact in float32) for
text, where id 0 is padding and becomes the attention's ``key_padding_mask``; pixels for
images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..attention import LowRankMultiheadAttention
from ..errors import ConfigError
from ..head_split import split_heads

__all__ = ["TransformerClassifier", "sinusoidal_positions", "build_transformer", "TRANSFORMER_ARGS"]

PAD_ID = 0
TRANSFORMER_ARGS = ("d_model", "num_heads", "num_layers", "dim_feedforward", "dropout", "vocab_size", "per_head",
                    "activation")
"""The ``model_args`` the ``transformer`` model takes."""
_ACTIVATIONS = ("relu", "gelu")


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """``(length, d_model)``: ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)`` (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]                                 # (L, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(d/2),)
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe.to(torch.float32)


def masked_mean(h: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """``(N, d)`` mean of ``h: (N, L, d)`` over the positions where ``pad: (N, L)`` is False."""
    if pad is None:
        return h.mean(dim=1)
    keep = (~pad).to(h.dtype).unsqueeze(-1)                     # (N, L, 1)
    return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class TransformerClassifier(nn.Module):
    """See the module docstring. ``vocab_size`` given: token ids of ``seq_len`` positions; else
    ``seq_len`` rows of ``features`` values each."""

    def __init__(self, seq_len: int, num_classes: int, *, vocab_size: int | None = None, features: int | None = None,
                 d_model: int = 64, num_heads: int = 4, num_layers: int = 1, dim_feedforward: int = 128,
                 dropout: float = 0.1, activation: str = "relu", per_head: bool = False):
        super().__init__()
        self.seq_len, self.d_model = seq_len, d_model
        #: Evaluation batches of at most 2^26 attention scores (N H L^2; 256 MiB of float32).
        self.eval_batch_size = max(1, min(4096, 2 ** 26 // (num_heads * seq_len ** 2)))
        self.features = features
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
            with torch.no_grad():   # unit-scale tokens after the sqrt(d) factor of forward
                nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
                self.embed.weight[PAD_ID].zero_()
        else:
            assert features is not None
            self.rows = nn.Linear(features, d_model)
        self.register_buffer("positions", sinusoidal_positions(seq_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, activation=activation,
                                           batch_first=True)
        layer.self_attn.dropout = 0.0   # no dropout of attention weights: on a CPU it cost a third of a step
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        if per_head:
            for enc_layer in self.encoder.layers:
                enc_layer.self_attn = LowRankMultiheadAttention.from_mha(enc_layer.self_attn)
                split_heads(enc_layer.self_attn)
        self.classifier = nn.Linear(d_model, num_classes)

    @property
    def tokens(self) -> bool:
        """True when the model reads token ids."""
        return hasattr(self, "embed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pad: torch.Tensor | None = None
        if self.tokens:
            ids = x.reshape(n, self.seq_len).to(torch.int64)     # (N, L)
            pad = ids == PAD_ID
            pad = pad & ~pad.all(dim=1, keepdim=True)             # an empty text attends to its padding
            h = self.embed(ids) * math.sqrt(self.d_model)        # (N, L, d)
        else:
            h = self.rows(x.reshape(n, self.seq_len, -1))         # (N, L, d); rows prepared by the caller's shape
        h = self.dropout(h + self.positions.to(h.dtype))
        fast = torch.backends.mha.get_fastpath_enabled()
        try:   # PyTorch's fused inference path: 3x slower here with a padding mask (1.17 s vs 0.39 s, 256 reviews)
            torch.backends.mha.set_fastpath_enabled(False)
            h = self.encoder(h, src_key_padding_mask=pad)        # (N, L, d)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        return self.classifier(self.dropout(masked_mean(h, pad)))   # (N, K)


def _images_as_rows(x: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    return x.reshape(x.shape[0], channels, height, width).permute(0, 2, 1, 3).reshape(x.shape[0], -1)


class _RowsOfImages(nn.Module):
    """Flat (N, C H W) images to flat (N, H (C W)) rows: row ``i`` holds every channel's row ``i``."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.channels, self.height, self.width = channels, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _images_as_rows(x, self.channels, self.height, self.width)


def _int_arg(args: dict[str, Any], name: str, default: int, low: int = 1) -> int:
    v = args.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"model 'transformer' {name} must be an integer >= {low}, got {v!r}")
    return v


def build_transformer(args: dict[str, Any], sample_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The ``transformer`` model for the data: token ids ``(L,)`` with ``vocab_size`` (text datasets),
    or images ``(C, H, W)`` read as ``H`` rows; ``args`` are checked (one-line ConfigErrors)."""
    unknown = sorted(set(args) - set(TRANSFORMER_ARGS))
    if unknown:
        raise ConfigError(f"model 'transformer' does not take model_args {', '.join(map(repr, unknown))}; "
                          f"it takes {', '.join(TRANSFORMER_ARGS)}")
    d = _int_arg(args, "d_model", 64)
    heads = _int_arg(args, "num_heads", 4)
    if d % heads:
        raise ConfigError(f"model 'transformer' d_model {d} must be divisible by num_heads {heads}")
    layers = _int_arg(args, "num_layers", 1)
    ff = _int_arg(args, "dim_feedforward", 2 * d)
    dropout = args.get("dropout", 0.1)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model 'transformer' dropout must be a number in [0, 1), got {dropout!r}")
    activation = args.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"model 'transformer' activation must be one of {', '.join(_ACTIVATIONS)}, got "
                          f"{activation!r}")
    per_head = args.get("per_head", False)
    if not isinstance(per_head, bool):
        raise ConfigError(f"model 'transformer' per_head must be true or false, got {per_head!r}")
    common = dict(d_model=d, num_heads=heads, num_layers=layers, dim_feedforward=ff, dropout=float(dropout),
                  activation=activation, per_head=per_head)
    vocab = args.get("vocab_size")
    if vocab is not None:
        vocab = _int_arg(args, "vocab_size", 0, low=2)
        if len(sample_shape) != 1:
            raise ConfigError(f"model 'transformer' with vocab_size reads token ids (one sequence per sample), "
                              f"but the data's samples have shape {sample_shape}")
        return TransformerClassifier(sample_shape[0], num_outputs, vocab_size=vocab, **common)
    if len(sample_shape) != 3:
        raise ConfigError(f"model 'transformer' reads token ids of a text dataset (imdb) or images (C, H, W) as "
                          f"rows, but the data's samples have shape {sample_shape}: use --model mlp")
    c, h, w = sample_shape
    body = TransformerClassifier(h, num_outputs, features=c * w, **common)
    if c == 1:
        return body   # (N, H W) is already H rows of W
    return nn.Sequential(_RowsOfImages(c, h, w), body)

"""LoRA adapter around a frozen dense layer.

``y = W0 x + b0 + (lora_alpha / r) B A x`` with the base ``W0: (n, m)``, ``b0`` frozen,
``A: (r, m)`` small random and ``B: (n, r)`` zero at the start (so a fresh adapter
does not change the function). :meth:`LoRALinear.merge` folds the update into
``W0`` for inference; :meth:`LoRALinear.unmerge` takes it out again.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...linalg import check_rank
from ...layer import LowRankLayer

__all__ = ["LoRALinear"]


class LoRALinear(LowRankLayer):
    """Frozen ``base`` (an ``nn.Linear``) plus a trainable rank-``r`` update ``(lora_alpha / r) B A``.

    Only ``A`` and ``B`` require grad. The merged state is a boolean buffer
    (``lora_merged``) so it travels with ``state_dict``: loading the weights of a
    merged layer into a fresh one cannot double-count the update.

    Accounting: LoRA serves inference merged, so :meth:`num_params` and
    :meth:`flops_per_sample` are those of the dense layer; the trainable count
    (``A`` and ``B``, ``r (m + n)``) is :meth:`training_params`.
    """

    #: LoRA adds to a dense layer instead of replacing it: its rank is not a compression.
    is_adapter = True

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 lora_alpha: float = 16.0, base: nn.Linear | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        check_rank(rank, out_features, in_features, type(self).__name__)
        if base is None:
            base = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        elif (base.in_features, base.out_features, base.bias is not None) != (in_features, out_features, bias):
            raise ValueError(f"base {base} does not match in_features={in_features}, "
                             f"out_features={out_features}, bias={bias}")
        self._init_adapter(base, in_features, out_features, rank, lora_alpha)

    def _init_adapter(self, base: nn.Module, in_features: int, out_features: int, rank: int,
                      lora_alpha: float) -> None:
        """Freeze ``base``; ``A (r, m)`` kaiming-uniform, ``B (n, r)`` zero; the merged flag."""
        w = base.weight
        self.in_features, self.out_features = in_features, out_features
        self.lora_alpha = float(lora_alpha)
        self.base = base
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=w.dtype, device=w.device))   # (r, m)
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=w.dtype, device=w.device))  # (n, r)
        # As peft: A ~ kaiming-uniform(a = sqrt(5)), i.e. nn.Linear's init; B = 0.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.register_buffer("lora_merged", torch.tensor(False, device=w.device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, *, lora_alpha: float = 16.0) -> "LoRALinear":
        """Wrap ``linear`` itself (not a copy) as the frozen base; the adapter starts at zero."""
        return cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                   lora_alpha=lora_alpha, base=linear)

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def scaling(self) -> float:
        """``lora_alpha / r``."""
        return self.lora_alpha / self.rank

    @property
    def merged(self) -> bool:
        """True when ``base.weight`` currently holds ``W0 + (lora_alpha / r) B A``."""
        return bool(self.lora_merged)

    @property
    def bias_tensor(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base's bias (drop-in for ``nn.Linear.bias``)."""
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """``(lora_alpha / r) B A``, shape ``(n, m)``."""
        return self.scaling * (self.B @ self.A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:  # the update already lives in base.weight
            return y
        return y + self.scaling * F.linear(F.linear(x, self.A), self.B)  # (..., m) -> (..., r) -> (..., n)

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 += (lora_alpha / r) B A`` (no-op when already merged)."""
        if not self.merged:
            self.base.weight += self.delta_weight().view_as(self.base.weight)
            self.lora_merged.fill_(True)

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 -= (lora_alpha / r) B A``, the inverse of :meth:`merge` (no-op when not merged)."""
        if self.merged:
            self.base.weight -= self.delta_weight().view_as(self.base.weight)
            self.lora_merged.fill_(False)

    def dense_weight(self) -> torch.Tensor:
        w = self.base.weight.reshape(self.out_features, self.in_features)
        return w if self.merged else w + self.delta_weight()

    @classmethod
    def count_params(cls, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        return in_features * out_features + (out_features if bias else 0)

    def num_params(self) -> int:
        """Inference weights: LoRA is served merged, so ``m n (+ n)`` like the dense layer."""
        return self.in_features * self.out_features + (self.out_features if self.base.bias is not None else 0)

    def flops_per_sample(self) -> int:
        """Multiply-adds of the merged (inference) layer: ``m n (+ n)``."""
        return self.num_params()

    def training_params(self) -> int:
        """Trainable elements: ``A`` and ``B``, ``r (m + n)``."""
        return self.A.numel() + self.B.numel()

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "lora_alpha": self.lora_alpha}

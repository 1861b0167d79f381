"""LoRA fine-tuning: freeze a (trained) dense model, train rank-``r`` adapters ``(lora_alpha / r) B A``."""

from __future__ import annotations

from torch import nn

from ...checkpoint import load_dense_weights
from ...convert import convert
from ...registry import Method, register_method
from ...stepper import Stepper
from .config import DEFAULT_RANK, LoRAConfig
from .layer import LoRALinear
from .conv_layer import LoRAConv2d

__all__ = ["LoRAConfig", "LoRALinear", "DEFAULT_RANK", "prepare", "freeze_base", "LoRAConv2d"]


def freeze_base(model: nn.Module) -> nn.Module:
    """Freeze every parameter of ``model`` but the LoRA adapters ``A``, ``B`` (in place; returns
    ``model``): what LoRA fine-tuning trains. Call it after ``convert(model, "lora", ...)``."""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            p.requires_grad_(isinstance(module, LoRALinear) and name in ("A", "B"))
    return model


def prepare(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Optionally load ``base_checkpoint``, wrap the targeted Linears in :class:`LoRALinear` and
    freeze everything else: only the adapters ``A``, ``B`` train."""
    if cfg.base_checkpoint:
        load_dense_weights(model, cfg.base_checkpoint)
    return freeze_base(convert(model, cfg, inplace=True))


register_method(Method(
    name="lora", config=LoRAConfig, summary="frozen base + trainable rank-r adapters (fine-tuning)",
    prepare=prepare,
    make_stepper=lambda model, cfg, total_steps: Stepper(model, cfg.optim, total_steps),
    layers=(LoRALinear, LoRAConv2d),
))

"""LoRA fine-tuning: freeze a (trained) dense model, train rank-``r`` adapters ``(lora_alpha / r) B A``."""

from __future__ import annotations

from torch import nn

from ...convert import convert
from ...errors import ConfigError
from ...pretrained import output_layer, start_from
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
    freeze everything else: only the adapters ``A``, ``B`` train, and with ``new_head`` the
    (freshly initialized, not loaded) output layer too."""
    head = output_layer(model)
    if cfg.base_checkpoint:
        start_from(model, cfg.base_checkpoint, new_head=cfg.new_head)
    model = freeze_base(convert(model, cfg, inplace=True))
    if cfg.new_head:
        layer = model.get_submodule(head)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ConfigError(f"new_head trains the output layer {head} whole, so it cannot also get an adapter: "
                              f"leave {head} out of --target")
        for p in layer.parameters():
            p.requires_grad_(True)
    return model


register_method(Method(
    name="lora", config=LoRAConfig, summary="frozen base + trainable rank-r adapters (fine-tuning)",
    prepare=prepare,
    make_stepper=lambda model, cfg, total_steps: Stepper(model, cfg.optim, total_steps),
    layers=(LoRALinear, LoRAConv2d),
))
